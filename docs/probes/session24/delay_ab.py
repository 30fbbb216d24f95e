"""Session 24 probe: does delaying the blocks' start (or the loads after the PDL wait) speed up
the default bulk kernel? Same call, order-alternating rounds, medians, in-order + visit tables."""
import json, os, statistics, sys
sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np
from rawengine.backends.cuda import attention as attn

OUT = os.environ.get("OUT", ".")
cases = [(8, 32, 8, 16384), (1, 32, 8, 131072), (8, 32, 8, 65536), (8, 32, 8, 131072)]
C = 1755  # cycles per us at the H100's base-ish SM clock (approximate)
builds = {"default": {}, "start2": dict(PROBE_DELAY=2 * C, PROBE_DELAY_AT=0, PROBE_STAGGER=0),
          "start4": dict(PROBE_DELAY=4 * C, PROBE_DELAY_AT=0, PROBE_STAGGER=0),
          "start8": dict(PROBE_DELAY=8 * C, PROBE_DELAY_AT=0, PROBE_STAGGER=0),
          "stagger2": dict(PROBE_DELAY=2 * C, PROBE_DELAY_AT=0, PROBE_STAGGER=1),
          "wait4": dict(PROBE_DELAY=4 * C, PROBE_DELAY_AT=1, PROBE_STAGGER=0)}
res = {}
for (b, hq, hkv, L) in cases:
    for tables in ("contiguous", "visit"):
        p = ba.Paged(b, hq, hkv, L)
        if tables == "contiguous":
            pages = -(-L // 16)
            p.tables = cp.asarray(np.arange(b * pages, dtype=np.int32).reshape(b, pages))
        n = ba.calls_for(ba.kv_bytes(b, hkv, L))
        names = list(builds)
        ref = None
        t = {k: [] for k in names}
        for rnd in range(4):
            for k in (names if rnd % 2 == 0 else names[::-1]):
                with attn.probe_defines(builds[k]):
                    fn = p.fn("sync")
                    if rnd == 0:
                        fn(); o = p.out.astype(cp.float32)
                        ref = o if ref is None else ref
                        assert float(cp.abs(o - ref).max()) == 0.0, k
                    t[k].append(ba.time_cupy(fn, n))
        p.free()
        med = {k: statistics.median(v) for k, v in t.items()}
        key = f"B{b} {hq}/{hkv} L{L} {tables}"
        res[key] = dict(med=med, all=t)
        print(f"{key:30s} " + " ".join(f"{k} {med[k]:.1f}" for k in names), flush=True)
json.dump(res, open(os.path.join(OUT, "delay_ab.json"), "w"), indent=1)
