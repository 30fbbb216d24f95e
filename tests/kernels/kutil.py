"""Helpers for the CUDA kernel tests (see conftest.py for the pass rule)."""

from __future__ import annotations

import numpy as np
import pytest

from rawengine.backends.numpy_backend import f32_to_bf16_bits
from rawengine.checkpoint import to_float32


def has_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver
        return False


requires_gpu = pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA device")

DTYPES = ["float16", "bfloat16"]


def write_random_checkpoint(d, cfg: dict, seed: int = 0):
    """config.json + model.safetensors of random fp16 weights for a llama-family config, so
    the NumPy and CUDA engines load the same bytes. Returns d."""
    import json

    from safetensors.numpy import save_file

    from rawengine.config import ModelConfig
    from rawengine.models.llama import hf_shapes

    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in hf_shapes(ModelConfig.from_dict(cfg)).items():
        std = 1.0 if "embed" in name else shape[-1] ** -0.5
        w = rng.standard_normal(shape).astype(np.float32) * std
        tensors[name] = (w + 1.0 if len(shape) == 1 else w).astype(np.float16)
    save_file(tensors, str(d / "model.safetensors"))
    return d


def rnd(x, dtype: str) -> np.ndarray:
    """Round float32 values to dtype and back to float32."""
    x = np.asarray(x, np.float32)
    if dtype == "bfloat16":
        return to_float32(f32_to_bf16_bits(x), "BF16")
    return x.astype(np.float16).astype(np.float32)


def check(out, ref, ref_lowp, floor: float = 1e-6, name: str = "") -> None:
    out, ref, ref_lowp = (np.asarray(a, np.float32) for a in (out, ref, ref_lowp))
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert np.isfinite(out).all(), f"{name}: non-finite output"
    err = float(np.abs(out - ref).max()) if out.size else 0.0
    tol = 2 * float(np.abs(ref_lowp - ref).max()) + floor if out.size else 0.0
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e}"


def poison(be, shape):
    """A device array of the backend's dtype filled with NaN."""
    a = be.empty(shape)
    a.fill(np.nan) if a.dtype == np.float16 else a.fill(0x7FC0)  # bf16 NaN bits
    return a


def poison_np(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def make_meta(seq_lens, query_lens, block_size: int, rng, spare_blocks: int = 3):
    """A ragged step over a shuffled block pool. Returns (StepMeta of numpy arrays, num_blocks).
    Sequence b has KV length seq_lens[b] (after this step) and query_lens[b] new tokens."""
    from rawengine.backends.base import StepMeta

    nblk = [-(-L // block_size) for L in seq_lens]
    num_blocks = sum(nblk) + spare_blocks
    pool = rng.permutation(num_blocks)
    max_blocks = max(nblk)
    tables = np.zeros((len(seq_lens), max_blocks), np.int32)
    positions, slots, k = [], [], 0
    for b, (L, n) in enumerate(zip(seq_lens, query_lens)):
        tables[b, :nblk[b]] = pool[k:k + nblk[b]]
        k += nblk[b]
        for p in range(L - n, L):
            positions.append(p)
            slots.append(tables[b, p // block_size] * block_size + p % block_size)
    qstart = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    meta = StepMeta(positions=np.array(positions, np.int32), slot_mapping=np.array(slots, np.int32),
                    query_start=qstart, seq_lens=np.array(seq_lens, np.int32),
                    block_tables=tables, logits_indices=(qstart[1:] - 1).astype(np.int32),
                    max_query_len=int(max(query_lens)), max_seq_len=int(max(seq_lens)),
                    is_decode=all(n == 1 for n in query_lens))
    return meta, num_blocks


def meta_to_device(meta):
    import dataclasses

    import cupy

    arrays = {f.name: cupy.asarray(getattr(meta, f.name)) for f in dataclasses.fields(meta)
              if isinstance(getattr(meta, f.name), np.ndarray)}
    return dataclasses.replace(meta, **arrays)


def rope_tables(head_dim: int, max_pos: int, theta: float = 10000.0):
    """float32 cos, sin [max_pos, head_dim/2] (plain RoPE)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.outer(np.arange(max_pos, dtype=np.float64), inv)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def attention_lowp(q, k_cache, v_cache, meta, scale, dtype: str) -> np.ndarray:
    """Reference attention with the rounding a low-precision kernel may do: unnormalised
    probabilities rounded to dtype before P.V, output rounded."""
    t, hq, d = q.shape
    hkv, bs = k_cache.shape[1], k_cache.shape[2]
    g = hq // hkv
    out = np.empty((t, hq, d), np.float32)
    for b, L in enumerate(meta.seq_lens.tolist()):
        q0, q1 = int(meta.query_start[b]), int(meta.query_start[b + 1])
        blocks = meta.block_tables[b, :-(-L // bs)]
        k = k_cache[blocks].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :L]
        v = v_cache[blocks].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, :L]
        qb = q[q0:q1].reshape(q1 - q0, hkv, g, d).transpose(1, 2, 0, 3)
        s = np.matmul(qb, k[:, None].transpose(0, 1, 3, 2)) * scale
        qpos = L - (q1 - q0) + np.arange(q1 - q0)
        s = np.where(np.arange(L)[None, :] > qpos[:, None], -np.inf, s)
        p = rnd(np.exp(s - s.max(-1, keepdims=True)), dtype)
        o = np.matmul(p, v[:, None]) / p.sum(-1, keepdims=True)
        out[q0:q1] = o.transpose(2, 0, 1, 3).reshape(q1 - q0, hq, d)
    return rnd(out.reshape(t, hq * d), dtype)
