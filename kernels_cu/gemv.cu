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
//          K % 8 == 0 and 16-byte aligned pointers; 1: scalar fallback), HAS_BIAS, HAS_RES.
//
// Variants / when each wins (H100, see docs/flat_gemm_notes.md):
//   1. split = 1: N large enough that cdiv(N, WARPS*ROWS) blocks fill the 132 SMs several times.
//   2. split > 1 (split-K with in-kernel fix-up by the last arriving block): small N, or x slice
//      too large for shared memory (MB * K * 2 bytes > 48 KB).
//   M <= 2 (M <= 4 on some shapes) is where this kernel beats the tensor-core flat GEMM; above
//   that the FP32 FMAs (M per weight element) become the bottleneck.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

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
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef HAS_RES
#define HAS_RES 0
#endif

#if DTYPE_BF16
typedef __nv_bfloat16 T;
__device__ __forceinline__ float2 word_to_float2(unsigned u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}
__device__ __forceinline__ float elem_to_float(T v) { return __bfloat162float(v); }
__device__ __forceinline__ T float_to_elem(float v) { return __float2bfloat16_rn(v); }
#else
typedef __half T;
__device__ __forceinline__ float2 word_to_float2(unsigned u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
}
__device__ __forceinline__ float elem_to_float(T v) { return __half2float(v); }
__device__ __forceinline__ T float_to_elem(float v) { return __float2half_rn(v); }
#endif

#if VEC == 8
typedef uint4 Raw;  // 8 elements
__device__ __forceinline__ Raw load_stream(const T* p) {
    Raw r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}
__device__ __forceinline__ Raw load_plain(const T* p) { return *reinterpret_cast<const Raw*>(p); }
__device__ __forceinline__ Raw zero_raw() { return make_uint4(0u, 0u, 0u, 0u); }
__device__ __forceinline__ void unpack(Raw r, float f[8]) {
    float2 a = word_to_float2(r.x), b = word_to_float2(r.y);
    float2 c = word_to_float2(r.z), d = word_to_float2(r.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}
#else
typedef T Raw;  // one element
__device__ __forceinline__ Raw load_stream(const T* p) { return *p; }
__device__ __forceinline__ Raw load_plain(const T* p) { return *p; }
__device__ __forceinline__ Raw zero_raw() { return float_to_elem(0.f); }
__device__ __forceinline__ void unpack(Raw r, float f[1]) { f[0] = elem_to_float(r); }
#endif

__device__ __forceinline__ float epilogue(float v, const T* __restrict__ bias,
                                          const T* res, int m, int n, int N) {
#if HAS_BIAS
    v += elem_to_float(bias[n]);
#endif
#if HAS_RES
    v += elem_to_float(res[(size_t)m * N + n]);
#endif
    return v;
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
            const T* res, T* y, float* __restrict__ ws, unsigned* __restrict__ counters,
            int M, int N, int K, int k_chunk) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* xs = reinterpret_cast<T*>(smem_raw);  // [MB, k_chunk]
    __shared__ unsigned s_is_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int split = gridDim.y, s = blockIdx.y;
    const int m0 = blockIdx.z * MB;
    const int mb = min(MB, M - m0);
    const int k0 = s * k_chunk;
    const int kc = max(0, min(K, k0 + k_chunk) - k0);

    // x[m0:m0+MB, k0:k0+k_chunk] -> shared, zero beyond M and K
    for (int i = tid * VEC; i < MB * k_chunk; i += WARPS * 32 * VEC) {
        const int m = i / k_chunk, kk = i - m * k_chunk;
        Raw v = zero_raw();
        if (m < mb && kk < kc) v = load_plain(x + (size_t)(m0 + m) * K + k0 + kk);
        *reinterpret_cast<Raw*>(xs + i) = v;
    }
    __syncthreads();

    const int n_base = (blockIdx.x * WARPS + warp) * ROWS;
    const T* wrow[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) wrow[r] = w + (size_t)min(n_base + r, N - 1) * K + k0;

    float acc[ROWS][MB];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) acc[r][m] = 0.f;

    for (int kk = lane * VEC; kk < kc; kk += 32 * VEC * UNROLL) {
        Raw wv[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kk + u * 32 * VEC;
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wv[u][r] = k < kc ? load_stream(wrow[r] + k) : zero_raw();
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kk + u * 32 * VEC;
            if (k < kc) {
                float wf[ROWS][VEC];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) unpack(wv[u][r], wf[r]);
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
    }

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
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                const int n = n_base + r;
                if (((r * MB + m) & 31) == lane && n < N && m < mb) {
                    const int mm = m0 + m;
                    y[(size_t)mm * N + n] = float_to_elem(epilogue(acc[r][m], bias, res, mm, n, N));
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
    for (int i = tid; i < WARPS * ROWS * mb; i += WARPS * 32) {
        const int m = i / (WARPS * ROWS), n = n_tile + i - m * (WARPS * ROWS);
        if (n >= N) continue;
        const int mm = m0 + m;
        float v = 0.f;
        for (int t = 0; t < split; ++t) v += __ldcg(ws + ((size_t)t * M + mm) * N + n);
        y[(size_t)mm * N + n] = float_to_elem(epilogue(v, bias, res, mm, n, N));
    }
    if (tid == 0) counters[tile] = 0u;
}
