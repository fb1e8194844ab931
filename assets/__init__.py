"""gan-pipelines Dagster layer: assets, resources, partitions and Definitions over pipelines/ and ganmodels/."""
