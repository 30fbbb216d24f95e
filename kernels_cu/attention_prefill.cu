// attention_prefill.cu: causal GQA attention over the paged KV cache, any query length
// (prefill, chunked prefill, decode) and any KV length. fp32 accumulation, online softmax.
//
//   o[t, h] = softmax_j(scale * q[t, h] . k[j, h/G]) v[j, h/G],  j <= pos(t)
//   pos(t) = seq_len_b - qlen_b + (t - query_start[b]),   G = Hq / Hkv
//
//   q            [T, Hq, D] dtype_t
//   k/v_cache    [NB, Hkv, BS, D] dtype_t; key j of sequence b lives in block
//                block_tables[b, j / BS] at offset j % BS
//   block_tables [B, max_blocks] int32;  query_start [B+1], seq_lens [B] int32
//   out          [T, Hq * D] dtype_t
//
// Variant 1 (this file, attention_prefill_kernel): CUDA cores, the simplest correct kernel and
// the reference for faster ones. Grid: x = cdiv(max_query_len * G, ROWS_PER_BLOCK), y = Hkv,
// z = B. A block owns ROWS_PER_BLOCK "rows" (query token, head of the GQA group) of one KV
// head, so each K/V tile read from the cache serves the whole group. Each warp owns
// ROWS_PER_WARP rows. Per KV tile of 32 keys: lane j scores key j against the warp's rows
// (q from shared memory, broadcast), the warp does the online-softmax update with shuffles,
// then each lane accumulates HEAD_DIM/32 output dims over the 32 keys.
// Wins: decode with tiny batches is poor here (only B * Hkv blocks, no split-KV): that is the
// decode kernel's job. Prefill: correct at any size, far from tensor-core speed.
// Defines: HEAD_DIM (multiple of 8), ROWS_PER_WARP, NUM_WARPS.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef ROWS_PER_WARP
#define ROWS_PER_WARP 4
#endif
#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#define TILE_K 32
#define ROWS_PER_BLOCK (NUM_WARPS * ROWS_PER_WARP)
#define K_STRIDE (HEAD_DIM + 8)  // +16 bytes per row: lane j's 16-byte K reads hit distinct banks
#define DIMS_PER_LANE ((HEAD_DIM + 31) / 32)
#define LOG2E 1.4426950408889634f

// Load this lane's DIMS_PER_LANE output dims of V row j (shared memory) as floats.
__device__ __forceinline__ void load_v_dims(const dtype_t* row, int lane, float* f) {
#pragma unroll
    for (int k = 0; k < DIMS_PER_LANE; ++k) {
        const int d = lane * DIMS_PER_LANE + k;
        f[k] = d < HEAD_DIM ? to_f32(row[d]) : 0.f;
    }
}

// Cooperative load of keys k0 .. k0+TILE_K-1 into shared memory; keys >= kv_end are zeros
// (never NaN: a masked key still meets p = 0 in the P.V product).
__device__ __forceinline__ void load_kv_tile(dtype_t* k_s, dtype_t* v_s, const dtype_t* k_cache,
                                             const dtype_t* v_cache, const int* block_table,
                                             int k0, int kv_end, int kvh, int num_kv_heads,
                                             int block_size) {
    constexpr int CHUNKS = HEAD_DIM / 8;
    for (int idx = threadIdx.x; idx < TILE_K * CHUNKS; idx += blockDim.x) {
        const int j = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        const int p = k0 + j;
        uint4 kk = make_uint4(0, 0, 0, 0), vv = kk;
        if (p < kv_end) {
            const long long blk = block_table[p / block_size];
            const long long src =
                ((blk * num_kv_heads + kvh) * block_size + p % block_size) * HEAD_DIM + c;
            kk = *reinterpret_cast<const uint4*>(k_cache + src);
            vv = *reinterpret_cast<const uint4*>(v_cache + src);
        }
        *reinterpret_cast<uint4*>(k_s + j * K_STRIDE + c) = kk;
        *reinterpret_cast<uint4*>(v_s + j * HEAD_DIM + c) = vv;
    }
}

