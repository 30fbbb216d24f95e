// flat_gemm.cu: flat GEMM on tensor cores (FlashDecoding++ section 4: M small, N and K large).
//
//   y[m, n] = sum_k x[m, k] * w[n, k]  (+ bias[n])  (+ res[m, n])      fp32 accumulation
//
//   x    [M, K]   row-major, T (fp16 or bf16), K % 8 == 0, 16-byte aligned rows
//   w    [N, K]   row-major, T (HF nn.Linear layout)
//   bias [N], res [M, N] (may alias y), y [M, N]: T
//   ws   [split, M, N] float32 partials and counters [gridDim.x * gridDim.z] uint32 (zeroed once,
//        self-resetting) only when split > 1, as in gemv.cu.
//
// Formulation: we compute y^T = w x^T with mma.sync.m16n8k16, w as the 16-row A operand (row-major
// [n, k], exactly HF layout) and x as the 8-column B operand (x [m, k] row-major is B "col"),
// so M is padded only to a multiple of 8, not 16 or 64.
//
// Block tile: BN = 16 * FN * WARPS_N rows of w  x  BM columns (rows of x)  x  BK of K per stage.
// Warp (wn, wk) owns rows [wn * 16 * FN, +16 * FN) and the K sub-slice [wk * BK / WARPS_K, +BK /
// WARPS_K) of every stage (WARPS_K > 1 = intra-block split-K, reduced in shared memory).
// Loads: cp.async.cg 16-byte copies into a STAGES-deep ring of shared-memory tiles (the copy of
// K-tile kt + STAGES - 1 is in flight while tile kt is multiplied); 16-byte chunks XOR-swizzled
// by (row & 7) so ldmatrix is conflict-free.  Grid: x = cdiv(N, BN), y = split-K slices of
// k_chunk (multiple of BK), z = cdiv(M, BM).
//
// Defines: DTYPE_BF16, DIRECT (which kernel), FM (BM = 8 * FM: 1..16), FN (1, 2),
//          WARPS_N, WARPS_K, BK (64, 128),
//          STAGES (2..8), HAS_BIAS, HAS_RES.
//
// Kernels:
//   flat_gemm_kernel    w and x tiles staged through shared memory (cp.async ring, ldmatrix).
//   flat_direct_kernel  no shared memory for w: each lane loads its mma A fragments straight
//       from global memory with 16-byte loads.  Inside each 32-wide k block, lane (g, t) loads
//       w[n0 + g][kb + 8t : +8], w[n0 + g + 8][same] and x[m0 + g][same]; its 8 physical k
//       values fill the logical k slots {2t, 2t+1, 2t+8, 2t+9} of two k16 mma steps.  A and B
//       use the same physical -> logical k map, so the dot products are unchanged.  Like
//       gemv.cu it streams w with many 16-byte loads in flight and no barriers, but the
//       tensor cores do the FMAs, so M up to 16-32 costs about what M = 1 does.  x is read
//       through L1 (it is small and shared by all warps).
//       Defines: FN (m16 fragments per warp), FM (n8 fragments: BM = 8 * FM), WARPS_N,
//       WARPS_K (warps of a block splitting K, reduced in shared memory), UNROLL (32-wide k
//       blocks per lane per iteration).
//   flat_stream_kernel (DIRECT = 2)  w read like gemv.cu, in runs of WARPS_K * KT * 2 contiguous
//       bytes per row, then registers -> per-warp shared tile -> ldmatrix -> mma; x copied per
//       warp and tile with cp.async. Defines: KT (k per warp tile: 64/128/256), FN, FM,
//       WARPS_N, WARPS_K (warps reading consecutive KT pieces of the same rows), PRE_TILES,
//       LATE_TRIGGER, MIN_BLOCKS, PF_TILES, EPILOGUE (+ HEAD_DIM: the paired epilogues of
//       pair_epilogue.cuh), TIMELINE (probe builds: timeline.cuh).
//       See below.
//
// Variants / when each wins (H100 tuning of 24 decode shapes, docs/flat_gemm_notes.md):
//   0. flat_stream_kernel, KT 128 x WARPS_K 8 (2 KB row runs, two 8-warp blocks per SM):
//      M = 1..16-32 on most shapes (session 15: ahead of the M = 1 GEMV on o / down / lm_head;
//      the GEMV keeps M = 1 where it fuses RoPE or SiLU-mul into qkv / gate_up).
//   1. flat_gemm_kernel (BM = 16..32, BK = 128, WARPS_N = 2, WARPS_K = 4): M = 9..32 on a few
//      wide shapes (lm_head, gate_up); both it and flat_direct_kernel serve as the capture
//      fallbacks of cuBLAS entries.
//   2. M >= 24-64: cuBLAS (graph-capturable through ctypes).
#include "common.cuh"
#include "mma.cuh"
#include "timeline.cuh"

