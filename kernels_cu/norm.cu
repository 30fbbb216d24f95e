// norm.cu: RMSNorm, optionally fused with the residual add that precedes it.
//
//   plain:            y = x / sqrt(mean(x^2) + eps) * w
//   RESIDUAL=1:       r = x + residual (rounded to dtype_t, written out); y = rmsnorm(r) * w
//   x, residual, y, r_out [T, H] dtype_t (row-major, contiguous);  w [H] dtype_t
//
// Grid: x = T (one block per row). Block: THREADS threads; each thread keeps NPT vectors of
// VEC elements in registers, so the row is read once and written once (no second pass over
// global memory). The launcher picks THREADS and NPT = cdiv(H / VEC, THREADS).
// The sum of squares uses the rounded r, as HF does (it normalises the dtype_t residual stream).
// Variants: VEC=8 (16-byte access, H % 8 == 0: every real model), VEC=1 (any H).
// FIXED_IN=1 (VEC 8 only): x is int64 fixed sums [R, T, H] (fixed_sum.cuh; the fused MLP's output),
// rounded to dtype_t as the unfused down GEMV stores it, and cleared as it is read (this is its
// last reader: one block per row, each element read by one thread). It also zeroes `clear`
// [n_clear] int64, a fixed sum whose last reader finished before it (fixed_sum.py pending()).
// Bandwidth bound: (2 or 4) * T * H * 2 bytes.
#include "common.cuh"

#ifndef VEC
#define VEC 8
#endif
#ifndef NPT
#define NPT 2
#endif
#ifndef RESIDUAL
#define RESIDUAL 0
#endif
#ifndef FIXED_IN
#define FIXED_IN 0
#endif
#if FIXED_IN
#if VEC != 8
#error "FIXED_IN needs VEC 8"
#endif
#include "fixed_sum.cuh"
typedef long long x_t;
#else
typedef const dtype_t x_t;
#endif

template <int N>
__device__ __forceinline__ void load_vec(const dtype_t* p, float* f) {
    if constexpr (N == 8) load8(p, f);
    else f[0] = to_f32(*p);
}

template <int N>
__device__ __forceinline__ void store_vec(dtype_t* p, const float* f) {
    if constexpr (N == 8) store8(p, f);
    else *p = from_f32<dtype_t>(f[0]);
}

extern "C" __global__ void rmsnorm_kernel(x_t* __restrict__ x,
                                          const dtype_t* __restrict__ residual,
                                          const dtype_t* __restrict__ w,
                                          dtype_t* __restrict__ y,
                                          dtype_t* __restrict__ r_out, int hidden, float eps
#if FIXED_IN
                                          , long long* __restrict__ clear, int n_clear
#endif
) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
#if FIXED_IN
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_clear; i += gridDim.x * blockDim.x)
        clear[i] = 0;
#endif
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * hidden;
    const int num_vec = hidden / VEC;
    float v[NPT][VEC];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= num_vec) continue;
#if FIXED_IN
        fixed_load8(x + base + i * VEC, (size_t)gridDim.x * hidden, v[j]);
        fixed_clear8(x + base + i * VEC, (size_t)gridDim.x * hidden);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = to_f32(from_f32<dtype_t>(v[j][e]));
#else
        load_vec<VEC>(x + base + i * VEC, v[j]);
#endif
#if RESIDUAL
        float res[VEC];
        load_vec<VEC>(residual + base + i * VEC, res);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = to_f32(from_f32<dtype_t>(v[j][e] + res[e]));
        store_vec<VEC>(r_out + base + i * VEC, v[j]);
#endif
#pragma unroll
        for (int e = 0; e < VEC; ++e) ss += v[j][e] * v[j][e];
    }
    const float inv_rms = rsqrtf(block_sum(ss, scratch) / hidden + eps);
#pragma unroll
    for (int j = 0; j < NPT; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= num_vec) continue;
        float wv[VEC];
        load_vec<VEC>(w + i * VEC, wv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = v[j][e] * inv_rms * wv[e];
        store_vec<VEC>(y + base + i * VEC, v[j]);
    }
}