// One KV tile for one warp: lane j scores key k0+j against the warp's rows (q_w: its
// ROWS_PER_WARP pre-scaled rows in shared memory), online-softmax update, then P.V.
__device__ __forceinline__ void warp_tile(const dtype_t* k_s, const dtype_t* v_s,
                                          const float (*q_w)[HEAD_DIM], int k0, int lane,
                                          const int (&pos)[ROWS_PER_WARP],
                                          float (&m)[ROWS_PER_WARP], float (&l)[ROWS_PER_WARP],
                                          float (&o)[ROWS_PER_WARP][DIMS_PER_LANE]) {
    float s[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) s[r] = 0.f;
#pragma unroll 4
    for (int c = 0; c < HEAD_DIM; c += 8) {
        float kf[8];
        load8(k_s + lane * K_STRIDE + c, kf);
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const float4 qa = *reinterpret_cast<const float4*>(&q_w[r][c]);
            const float4 qb = *reinterpret_cast<const float4*>(&q_w[r][c + 4]);
            s[r] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] +
                    qb.x * kf[4] + qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
        }
    }
    float p[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const float sr = k0 + lane <= pos[r] ? s[r] : NEG_INF;
        // key 0 is in the first tile and visible to every row, so m_new is finite
        const float m_new = fmaxf(m[r], warp_max(sr));
        const float alpha = exp2f(m[r] - m_new);  // exp2(-inf) = 0 on the first tile
        p[r] = exp2f(sr - m_new);
        l[r] = l[r] * alpha + warp_sum(p[r]);
        m[r] = m_new;
#pragma unroll
        for (int k = 0; k < DIMS_PER_LANE; ++k) o[r][k] *= alpha;
    }
#pragma unroll 8
    for (int j = 0; j < TILE_K; ++j) {
        float vf[DIMS_PER_LANE];
        load_v_dims(v_s + j * HEAD_DIM, lane, vf);
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const float pj = RE_SHFL(p[r], j);
#pragma unroll
            for (int k = 0; k < DIMS_PER_LANE; ++k) o[r][k] += pj * vf[k];
        }
    }
}

extern "C" __global__ void __launch_bounds__(NUM_WARPS * 32)
attention_prefill_kernel(const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,
                         const dtype_t* __restrict__ v_cache, const int* __restrict__ block_tables,
                         const int* __restrict__ query_start, const int* __restrict__ seq_lens,
                         dtype_t* __restrict__ out, float scale, int num_q_heads,
                         int num_kv_heads, int block_size, int max_blocks) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    __shared__ __align__(16) float q_s[ROWS_PER_BLOCK][HEAD_DIM];
    __shared__ __align__(16) dtype_t k_s[TILE_K * K_STRIDE];
    __shared__ __align__(16) dtype_t v_s[TILE_K * HEAD_DIM];

    const int b = blockIdx.z, kvh = blockIdx.y;
    const int group = num_q_heads / num_kv_heads;
    const int q0 = query_start[b], qlen = query_start[b + 1] - q0;
    const int seq_len = seq_lens[b];
    const int num_rows = qlen * group, row0 = blockIdx.x * ROWS_PER_BLOCK;
    if (row0 >= num_rows) return;  // uniform over the block
    const int* block_table = block_tables + (long long)b * max_blocks;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    // q rows, pre-scaled so that exp2(score - max) is the softmax numerator
    const float qscale = scale * LOG2E;
    for (int idx = threadIdx.x; idx < ROWS_PER_BLOCK * HEAD_DIM; idx += blockDim.x) {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM, row = row0 + r;
        float v = 0.f;
        if (row < num_rows) {
            const int h = kvh * group + row % group;
            v = to_f32(q[((long long)(q0 + row / group) * num_q_heads + h) * HEAD_DIM + d]) * qscale;
        }
        q_s[r][d] = v;
    }
    const int first_pos = seq_len - qlen;
    const int kv_end = first_pos + (min(row0 + ROWS_PER_BLOCK, num_rows) - 1) / group + 1;

    // Rows past num_rows pretend to sit at position 0: they see key 0 only, stay finite, and
    // are never stored.
    int pos[ROWS_PER_WARP];
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], o[ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = row0 + warp * ROWS_PER_WARP + r;
        pos[r] = row < num_rows ? first_pos + row / group : 0;
        m[r] = NEG_INF;
        l[r] = 0.f;
#pragma unroll
        for (int k = 0; k < DIMS_PER_LANE; ++k) o[r][k] = 0.f;
    }

    for (int k0 = 0; k0 < kv_end; k0 += TILE_K) {
        __syncthreads();  // previous tile fully consumed (and q_s written, first time)
        load_kv_tile(k_s, v_s, k_cache, v_cache, block_table, k0, kv_end, kvh, num_kv_heads,
                     block_size);
        __syncthreads();
        // No per-warp causal skip: a block's rows span <= ROWS_PER_BLOCK tokens, so at most
        // one tile is wasted, and the branch made ptxas spill.
        warp_tile(k_s, v_s, &q_s[warp * ROWS_PER_WARP], k0, lane, pos, m, l, o);
    }

#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = row0 + warp * ROWS_PER_WARP + r;
        if (row >= num_rows) continue;
        const int h = kvh * group + row % group;
        dtype_t* dst = out + ((long long)(q0 + row / group) * num_q_heads + h) * HEAD_DIM;
        const float inv_l = 1.f / l[r];
#pragma unroll
        for (int k = 0; k < DIMS_PER_LANE; ++k) {
            const int d = lane * DIMS_PER_LANE + k;
            if (d < HEAD_DIM) dst[d] = from_f32<dtype_t>(o[r][k] * inv_l);
        }
    }
}