#ifndef DTYPE_BF16
#define DTYPE_BF16 0
#endif
#ifndef FM
#define FM 1
#endif
#ifndef BM
#define BM (8 * FM)
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#ifndef DIRECT
#define DIRECT 0  // 1: build flat_direct_kernel only (2: flat_stream_kernel), 0: flat_gemm_kernel
#endif
#ifndef KT
#define KT 128  // flat_stream_kernel: k per warp tile (16 * FN rows x KT, one LDG per 16 bytes)
#endif
#ifndef FN
#define FN 1
#endif
#ifndef WARPS_N
#define WARPS_N 4
#endif
#ifndef WARPS_K
#define WARPS_K 1
#endif
#ifndef BK
#define BK 64
#endif
#ifndef STAGES
#define STAGES 4
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef HAS_RES
#define HAS_RES 0
#endif
#ifndef EPILOGUE
#define EPILOGUE 0  // flat_stream_kernel: 1 RoPE + K/V write, 2 SiLU-mul (pair_epilogue.cuh)
#endif

#define BN (16 * FN * WARPS_N)
#define NT (32 * WARPS_N * WARPS_K)
#define CHUNKS (BK / 8)  // 16-byte chunks per tile row
#define CPAD 4           // fp32 pad per row of the C tile: 2 * (BN + 4) % 32 == 8, conflict-free

typedef dtype_t T;  // common.cuh: bf16 with -DDTYPE_BF16=1, else half
#if EPILOGUE && DIRECT != 2
#error "only flat_stream_kernel (DIRECT 2) takes a paired epilogue"
#endif
#include "pair_epilogue.cuh"
// element offset of (row, 16-byte chunk ch) in a [rows, BK] swizzled tile
// element offset of (row, 16-byte chunk ch) in a [rows, stride] tile whose chunks are XOR-swizzled
// by (row & 7), so eight rows' same chunk hit distinct banks (ldmatrix without conflicts)
__device__ __forceinline__ int swz_at(int row, int ch, int stride) {
    return row * stride + ((ch ^ (row & 7)) << 3);
}
__device__ __forceinline__ int swz(int row, int ch) { return swz_at(row, ch, BK); }

__device__ __forceinline__ float epilogue(float v, const T* __restrict__ bias, const T* res,
                                          int m, int n, int N) {
#if HAS_BIAS
    v += to_f32(bias[n]);
#endif
#if HAS_RES
    v += to_f32(res[(size_t)m * N + n]);
#endif
    return v;
}

