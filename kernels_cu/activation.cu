// activation.cu: elementwise ops of the MLP and the residual stream.
//
//   silu_mul_kernel:  out[t, i] = silu(g) * u,  g = gate_up[t, i], u = gate_up[t, I + i],
//                     silu(g) = g / (1 + exp(-g))
//                     gate_up [T, 2I] dtype_t, out [T, I] dtype_t
//   add_kernel:       out[i] = x[i] + y[i]      x, y, out [n] dtype_t (may alias x or y)
//
// Grid: 1-D, one thread per VEC elements, cdiv(n / VEC, 256) blocks of 256.
// Variants: VEC=8 (16-byte access; silu_mul needs I % 8 == 0, add needs n % 8 == 0 and aligned
// pointers), VEC=1 (anything else). Both ops are bandwidth bound; computed in float, rounded once.
#include "common.cuh"

#ifndef VEC
#define VEC 8
#endif

template <int N>
__device__ __forceinline__ void load_v(const dtype_t* p, float* f) {
    if constexpr (N == 8) load8(p, f);
    else f[0] = to_f32(*p);
}

template <int N>
__device__ __forceinline__ void store_v(dtype_t* p, const float* f) {
    if constexpr (N == 8) store8(p, f);
    else *p = from_f32<dtype_t>(f[0]);
}

extern "C" __global__ void silu_mul_kernel(const dtype_t* __restrict__ gate_up,
                                           dtype_t* __restrict__ out, int num_tokens,
                                           int inter) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int vecs_per_row = inter / VEC;
    if (v >= (long long)num_tokens * vecs_per_row) return;
    const long long t = v / vecs_per_row;
    const int i = (int)(v - t * vecs_per_row) * VEC;
    float g[VEC], u[VEC];
    load_v<VEC>(gate_up + t * 2 * inter + i, g);
    load_v<VEC>(gate_up + t * 2 * inter + inter + i, u);
#pragma unroll
    for (int e = 0; e < VEC; ++e) g[e] = g[e] / (1.f + __expf(-g[e])) * u[e];
    store_v<VEC>(out + t * inter + i, g);
}

extern "C" __global__ void add_kernel(const dtype_t* x, const dtype_t* y, dtype_t* out,
                                      long long n) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n / VEC) return;
    float a[VEC], b[VEC];
    load_v<VEC>(x + v * VEC, a);
    load_v<VEC>(y + v * VEC, b);
#pragma unroll
    for (int e = 0; e < VEC; ++e) a[e] += b[e];
    store_v<VEC>(out + v * VEC, a);
}
