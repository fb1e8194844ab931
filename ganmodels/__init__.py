"""gan-pipelines models: networks, losses, the training loop and metrics in plain PyTorch (no Dagster)."""
