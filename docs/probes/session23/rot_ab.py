"""Do a sequence's head blocks reading the same page at the same time cost? ROTATE probe."""
import json
import os
import statistics
import sys

sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn

OUT = os.environ.get("OUT", ".")
cases = [(8, 32, 8, 65536), (8, 32, 8, 131072), (8, 32, 8, 16384), (1, 32, 8, 131072)]
res = {}
for (b, hq, hkv, L) in cases:
    tt = [ba.torch_case(b, hq, hkv, L)]
    p = ba.Paged(b, hq, hkv, L)
    nbytes = ba.kv_bytes(b, hkv, L); n = ba.calls_for(nbytes)
    base = attn.default_config(4, 128, nbytes, False, units=b * 8)
    pages = -(-L // 16)
    tabs = {"shuf": p.tables.get(), "inorder": np.arange(b * pages, dtype=np.int32).reshape(b, pages)}
    variants = {"default": (base, {}), "rotate": (base, {"ROTATE": 1}),
                "sort": (dict(base, sort_pages=4096), {})}
    row = {}
    for tn, tab in tabs.items():
        p.tables = cp.asarray(tab)
        outs = {}
        for k, (cfg, d) in variants.items():
            attn.PROBE_DEFINES.clear(); attn.PROBE_DEFINES.update(d)
            p.out[...] = cp.nan; p.fn("sync", config=cfg)(); outs[k] = p.out.astype(cp.float32).copy()
        err = {k: float(cp.abs(outs[k] - outs["default"]).max()) for k in outs}
        t = {k: [] for k in variants}
        for rnd in range(4):
            for k in (list(variants) if rnd % 2 == 0 else list(variants)[::-1]):
                cfg, d = variants[k]
                attn.PROBE_DEFINES.clear(); attn.PROBE_DEFINES.update(d)
                t[k].append(ba.time_cupy(p.fn("sync", config=cfg), n))
        attn.PROBE_DEFINES.clear()
        med = {k: statistics.median(v) for k, v in t.items()}
        row[tn] = dict(med=med, all=t, err=err)
    p.free()
    tt.append(ba.torch_case(b, hq, hkv, L))
    res[f"B{b} L{L}"] = dict(torch=tt, **row)
    print(f"B{b} 32/8 L{L} torch {tt[0]:.1f}/{tt[1]:.1f} | " + " | ".join(
        f"{tn}: " + " ".join(f"{k} {row[tn]['med'][k]:.1f}" for k in variants) for tn in tabs) +
        f" | err {row['shuf']['err']} {row['inorder']['err']}", flush=True)
json.dump(res, open(os.path.join(OUT, "rot_ab.json"), "w"), indent=1)
