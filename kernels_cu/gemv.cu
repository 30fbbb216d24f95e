// gemv.cu: skinny GEMM on CUDA cores for decode-sized M (the "GEMV" half of FlashDecoding++'s
// heuristic dataflow).
//
//   y[m, n] = sum_k x[m, k] * w[n, k]  (+ bias[n])  (+ res[m, n])      fp32 accumulation
//
//   x    [M, K]   row-major, T (fp16 or bf16)
//   w    [N, K]   row-major, T (HF nn.Linear layout)
//   bias [N]      T, only with -DHAS_BIAS=1
//   res  [M, N]   T, only with -DHAS_RES=1 (may alias y: each element is read before it is written,
//                 by the same thread)
//   y    [M, N]   T
//   ws   [split, M, N] float32 partial sums, only when gridDim.y (split) > 1
//   counters [gridDim.x * gridDim.z] uint32, zero before the first launch; each tile's last
//                 arriving split resets its counter, so the kernel can be replayed in a CUDA graph.
//
// Grid: x = cdiv(N, WARPS * ROWS) row tiles, y = split-K slices of K_CHUNK elements,
//       z = cdiv(M, MB) row groups of x.  Block: WARPS warps; warp j owns ROWS consecutive rows
//       of w and all MB rows of x.  The block stages its x slice [MB, K_CHUNK] in shared memory
//       once; each lane streams 16-byte pieces of its ROWS rows of w (UNROLL * ROWS loads in
//       flight, L1 bypassed: w is read exactly once), FMAs them against x from shared memory,
//       then the warp reduces with shuffles.
//
// Defines: DTYPE_BF16 (0/1), MB (1..8), ROWS (1..8), WARPS, UNROLL, VEC (8: 16-byte loads, needs
//          K % 8 == 0 and 16-byte aligned pointers; 1: scalar fallback), HAS_BIAS, HAS_RES,
//          PROLOGUE (0/1/2, below), PRO_RES (PROLOGUE 1 only: 0/1), PRO_FIXED (PROLOGUE 1
//          only: 0/1).
//
// Prologues (FlashDecoding++-style fusion of the op that produces x into the x staging; each
// saves one launch per decode linear). Both keep the intermediate rounded to T exactly where
// the unfused ops round it, so the GEMV sees the same x up to the order of one fp32 sum:
//   PROLOGUE 0: x as given.
//   PROLOGUE 1: add + RMSNorm.  Extra args pro_res [M, K] (PRO_RES=1), norm_w [K], r_out [M, K],
//               eps.  r = x (+ pro_res) rounded to T; every block reads the whole rows of r for
//               the sum of squares (split-K blocks too) but stages only its K slice, then scales
//               it in shared memory by rsqrt(mean(r^2) + eps) * norm_w.  Block (0, 0, z) alone
//               writes its rows of r to r_out (must not alias x or pro_res: other blocks are
//               still reading them).  PRO_RES=0: r = x, r_out is not written.
//               PRO_FIXED=1: x is int64 fixed sums [R, M, K] (fixed_sum.cuh; the fused MLP's
//               output, mlp.cu), rounded to T as the unfused down GEMV stores its output.
//   PROLOGUE 2: SiLU-and-mul.  x is gate_up [M, 2K] = [g | u]; stages silu(g) * u rounded to T.
//
// Paired epilogues (pair_epilogue.cuh, shared with flat_gemm.cu's stream kernel; ROWS even,
// no HAS_RES): EPILOGUE 1 RoPE + paged K/V write into the decode qkv (HEAD_DIM = D; extra
// args positions [M], slot_mapping [M] int32, cos, sin [max_pos, D/2] float32, k_cache,
// v_cache, Hq, Hkv, BS), EPILOGUE 2 SiLU-and-mul into the decode gate_up (no HAS_BIAS, no
// extra args; the [M, 2I] gate_up never reaches memory). The two rows of a pair are logical
// rows 2i, 2i + 1 (PAIR_ROW) of one warp (split 1) or one fix-up thread (split-K; ws holds
// logical rows), stored together by PAIR_STORE.
//
// Weight streaming (STAGES):
//   0  each lane loads UNROLL x ROWS 16-byte pieces into registers, then uses them: the bytes in
//      flight per SM are capped by registers (occupancy) and drop to zero while a batch is used.
//   S >= 2  each warp streams through its own ring of S batches in shared memory with cp.async
//      (S - 1 batches in flight while one is used; the first S - 1 go out before RE_PDL_WAIT).
//      Every lane reads back only the 16-byte slots it copied itself, so cp.async.wait_group is
//      the only synchronisation. Extra dynamic smem: WARPS * S * UNROLL * ROWS * 512 bytes after
//      x's slice (gemm.gemv_ring_bytes). Needs VEC 8.
//
// Variants / when each wins (H100, see docs/flat_gemm_notes.md):
//   1. split = 1: N large enough that cdiv(N, WARPS*ROWS) blocks fill the 132 SMs several times.
//   2. split > 1 (split-K with in-kernel fix-up by the last arriving block): small N, or x slice
//      too large for shared memory (MB * K * 2 bytes > 48 KB).
//   M <= 2 (M <= 4 on some shapes) is where this kernel beats the tensor-core flat GEMM; above
//   that the FP32 FMAs (M per weight element) become the bottleneck.
#include "common.cuh"

