"""In-kernel page sort (SORT_PAGES) vs host-sorted tables vs default."""
import json
import os
import statistics
import sys

sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda import launch

OUT = os.environ.get("OUT", ".")
cases = [(8, 32, 8, 65536), (8, 32, 8, 131072), (8, 32, 8, 16384), (1, 32, 8, 131072), (32, 32, 8, 16384)]
res = {}
for (b, hq, hkv, L) in cases:
    t_torch = [ba.torch_case(b, hq, hkv, L)]
    p = ba.Paged(b, hq, hkv, L)
    nbytes = ba.kv_bytes(b, hkv, L)
    n = ba.calls_for(nbytes)
    S = attn.planned_splits(b, hq, hkv, ba.D, L)
    group = attn.head_group(hq, hkv)
    base = attn.default_config(group, ba.D, nbytes, False, units=b * hq // group)
    sortc = dict(base, sort_pages=4096)
    pages = -(-L // 16)
    shuf = p.tables.get()
    cp_ = -(-pages // S); cp_ = -(-cp_ // 4) * 4
    rs = shuf.copy()  # the kernel's order: stable 256-bucket sort of each range's full pages
    for r0 in range(0, pages, cp_):     # but the one holding key L - 1
        v0, v1 = r0 + 8, min(r0 + cp_, (L - 1) // 16)
        if v1 - v0 < 2 or v1 - v0 > 4096:
            continue
        for i in range(b):
            seg = rs[i, v0:v1].astype(np.int64)
            lo, hi = seg.min(), seg.max()
            sh = max(0, int(hi - lo).bit_length() - 7)
            key = (seg - lo) >> sh
            rs[i, v0:v1] = seg[np.argsort(key, kind="stable")]
    inorder = np.arange(b * pages, dtype=np.int32).reshape(b, pages)
    variants = {
        "shuf default": (shuf, None), "shuf sort": (shuf, sortc),
        "emul default": (rs, None), "emul sort": (rs, sortc),
        "inorder default": (inorder, None), "inorder sort": (inorder, sortc),
    }
    outs = {}
    for k, (tab, cfg) in variants.items():
        p.tables = cp.asarray(tab); p.out[...] = cp.nan
        p.fn("sync", config=cfg)(); outs[k] = p.out.astype(cp.float32).copy()
    chk = dict(
        sort_vs_emul=float(cp.abs(outs["shuf sort"] - outs["emul default"]).max()),
        sort_vs_shuf=float(cp.abs(outs["shuf sort"] - outs["shuf default"]).max()),
        in_sort_vs_def=float(cp.abs(outs["inorder sort"] - outs["inorder default"]).max()),
        nan=bool(cp.isnan(outs["shuf sort"]).any()))
    names = list(variants)
    t = {k: [] for k in names}
    for rnd in range(4):
        for k in (names if rnd % 2 == 0 else names[::-1]):
            tab, cfg = variants[k]
            p.tables = cp.asarray(tab)
            t[k].append(ba.time_cupy(p.fn("sync", config=cfg), n))
    # without programmatic launch: the sort's exposed cost
    launch.set_pdl(False)
    nopdl = {}
    for k in ("emul default", "emul sort"):
        tab, cfg = variants[k]; p.tables = cp.asarray(tab)
        nopdl[k] = [ba.time_cupy(p.fn("sync", config=cfg), n) for _ in range(2)]
    launch.set_pdl(None)
    p.free()
    t_torch.append(ba.torch_case(b, hq, hkv, L))
    med = {k: statistics.median(v) for k, v in t.items()}
    res[f"B{b} {hq}/{hkv} L{L}"] = dict(S=S, cfg=base, torch=t_torch, med=med, all=t, chk=chk, nopdl=nopdl)
    print(f"B{b} {hq}/{hkv} L{L} S{S} torch {t_torch[0]:.1f}/{t_torch[1]:.1f} | " +
          " | ".join(f"{k} {med[k]:.1f}" for k in names) +
          f" | nopdl rs def/sort {min(nopdl['emul default']):.1f}/{min(nopdl['emul sort']):.1f} | {chk}", flush=True)
json.dump(res, open(os.path.join(OUT, "sort_ab.json"), "w"), indent=1)
