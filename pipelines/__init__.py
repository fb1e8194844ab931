"""gan-pipelines data library: sources, fetching, validation, manifests and storage (no Dagster)."""