__device__ __forceinline__ void zero_acc(float (&acc)[FN][FM][4]) {
#pragma unroll
    for (int i = 0; i < FN; ++i)
#pragma unroll
        for (int j = 0; j < FM; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// Fragments -> fp32 C tile cs[wk][m][n] (c0: (n = g, m = 2t), c1: (g, 2t+1), c2/c3: n + 8)
__device__ __forceinline__ void acc_to_cs(const float (&acc)[FN][FM][4], float* cs, int wn,
                                          int wk, int g, int t) {
#pragma unroll
    for (int fn = 0; fn < FN; ++fn)
#pragma unroll
        for (int fm = 0; fm < FM; ++fm) {
            const int n = (wn * FN + fn) * 16 + g, m = fm * 8 + 2 * t;
            float* c = cs + (wk * BM + m) * (BN + CPAD) + n;
            c[0] = acc[fn][fm][0];
            c[BN + CPAD] = acc[fn][fm][1];
            c[8] = acc[fn][fm][2];
            c[BN + CPAD + 8] = acc[fn][fm][3];
        }
    __syncthreads();
}

// acc_to_cs, sum over the WARPS_K warps, then either store y (split == 1) or park the partial
// in ws and let the last split block of the tile reduce all partials and store y (its counter
// is reset so graph replays work). Shared by the three kernels.
__device__ __forceinline__ void store_tile(const float (&acc)[FN][FM][4], float* cs,
                                          unsigned& s_is_last, int tid, int wn, int wk, int g,
                                          int t, int m0, int n0, int M, int N, int split, int s,
                                          const T* __restrict__ bias, const T* res, T* y,
                                          float* __restrict__ ws,
                                          unsigned* __restrict__ counters) {
    acc_to_cs(acc, cs, wn, wk, g, t);
    for (int i = tid; i < BM * BN; i += NT) {
        const int m = i / BN, n = i % BN, gm = m0 + m, gn = n0 + n;
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < WARPS_K; ++j) v += cs[(j * BM + m) * (BN + CPAD) + n];
        if (gm < M && gn < N) {
            if (split == 1) y[(size_t)gm * N + gn] = from_f32<T>(epilogue(v, bias, res, gm, gn, N));
            else ws[((size_t)s * M + gm) * N + gn] = v;
        }
    }
    if (split == 1) return;

    __threadfence();
    __syncthreads();
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    if (tid == 0) s_is_last = atomicAdd(&counters[tile], 1u) == (unsigned)(split - 1);
    __syncthreads();
    if (!s_is_last) return;
    __threadfence();
    for (int i = tid; i < BM * BN; i += NT) {
        const int m = i / BN, n = i % BN, gm = m0 + m, gn = n0 + n;
        if (gm >= M || gn >= N) continue;
        float v = 0.f;
        for (int j = 0; j < split; ++j) v += __ldcg(ws + ((size_t)j * M + gm) * N + gn);
        y[(size_t)gm * N + gn] = from_f32<T>(epilogue(v, bias, res, gm, gn, N));
    }
    if (tid == 0) counters[tile] = 0u;
}

#if DIRECT == 0
extern "C" __global__ void __launch_bounds__(NT)
flat_gemm_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                 const T* res, T* y, float* __restrict__ ws, unsigned* __restrict__ counters,
                 int M, int N, int K, int k_chunk) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* ring = reinterpret_cast<T*>(smem_raw);  // STAGES x ([BN, BK] w tile, [BM, BK] x tile)
    __shared__ unsigned s_is_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wn = warp % WARPS_N, wk = warp / WARPS_N;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.z * BM;
    const int split = gridDim.y, s = blockIdx.y;
    const int k_begin = s * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    const int num_tiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;

    // rows [r0, r0 + ROWS_) of src ([*, K], valid below r_end) at K-tile kt -> dst [ROWS_, BK]
    auto load_rows = [&](T* dst, const T* src, int ROWS_, int r0, int r_end, int kt) {
        const int kb = k_begin + kt * BK;
#pragma unroll
        for (int c = tid; c < ROWS_ * CHUNKS; c += NT) {
            const int r = c / CHUNKS, ch = c % CHUNKS;
            const int k = kb + ch * 8;
            const bool ok = r0 + r < r_end && k < k_end;
            cp_async16(dst + swz(r, ch), ok ? src + (size_t)(r0 + r) * K + k : src, ok);
        }
    };
    auto load_w = [&](int kt, int stage) {
        load_rows(ring + stage * (BN + BM) * BK, w, BN, n0, N, kt);
    };
    auto load_x = [&](int kt, int stage) {
        load_rows(ring + stage * (BN + BM) * BK + BN * BK, x, BM, m0, M, kt);
    };

    float acc[FN][FM][4];
    zero_acc(acc);

    // w is constant during a step: the first stages' weight tiles are requested before
    // RE_PDL_WAIT (overlapping the previous kernel's tail under programmatic launch); they join
    // cp.async group 0, so the group accounting below is unchanged.
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st)
        if (st < num_tiles) load_w(st, st);
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < num_tiles) load_x(st, st);
        cp_async_commit();
    }

    for (int kt = 0; kt < num_tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile kt landed for everyone; stage (kt-1) % STAGES is free again
        const int nxt = kt + STAGES - 1;
        if (nxt < num_tiles) {
            load_w(nxt, nxt % STAGES);
            load_x(nxt, nxt % STAGES);
        }
        cp_async_commit();

        const T* ws_ = ring + (kt % STAGES) * (BN + BM) * BK;
        const T* xs_ = ws_ + BN * BK;
#pragma unroll
        for (int kk = wk * (BK / WARPS_K); kk < (wk + 1) * (BK / WARPS_K); kk += 16) {
            unsigned a[FN][4];
#pragma unroll
            for (int fn = 0; fn < FN; ++fn) {
                const int row = (wn * FN + fn) * 16 + (lane & 15);
                ldmatrix_x4(a[fn], ws_ + swz(row, (kk >> 3) + (lane >> 4)));
            }
#pragma unroll
            for (int fm = 0; fm < FM; ++fm) {
                unsigned b[2];
                const int row = fm * 8 + (lane & 7);
                ldmatrix_x2(b, xs_ + swz(row, (kk >> 3) + ((lane >> 3) & 1)));
#pragma unroll
                for (int fn = 0; fn < FN; ++fn) mma16816(acc[fn][fm], a[fn], b);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // ring is reused as the C tile

    float* cs = reinterpret_cast<float*>(smem_raw);
    const int g = lane >> 2, t = lane & 3;
    store_tile(acc, cs, s_is_last, tid, wn, wk, g, t, m0, n0, M, N, split, s, bias, res, y, ws,
               counters);
}

#endif  // DIRECT == 0

#if DIRECT == 1
extern "C" __global__ void __launch_bounds__(NT)
flat_direct_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   const T* res, T* y, float* __restrict__ ws, unsigned* __restrict__ counters,
                   int M, int N, int K, int k_chunk) {
    __shared__ float cs[WARPS_K * BM * (BN + CPAD)];
    __shared__ unsigned s_is_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wn = warp % WARPS_N, wk = warp / WARPS_N;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.z * BM;
    const int split = gridDim.y, s = blockIdx.y;
    const int k_begin = s * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);

    const T* wlo[FN];
    const T* whi[FN];
#pragma unroll
    for (int fn = 0; fn < FN; ++fn) {
        const int r = n0 + (wn * FN + fn) * 16 + g;
        wlo[fn] = w + (size_t)min(r, N - 1) * K + 8 * t;
        whi[fn] = w + (size_t)min(r + 8, N - 1) * K + 8 * t;
    }
    const T* xr[FM];
    bool x_ok[FM];
#pragma unroll
    for (int fm = 0; fm < FM; ++fm) {
        const int r = m0 + fm * 8 + g;
        x_ok[fm] = r < M;
        xr[fm] = x + (size_t)min(r, M - 1) * K + 8 * t;
    }

    float acc[FN][FM][4];
    zero_acc(acc);

    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    uint4 alo[UNROLL][FN], ahi[UNROLL][FN];
    auto load_a = [&](int kb) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + 32 * u;
            const bool ok = k + 8 * t < k_end;
#pragma unroll
            for (int fn = 0; fn < FN; ++fn) {
                alo[u][fn] = ok ? ld_stream16(wlo[fn] + k) : zero;
                ahi[u][fn] = ok ? ld_stream16(whi[fn] + k) : zero;
            }
        }
    };
    // w is constant during a step: the first weight loads go out before RE_PDL_WAIT
    const int kb0 = k_begin + wk * 32 * UNROLL;
    load_a(kb0);
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    for (int kb = kb0; kb < k_end; kb += WARPS_K * 32 * UNROLL) {
        if (kb != kb0) load_a(kb);
        uint4 b[UNROLL][FM];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + 32 * u;
            const bool ok = k + 8 * t < k_end;
#pragma unroll
            for (int fm = 0; fm < FM; ++fm)
                b[u][fm] = ok && x_ok[fm] ? __ldg(reinterpret_cast<const uint4*>(xr[fm] + k)) : zero;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int fn = 0; fn < FN; ++fn)
