"""A weights file in the real FID Inception-v3 architecture, for tests and benchmarks on machines that
cannot download the real one: the metric code is the same whatever the weights."""

from __future__ import annotations

from pathlib import Path

import torch

from ganmodels.inception import FIDInceptionV3


def write_random_weights(path: Path, seed: int = 1234) -> Path:
    """Seeded He-scaled convolutions and perturbed BatchNorm statistics, so features are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2 / mod.weight[0].numel()) ** 0.5)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
    torch.save(model.state_dict(), path)
    return path
