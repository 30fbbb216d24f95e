"""Rotary-embedding tables. Scaling rules live here once; kernels only read cos/sin."""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig
from .errors import RawEngineError


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """inv_freq[i] = theta^(-2i/D), i < D/2, adjusted by cfg.rope_scaling (float64)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        return _llama3(inv, rs)
    raise RawEngineError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")


def _llama3(inv: np.ndarray, rs: dict) -> np.ndarray:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, and the band
    # in between interpolated smoothly.
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_len = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old_len / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelen > old_len / lo, inv / factor, inv)
    is_mid = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return np.where(is_mid, mid, out)


def cos_sin_tables(cfg: ModelConfig, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of pos * inv_freq: each [max_positions, D/2] float32."""
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_frequencies(cfg))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
