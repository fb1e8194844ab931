"""FID feature extraction speed: ``ganmodels`` (FIDInceptionV3 + extract_features) against torch-fidelity 0.4.0's
FeatureExtractorInceptionV3, on the same images, batch size and torch thread count, in the same process.

Real dog photos from ``../shared/fixtures/dogs`` (random images when absent), resized to 64 px as the dataset
does, so both extractors also pay for the resize to 299. Rounds interleave the two (alternating which goes
first) and the medians are reported. The real Inception weights are not downloadable here, so both load the
same seeded random-init weights file: the speed does not depend on the values (He init keeps activations at
a realistic scale, away from slow denormals). Run by hand: ``python benchmarks/bench_fid.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganmodels.inception import load_inception  # noqa: E402
from ganmodels.metrics import extract_features  # noqa: E402
from tests.fid_weights import write_random_weights  # noqa: E402

DOGS = ROOT.parent / "shared" / "fixtures" / "dogs"
REFERENCE_DIR = ROOT / ".venv" / "reference" / "torch_fidelity"


def reference_extractor_class() -> type:
    """torch-fidelity's extractor, imported without its package ``__init__`` (which needs torchvision)."""
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = [str(REFERENCE_DIR)]
    sys.modules["torch_fidelity"] = pkg
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def load_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    """``n`` uint8 (3, size, size) images: real photos, centre-cropped and LANCZOS-resized like the dataset."""
    paths = sorted(DOGS.glob("*.jpg"))[:n]
    if len(paths) < n:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), "random"
    arrays = []
    for p in paths:
        with Image.open(p) as img:
            arrays.append(np.asarray(ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), f"real ({DOGS})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if not REFERENCE_DIR.is_dir():
        sys.exit(f"torch-fidelity reference not installed at {REFERENCE_DIR} (make installs it)")
    torch.set_num_threads(args.threads)
    images, kind = load_images(args.images, args.size)
    batches = list(images.split(args.batch_size))

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random-inception.pth"
        write_random_weights(weights)
        ref = reference_extractor_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
        ours = load_inception(weights, "cpu")

    def run_ref() -> np.ndarray:  # as torch-fidelity's own loop runs it: no_grad, features to CPU per batch
        with torch.no_grad():
            return torch.cat([ref(b)[0].cpu() for b in batches]).numpy()

    def run_ours() -> np.ndarray:
        return extract_features(ours, batches, device="cpu")

    print(
        f"{len(images)} {kind} images at {args.size}x{args.size} (resized to 299 inside), batch {args.batch_size}, "
        f"{args.threads} torch threads, {args.rounds} interleaved rounds; RANDOM-INIT weights (same file for both)"
    )
    with torch.no_grad():  # warm-up: one batch each
        ref(batches[0])
        ours(batches[0])
    rates: dict[str, list[float]] = {"torch-fidelity": [], "ganmodels": []}
    outputs: dict[str, np.ndarray] = {}
    runners = {"torch-fidelity": run_ref, "ganmodels": run_ours}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            t0 = time.perf_counter()
            outputs[name] = runners[name]()
            rates[name].append(len(images) / (time.perf_counter() - t0))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f} images/s" for n in runners))
    med = {n: statistics.median(v) for n, v in rates.items()}
    diff = np.abs(outputs["ganmodels"] - outputs["torch-fidelity"]).max()
    for n in runners:
        print(f"{n:>15}: median {med[n]:6.2f} images/s (min {min(rates[n]):.2f}, max {max(rates[n]):.2f})")
    print(f"ratio ganmodels / torch-fidelity: {med['ganmodels'] / med['torch-fidelity']:.3f} (target >= 0.90)")
    print(f"max |feature difference|: {diff:.3g} (feature scale {np.abs(outputs['torch-fidelity']).max():.3g})")


if __name__ == "__main__":
    main()
