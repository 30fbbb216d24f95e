// rope.cu: rotary embedding on q and k (HF "rotate_half" layout), fused with writing K and V
// into the paged KV cache.
//
//   For head vector x of token t at position p = positions[t], i < D/2, c = cos[p, i], s = sin[p, i]:
//     x'[i]       = x[i] * c - x[i + D/2] * s
//     x'[i + D/2] = x[i + D/2] * c + x[i] * s
//   q' -> q_out;  k' -> k_cache;  v -> v_cache (copied), at slot = slot_mapping[t]:
//     block = slot / BS, offset = slot % BS; a slot < 0 is a padding token: K/V not written.
//
//   qkv      [T, (Hq + 2*Hkv) * D] dtype_t  = [q heads | k heads | v heads]
//   cos, sin [max_pos, D/2] float32
//   q_out    [T, Hq, D] dtype_t
//   k_cache, v_cache [NB, Hkv, BS, D] dtype_t
//
// Grid: x = T, y = cdiv((Hq + 2*Hkv) * D/2 / VEC, 128); block 128. One thread = VEC rotation
// pairs (i .. i+VEC-1 and their partners i+D/2 ..) of one head, so every element is read and
// written exactly once.
// Variants: HEAD_DIM (compile-time D); VEC=8 (16-byte access, needs D/2 % 8 == 0, i.e. D = 16,
// 32, 64, 128, 256), VEC=1 (small D such as 8). Bandwidth bound.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef VEC
#define VEC 8
#endif
#define HALF_D (HEAD_DIM / 2)
#define CHUNKS (HALF_D / VEC)  // threads per head

template <int N>
__device__ __forceinline__ void ld(const dtype_t* p, float* f) {
    if constexpr (N == 8) load8(p, f);
    else f[0] = to_f32(*p);
}

template <int N>
__device__ __forceinline__ void st(dtype_t* p, const float* f) {
    if constexpr (N == 8) store8(p, f);
    else *p = from_f32<dtype_t>(f[0]);
}

extern "C" __global__ void rope_kv_write_kernel(
    const dtype_t* __restrict__ qkv, const int* __restrict__ positions,
    const int* __restrict__ slot_mapping, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, dtype_t* __restrict__ q_out,
    dtype_t* __restrict__ k_cache, dtype_t* __restrict__ v_cache, int num_q_heads,
    int num_kv_heads, int block_size) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const int t = blockIdx.x;
    const int item = blockIdx.y * blockDim.x + threadIdx.x;
    const int num_heads = num_q_heads + 2 * num_kv_heads;
    if (item >= num_heads * CHUNKS) return;
    const int head = item / CHUNKS;
    const int i = (item % CHUNKS) * VEC;
    const dtype_t* src = qkv + (long long)t * num_heads * HEAD_DIM + head * HEAD_DIM;
    float a[VEC], b[VEC];
    ld<VEC>(src + i, a);
    ld<VEC>(src + i + HALF_D, b);

    dtype_t* dst;
    if (head < num_q_heads) {
        dst = q_out + ((long long)t * num_q_heads + head) * HEAD_DIM;
    } else {
        const int slot = slot_mapping[t];
        if (slot < 0) return;
        const bool is_v = head >= num_q_heads + num_kv_heads;
        const int kvh = head - num_q_heads - (is_v ? num_kv_heads : 0);
        const long long blk = slot / block_size, off = slot % block_size;
        dst = (is_v ? v_cache : k_cache) + ((blk * num_kv_heads + kvh) * block_size + off) * HEAD_DIM;
        if (is_v) {  // V is not rotated
            st<VEC>(dst + i, a);
            st<VEC>(dst + i + HALF_D, b);
            return;
        }
    }
    const long long p = positions[t];
    float c[VEC], s[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        c[e] = cos_table[p * HALF_D + i + e];
        s[e] = sin_table[p * HALF_D + i + e];
    }
    float ra[VEC], rb[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        ra[e] = a[e] * c[e] - b[e] * s[e];
        rb[e] = b[e] * c[e] + a[e] * s[e];
    }
    st<VEC>(dst + i, ra);
    st<VEC>(dst + i + HALF_D, rb);
}
