// decode_common.cuh: the block- and split-level half of split-KV decode attention, shared by
// decode_attention.cu (CUDA cores) and decode_attention_mma.cu (tensor cores), so both kernels
// keep one grid, one chunking rule, one workspace layout and one counter protocol and the
// launcher can pick either. Include after common.cuh, once HEAD_DIM, GROUP and NUM_WARPS are
// defined. Layouts and the protocol are described at the top of decode_attention.cu.
//
//   NUM_THREADS, D4                        threads per block, float4s per head row
//   exp2_approx(x)                         2^x (ex2.approx.ftz; 2^-inf = +0)
//   merge_weight(m, M)                     2^(m - M), 0 for an empty state (m = -inf)
//   BlockSmem                              per-warp states (o, m, l, m_true) of one block
//   merge_warps(sm, g, d4, M, l, acc)      block state of head g, dims 4*d4 .. 4*d4+3
//   store_out4(p, acc, l)                  acc / l -> 4 dtype_t (l = 0: zeros)
//   require_dynamic_smem(bytes)            trap when the launch gave less dynamic shared memory
//   write_partial(sm, part_o, part_ml, i)  the block's state as partial rows i .. i + GROUP - 1
//   merge_partials(part_o, part_ml, n, o)  o of the block's heads from n partial states
//   finish_block(sm, ...)                  everything after the warp states are in sm: direct
//                                          write (one active split), or partial write, counter
//                                          and the last block's split merge + counter reset
#pragma once

#if !defined(HEAD_DIM) || !defined(GROUP) || !defined(NUM_WARPS)
#error "define HEAD_DIM, GROUP and NUM_WARPS before including decode_common.cuh"
#endif

constexpr int NUM_THREADS = NUM_WARPS * 32;
constexpr int D4 = HEAD_DIM / 4;  // float4s per head row

// 2^x; ex2.approx gives 2^-inf = +0, which masked keys rely on.
// The split's token range [start, end) under the device-side chunk rule both decode kernels
// share (see decode_attention.cu): c = max(cdiv(len, S), min_chunk), rounded up to STEP1_ when
// c <= STEP_ else to STEP_; num_active = cdiv(len, chunk) (>= 1). Returns false for an empty
// split. STEP_ / STEP1_ are template constants so the roundings stay constant divisions.
template <int STEP_, int STEP1_>
__device__ __forceinline__ bool split_range(int len, int num_splits, int split, int min_chunk,
                                            int& start, int& end, int& num_active) {
    int chunk = max(cdiv(max(len, 1), num_splits), min_chunk);
    chunk = chunk <= STEP_ ? cdiv(chunk, STEP1_) * STEP1_ : cdiv(chunk, STEP_) * STEP_;
    num_active = max(1, cdiv(len, chunk));
    start = split * chunk;
    end = min(len, start + chunk);
    return split < num_active;
}

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Softmax state of one head over a set of keys (log2 units): m reference max, l = sum 2^(s-m),
// o = sum 2^(s-m) v. Merging weighs each state by 2^(m_i - M), M = max_i m_i. An empty state
// is (m = -inf, l = 0, o = 0); merging two empty states would give 2^(-inf - -inf) = NaN, so a
// -inf side gets weight 0 explicitly (all-empty merges to l = 0, written out as o = 0).
__device__ __forceinline__ float merge_weight(float m, float M) {
    return m == NEG_INF ? 0.f : exp2_approx(m - M);
}

struct __align__(16) BlockSmem {
    float o[NUM_WARPS][GROUP][HEAD_DIM];
    float m[NUM_WARPS][GROUP], l[NUM_WARPS][GROUP], m_true[NUM_WARPS][GROUP];
};

// Block state of head g, dims 4*d4 .. 4*d4+3, merged over the warps.
__device__ __forceinline__ void merge_warps(const BlockSmem& sm, int g, int d4, float& M,
                                            float& lsum, float4& acc) {
    M = NEG_INF;
#pragma unroll
    for (int w = 0; w < NUM_WARPS; ++w) M = fmaxf(M, sm.m[w][g]);
    lsum = 0.f;
    acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < NUM_WARPS; ++w) {
        const float wt = merge_weight(sm.m[w][g], M);
        const float4 v = reinterpret_cast<const float4*>(sm.o[w][g])[d4];
        lsum = fmaf(wt, sm.l[w][g], lsum);
        acc.x = fmaf(wt, v.x, acc.x);
        acc.y = fmaf(wt, v.y, acc.y);
        acc.z = fmaf(wt, v.z, acc.z);
        acc.w = fmaf(wt, v.w, acc.w);
    }
}

