// embedding.cu: token embedding lookup.
//
//   out[t, :] = table[ids[t], :]
//   ids [T] int32, table [V, H] dtype_t, out [T, H] dtype_t
//
// Grid: x = T (one block per token), block 128 threads striding over the row.
// Variants (define VEC):
//   VEC=8  16-byte copies; needs H % 8 == 0 (row starts 16-byte aligned). Every real model.
//   VEC=1  2-byte copies; any H (tiny test models).
// A pure copy: bandwidth bound, 2 * T * H * 2 bytes.
#include "common.cuh"

#ifndef VEC
#define VEC 8
#endif

extern "C" __global__ void embedding_kernel(const int* __restrict__ ids,
                                            const dtype_t* __restrict__ table,
                                            dtype_t* __restrict__ out, int hidden) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const long long t = blockIdx.x;
    const long long row = ids[t];
#if VEC == 8
    const uint4* src = reinterpret_cast<const uint4*>(table + row * hidden);
    uint4* dst = reinterpret_cast<uint4*>(out + t * hidden);
    for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) dst[i] = src[i];
#else
    const dtype_t* src = table + row * hidden;
    dtype_t* dst = out + t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
#endif
}
