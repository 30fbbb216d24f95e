"""Where does a decode step's time go? (GPU machine)

    PYTHONPATH=. python tools/profile_decode.py smollm2-135m [--batch 1] [--context 256]

Prints: the engine's wall time per step; the captured step graph replayed back to back (GPU
time, no host work); host time = the difference; and each op of layer 0 captured 50 times in
its own graph (GPU time per op inside a graph, launch gaps included), times the layer count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def graph_time_us(backend, fn, reps: int = 50, launches: int = 20) -> float:
    """Median time of one fn() call, captured `reps` times in one graph."""
    import cupy as cp

    replay = backend.graph(lambda: [fn() for _ in range(reps)])
    times = []
    for _ in range(launches):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        replay()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e) * 1e3 / reps)
    return float(np.median(times))


def step_times(e, seqs, steps: int = 100, warmup: int = 10) -> tuple[float, float]:
    """(engine wall us per unpipelined decode step, us per replay of the captured step graph).
    Each step appends one token to every sequence; the graph is the one step() last used."""
    import cupy as cp

    b = e.backend
    for i in range(steps + warmup):
        if i == warmup:
            b.synchronize()
            t0 = time.perf_counter()
        for s in seqs:
            s.token_ids.append(5)
        e.sample(e.forward(seqs, [1] * len(seqs)), seqs)
    b.synchronize()
    wall = (time.perf_counter() - t0) / steps * 1e6
    bucket = next(x for x in e.graphs.buckets if x >= len(seqs))
    # the bucket's graph for this context (graphs.py: a short-context graph where it has one)
    cap = max(len(s.token_ids) for s in seqs)
    caps = [c for b_, c in e.graphs.captured if b_ == bucket]
    _, replay = e.graphs.captured[bucket, min(c for c in caps if c >= cap)]
    times = []
    for _ in range(20):  # the step is already a graph: replay it back to back
        s0, s1 = cp.cuda.Event(), cp.cuda.Event()
        s0.record()
        for _ in range(10):
            replay()
        s1.record()
        s1.synchronize()
        times.append(cp.cuda.get_elapsed_time(s0, s1) * 1e3 / 10)
    return wall, float(np.median(times))


def main() -> None:
    import cupy as cp

    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    a = ap.parse_args()
    e = Engine(preset_config(a.preset), device="cuda", max_model_len=a.context + 256,
               max_num_seqs=a.batch)
    b, cfg = e.backend, e.cfg
    seqs = [Sequence(list(range(1, a.context)), SamplingParams(temperature=0)) for _ in range(a.batch)]
    for s in seqs:
        e.prefill(s)
    wall, gpu = step_times(e, seqs)
    print(f"{a.preset} batch {a.batch} context {a.context}")
    print(f"  engine step (wall)        {wall:8.1f} us  ({1e6 / wall:.0f} tok/s per sequence)")
    print(f"  step graph replay (GPU)   {gpu:8.1f} us")
    print(f"  host overhead             {wall - gpu:8.1f} us")

    # per-op graph times for layer 0 (decode shapes)
    w, (kc, vc) = e.model.layers[0], e.kv.layers[0]
    ids, arrays = e.plan(seqs, [1] * len(seqs))
    meta = e.to_meta(arrays, 1, e.max_model_len)
    x = b.randn((len(seqs), cfg.hidden_size), 1.0)
    h = b.rmsnorm(x, w["input_norm"], 1e-5)
    qkv = b.linear(h, w["qkv"])
    q = b.rope_kv_write(qkv, meta, e.model.cos, e.model.sin, kc, vc, cfg.num_attention_heads,
                        cfg.num_key_value_heads, cfg.head_dim)
    attn = b.attention(q, kc, vc, meta, e.model.scale)
    gu = b.linear(h, w["gate_up"])
    act = b.silu_mul(gu)
    ops = {
        "rmsnorm+residual": lambda: b.rmsnorm(x, w["input_norm"], 1e-5, x),
        "qkv linear": lambda: b.linear(h, w["qkv"]),
        "rope+kv write": lambda: b.rope_kv_write(qkv, meta, e.model.cos, e.model.sin, kc, vc,
                                                 cfg.num_attention_heads, cfg.num_key_value_heads,
                                                 cfg.head_dim),
        "decode attention": lambda: b.attention(q, kc, vc, meta, e.model.scale),
        "o linear": lambda: b.linear(attn, w["o"]),
        "gate_up linear": lambda: b.linear(h, w["gate_up"]),
        "silu_mul": lambda: b.silu_mul(gu),
        "down linear": lambda: b.linear(act, w["down"]),
    }
    total = 0.0
    print(f"  per op, layer 0, in a graph (x{cfg.num_hidden_layers} layers):")
    for name, fn in ops.items():
        t = graph_time_us(b, fn)
        n = 2 if name == "rmsnorm+residual" else 1
        total += t * n * cfg.num_hidden_layers
        print(f"    {name:<20} {t:7.2f} us  x{n * cfg.num_hidden_layers:<3} = "
              f"{t * n * cfg.num_hidden_layers:8.1f} us")
    head = graph_time_us(b, lambda: b.linear(h, e.model.lm_head))
    am = graph_time_us(b, lambda: b.argmax(b.linear(h, e.model.lm_head)))
    print(f"    {'lm_head':<20} {head:7.2f} us;  with argmax {am:.2f} us")
    print(f"  sum of ops                {total + am:8.1f} us")
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
