"""NumPy backend: every op in float32. It is the reference the CUDA kernels are tested
against and the fallback on machines without a GPU."""

from __future__ import annotations

import numpy as np

from ..checkpoint import to_float32
from .base import Backend, StepMeta


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), for tests and fixtures."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


class NumpyBackend(Backend):
    name = "numpy"
    default_block_size = 16

    def __init__(self):
        self.dtype = np.float32

    # --- memory -----------------------------------------------------------------
    def asarray(self, a, dtype=None, src_dtype: str | None = None):
        if src_dtype is not None:
            a = to_float32(a, src_dtype)
        return np.ascontiguousarray(a, dtype=dtype or self.dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def empty(self, shape, dtype=None):
        return np.empty(shape, dtype=dtype or self.dtype)

    def randn(self, shape, std, seed=0, offset=0.0):
        rng = np.random.default_rng(seed + hash(shape) % 1000)
        return rng.standard_normal(shape, np.float32) * std + np.float32(offset)

    def alloc_kv(self, num_blocks, num_kv_heads, block_size, head_dim):
        shape = (num_blocks, num_kv_heads, block_size, head_dim)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    # --- ops --------------------------------------------------------------------
    def embedding(self, ids, table):
        return table[ids]

    def rmsnorm(self, x, weight, eps, residual=None):
        r = x if residual is None else x + residual
        ms = np.mean(np.square(r), axis=-1, keepdims=True)
        y = (r * (1.0 / np.sqrt(ms + eps))) * weight
        return y if residual is None else (y, r)

    def linear(self, x, w, bias=None):
        y = x @ w.T
        return y if bias is None else y + bias

    def rope_kv_write(self, qkv, meta: StepMeta, cos, sin, k_cache, v_cache,
                      num_q_heads, num_kv_heads, head_dim):
        t = qkv.shape[0]
        qs, ks = num_q_heads * head_dim, num_kv_heads * head_dim
        q = qkv[:, :qs].reshape(t, num_q_heads, head_dim)
        k = qkv[:, qs:qs + ks].reshape(t, num_kv_heads, head_dim)
        v = qkv[:, qs + ks:].reshape(t, num_kv_heads, head_dim)
        c = cos[meta.positions][:, None, :]  # [T, 1, D/2]
        s = sin[meta.positions][:, None, :]
        q, k = _rotate(q, c, s), _rotate(k, c, s)
        block_size = k_cache.shape[2]
        slots = np.asarray(meta.slot_mapping)
        live = slots >= 0  # a negative slot marks a padding row: nothing is written
        blk, off = slots[live] // block_size, slots[live] % block_size
        # advanced indices around a slice: the indexed result is [T, Hkv, D]
        k_cache[blk, :, off, :] = k[live]
        v_cache[blk, :, off, :] = v[live]
        return q

    def attention(self, q, k_cache, v_cache, meta: StepMeta, scale):
        t, hq, d = q.shape
        hkv, block_size = k_cache.shape[1], k_cache.shape[2]
        group = hq // hkv
        out = np.empty((t, hq, d), np.float32)
        qstart = np.asarray(meta.query_start)
        for b, seq_len in enumerate(np.asarray(meta.seq_lens).tolist()):
            q0, q1 = int(qstart[b]), int(qstart[b + 1])
            if q1 == q0:
                continue
            nblk = -(-seq_len // block_size)
            blocks = meta.block_tables[b, :nblk]
            # [nblk, Hkv, BS, D] -> [Hkv, L, D]
            k = k_cache[blocks].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :seq_len]
            v = v_cache[blocks].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :seq_len]
            qb = q[q0:q1].reshape(q1 - q0, hkv, group, d).transpose(1, 2, 0, 3)  # [Hkv,G,n,D]
            s = np.matmul(qb, k[:, None].transpose(0, 1, 3, 2)) * scale  # [Hkv,G,n,L]
            qpos = seq_len - (q1 - q0) + np.arange(q1 - q0)
            masked = np.arange(seq_len)[None, :] > qpos[:, None]  # [n, L]
            s = np.where(masked, -np.inf, s)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            p = s / s.sum(axis=-1, keepdims=True)
            o = np.matmul(p, v[:, None])  # [Hkv,G,n,D]
            out[q0:q1] = o.transpose(2, 0, 1, 3).reshape(q1 - q0, hq, d)
        return out.reshape(t, hq * d)

    def silu_mul(self, gate_up):
        i = gate_up.shape[-1] // 2
        g, u = gate_up[:, :i], gate_up[:, i:]
        return g / (1.0 + np.exp(-g)) * u

    def add(self, x, y):
        return x + y

    def gather_rows(self, x, idx):
        return x[idx]


def _rotate(x, c, s):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