#pragma unroll
                for (int fm = 0; fm < FM; ++fm) {
                    const unsigned a0[4] = {alo[u][fn].x, ahi[u][fn].x, alo[u][fn].y, ahi[u][fn].y};
                    const unsigned b0[2] = {b[u][fm].x, b[u][fm].y};
                    mma16816(acc[fn][fm], a0, b0);
                    const unsigned a1[4] = {alo[u][fn].z, ahi[u][fn].z, alo[u][fn].w, ahi[u][fn].w};
                    const unsigned b1[2] = {b[u][fm].z, b[u][fm].w};
                    mma16816(acc[fn][fm], a1, b1);
                }
    }

    store_tile(acc, cs, s_is_last, tid, wn, wk, g, t, m0, n0, M, N, split, s, bias, res, y, ws,
               counters);
}
#endif  // DIRECT == 1

#if DIRECT == 2
// flat_stream_kernel: w streamed in whole row runs like gemv.cu, then through a warp-private
// shared-memory tile to ldmatrix fragments, so the tensor cores do the FMAs.
//   Block x owns rows [x * BN, +BN); warp (wn, wk) owns rows [16 * FN * wn, +16 * FN) of them
//   and the k tiles wk, wk + WARPS_K, ... of the block's K slice: at any moment the WARPS_K
//   warps of a row group read WARPS_K * KT * 2 contiguous bytes of each of their rows (DRAM
//   serves such runs faster than scattered 512-byte pieces: docs/flat_gemm_notes.md, session 14).
//   x is copied per warp and tile: while a warp's registers load the w tile after next
//   [16 * FN, KT], cp.async copies its x piece [BM, KT] (from L2) into one of the warp's two x
//   tiles; the loop has only __syncwarp (tile i + 1 loads while tile i goes registers -> shared
//   -> ldmatrix -> mma). Nothing runs before the first mma, shared memory does not grow with K
//   and a block reads each x byte once when WARPS_N = 1 (session 15: staging the block's whole
//   x slice first, the session-14 build, lost in 191 of 192 tuned (shape, M) cells).
//   Tiles are chunk-swizzled (swz_at).
// EPILOGUE 1 / 2 (split 1, N % 16 == 0; 1: HEAD_DIM % (16 * FN) == 0): the pair epilogues of
//   pair_epilogue.cuh. Fragment F of the block's rows then holds pairs 8F .. 8F + 7: its rows
//   r < 8 are the pairs' first rows, r + 8 their partners, so after the WARPS_K sum a pair's
//   two values sit in one C-tile column pair (n, n + 8) and one thread stores it.
// Dynamic shared memory per warp: one w tile and two x tiles, (16 * FN + 2 * BM) * KT * 2 B.
// PRE_TILES (1, 2): w tiles each warp requests before RE_PDL_WAIT. 2 pays at M = 1, where the
// kernels around a linear are short; at M = 4-8 it cost ~1% of Llama decode (session 15).
#ifndef PRE_TILES
#define PRE_TILES 1
#endif
// LATE_TRIGGER 0: RE_PDL_TRIGGER right after RE_PDL_WAIT, as the other kernels: a chain of
//   products overlaps the next one's launch and first weight tiles with this one's tail
//   (~1 us a call in tools/bench_gemm.py). 1: after the weight stream, so the next kernel
//   launches only as the last blocks finish. What model forwards use (gemm.late_trigger):
//   there the early launch cost whole microseconds a layer (H100, session 16, Llama-3-8B
//   batch 4 step graph: 5,508 -> 5,478 us, and 5,753 -> 5,431 us with SiLU-mul fused into
//   gate_up, where the next kernel is the down product).
#ifndef LATE_TRIGGER
#define LATE_TRIGGER 0
#endif
// MIN_BLOCKS (1, 2): __launch_bounds__'s blocks per SM. 2 caps registers at 65536 / (2 * NT);
//   at bm >= 16 with kt 128 a tile's 8 k16 steps are then unrolled by 4, not all 8 (hoisted,
//   they need 170 registers at bm 16 for 8 warps: one block per SM instead of two; under the
//   cap without the shorter unroll they spill). At bm 8 the cap alone fits: the RoPE epilogue
//   build drops from 144 registers to ~122, no spill (tools/check_kernels.py).
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif
// PF_TILES (0..8): w tiles each warp asks L2 to prefetch (RE_PREFETCH_L2) before RE_PDL_WAIT,
//   after its PRE_TILES register tiles. In a chain of products ~1.4 us a call pass between the
//   previous kernel's last weight bytes and this one's first wait (its stores, then the launch
//   wait's release: tools/timeline_gemm.py); register tiles cover only the first of them.
//   Only blocks numbered below PF_WAVE (the blocks resident at once, from the host's occupancy
//   query) prefetch: later ones start past the wait, where a prefetch only doubles the requests
//   for lines their loads ask for next (H100: 8 tiles for every block cost lm_head 13%).
#ifndef PF_TILES
#define PF_TILES 0
#endif
#ifndef PF_WAVE
#define PF_WAVE 0
#endif
#define LPR (KT / 8)         // lanes per w row in one load instruction
#define RPI (32 / LPR)       // rows per load instruction
#define NLD (16 * FN / RPI)  // load instructions (16-byte registers) per tile