#ifndef DTYPE_BF16
#define DTYPE_BF16 0
#endif
#ifndef MB
#define MB 1
#endif
#ifndef ROWS
#define ROWS 2
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#ifndef VEC
#define VEC 8
#endif
#ifndef STAGES
#define STAGES 0
#endif
#if STAGES
#if VEC != 8 || STAGES < 2
#error "STAGES needs VEC 8 and at least 2 stages"
#endif
// mma.cuh: cp_async16 / commit / wait
#include "mma.cuh"
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef HAS_RES
#define HAS_RES 0
#endif
#ifndef PROLOGUE
#define PROLOGUE 0
#endif
#ifndef PRO_RES
#define PRO_RES 0
#endif
#ifndef PRO_FIXED
#define PRO_FIXED 0
#endif
#ifndef EPILOGUE
#define EPILOGUE 0
#endif

#if DTYPE_BF16
typedef __nv_bfloat16 T;
__device__ __forceinline__ float2 word_to_float2(unsigned u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}
__device__ __forceinline__ unsigned float2_to_word(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
#else
typedef __half T;
__device__ __forceinline__ float2 word_to_float2(unsigned u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
}
__device__ __forceinline__ unsigned float2_to_word(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
#endif

#if VEC == 8
typedef uint4 Raw;  // 8 elements
__device__ __forceinline__ Raw load_stream(const T* p) { return ld_stream16(p); }
__device__ __forceinline__ Raw load_plain(const T* p) { return *reinterpret_cast<const Raw*>(p); }
__device__ __forceinline__ Raw zero_raw() { return make_uint4(0u, 0u, 0u, 0u); }
__device__ __forceinline__ void unpack(Raw r, float f[8]) {
    float2 a = word_to_float2(r.x), b = word_to_float2(r.y);
    float2 c = word_to_float2(r.z), d = word_to_float2(r.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}
__device__ __forceinline__ Raw pack(const float f[8]) {
    return make_uint4(float2_to_word(f[0], f[1]), float2_to_word(f[2], f[3]),
                      float2_to_word(f[4], f[5]), float2_to_word(f[6], f[7]));
}
#else
typedef T Raw;  // one element
__device__ __forceinline__ Raw load_stream(const T* p) { return *p; }
__device__ __forceinline__ Raw load_plain(const T* p) { return *p; }
__device__ __forceinline__ Raw zero_raw() { return from_f32<T>(0.f); }
__device__ __forceinline__ void unpack(Raw r, float f[1]) { f[0] = to_f32(r); }
__device__ __forceinline__ Raw pack(const float f[1]) { return from_f32<T>(f[0]); }
#endif

__device__ __forceinline__ float epilogue(float v, const T* __restrict__ bias,
                                          const T* res, int m, int n, int N) {
#if HAS_BIAS
    v += to_f32(bias[n]);
#endif
#if HAS_RES
    v += to_f32(res[(size_t)m * N + n]);
#endif
    return v;
}

#if PRO_FIXED
#if PROLOGUE != 1
#error "PRO_FIXED needs PROLOGUE 1"
#endif
#include "fixed_sum.cuh"
typedef long long XT;  // x: fixed sums
// stride: elements between the fixed sum's replicas (M * K)
__device__ __forceinline__ Raw load_x(const XT* p, size_t stride) {
    float f[VEC];
#if VEC == 8
    fixed_load8(p, stride, f);
#else
    f[0] = fixed_load1(p, stride);
#endif
    return pack(f);
}
#else
typedef T XT;
__device__ __forceinline__ Raw load_x(const XT* p, size_t) { return load_plain(p); }
#endif

#if PROLOGUE == 1
// x, pro_res [M, K] -> xs [MB, k_chunk] = rmsnorm(r)[m0:m0+MB, k0:k0+k_chunk], r = x (+ pro_res);
// zero beyond M and K. Block (0, 0, z) writes r_out[m0:m0+mb, :] = r.
// nw0: this thread's first piece of norm_w in pass 2 (norm_w_first), loaded before the PDL wait.
__device__ __forceinline__ Raw norm_w_first(const T* __restrict__ norm_w, int k0, int kc,
                                            int k_chunk) {
    const int i = threadIdx.x * VEC, kk = i % k_chunk;
    return i < MB * k_chunk && kk < kc ? load_plain(norm_w + k0 + kk) : zero_raw();
}
__device__ __forceinline__ void stage_add_rmsnorm(T* xs, const XT* __restrict__ x,
                                                  const T* __restrict__ pro_res,
                                                  const T* __restrict__ norm_w, Raw nw0,
                                                  T* __restrict__ r_out, float eps, int m0,
                                                  int mb, int M, int K, int k0, int kc,
                                                  int k_chunk) {
    __shared__ float s_sum[WARPS][MB];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const bool is_writer = blockIdx.x == 0 && blockIdx.y == 0;
    // pass 1 (global): r rows -> sum of squares, own K slice of r -> xs, r -> r_out (writer)
    for (int m = 0; m < mb; ++m) {
        float ss = 0.f;
        {
            const size_t row = (size_t)(m0 + m) * K;
            for (int k = tid * VEC; k < K; k += WARPS * 32 * VEC) {
                Raw r = load_x(x + row + k, (size_t)M * K);
                float f[VEC];
                unpack(r, f);
#if PRO_RES
                float g[VEC];
                unpack(load_plain(pro_res + row + k), g);
#pragma unroll
                for (int j = 0; j < VEC; ++j) f[j] += g[j];
                r = pack(f);
                unpack(r, f);  // the sum of squares uses the rounded r, as rmsnorm_kernel does
                if (is_writer) *reinterpret_cast<Raw*>(r_out + row + k) = r;
#endif
#pragma unroll
                for (int j = 0; j < VEC; ++j) ss = fmaf(f[j], f[j], ss);
                if (k >= k0 && k - k0 < kc) *reinterpret_cast<Raw*>(xs + m * k_chunk + k - k0) = r;
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
        if (lane == 0) s_sum[warp][m] = ss;
    }
    __syncthreads();
    // pass 2 (shared): scale the staged slice, zero the padding. Every thread sums the WARPS
    // partials of its row itself (the same order in all threads): one barrier less on the
    // latency-bound path after the PDL wait than a single thread writing inv_rms to shared.
    for (int i = tid * VEC; i < MB * k_chunk; i += WARPS * 32 * VEC) {
        const int m = i / k_chunk, kk = i - m * k_chunk;
        Raw v = zero_raw();
        if (m < mb && kk < kc) {
            float f[VEC], g[VEC];
            unpack(*reinterpret_cast<const Raw*>(xs + i), f);
#if RE_PDL_EARLY
            unpack(i == tid * VEC ? nw0 : load_plain(norm_w + k0 + kk), g);
#else
            unpack(load_plain(norm_w + k0 + kk), g);
#endif
            float ss = 0.f;
#pragma unroll
            for (int j = 0; j < WARPS; ++j) ss += s_sum[j][m];
            const float inv_rms = rsqrtf(ss / K + eps);
#pragma unroll
            for (int j = 0; j < VEC; ++j) f[j] = f[j] * inv_rms * g[j];
            v = pack(f);
        }
        *reinterpret_cast<Raw*>(xs + i) = v;
    }
}
#define PROLOGUE_PARAMS \
    , const T* __restrict__ pro_res, const T* __restrict__ norm_w, T* __restrict__ r_out, float eps
#else
#define PROLOGUE_PARAMS
#endif

#if PROLOGUE == 2
// gate_up [M, 2K] -> xs [MB, k_chunk] = silu(g) * u over this block's slice, zero beyond M and K
__device__ __forceinline__ void stage_silu_mul(T* xs, const T* __restrict__ gate_up, int m0,
                                               int mb, int K, int k0, int kc, int k_chunk) {
    for (int i = threadIdx.x * VEC; i < MB * k_chunk; i += WARPS * 32 * VEC) {
        const int m = i / k_chunk, kk = i - m * k_chunk;
        Raw v = zero_raw();
        if (m < mb && kk < kc) {
            const T* g_ptr = gate_up + (size_t)(m0 + m) * 2 * K + k0 + kk;
            float g[VEC], u[VEC];
            unpack(load_plain(g_ptr), g);
            unpack(load_plain(g_ptr + K), u);
#pragma unroll
            for (int j = 0; j < VEC; ++j) g[j] = g[j] / (1.f + __expf(-g[j])) * u[j];
            v = pack(g);
        }
        *reinterpret_cast<Raw*>(xs + i) = v;
    }
}
#endif

#if (EPILOGUE == 1 || EPILOGUE == 2) && ROWS % 2 != 0
#error "the paired epilogues need an even ROWS"
#endif
#include "timeline.cuh"
#include "pair_epilogue.cuh"

extern "C" __global__ void __launch_bounds__(WARPS * 32)
gemv_kernel(const XT* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
            const T* res, T* y, float* __restrict__ ws, unsigned* __restrict__ counters,
            int M, int N, int K, int k_chunk PROLOGUE_PARAMS EPILOGUE_PARAMS) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* xs = reinterpret_cast<T*>(smem_raw);  // [MB, k_chunk]
    __shared__ unsigned s_is_last;
    RE_TL_MARK(w, 0);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int split = gridDim.y, s = blockIdx.y;
    const int m0 = blockIdx.z * MB;
    const int mb = min(MB, M - m0);
    const int k0 = s * k_chunk;
    const int kc = max(0, min(K, k0 + k_chunk) - k0);

    const int n_base = (blockIdx.x * WARPS + warp) * ROWS;
    const T* wrow[ROWS];
#pragma unroll
#if EPILOGUE == 1 || EPILOGUE == 2
    for (int r = 0; r < ROWS; ++r) wrow[r] = w + (size_t)PAIR_ROW(min(n_base + r, N - 1)) * K + k0;
#else
    for (int r = 0; r < ROWS; ++r) wrow[r] = w + (size_t)min(n_base + r, N - 1) * K + k0;
#endif
    // w is constant during a step, so the first weight loads go out before RE_PDL_WAIT:
    // under programmatic launch they overlap the previous kernel's tail.
    const int kk0 = lane * VEC;
#if STAGES
    // per-warp ring: slot (stage, u, r) of this lane at ring[((stage * UNROLL + u) * ROWS + r) * 32]
    constexpr int BATCH = 32 * VEC * UNROLL;  // k elements per batch
    const int num_batches = cdiv(kc, BATCH);  // block-uniform
    uint4* ring = reinterpret_cast<uint4*>(smem_raw + ((MB * k_chunk * 2 + 15) & ~15)) +
                  warp * (STAGES * UNROLL * ROWS * 32) + lane;
    auto issue = [&](int b) {  // batch b -> stage b % STAGES; always one commit group
        if (b < num_batches) {
            uint4* slot = ring + (b % STAGES) * (UNROLL * ROWS * 32);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int k = kk0 + b * BATCH + u * 32 * VEC;
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
                    cp_async16(reinterpret_cast<T*>(slot + (u * ROWS + r) * 32),
                               wrow[r] + (k < kc ? k : 0), k < kc);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int b = 0; b < STAGES - 1; ++b) issue(b);
#else
    Raw wv[UNROLL][ROWS];
#endif
#if !STAGES && RE_PDL_EARLY
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        const int k = kk0 + u * 32 * VEC;
#pragma unroll
        for (int r = 0; r < ROWS; ++r) wv[u][r] = k < kc ? load_stream(wrow[r] + k) : zero_raw();
    }
#endif
    // Also ahead of the wait: norm_w (a weight) and the RoPE store's step inputs of this lane's
    // first pair (pair index pr * MB + m == lane), so no dependent load chain follows the wait.
#if PROLOGUE == 1 && RE_PDL_EARLY
    const Raw nw0 = norm_w_first(norm_w, k0, kc, k_chunk);
#elif PROLOGUE == 1  // no programmatic launch (sm_80): nothing to overlap, pass 2 loads it
    const Raw nw0 = zero_raw();
#endif
#if EPILOGUE == 1 && RE_PDL_EARLY
    RopeAux aux0{1.f, 0.f, -1};
    if (split == 1 && lane < ROWS / 2 * MB) {
        const int pr = lane / MB, m = lane % MB, n = n_base + 2 * pr;
        if (n < N && m < mb) aux0 = ROPE_AUX(m0 + m, n);
    }
#define IS_PRE(idx) ((idx) < 32)  // the lane's first pair was preloaded into aux0
#elif EPILOGUE == 1  // no programmatic launch (sm_80): nothing to overlap, load at the store
    const RopeAux aux0{1.f, 0.f, -1};
#define IS_PRE(idx) false
#else
    const int aux0 = 0;  // no aux in this epilogue
#define IS_PRE(idx) false
#endif
    RE_PDL_WAIT();
    RE_TL_MARK(w, 1);
    RE_PDL_TRIGGER();

#if PROLOGUE == 1
    stage_add_rmsnorm(xs, x, pro_res, norm_w, nw0, r_out, eps, m0, mb, M, K, k0, kc, k_chunk);
#elif PROLOGUE == 2
    stage_silu_mul(xs, x, m0, mb, K, k0, kc, k_chunk);
#else
    // x[m0:m0+MB, k0:k0+k_chunk] -> shared, zero beyond M and K
    for (int i = tid * VEC; i < MB * k_chunk; i += WARPS * 32 * VEC) {
        const int m = i / k_chunk, kk = i - m * k_chunk;
        Raw v = zero_raw();
        if (m < mb && kk < kc) v = load_plain(x + (size_t)(m0 + m) * K + k0 + kk);
        *reinterpret_cast<Raw*>(xs + i) = v;
    }
#endif
    __syncthreads();

    float acc[ROWS][MB];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) acc[r][m] = 0.f;

    // acc += w[rows, k..k+VEC) . x[m, k..k+VEC) for the UNROLL pieces of one batch at kk
    auto fma_batch = [&](int kk, const Raw (&wb)[UNROLL][ROWS]) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kk + u * 32 * VEC;
            if (k < kc) {
                float wf[ROWS][VEC];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) unpack(wb[u][r], wf[r]);
#pragma unroll
                for (int m = 0; m < MB; ++m) {
                    float xf[VEC];
                    unpack(*reinterpret_cast<const Raw*>(xs + m * k_chunk + k), xf);
#pragma unroll
                    for (int r = 0; r < ROWS; ++r)
#pragma unroll
                        for (int j = 0; j < VEC; ++j) acc[r][m] = fmaf(wf[r][j], xf[j], acc[r][m]);
                }
            }
        }
    };

#if STAGES
    for (int b = 0; b < num_batches; ++b) {
        issue(b + STAGES - 1);
        cp_async_wait<STAGES - 1>();  // this lane's copies of batch b have landed
        const uint4* slot = ring + (b % STAGES) * (UNROLL * ROWS * 32);
        Raw wb[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wb[u][r] = slot[(u * ROWS + r) * 32];
        fma_batch(kk0 + b * BATCH, wb);
    }
#else
    for (int kk = kk0; kk < kc; kk += 32 * VEC * UNROLL) {
        if (!RE_PDL_EARLY || kk != kk0) {  // the first loads were issued before RE_PDL_WAIT
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int k = kk + u * 32 * VEC;
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
                    wv[u][r] = k < kc ? load_stream(wrow[r] + k) : zero_raw();
            }
        }
        fma_batch(kk, wv);
    }
#endif

    RE_TL_MARK(w, 2);
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) {
            float v = acc[r][m];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[r][m] = v;
        }

    if (split == 1) {
#if EPILOGUE == 1 || EPILOGUE == 2
#pragma unroll
        for (int pr = 0; pr < ROWS / 2; ++pr)
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                const int n = n_base + 2 * pr;
                if (((pr * MB + m) & 31) == lane && n < N && m < mb)
                    PAIR_STORE(acc[2 * pr][m], acc[2 * pr + 1][m], m0 + m, n,
                               IS_PRE(pr * MB + m), aux0);
            }
        return;
