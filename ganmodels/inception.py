"""The FID Inception-v3: the TensorFlow 2015-12-05 graph that published FID/KID numbers come from, in plain torch.

FID and KID are only comparable across papers when computed with this exact network: torchvision's
Inception-v3 has different weights and pooling details and gives different numbers. This module mirrors
torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-compatible patches: average pools that ignore the
zero padding, a max pool in the last block, TF1 bilinear resizing to 299, ``(x - 128) / 128`` scaling), with
the same state-dict key names, so torch-fidelity's weights file
``weights-inception-2015-12-05-6726825d.pth`` loads strictly into :class:`FIDInceptionV3` and features
match torch-fidelity's.

Weights (~95 MB) are found by :func:`resolve_weights`: an explicit path, else the cache directory
(``$GAN_FID_WEIGHTS_CACHE`` or ``~/.cache/gan-pipelines/fid``), else a checked download into that cache.

    model = load_inception(resolve_weights(), device)
    feats = model(images_uint8)  # (N, 2048) float32
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import requests
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.storage import atomic_file

__all__ = [
    "UNOFFICIAL_ENV_VAR",
    "WEIGHTS_ENV_VAR",
    "WEIGHTS_FILENAME",
    "WEIGHTS_SHA256",
    "WEIGHTS_URL",
    "FIDInceptionV3",
    "FIDWeightsUnavailable",
    "UnofficialFIDWeights",
    "check_weights",
    "default_cache_dir",
    "load_inception",
    "resize_like_tf1",
    "resolve_weights",
]

log = logging.getLogger(__name__)

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILENAME}"
# The published file's sha256 (95,628,359 bytes). Not listed by torch-fidelity itself (it relies on torch.hub's
# convention: the filename's ``6726825d`` is the digest's prefix); recorded identically by several independent
# projects that pin the file, some as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, the same bytes.
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_ENV_VAR = "GAN_FID_WEIGHTS_CACHE"
#: Set to 1 to score with weights whose sha256 is not the official file's (scores are marked not comparable).
UNOFFICIAL_ENV_VAR = "GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS"
INPUT_SIZE = 299
_CHUNK = 1 << 20


class FIDWeightsUnavailable(RuntimeError):
    """No Inception weights file could be found or downloaded; the message says how to provide one."""


class UnofficialFIDWeights(ValueError):
    """The weights file is not the official one: its FID/KID would not be comparable with anyone's."""