extern "C" __global__ void __launch_bounds__(NT, MIN_BLOCKS)
flat_stream_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   const T* res, T* y, float* __restrict__ ws, unsigned* __restrict__ counters,
                   int M, int N, int K, int k_chunk EPILOGUE_PARAMS) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ float cs[WARPS_K * BM * (BN + CPAD)];
    RE_TL_MARK(w, 0);
#if !EPILOGUE
    __shared__ unsigned s_is_last;
    const int split = gridDim.y;
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wn = warp % WARPS_N, wk = warp / WARPS_N;
    T* wt = reinterpret_cast<T*>(smem_raw) + warp * (16 * FN + 2 * BM) * KT;  // [16 * FN, KT]
    T* xt = wt + 16 * FN * KT;                                                 // 2 x [BM, KT]
    const int n0 = blockIdx.x * BN, m0 = blockIdx.z * BM;
    const int s = blockIdx.y;
    const int k_begin = s * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    const int num_tiles = k_end > k_begin ? (k_end - k_begin + KT - 1) / KT : 0;

    // lane's piece of load instruction i: logical row tr = i * RPI + lane / LPR of the warp's
    // 16 * FN rows, 16-byte chunk lane % LPR; rows past N are not read (their outputs are
    // dropped). Logical row 16 f + r (fragment f, r < 16) is physical row
    //   row0 + f * FSTEP + (r & 7) + (r >> 3) * jump
    // plain: row0 = the warp's first row, FSTEP 16, jump 8 (the identity); paired epilogue:
    // row0 = the first row of the warp's first pair, FSTEP 8, jump = partner distance.
    const int lrow = lane / LPR, lch = lane % LPR;
    const int r0 = n0 + wn * 16 * FN + lrow;  // logical
