#!/usr/bin/env python3
"""Calibrate the unified max phi of the asynchronized decode softmax (FlashDecoding++).

    PYTHONPATH=. python3 tools/calibrate_softmax.py MODEL_DIR [--text FILE] [--tokens N]
        [--device cpu|cuda] [--out PATH]

Runs the model on sample text (prefill through rawengine's Engine; the NumPy backend is enough),
records every attention logit x = scale * q.k that a query sees (causal), per layer, and writes

    MODEL_DIR/rawengine_softmax.json   (or --out)
    {"phi": float, "window": [lo, hi], "per_layer": [{"phi": ..., "row_max": {...}, ...}],
     "fallback": {"rows": rate, "chunks_<C>": rate, ...}, "tokens": N, "version": 1}

The decode kernel (rawengine/backends/cuda/attention.py, variant='async') takes phi and the
window in natural-log units. It computes exp(x - phi) without a running max and falls back
(exactly, inside the kernel) for a split whose own max leaves [phi + lo, phi + hi]. In fp32 the
window can be wide (DEFAULT_WINDOW, +-60), so phi only has to sit near the middle of what real
text produces: we centre phi between a low quantile of the chunk maxima and the largest
logit seen, per layer and for the whole model, and report how often the fallback would fire
for rows (whole contexts) and for chunks of C keys (what one split of the kernel sees).

Arrays-only use (no model API needed): `logit_stats(q, k, scale)` and `choose_phi(stats)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

WINDOW = (-60.0, 60.0)  # same as rawengine.backends.cuda.attention.DEFAULT_WINDOW
CHUNKS = (32, 256, 2048)
DEFAULT_TEXT = (
    "The history of computing is a story of abstractions stacked on abstractions. Early "
    "machines were programmed by rewiring panels; later, stored programs let the same "
    "hardware solve different problems by reading instructions from memory. Compilers turned "
    "mathematical notation into machine code, operating systems shared one processor among "
    "many users, and networks joined distant machines into systems larger than any one of "
    "them. Each layer hid the details beneath it, and each new layer was slower at first, "
    "until engineers learned where its costs came from and removed them. "
    "In a small village by the sea, the fishermen rose before dawn. They checked their nets, "
    "argued about the weather, and pushed their boats into the cold water while the gulls "
    "circled overhead. By noon the market was full of silver fish, and children ran between "
    "the stalls shouting prices they had heard from their parents. "
    "def merge(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n"
)


# --- arrays-only core ----------------------------------------------------------------------
def logit_rows(q: np.ndarray, k: np.ndarray, scale: float, q_pos: np.ndarray) -> np.ndarray:
    """x[t, h, j] = scale * q[t, h] . k[j, h // G], -inf where j > q_pos[t].
    q [T, Hq, D], k [L, Hkv, D] (one sequence), q_pos [T] absolute positions."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(t, hkv, hq // hkv, d).astype(np.float32)
    x = np.einsum("tkgd,jkd->tkgj", qg, k.astype(np.float32)).reshape(t, hq, -1) * scale
    mask = np.arange(k.shape[0])[None, :] > q_pos[:, None]
    return np.where(mask[:, None, :], -np.inf, x)


class LayerStats:
    """Running statistics of one layer's logits."""

    def __init__(self):
        self.row_max: list[np.ndarray] = []
        self.score_max = -np.inf
        self.chunk_max = {c: [] for c in CHUNKS}

    def add(self, x: np.ndarray):
        """x [T, Hq, L] logits with -inf for masked keys."""
        self.row_max.append(x.max(axis=-1).ravel())
        self.score_max = max(self.score_max, float(x.max()))
        n = x.shape[-1]
        for c in CHUNKS:
            pad = (-n) % c
            xp = np.pad(x, ((0, 0), (0, 0), (0, pad)), constant_values=-np.inf)
            cm = xp.reshape(*x.shape[:2], -1, c).max(axis=-1).ravel()
            self.chunk_max[c].append(cm[np.isfinite(cm)])  # fully masked chunks: empty splits

    def summary(self) -> dict:
        rm = np.concatenate(self.row_max)
        cm = {c: np.concatenate(v) for c, v in self.chunk_max.items()}
        return dict(rows=int(rm.size), score_max=self.score_max,
                    row_max={p: float(np.percentile(rm, p)) for p in (0, 1, 50, 99, 100)},
                    chunk_max_min={c: float(v.min()) for c, v in cm.items()},
                    chunk_max_p001={c: float(np.percentile(v, 0.1)) for c, v in cm.items()},
                    _rm=rm, _cm=cm)


def logit_stats(q: np.ndarray, k: np.ndarray, scale: float, q_pos=None) -> dict:
    """Statistics of one layer from arrays: q [T, Hq, D], k [L, Hkv, D]."""
    st = LayerStats()
    q_pos = np.arange(k.shape[0] - q.shape[0], k.shape[0]) if q_pos is None else q_pos
    st.add(logit_rows(q, k, scale, np.asarray(q_pos)))
    return st.summary()


def choose_phi(summaries: list[dict], window=WINDOW) -> dict:
    """phi per layer and for the model: centre of [0.1% quantile of chunk maxima, max logit];
    fallback rates of that phi for rows and for chunks of each size."""
    lo, hi = window

    def centre(s):
        low = min(s["chunk_max_p001"].values())
        return 0.5 * (low + s["score_max"])

    def rates(s, phi):
        r = {"rows": float(np.mean((s["_rm"] < phi + lo) | (s["_rm"] > phi + hi)))}
        for c, v in s["_cm"].items():
            r[f"chunks_{c}"] = float(np.mean((v < phi + lo) | (v > phi + hi)))
        return r

    lows = [min(s["chunk_max_p001"].values()) for s in summaries]
    phi = 0.5 * (min(lows) + max(s["score_max"] for s in summaries))
    per_layer = []
    for s in summaries:
        pl = centre(s)
        per_layer.append(dict(phi=pl, fallback_at_layer_phi=rates(s, pl),
                              fallback_at_model_phi=rates(s, phi),
                              **{k: v for k, v in s.items() if not k.startswith("_")}))
    worst = {k: max(p["fallback_at_model_phi"][k] for p in per_layer)
             for k in per_layer[0]["fallback_at_model_phi"]}
    return dict(version=1, phi=phi, window=list(window), fallback=worst, per_layer=per_layer)


# --- model run -----------------------------------------------------------------------------
def _host_f32(backend, a) -> np.ndarray:
    h = np.asarray(backend.to_numpy(a))
    if h.dtype == np.uint16:  # bf16 bit patterns: widening is exact
        return (h.astype(np.uint32) << 16).view(np.float32)
    return h.astype(np.float32)


def record_model(model_dir: str, token_ids: list[int], device: str) -> list[dict]:
    """Prefill token_ids through the engine, recording every attention call's logits."""
    from rawengine.engine import Engine, Sequence
    from rawengine.sampling import SamplingParams

    eng = Engine(model_dir, device=device, max_model_len=len(token_ids) + 8, use_graphs=False)
    nl = eng.cfg.num_hidden_layers
    stats = [LayerStats() for _ in range(nl)]
    backend, orig = eng.backend, eng.backend.attention
    calls = [0]

    def attention(q, k_cache, v_cache, meta, scale):
        layer = calls[0] % nl
        calls[0] += 1
        qh = _host_f32(backend, q)
        tables = np.asarray(backend.to_numpy(meta.block_tables))
        qstart = np.asarray(backend.to_numpy(meta.query_start))
        lens = np.asarray(backend.to_numpy(meta.seq_lens))
        bs = k_cache.shape[2]
        for b, n in enumerate(lens.tolist()):
            q0, q1 = int(qstart[b]), int(qstart[b + 1])
            blocks = tables[b, :-(-n // bs)]
            kb = _host_f32(backend, k_cache[backend.asarray(blocks, dtype="int32")])
            k = kb.transpose(0, 2, 1, 3).reshape(-1, kb.shape[1], kb.shape[3])[:n]
            pos = np.arange(n - (q1 - q0), n)
            stats[layer].add(logit_rows(qh[q0:q1], k, scale, pos))
        return orig(q, k_cache, v_cache, meta, scale)

    backend.attention = attention
    seq = Sequence(list(token_ids), SamplingParams(max_tokens=1))
    eng.prefill(seq)
    eng.kv.release(seq.block_table)
    return [s.summary() for s in stats]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--text", help="sample text file (default: a built-in mixed paragraph)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of sample text to run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="JSON path (default MODEL_DIR/rawengine_softmax.json)")
    args = ap.parse_args(argv)

    from rawengine.config import ModelConfig
    from rawengine.tokenizer import Tokenizer

    cfg = ModelConfig.from_dir(args.model_dir)
    text = Path(args.text).read_text() if args.text else DEFAULT_TEXT
    tok = Tokenizer.from_dir(args.model_dir, config=cfg)
    ids = tok.encode(text)
    while len(ids) < args.tokens:  # repeat short samples (long-range logits of real reuse)
        ids = ids + tok.encode(text, add_special_tokens=False)
    ids = [i % cfg.vocab_size for i in ids[:args.tokens]]
    summaries = record_model(args.model_dir, ids, args.device)
    result = choose_phi(summaries)
    result["tokens"] = len(ids)
    out = Path(args.out) if args.out else Path(args.model_dir) / "rawengine_softmax.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"phi {result['phi']:.3f}, window {result['window']}, {len(ids)} tokens -> {out}")
    for i, p in enumerate(result["per_layer"]):
        print(f"layer {i:3d}: row max p0/p50/p100 {p['row_max'][0]:8.2f} {p['row_max'][50]:8.2f}"
              f" {p['row_max'][100]:8.2f}  max logit {p['score_max']:8.2f}  layer phi "
              f"{p['phi']:7.2f}")
    print("fallback rate at the model phi (worst layer): " +
          ", ".join(f"{k} {v:.2e}" for k, v in result["fallback"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
