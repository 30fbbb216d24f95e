"""Activations held as int64 fixed-point sums (kernels_cu/fixed_sum.cuh) and who clears them.

The fused decode MLP (mlp.py) and the fused attention + o_proj (attention_o.py) have every
block add a partial of every output element, so their outputs are buffers of fixed-point sums
that must be zero before the kernel runs. Clearing it
costs nothing when the right kernel does it:
  - a reader that reads each element in one thread (rmsnorm FIXED_IN, to_dense) clears as it
    reads;
  - a reader whose blocks all read the whole row (the qkv GEMV's PRO_FIXED prologue, the fused
    MLP's x) cannot; the next launch that takes a buffer (fused MLP, attention_o) or the final
    rmsnorm (pending()) clears it after its RE_PDL_WAIT, when the reader has finished.
A buffer holds REPLICAS copies ([REPLICAS, M, H]: block b of a producer adds into copy
b % REPLICAS, so fewer atomics meet on one L2 line); readers sum them. REPLICAS is 1 (below).
The pool tracks each buffer's state on the host in launch order, which is the order the GPU
runs them in (one stream, or one captured graph whose replay repeats the capture). A decode
step ends with every buffer zero (its last MLP output is read by the final rmsnorm, which also
clears the one buffer still waiting), so the state at the start of a captured step is the state
at its end, and replays stay consistent.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

ZERO, FULL, READ = "zero", "full", "read"
# kernels_cu/fixed_sum.cuh FIXED_REPLICAS (every launcher passes it as a define). Measured in
# the SmolLM2 step (docs/launch_notes.md, "Session 9"): 1 -> 398.6 us, 2 -> 400.8, 4 -> 416.4,
# 8 -> 444.1; the atomics contend less with more copies, but every reader block then loads R
# copies after its RE_PDL_WAIT, and that costs more than the contention saves.
REPLICAS = 1


class _Buffer:
    __slots__ = ("sums", "state", "gen")

    def __init__(self, shape):
        self.sums = cp.zeros((REPLICAS,) + tuple(shape), np.int64)
        self.state, self.gen = ZERO, 0


class FixedSum:
    """An [M, H] activation of dtype `dtype` held as fixed-point sums (read-only handle)."""

    __slots__ = ("_buf", "_gen", "dtype")

    def __init__(self, buf: _Buffer, dtype):
        self._buf, self._gen, self.dtype = buf, buf.gen, np.dtype(dtype)

    @property
    def sums(self):
        """The int64 array [REPLICAS, M, H]; raises once the buffer has been cleared for reuse."""
        if self._buf.gen != self._gen:
            raise RuntimeError("FixedSum read after its buffer was cleared for reuse")
        return self._buf.sums

    @property
    def shape(self):
        return self._buf.sums.shape[1:]

    @property
    def ndim(self):
        return 2


class FixedSumPool:
    """Zeroed int64 buffers per (device, shape), handed out and cleared in launch order."""

    def __init__(self):
        self._bufs: dict[tuple, list[_Buffer]] = {}

    def take(self, shape: tuple, dtype):
        """(out, clear): out, a zero buffer for a kernel to add into, as a FixedSum; clear, an
        int64 array the same launch must zero (a buffer whose last reader runs before it), or
        None."""
        bufs = self._bufs.setdefault((cp.cuda.Device().id, tuple(shape)), [])
        clear = next((b for b in bufs if b.state == READ), None)
        out = next((b for b in bufs if b.state == ZERO), None)
        if out is None:
            out = _Buffer(shape)
            bufs.append(out)
        out.state = FULL
        if clear is not None:
            clear.state, clear.gen = ZERO, clear.gen + 1
        return FixedSum(out, dtype), None if clear is None else clear.sums

    def pending(self):
        """An int64 array a launch that takes no buffer must zero (one whose last reader runs
        before it: the final rmsnorm clears the last attention_o output this way, so a step
        still ends with every buffer zero), or None."""
        dev = cp.cuda.Device().id
        for (d, _), bufs in self._bufs.items():
            for b in bufs:
                if d == dev and b.state == READ:
                    b.state, b.gen = ZERO, b.gen + 1
                    return b.sums
        return None

    @staticmethod
    def read(fs: FixedSum) -> None:
        """fs was read by a kernel that does not clear it: the next take() launch will."""
        fs._buf.state = READ

    @staticmethod
    def cleared(fs: FixedSum) -> None:
        """fs was cleared by its reader."""
        fs._buf.state, fs._buf.gen = ZERO, fs._buf.gen + 1