#if EPILOGUE
#define FSTEP 8
    const int f0 = min(n0 + wn * 16 * FN, N - 16);  // N % 16 == 0 (host)
    const int row0 = PAIR_ROW(f0), jump = PAIR_ROW(f0 + 1) - row0;
#else
#define FSTEP 16
    const int row0 = min(n0 + wn * 16 * FN, N - 1), jump = 8;
#endif
    const T* wp = w + (size_t)(row0 + lrow) * K + k_begin + 8 * lch;
    const size_t jump_k = (size_t)jump * K;
    // element offset of logical row lr's physical row from row0's (the mapping above)
    auto row_off = [&](int lr) {
        return (size_t)((lr >> 4) * FSTEP + (lr & 7)) * K + ((lr & 8) ? jump_k : 0);
    };
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    uint4 wb[2][NLD];  // two register tiles; every call passes a literal slot
    auto load = [&](int slot, int tile) {
        const bool ok = k_begin + tile * KT + 8 * lch < k_end;
#pragma unroll
        for (int i = 0; i < NLD; ++i) {
            const int tr = i * RPI;  // RPI divides 8: lrow never carries into bit 3
            wb[slot][i] = ok && r0 + tr < N ? ld_stream16(wp + row_off(tr) + tile * KT) : zero;
        }
    };
    // x piece [BM, KT] of tile -> the warp's x tile `slot`, lanes laid out as for w (row
    // i * RPI + lrow, chunk lch); rows past M and k past k_end are zero-filled
    const T* xp = x + (size_t)(m0 + lrow) * K + k_begin + 8 * lch;
    auto load_x = [&](int slot, int tile) {
        const bool ok = k_begin + tile * KT + 8 * lch < k_end;
#pragma unroll
        for (int i = 0; i < BM / RPI; ++i) {
            const bool v = ok && m0 + i * RPI + lrow < M;
            cp_async16(xt + slot * BM * KT + swz_at(i * RPI + lrow, lch, KT),
                       v ? xp + (size_t)i * RPI * K + tile * KT : x, v);
        }
    };
    float acc[FN][FM][4];
    zero_acc(acc);

    // w is constant during a step: the first PRE_TILES tiles are requested before RE_PDL_WAIT,
    // so they stream while the previous kernel finishes
    if (wk < num_tiles) load(0, wk);
    if (PRE_TILES > 1 && wk + WARPS_K < num_tiles) load(1, wk + WARPS_K);
