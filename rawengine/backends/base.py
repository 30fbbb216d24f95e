"""The op interface every backend implements; models are written once against it.

Arrays are backend-native (numpy.ndarray or cupy.ndarray). Shapes use:
  T  tokens in this step (all sequences concatenated)     B  sequences in this step
  H  hidden size   Hq / Hkv  query / key-value heads   D  head_dim   I  intermediate size
  V  vocab size    NB  KV blocks in the pool            BS  tokens per KV block

The paged KV cache of one layer is a pair (k_cache, v_cache), each
  [NB, Hkv, BS, D]
so one block of one KV head is BS*D contiguous elements. A token at position p of a
sequence lives in block block_table[p // BS] at offset p % BS; its "slot" is
block_id * BS + p % BS. A decode step (one query token per sequence, which attends to every
key) may pass its tables in any order whose last block is the newest one: the engine passes
the address order of kv_cache.visit_order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

Array = Any


@dataclasses.dataclass
class StepMeta:
    """Per-step metadata, built once by the runner and handed to every layer.

    Sequences in a step are ordered; sequence b owns query tokens
    query_start[b] : query_start[b+1]. Its KV length after this step's keys are
    written is seq_lens[b]; query token i of b sits at position
    seq_lens[b] - qlen_b + i and attends (causally) to KV positions 0..that position.
    """

    positions: Array  # [T] int32
    slot_mapping: Array  # [T] int32: where each token's K/V is written
    query_start: Array  # [B+1] int32
    seq_lens: Array  # [B] int32
    block_tables: Array  # [B, max_blocks] int32 (unused entries 0)
    logits_indices: Array  # [B] int32: row of each sequence's last token (for the LM head)
    max_query_len: int  # host ints: let kernels be sized without a device read
    max_seq_len: int
    is_decode: bool  # every sequence has exactly one query token


class Backend:
    """Op interface. Docstrings give the formula; all math accumulates in float32."""

    name = "base"
    dtype: Any  # activation / weight dtype used by this backend
    default_block_size = 16  # KV tokens per page
    supports_graphs = False  # True: graph(fn) captures fn into a replayable CUDA graph

    # --- memory -----------------------------------------------------------------
    def asarray(self, a, dtype=None) -> Array:
        """Host numpy array -> backend array (weights: dtype=None keeps self.dtype)."""
        raise NotImplementedError

    def to_numpy(self, a: Array):
        raise NotImplementedError

    def empty(self, shape, dtype=None) -> Array:
        raise NotImplementedError

    def randn(self, shape, std: float, seed: int = 0, offset: float = 0.0) -> Array:
        """offset + std * N(0, 1) of self.dtype, drawn on the device (random-weight presets)."""
        raise NotImplementedError

    def alloc_kv(self, num_blocks: int, num_kv_heads: int, block_size: int, head_dim: int):
        """One layer's (k_cache, v_cache), each [NB, Hkv, BS, D] of self.dtype."""
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def graph(self, fn):
        """Capture fn() (our kernels only) and return a callable that replays it and
        returns fn's output arrays, which stay at fixed addresses."""
        raise NotImplementedError

    def in_forward(self):
        """Context around a whole model forward (engine steps, captured decode steps): a
        backend may launch its kernels differently inside a chain it knows is a model's."""
        return contextlib.nullcontext()

    # --- ops --------------------------------------------------------------------
    def embedding(self, ids: Array, table: Array) -> Array:
        """out[t] = table[ids[t]];  ids [T] int32, table [V, H] -> [T, H]."""
        raise NotImplementedError

    def rmsnorm(self, x: Array, weight: Array, eps: float, residual: Array | None = None):
        """Without residual: y = x / sqrt(mean(x^2) + eps) * weight, returns y.
        With residual: r = x + residual; y = rmsnorm(r); returns (y, r).
        x, residual [T, H]; weight [H]."""
        raise NotImplementedError

    def linear(self, x: Array, w: Array, bias: Array | None = None) -> Array:
        """y = x @ w.T (+ bias);  x [T, K], w [N, K] (HF layout), bias [N] -> [T, N]."""
        raise NotImplementedError

    def rope_kv_write(self, qkv: Array, meta: StepMeta, cos: Array, sin: Array,
                      k_cache: Array, v_cache: Array, num_q_heads: int, num_kv_heads: int,
                      head_dim: int) -> Array:
        """Rotary embedding (HF "rotate_half" layout: pairs (i, i + D/2)) on q and k, then
        K and V written to the paged cache at meta.slot_mapping.
        qkv [T, (Hq + 2*Hkv) * D] = [q | k | v]; cos, sin [max_pos, D/2] float32.
        A negative slot marks a padding row whose K/V is not written.
        For each head vector x and position p, with c = cos[p, i], s = sin[p, i], i < D/2:
            x'[i] = x[i]*c - x[i+D/2]*s ;  x'[i+D/2] = x[i+D/2]*c + x[i]*s
        Returns the rotated q as [T, Hq, D] (may alias qkv)."""
        raise NotImplementedError

    def attention(self, q: Array, k_cache: Array, v_cache: Array, meta: StepMeta,
                  scale: float) -> Array:
        """Causal GQA attention over the paged cache (see StepMeta for positions).
        q [T, Hq, D]; query head h reads KV head h // (Hq / Hkv).
        o = softmax(scale * q k^T) v  -> [T, Hq * D]."""
        raise NotImplementedError

    def silu_mul(self, gate_up: Array) -> Array:
        """gate_up [T, 2I] = [gate | up] -> silu(gate) * up  [T, I]."""
        raise NotImplementedError

    def norm_linear(self, x: Array, residual: Array | None, norm_w: Array, eps: float, w: Array,
                    bias: Array | None = None):
        """r = x + residual (r = x when residual is None); y = rmsnorm(r) @ w.T (+ bias).
        x, residual [T, K]; norm_w [K]; w [N, K]; returns (y [T, N], r [T, K]).
        Default: the unfused ops; a backend may run it as one kernel."""
        if residual is None:
            return self.linear(self.rmsnorm(x, norm_w, eps), w, bias), x
        h, r = self.rmsnorm(x, norm_w, eps, residual)
        return self.linear(h, w, bias), r

    def norm_linear_rope(self, x: Array, residual: Array | None, norm_w: Array, eps: float,
                         w_qkv: Array, bias: Array | None, meta: StepMeta, cos: Array,
                         sin: Array, k_cache: Array, v_cache: Array, Hq: int, Hkv: int, D: int):
        """The attention input of a layer: qkv, r = norm_linear(x, residual, norm_w, eps, w_qkv,
        bias), then q = rope_kv_write(qkv, meta, cos, sin, k_cache, v_cache, Hq, Hkv, D).
        Returns (q [T, Hq, D], r [T, K]). Default: those two ops; a backend may run it as one
        kernel at decode sizes."""
        qkv, r = self.norm_linear(x, residual, norm_w, eps, w_qkv, bias)
        return self.rope_kv_write(qkv, meta, cos, sin, k_cache, v_cache, Hq, Hkv, D), r

    def norm_linear_silu(self, x: Array, residual: Array | None, norm_w: Array, eps: float,
                         w: Array):
        """The MLP input of a layer: [g | u], r = norm_linear(x, residual, norm_w, eps, w), then
        act = silu_mul([g | u]). Returns (act [T, I], r [T, K]) for w [2I, K]. Default: those
        two ops; a backend may run it as one kernel at decode sizes."""
        gate_up, r = self.norm_linear(x, residual, norm_w, eps, w)
        return self.silu_mul(gate_up), r

    def norm_mlp(self, x: Array, residual: Array | None, norm_w: Array, eps: float,
                 w_gate_up: Array, w_down: Array):
        """The MLP of a layer: act, r = norm_linear_silu(x, residual, norm_w, eps, w_gate_up),
        y = linear(act, w_down). Returns (y [T, K], r [T, K]) for w_down [K, I]. Default: those
        ops; a backend may run it as one kernel at decode sizes, y then being an array its own
        ops read (the CUDA backend's fixed sums)."""
        act, r = self.norm_linear_silu(x, residual, norm_w, eps, w_gate_up)
        return self.linear(act, w_down), r

    def short_context(self, cfg) -> int | None:
        """A capacity (tokens) under which this backend's decode step for this model runs
        different kernels, so that graphs.py captures a second graph per batch bucket for
        contexts up to it; None: one graph serves every length."""
        return None

    def attention_o(self, q: Array, k_cache: Array, v_cache: Array, meta: StepMeta,
                    scale: float, w_o: Array):
        """o_proj(attention(q)): linear(attention(q, k_cache, v_cache, meta, scale), w_o) ->
        [T, H]. Default: those ops; a backend may run it as one kernel at decode sizes, the
        result then being an array its own ops read (the CUDA backend's fixed sums)."""
        return self.linear(self.attention(q, k_cache, v_cache, meta, scale), w_o)

    def silu_mul_linear(self, gate_up: Array, w: Array, bias: Array | None = None) -> Array:
        """(silu(gate) * up) @ w.T (+ bias);  gate_up [T, 2I] = [gate | up], w [N, I] -> [T, N].
        Default: the unfused ops; a backend may run it as one kernel."""
        return self.linear(self.silu_mul(gate_up), w, bias)

    def decode_step(self, model, ids: Array, meta: StepMeta, kv_caches: list):
        """A whole decode step of `model` as one fused launch -> logits [B, V], or None where
        the backend has none for this model and batch (the model then runs its op list)."""
        return None

    def add(self, x: Array, y: Array) -> Array:
        """x + y (residual)."""
        raise NotImplementedError

    def gather_rows(self, x: Array, idx: Array) -> Array:
        """x[idx]: picks the rows that feed the LM head."""
        raise NotImplementedError