def check_weights(
    path: str | Path, *, allow_unofficial: bool = False, sha256: str = WEIGHTS_SHA256
) -> tuple[str, bool]:
    """``(sha256 of the file, whether it is the official file)``, refusing other weights unless allowed.

    A converted, truncated or test weights file loads and produces numbers that look like FIDs; only the
    digest tells them apart, so every file is hashed (about 0.3 s), wherever it came from.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    official = digest == sha256.lower()
    if not official and not allow_unofficial:
        raise UnofficialFIDWeights(
            f"FID weights {path} have sha256 {digest}, not the official {WEIGHTS_FILENAME} ({sha256}): scores "
            f"from them are not comparable with published FIDs. Use the official file, or opt in with "
            f"${UNOFFICIAL_ENV_VAR}=1 (or allow_unofficial_weights of the `fid` resource); such scores are "
            "then marked not comparable."
        )
    return digest, official


def default_cache_dir() -> Path:
    """``$GAN_FID_WEIGHTS_CACHE``, else ``~/.cache/gan-pipelines/fid``."""
    env = os.environ.get(WEIGHTS_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gan-pipelines" / "fid"


def _download(url: str, dest: Path, sha256: str, timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically; a digest mismatch raises and leaves nothing at ``dest``."""
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=timeout) as resp:
        resp.raise_for_status()
        with atomic_file(dest) as f:
            for chunk in resp.iter_content(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
            if digest.hexdigest() != sha256.lower():
                raise ValueError(f"sha256 of {url} is {digest.hexdigest()}, expected {sha256.lower()}")


def resolve_weights(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    *,
    url: str = WEIGHTS_URL,
    sha256: str = WEIGHTS_SHA256,
    timeout: float = 60.0,
) -> Path:
    """The Inception weights file: ``path`` if given, else the cached copy, else a verified download.

    An explicit ``path`` must exist (a typo should fail loudly, not silently fetch another file). Which
    file it is, is :func:`check_weights`' business: the evaluation hashes whatever this returns, since a
    cache directory can hold anything a user put there. ``url`` and ``sha256`` are parameters so a mirror
    can be used.

    Raises ``FileNotFoundError`` for a missing explicit path and :class:`FIDWeightsUnavailable` when there
    is no cached file and the download is disabled or fails (network error, HTTP error, wrong digest).
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(f"FID Inception weights file {explicit} does not exist")
        return explicit
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    reason = "downloads are disabled"
    if allow_download:
        log.info("downloading FID Inception weights from %s to %s", url, cached)
        try:
            _download(url, cached, sha256, timeout)
            return cached
        except (requests.RequestException, OSError, ValueError) as e:
            reason = f"the download failed: {e}"
    raise FIDWeightsUnavailable(
        f"FID Inception weights are not available ({reason}). Download {url} (sha256 {sha256}) "
        f"on a machine with internet access and either put it at {cached} (the cache directory is set by "
        f"${WEIGHTS_ENV_VAR}, default ~/.cache/gan-pipelines/fid) or pass its path explicitly "
        f"($GAN_FID_WEIGHTS, or weights_path of the `fid` resource in Dagster; resolve_weights(path=...) in code)."
    )


def resize_like_tf1(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float ``x`` (N, C, H, W) to ``size`` x ``size`` exactly as TF1's ``resize_bilinear``.

    TF1 (align_corners=False, no half-pixel centres) samples source pixel ``dst * in / out`` and clamps the
    right/bottom neighbour; ``F.interpolate`` uses half-pixel centres and gives different features. Same
    float32 arithmetic as torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``, but interpolating
    along W first for all input rows, then along H: the same per-pixel operations, fewer of them.
    """
    if x.shape[-2:] == (size, size):
        return x  # the grid is the identity: every weight is 0, torch-fidelity's result equals the input

    def grid(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(pos.dtype)

    lo_x, hi_x, dx = grid(x.shape[3])
    lo_y, hi_y, dy = grid(x.shape[2])
    left = x.index_select(3, lo_x)
    rows = left + (x.index_select(3, hi_x) - left) * dx.view(1, 1, 1, size)
    top = rows.index_select(2, lo_y)
    return top + (rows.index_select(2, hi_y) - top) * dy.view(1, 1, size, 1)


class _Conv(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU; attribute names ``conv``/``bn`` are the checkpoint's."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg3(x: Tensor) -> Tensor:
    """TF's 3x3/1 SAME average pool, which averages only the real (unpadded) pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Mixed_5b..5d)."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(c_in, 64, 1)
        self.branch5x5_1 = _Conv(c_in, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class _BlockB(nn.Module):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(c_in, 192, 1)
        self.branch7x7_1 = _Conv(c_in, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(c_in, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class _BlockD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(c_in, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(c_in, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _BlockE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (Mixed_7b: average pool; Mixed_7c: max pool, as in the TF graph)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(c_in, 320, 1)
        self.branch3x3_1 = _Conv(c_in, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(c_in, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """uint8 images (N, 3, H, W), any H and W -> (N, 2048) float32 pool3 features, as torch-fidelity's "2048".

    ``fc`` (the 1008-way classifier) is not used for FID/KID; it is kept so the checkpoint's keys match one
    to one and ``load_state_dict`` can stay strict (a wrong or truncated file fails instead of loading half).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = resize_like_tf1(images.to(torch.float32), INPUT_SIZE)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(weights: Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with ``weights`` loaded strictly (tensors only, no pickled code), in eval mode."""
    model = FIDInceptionV3()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.requires_grad_(False).eval().to(device)