#if PF_TILES
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    for (int lr = lane; lr < 16 * FN && block < PF_WAVE; lr += 32) {  // the warp's row lr
        if (n0 + wn * 16 * FN + lr >= N) continue;
        const T* wr = w + (size_t)row0 * K + row_off(lr);
#pragma unroll
        for (int j = PRE_TILES; j < PRE_TILES + PF_TILES; ++j) {
            const int tile = wk + j * WARPS_K, k = k_begin + tile * KT;
            if (tile < num_tiles) RE_PREFETCH_L2(wr + k, 2 * min(KT, k_end - k));
        }
    }
#endif
#if EPILOGUE == 1 && RE_PDL_EARLY
    // RoPE's step inputs for the thread's first pair (pair tid of the store loop below), like
    // gemv.cu: loaded here they arrive during the main loop; at the store they were a chain of
    // three dependent loads (slot, position, cos / sin) at every block's end
    RopeAux aux0{1.f, 0.f, -1};
    if (tid < BM * BN / 2) {
        const int m = tid / (BN / 2), p = tid % (BN / 2), f = n0 + (p >> 3) * 16;
        if (m0 + m < M && f < N) aux0 = ROPE_AUX(m0 + m, f + 2 * (p & 7));
    }
#define IS_PRE(i) ((i) < NT)
#elif EPILOGUE == 1
    const RopeAux aux0{1.f, 0.f, -1};
#define IS_PRE(i) false
#endif
    RE_PDL_WAIT();
    RE_TL_MARK(w, 1);
#if !LATE_TRIGGER
    RE_PDL_TRIGGER();
