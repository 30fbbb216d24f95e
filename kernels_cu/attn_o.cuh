// attn_o.cuh: the o_proj half of the fused decode attention + o_proj kernels (the O_PROJ builds
// of decode_attention.cu and decode_attention_mma.cu; rawengine/backends/cuda/attention_o.py).
// Include after decode_common.cuh. ROWS: o_proj rows per block (default 48).
//
//   ATTN_O_PARAMS    decode_attention_o_kernel's parameters: one list for both builds, which
//                    share one launcher (attention_o.py)
//   attn_o_load_wo   the block's Wo slice [ROWS][GD] -> shared memory (cp.async, one group;
//                    before RE_PDL_WAIT: weights are constant during a step)
//   attn_o_clear     zero `clear` [n_clear] int64 over the grid (after RE_PDL_WAIT)
//   attn_o_finish    warp states (BlockSmem) -> a = o / l rounded to dtype_t -> y rows
//                    [n0, n0 + ROWS) += Wo_slice a, one fixed_add per row
// GD = GROUP * HEAD_DIM: the Wo columns of the block's KV head group.
#pragma once
#include "fixed_sum.cuh"
#include "mma.cuh"
#ifndef AO_STAMP
#define AO_STAMP(i)
#endif

#ifndef ROWS
#define ROWS 48
#endif
#define ATTN_O_PARAMS                                                                         \
    const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,                       \
        const dtype_t* __restrict__ v_cache, const int* __restrict__ block_tables,            \
        const int* __restrict__ seq_lens, const dtype_t* __restrict__ w_o,                    \
        long long* __restrict__ acc, long long* __restrict__ clear, int n_clear,              \
        int num_q_heads, int num_kv_heads, int max_blocks, int log2_bs, int hidden,           \
        float scale_log2

constexpr int GD = GROUP * HEAD_DIM;
static_assert(GD % 8 == 0, "16-byte pieces");

__device__ __forceinline__ void attn_o_load_wo(dtype_t* wo_s, const dtype_t* __restrict__ w_o,
                                               int n0, int hidden, int num_q_heads, int head0) {
    for (int i = threadIdx.x; i < ROWS * (GD / 8); i += NUM_THREADS) {
        const int r = i / (GD / 8), c = (i - r * (GD / 8)) * 8;
        const bool ok = n0 + r < hidden;
        cp_async16(wo_s + r * GD + c,
                   w_o + (size_t)(ok ? n0 + r : 0) * num_q_heads * HEAD_DIM + head0 * HEAD_DIM + c,
                   ok);
    }
    cp_async_commit();
}

__device__ __forceinline__ void attn_o_clear(long long* __restrict__ clear, int n_clear) {
    const int nblk = gridDim.x * gridDim.y * gridDim.z;
    const int bid = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    for (int i = bid * NUM_THREADS + threadIdx.x; i < n_clear; i += nblk * NUM_THREADS) clear[i] = 0;
}

// Every thread calls it (barriers), after the warp states are in sm and a __syncthreads.
__device__ __forceinline__ void attn_o_finish(const BlockSmem& sm, float* a_s,
                                              const dtype_t* wo_s, long long* __restrict__ acc,
                                              int b, int n0, int hidden) {
    const int tid = threadIdx.x;
    // a = merged o / l, rounded to dtype_t where the unfused attention kernel rounds its output
    for (int e = tid; e < GROUP * D4; e += NUM_THREADS) {
        float M, lsum;
        float4 v;
        merge_warps(sm, e / D4, e % D4, M, lsum, v);
        const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
        a_s[4 * e + 0] = to_f32(from_f32<dtype_t>(v.x * inv));
        a_s[4 * e + 1] = to_f32(from_f32<dtype_t>(v.y * inv));
        a_s[4 * e + 2] = to_f32(from_f32<dtype_t>(v.z * inv));
        a_s[4 * e + 3] = to_f32(from_f32<dtype_t>(v.w * inv));
    }
    cp_async_wait<0>();  // the Wo slice
    __syncthreads();
    AO_STAMP(3);
    // y rows: SEG lanes per row, each on every SEG-th 8-column piece, NUM_THREADS / SEG rows a
    // pass; the passes are unrolled, so every row's loads and FMAs are in flight together and the
    // phase costs one shared-memory round trip and log2(SEG) shuffles, not a chain per row
    // (one warp per row measured ~0.15 us per row on the H100: docs/launch_notes.md).
    constexpr int SEG = 8, PIECES = GD / 8, RPP = NUM_THREADS / SEG;
    constexpr int PASSES = (ROWS + RPP - 1) / RPP;
    const int seg = tid % SEG;
    long long* out = acc + (size_t)b * hidden;
    float s[PASSES];
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
        const int r = p * RPP + tid / SEG;
        s[p] = 0.f;
        if (r < ROWS) {
#pragma unroll
            for (int c = seg; c < PIECES; c += SEG) {
                float w[8];
                load8(wo_s + r * GD + c * 8, w);
                const float4 x0 = *reinterpret_cast<const float4*>(a_s + c * 8);
                const float4 x1 = *reinterpret_cast<const float4*>(a_s + c * 8 + 4);
                s[p] = fmaf(w[0], x0.x, fmaf(w[1], x0.y, fmaf(w[2], x0.z, fmaf(w[3], x0.w, s[p]))));
                s[p] = fmaf(w[4], x1.x, fmaf(w[5], x1.y, fmaf(w[6], x1.z, fmaf(w[7], x1.w, s[p]))));
            }
        }
    }
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
#pragma unroll
        for (int x = SEG / 2; x > 0; x >>= 1) s[p] += RE_SHFL_XOR(s[p], x);
        const int r = p * RPP + tid / SEG;
        if (seg == 0 && r < ROWS && n0 + r < hidden) fixed_add(out + n0 + r, s[p]);
    }
}