#endif
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                const int n = n_base + r;
                if (((r * MB + m) & 31) == lane && n < N && m < mb) {
                    const int mm = m0 + m;
                    y[(size_t)mm * N + n] = from_f32<T>(epilogue(acc[r][m], bias, res, mm, n, N));
                }
            }
        return;
    }

    // split-K: publish partials, the last split of this tile sums them and runs the epilogue
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) {
            const int n = n_base + r;
            if (((r * MB + m) & 31) == lane && n < N && m < mb)
                ws[((size_t)s * M + m0 + m) * N + n] = acc[r][m];
        }
    __threadfence();
    __syncthreads();
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    if (tid == 0) s_is_last = atomicAdd(&counters[tile], 1u) == (unsigned)(split - 1);
    __syncthreads();
    if (!s_is_last) return;
    __threadfence();
    const int n_tile = blockIdx.x * WARPS * ROWS;
#if EPILOGUE == 1 || EPILOGUE == 2
    constexpr int PAIRS = WARPS * ROWS / 2;
    for (int i = tid; i < PAIRS * mb; i += WARPS * 32) {
        const int m = i / PAIRS, n = n_tile + 2 * (i - m * PAIRS);
        if (n >= N) continue;
        const int mm = m0 + m;
        float v0 = 0.f, v1 = 0.f;
        for (int t = 0; t < split; ++t) {
            v0 += __ldcg(ws + ((size_t)t * M + mm) * N + n);
            v1 += __ldcg(ws + ((size_t)t * M + mm) * N + n + 1);
        }
        PAIR_STORE(v0, v1, mm, n, false, aux0);
    }
#else
    for (int i = tid; i < WARPS * ROWS * mb; i += WARPS * 32) {
        const int m = i / (WARPS * ROWS), n = n_tile + i - m * (WARPS * ROWS);
        if (n >= N) continue;
        const int mm = m0 + m;
        float v = 0.f;
        for (int t = 0; t < split; ++t) v += __ldcg(ws + ((size_t)t * M + mm) * N + n);
        y[(size_t)mm * N + n] = from_f32<T>(epilogue(v, bias, res, mm, n, N));
    }
#endif
    if (tid == 0) counters[tile] = 0u;
}
