"""Time visit_order alone: 128 blocks x n pages, shuffled / in-order tables."""
import statistics

import cupy as cp
import numpy as np

src_common = open("kernels_cu/common.cuh").read()
src_order = open("kernels_cu/page_order.cuh").read()
KERNEL = r'''
extern "C" __global__ void __launch_bounds__(256) sort_k(const int* bt, int n, int stride, int* out, int mode) {
    extern __shared__ int sm[];
    int* vis = sm + 2048;   // counts: first 1024 ints
    const int* t = bt + (size_t)blockIdx.x * stride;
    if (mode == 0) {
        visit_order<256, 4096>(vis, t, n, sm);
    } else {  // copy only
        for (int i = threadIdx.x; i < n; i += 256) vis[i] = __ldg(t + i);
        __syncthreads();
    }
    for (int i = threadIdx.x; i < n; i += 256) out[(size_t)blockIdx.x * stride + i] = vis[i];
}
'''
src = src_common.replace("#pragma once", "") + src_order.replace("#pragma once", "") + KERNEL
mod = cp.RawModule(code=src, options=("-std=c++17",))
k = mod.get_function("sort_k")
k.max_dynamic_shared_size_bytes = (2048 + 4096) * 4
rng = np.random.default_rng(0)
for n in (504, 2040, 33, 4088, 512, 2048, 4096):
    nb = 128
    pool = nb * n * 2
    tabs = {"shuffled": rng.permutation(pool)[:nb * n].astype(np.int32),
            "in-order": np.arange(nb * n, dtype=np.int32)}
    for name, t in tabs.items():
        bt = cp.asarray(t); out = cp.empty_like(bt)
        res = {}
        for mode in (0, 1):
            args = ((nb,), (256,), (bt, np.int32(n), np.int32(n), out, np.int32(mode)))
            k(*args[:2], args[2], shared_mem=(2048 + 4096) * 4)
            cp.cuda.Device().synchronize()
            ts = []
            st = cp.cuda.Stream(non_blocking=True)
            with st:
                st.begin_capture()
                for _ in range(50):
                    k(*args[:2], args[2], shared_mem=(2048 + 4096) * 4)
                g = st.end_capture()
                g.launch(st); st.synchronize()
                for _ in range(5):
                    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                    e0.record(st); g.launch(st); e1.record(st); e1.synchronize()
                    ts.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 50)
            res[mode] = statistics.median(ts)
            if mode == 0:
                o = out.get().reshape(nb, n); ti = t.reshape(nb, n)
                ok = True
                for b in range(nb):
                    seg = ti[b].astype(np.int64); lo, hi = seg.min(), seg.max()
                    sh = max(0, int(hi - lo).bit_length() - 7)
                    ok &= np.array_equal(o[b], seg[np.argsort((seg - lo) >> sh, kind="stable")])
        print(f"n {n} {name}: sort {res[0]:.2f} us, copy {res[1]:.2f} us, exact {ok}", flush=True)