#endif
    if (wk < num_tiles) load_x(0, wk);
    cp_async_commit();
    if (PRE_TILES > 1) {
        if (wk + WARPS_K < num_tiles) load_x(1, wk + WARPS_K);
        cp_async_commit();
    }
    constexpr int kk_unroll = MIN_BLOCKS > 1 && KT > 64 && FM > 1 ? 4 : KT / 16;
    auto compute = [&](int slot) {
#pragma unroll
        for (int i = 0; i < NLD; ++i)
            *reinterpret_cast<uint4*>(wt + swz_at(i * RPI + lrow, lch, KT)) = wb[slot][i];
        cp_async_wait<1>();  // this tile's x landed (the next tile's copy may be pending)
        __syncwarp();
        const T* xs = xt + slot * BM * KT;
#pragma unroll kk_unroll
        for (int kk = 0; kk < KT / 16; ++kk) {
            unsigned a[FN][4];
#pragma unroll
            for (int fn = 0; fn < FN; ++fn)
                ldmatrix_x4(a[fn], wt + swz_at(fn * 16 + (lane & 15), 2 * kk + (lane >> 4), KT));
#pragma unroll
            for (int fm = 0; fm < FM; ++fm) {
                unsigned b[2];
                const int m = fm * 8 + (lane & 7);
                ldmatrix_x2(b, xs + swz_at(m, 2 * kk + ((lane >> 3) & 1), KT));
#pragma unroll
                for (int fn = 0; fn < FN; ++fn) mma16816(acc[fn][fm], a[fn], b);
            }
        }
        __syncwarp();  // the tiles are overwritten by the next store / copy
    };
    // load_x of a slot follows the compute that last read it (its closing __syncwarp); every
    // compute waits for all but the newest cp.async group, so one group is committed per load
    // (with PRE_TILES 2 the first pass's slot 1 tiles were requested above)
    for (int tile = wk; tile < num_tiles; tile += 2 * WARPS_K) {
        const int t1 = tile + WARPS_K;
        if (PRE_TILES == 1 || tile != wk) {
            if (t1 < num_tiles) {
                load(1, t1);
                load_x(1, t1);
            }
            cp_async_commit();
        }
        compute(0);
        if (t1 >= num_tiles) break;
        if (t1 + WARPS_K < num_tiles) {
            load(0, t1 + WARPS_K);
            load_x(0, t1 + WARPS_K);
        }
        cp_async_commit();
        compute(1);
    }

    RE_TL_MARK(w, 2);
#if LATE_TRIGGER
    RE_PDL_TRIGGER();  // every block is past its weight stream: see LATE_TRIGGER above
#endif
    const int g = lane >> 2, t = lane & 3;
#if EPILOGUE
    // sum over the WARPS_K warps; pair p of the block: fragment p / 8, C-tile columns n, n + 8
    acc_to_cs(acc, cs, wn, wk, g, t);
    for (int i = tid; i < BM * BN / 2; i += NT) {
        const int m = i / (BN / 2), p = i % (BN / 2), gm = m0 + m;
        const int n = (p >> 3) * 16 + (p & 7), f = n0 + (p >> 3) * 16;  // f: fragment's row
        if (gm >= M || f >= N) continue;
        float v0 = 0.f, v1 = 0.f;
#pragma unroll 4  // full unrolling spilled the 16-warp kt 64 RoPE build on sm_80
        for (int j = 0; j < WARPS_K; ++j) {
            v0 += cs[(j * BM + m) * (BN + CPAD) + n];
            v1 += cs[(j * BM + m) * (BN + CPAD) + n + 8];
        }
        PAIR_STORE(v0, v1, gm, f + 2 * (p & 7), IS_PRE(i), aux0);  // logical row of the pair
    }
#else
    store_tile(acc, cs, s_is_last, tid, wn, wk, g, t, m0, n0, M, N, split, s, bias, res, y, ws,
               counters);
#endif
    RE_TL_MARK(w, 3);
}
#undef FSTEP
#undef IS_PRE
#endif  // DIRECT == 2