__device__ __forceinline__ void store_out4(dtype_t* p, float4 acc, float lsum) {
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;  // l = 0: empty sequence, o = 0
    union { uint2 u; dtype_t e[4]; } pk;
    pk.e[0] = from_f32<dtype_t>(acc.x * inv);
    pk.e[1] = from_f32<dtype_t>(acc.y * inv);
    pk.e[2] = from_f32<dtype_t>(acc.z * inv);
    pk.e[3] = from_f32<dtype_t>(acc.w * inv);
    *reinterpret_cast<uint2*>(p) = pk.u;
}

// The block's state (its warps' states in sm, merged) as partial rows part_base + g, g < GROUP:
// unnormalised o into part_o, (m, l) into part_ml. Every thread calls it.
__device__ __forceinline__ void write_partial(const BlockSmem& sm, float* __restrict__ part_o,
                                              float2* __restrict__ part_ml, size_t part_base) {
    for (int e = threadIdx.x; e < GROUP * D4; e += NUM_THREADS) {
        const int g = e / D4, d4 = e % D4;
        float M, lsum;
        float4 acc;
        merge_warps(sm, g, d4, M, lsum, acc);
        reinterpret_cast<float4*>(part_o + (part_base + g) * HEAD_DIM)[d4] = acc;
        if (d4 == 0) part_ml[part_base + g] = make_float2(M, lsum);
    }
}

// o of the GROUP heads at out (dtype_t [GROUP][HEAD_DIM]) from n partial states
// (part_o [n][GROUP][HEAD_DIM], part_ml [n][GROUP]; empty ones have m = -inf, l = 0), read
// through L2 (other blocks wrote them). Every thread calls it.
__device__ __forceinline__ void merge_partials(const float* part_o, const float2* pml, int n,
                                               dtype_t* __restrict__ out) {
    const float4* po = reinterpret_cast<const float4*>(part_o);
    for (int e = threadIdx.x; e < GROUP * D4; e += NUM_THREADS) {
        const int g = e / D4, d4 = e % D4;
        // One pass with a running max: the loads of 8 splits are independent and issue
        // together (one L2 round trip per 8 splits instead of two passes).
        float M = NEG_INF, lsum = 0.f;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int s = 0; s < n; ++s) {
            const float2 ml = __ldcg(pml + s * GROUP + g);
            const float4 v = __ldcg(po + (s * GROUP + g) * D4 + d4);
            const float M_new = fmaxf(M, ml.x);
            const float a = merge_weight(M, M_new), wt = merge_weight(ml.x, M_new);
            lsum = fmaf(wt, ml.y, lsum * a);
            acc.x = fmaf(wt, v.x, acc.x * a);
            acc.y = fmaf(wt, v.y, acc.y * a);
            acc.z = fmaf(wt, v.z, acc.z * a);
            acc.w = fmaf(wt, v.w, acc.w * a);
            M = M_new;
        }
        store_out4(out + 4 * e, acc, lsum);
    }
}

// The block's warp states are in sm (a __syncthreads after they were written). One active
// split writes o directly; otherwise the block writes its partial (o, m, l), counts itself in,
// and the last split of this (b, head block) to arrive merges all partials and resets the
// counter. Every thread of the block calls this (it contains barriers).
__device__ __forceinline__ void finish_block(const BlockSmem& sm, dtype_t* __restrict__ out,
                                             float* __restrict__ part_o,
                                             float2* __restrict__ part_ml,
                                             int* __restrict__ counters, int num_q_heads,
                                             int head0, int b, int hblk, int split,
                                             int num_splits, int num_active) {
    const size_t out_base = ((size_t)b * num_q_heads + head0) * HEAD_DIM;
    if (num_active == 1) {  // one split (or a short sequence): no workspace, no merge
        for (int e = threadIdx.x; e < GROUP * D4; e += NUM_THREADS) {
            float M, lsum;
            float4 acc;
            merge_warps(sm, e / D4, e % D4, M, lsum, acc);
            store_out4(out + out_base + 4 * e, acc, lsum);
        }
        return;
    }
    const size_t cell = (size_t)b * gridDim.y + hblk;  // (b, head block)
    write_partial(sm, part_o, part_ml, (cell * num_splits + split) * GROUP);
    // Publish the partials, then count this split in; the last one to arrive merges.
    __syncthreads();
    __shared__ int is_last;
    if (threadIdx.x == 0) is_last = arrive_acq_rel(counters + cell) == num_active - 1;
    __syncthreads();
    if (!is_last) return;
    merge_partials(part_o + cell * num_splits * GROUP * HEAD_DIM, part_ml + cell * num_splits * GROUP,
                   num_active, out + out_base);
    if (threadIdx.x == 0) counters[cell] = 0;  // ready for the next launch (graph replay)
}
