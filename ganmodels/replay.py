"""Experience replay of past generated images for D (Shrivastava et al. 2017).

Showing D some older fakes next to fresh ones stops G and D from chasing each other round a cycle of
modes (D forgets what G produced a while ago; G jumps back to it). Typical use in D's step::

    fake = G(z).detach()
    d_fake = buffer.mix(fake, share=0.5)   # half of the batch replaced by old fakes
    buffer.push(fake)                      # then remember the fresh ones

Policy: reservoir sampling (default, "Algorithm R"): the buffer is always a uniform random sample of
EVERY fake pushed so far, so it covers the whole history of training, not only the last few batches.
``mode="fifo"`` keeps the most recent ``capacity`` images instead (a short memory).

Images are stored detached, on CPU, in a preallocated tensor. Optional per-image class labels are
stored alongside for conditional GANs (:meth:`ReplayBuffer.mix_with_labels`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Fixed-capacity store of past fakes; all randomness comes from ``generator`` (a CPU generator).

    Give the buffer its OWN generator (not one shared with the sampler or the augmenter):
    :meth:`load_state_dict` restores that generator's state, which makes the buffer's future
    samples identical after a resume.
    """

    def __init__(self, capacity: int, generator: torch.Generator, mode: Literal["reservoir", "fifo"] = "reservoir"):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if mode not in ("reservoir", "fifo"):
            raise ValueError(f"mode must be 'reservoir' or 'fifo', got {mode!r}")
        if generator.device.type != "cpu":
            raise ValueError("ReplayBuffer needs a CPU torch.Generator")
        self.capacity = capacity
        self.mode = mode
        self.generator = generator
        self._data: Tensor | None = None
        self._labels: Tensor | None = None
        self._size = 0  # filled slots
        self._seen = 0  # images ever pushed (reservoir)
        self._pos = 0  # next slot to overwrite (fifo)

    def __len__(self) -> int:
        return self._size

    @property
    def seen(self) -> int:
        """How many images have ever been pushed."""
        return self._seen

    def _allocate(self, batch: Tensor, labels: Tensor | None) -> None:
        self._data = torch.empty((self.capacity, *batch.shape[1:]), dtype=batch.dtype)
        if labels is not None:
            self._labels = torch.empty((self.capacity, *labels.shape[1:]), dtype=labels.dtype)

    def push(self, batch: Tensor, labels: Tensor | None = None) -> None:
        """Remember a batch of generated images (detached, copied to CPU), with optional labels."""
        batch = batch.detach().to("cpu")
        if labels is not None:
            labels = labels.detach().to("cpu")
            if labels.shape[0] != batch.shape[0]:
                raise ValueError("labels and batch must have the same length")
        if self._data is None:
            self._allocate(batch, labels)
        assert self._data is not None
        if batch.shape[1:] != self._data.shape[1:]:
            raise ValueError(f"image shape {tuple(batch.shape[1:])} != stored {tuple(self._data.shape[1:])}")
        if (labels is None) != (self._labels is None):
            raise ValueError("push labels either always or never")
        for i in range(batch.shape[0]):
            slot = self._slot_for_next()
            if slot is not None:
                self._data[slot] = batch[i]
                if self._labels is not None and labels is not None:
                    self._labels[slot] = labels[i]

    def _slot_for_next(self) -> int | None:
        """Slot the next pushed image goes to (None: discarded), advancing the counters."""
        if self.mode == "fifo":
            slot = self._pos
            self._pos = (self._pos + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
            self._seen += 1
            return slot
        seen = self._seen
        self._seen += 1
        if seen < self.capacity:
            self._size = seen + 1
            return seen
        j = int(torch.randint(0, seen + 1, (1,), generator=self.generator))
        return j if j < self.capacity else None

    def _indices(self, n: int) -> Tensor:
        if self._size == 0:
            raise RuntimeError("the replay buffer is empty")
        return torch.randint(0, self._size, (n,), generator=self.generator)

    def sample(self, n: int) -> Tensor:
        """``n`` stored images drawn uniformly with replacement (a copy, on CPU)."""
        idx = self._indices(n)
        assert self._data is not None
        return self._data[idx].clone()

    def sample_with_labels(self, n: int) -> tuple[Tensor, Tensor]:
        """Like :meth:`sample`, also returning the stored labels."""
        if self._labels is None:
            raise RuntimeError("this buffer stores no labels")
        idx = self._indices(n)
        assert self._data is not None
        return self._data[idx].clone(), self._labels[idx].clone()

    def _mix_positions(self, n: int, share: float) -> Tensor:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        k = round(share * n)
        return torch.randperm(n, generator=self.generator)[:k]

    def mix(self, fake_batch: Tensor, share: float) -> Tensor:
        """``fake_batch`` with ``round(share * N)`` random positions replaced by old fakes.

        Returns ``fake_batch`` unchanged while the buffer is empty (first iteration). The result is a
        new tensor on ``fake_batch``'s device and dtype; the input is not modified.
        """
        if self._size == 0 or share == 0.0:
            return fake_batch
        pos = self._mix_positions(fake_batch.shape[0], share)
        out = fake_batch.clone()
        if pos.numel():
            out[pos.to(out.device)] = self.sample(pos.numel()).to(out.device, out.dtype)
        return out

    def mix_with_labels(self, fake_batch: Tensor, labels: Tensor, share: float) -> tuple[Tensor, Tensor]:
        """:meth:`mix` for conditional GANs: replaced images bring their own class labels."""
        if self._size == 0 or share == 0.0:
            return fake_batch, labels
        pos = self._mix_positions(fake_batch.shape[0], share)
        out, out_labels = fake_batch.clone(), labels.clone()
        if pos.numel():
            old, old_labels = self.sample_with_labels(pos.numel())
            out[pos.to(out.device)] = old.to(out.device, out.dtype)
            out_labels[pos.to(labels.device)] = old_labels.to(labels.device, labels.dtype)
        return out, out_labels

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume: contents, counters and the generator's state."""
        return {
            "capacity": self.capacity,
            "mode": self.mode,
            "size": self._size,
            "seen": self._seen,
            "pos": self._pos,
            "data": None if self._data is None else self._data.clone(),
            "labels": None if self._labels is None else self._labels.clone(),
            "rng_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (also resets ``self.generator`` to the saved state)."""
        if state["capacity"] != self.capacity or state["mode"] != self.mode:
            raise ValueError(
                f"checkpoint buffer is {state['mode']}/{state['capacity']}, this one is {self.mode}/{self.capacity}"
            )
        self._size, self._seen, self._pos = int(state["size"]), int(state["seen"]), int(state["pos"])
        self._data = None if state["data"] is None else state["data"].clone()
        self._labels = None if state["labels"] is None else state["labels"].clone()
        self.generator.set_state(state["rng_state"])
