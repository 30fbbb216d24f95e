"""Where does the in-situ sort's time go? TIMELINE build, eager calls, no PDL."""
import sys

sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda import launch, module

seen = []
orig = attn.kernel
def spy(file, name, defines):
    seen.append((file, dict(defines)))
    return orig(file, name, defines)
attn.kernel = spy
launch.set_pdl(False)
for (b, L) in ((8, 65536), (8, 131072), (8, 16384)):
    p = ba.Paged(b, 32, 8, L)
    base = attn.default_config(4, 128, ba.kv_bytes(b, 8, L), False, units=b * 8)
    for tag, cfg in (("sort", dict(base, sort_pages=4096)),):
        attn.PROBE_DEFINES.clear(); attn.PROBE_DEFINES.update(TIMELINE=1)
        fn = p.fn("sync", config=cfg)
        fn(); cp.cuda.Device().synchronize()
        mod = module.module(*seen[-1])
        for rep in range(3):
            cp.ndarray((1,), cp.uint32, memptr=mod.get_global("re_tl_n")).fill(0)
            fn(); cp.cuda.Device().synchronize()
            n = int(cp.ndarray((1,), cp.uint32, memptr=mod.get_global("re_tl_n")).get()[0])
            t = cp.ndarray((n,), cp.uint64, memptr=mod.get_global("re_tl_t")).get().astype(np.int64)
            tag_ = cp.ndarray((n,), cp.uint32, memptr=mod.get_global("re_tl_tag")).get()
            ev, blk = tag_ & 15, tag_ >> 12
            t0 = t.min()
            by = {}
            for e in range(6):
                m = ev == e
                by[e] = dict(zip(blk[m].tolist(), (t[m] - t0).tolist()))
            sort_d = [by[5][k] - by[4][k] for k in by[4] if k in by[5]]
            entry_to_sort = [by[4][k] - by[0][k] for k in by[4] if k in by[0]]
            ends = sorted(by[3].values())
            print(f"B{b} L{L} {tag} rep{rep}: sort us med {np.median(sort_d)/1e3:.2f} max {max(sort_d)/1e3:.2f} | "
                  f"entry->sort med {np.median(entry_to_sort)/1e3:.2f} | first entry->last exit {ends[-1]/1e3:.1f} us, "
                  f"median exit {np.median(ends)/1e3:.1f}", flush=True)
    attn.PROBE_DEFINES.clear()
    p.free()
