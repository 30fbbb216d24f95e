"""What does a pipelined decode step cost on the GPU stream beyond its graph replay? (GPU machine)

    PYTHONPATH=. python3 tools/step_overhead.py [preset] [--context 256]

Batch 1. Times, with CUDA events over 50 back-to-back iterations (min over rounds of the
median of 7): the step graph alone; with the per-step host-to-device copy of the step inputs
(graphs.py's buf.set); with an event after it (how the host now learns a step is done: the
graph's argmax writes the tokens into pinned host memory); with a device-to-host copy of the
ids into pinned memory plus an event (how tokens came back before session 11); and the real
thing, engine.generate (prompt context / 2, context new tokens: the mean context is the
graph's, as in `rawengine bench`'s 128 + 256), as host wall time per token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import cupy as cp
    import cupyx
    from bench_prefill import timed

    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=256)
    a = ap.parse_args()
    cfg = preset_config(a.preset)
    e = Engine(cfg, device="cuda", max_model_len=a.context + a.context // 2 + 1, max_num_seqs=1)
    rng = np.random.default_rng(0)
    seq = Sequence(rng.integers(0, cfg.vocab_size, a.context - 1).tolist(),
                   SamplingParams(temperature=0))
    e.prefill(seq)
    seq.token_ids.append(5)
    e.forward([seq], [1])  # captures the graph
    e.backend.synchronize()
    (bucket, _), (buf, replay) = next(iter(e.graphs.captured.items()))
    seq.token_ids.append(5)
    ids, arrays = e.plan([seq], [1])
    host = e.graphs._pack(ids, arrays, bucket)[bucket:]
    ids_dev = buf[:bucket]
    stream = cp.cuda.get_current_stream()

    def d2h_copy():  # the pre-session-11 fetch: a copy into pinned memory, then an event
        h = cupyx.empty_pinned(ids_dev.shape, ids_dev.dtype)
        cp.cuda.runtime.memcpyAsync(h.ctypes.data, ids_dev.data.ptr, ids_dev.nbytes,
                                    cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        stream.record()

    variants = {
        "graph replay": lambda: replay(),
        "+ input copy (H2D)": lambda: (buf[bucket:].set(host), replay()),
        "+ event": lambda: (replay(), e.backend.when_done(lambda: None)),
        "+ ids copy (D2H) + event": lambda: (replay(), d2h_copy()),
        "+ input copy + ids copy": lambda: (buf[bucket:].set(host), replay(), d2h_copy()),
    }

    res = {k: min(timed(f, reps=50) for _ in range(2)) for k, f in variants.items()}
    e.kv.release(seq.block_table)
    half = a.context // 2
    p = SamplingParams(max_tokens=a.context, temperature=0.0, ignore_eos=True)
    gen = []
    for _ in range(2):
        for _ in e.generate([rng.integers(0, cfg.vocab_size, half).tolist()], [p]):
            pass
        gen.append(e.stats.decode_s / e.stats.decode_steps * 1e6)
    print(f"{a.preset}, batch 1, context {a.context}: us per step (GPU, events)")
    for k, v in res.items():
        print(f"  {k:28s} {v:7.1f}")
    print(f"  {'engine.generate (host wall)':28s} {min(gen):7.1f}")


if __name__ == "__main__":
    main()
