// attention_prefill_mma.cu: causal GQA prefill attention over the paged KV cache on tensor cores
// (FlashAttention-2 dataflow with mma.sync m16n8k16). Same function and layouts as
// attention_prefill.cu, which stays the reference and the fallback:
//
//   o[t, h] = softmax_j(scale * q[t, h] . k[j, h/G]) v[j, h/G],  j <= pos(t)
//   pos(t) = seq_len_b - qlen_b + (t - query_start[b]),   G = Hq / Hkv
//
//   q [T, Hq, D];  k/v_cache [NB, Hkv, BS, D] (key j of sequence b: block block_tables[b, j / BS],
//   offset j % BS);  block_tables [B, max_blocks], query_start [B+1], seq_lens [B] int32;
//   out [T, Hq * D].  D = HEAD_DIM, a multiple of 16 (64 and 128 are the tuned ones).
//
// Grid: x = cdiv(max_query_len, 64) query tiles, taken last-first (the causal tail tiles have
// the most keys, so they start first and the short ones fill in behind), y = Hq, z = B.
// Block: 4 warps; warp w owns query rows [16w, 16w + 16) of the tile.  Q [64, D] is staged once
// and kept in registers as A fragments.  K and V tiles of 64 keys go through a two-stage
// cp.async ring in shared memory (16-byte chunks XOR-swizzled by row so ldmatrix is
// conflict-free), loading tile i+1 while tile i is used.  Per tile: S = Q K^T (fp32), the causal
// and length mask, the online-softmax update (row max and sum across the 4 lanes of a quad,
// exp2 with the scale folded in), then O += P V with P re-packed from the S accumulators into
// A fragments (no shared-memory round trip) and V read with ldmatrix.trans.
// Keys past the block's last visible key are never loaded (zero-filled), so unused cache slots
// are never read.  fp32 accumulation throughout; P is rounded to dtype_t for the P V product,
// as in FlashAttention-2.
#include "common.cuh"
#include "mma.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#define BLOCK_M 64
#define BLOCK_N 64
#define NWARPS 4
#define NTHREADS (NWARPS * 32)
#define CH (HEAD_DIM / 8)  // 16-byte chunks per row
#define TILE_ELEMS (BLOCK_N * HEAD_DIM)
#define LOG2E_F 1.4426950408889634f

#define SWZ_MASK (CH < 8 ? CH - 1 : 7)  // the XOR must stay inside the row's CH chunks

// element offset of (row, chunk) in a [rows, HEAD_DIM] tile; the XOR spreads the 8 rows an
// ldmatrix reads over 8 different 16-byte bank groups (over CH groups when D < 64)
__device__ __forceinline__ int swz(int row, int ch) {
    return row * HEAD_DIM + ((ch ^ (row & SWZ_MASK)) << 3);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
attention_prefill_mma_kernel(const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,
                             const dtype_t* __restrict__ v_cache, const int* __restrict__ block_tables,
                             const int* __restrict__ query_start, const int* __restrict__ seq_lens,
                             dtype_t* __restrict__ out, float scale, int num_q_heads,
                             int num_kv_heads, int block_size, int max_blocks) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    extern __shared__ __align__(128) unsigned char smem_raw[];
    dtype_t* qs = reinterpret_cast<dtype_t*>(smem_raw);  // [BLOCK_M, D]
    dtype_t* ks = qs + BLOCK_M * HEAD_DIM;                // 2 stages x [BLOCK_N, D]
    dtype_t* vs = ks + 2 * TILE_ELEMS;                    // 2 stages x [BLOCK_N, D]

    const int b = blockIdx.z, h = blockIdx.y;
    const int qs0 = query_start[b];
    const int qlen = query_start[b + 1] - qs0;
    const int m0 = (gridDim.x - 1 - blockIdx.x) * BLOCK_M;
    if (m0 >= qlen) return;
    const int seq_len = seq_lens[b];
    const int kvh = h / (num_q_heads / num_kv_heads);
    const int past = seq_len - qlen;  // pos(row) = past + row
    const int last_row = min(m0 + BLOCK_M, qlen) - 1;
    const int kv_end = min(seq_len, past + last_row + 1);  // keys this block can see
    const int n_tiles = (kv_end + BLOCK_N - 1) / BLOCK_N;
    const int* bt = block_tables + (size_t)b * max_blocks;
    const size_t q_row_stride = (size_t)num_q_heads * HEAD_DIM;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;

    // Q tile -> shared (rows past qlen zero-filled)
    for (int c = tid; c < BLOCK_M * CH; c += NTHREADS) {
        const int r = c / CH, ch = c % CH;
        const bool ok = m0 + r < qlen;
        const dtype_t* src = q + (size_t)(qs0 + (ok ? m0 + r : 0)) * q_row_stride + h * HEAD_DIM + ch * 8;
        cp_async16(qs + swz(r, ch), src, ok);
    }
    auto load_kv = [&](int tile, int stage) {
        dtype_t* kd = ks + stage * TILE_ELEMS;
        dtype_t* vd = vs + stage * TILE_ELEMS;
        const int n0 = tile * BLOCK_N;
        for (int c = tid; c < BLOCK_N * CH; c += NTHREADS) {
            const int r = c / CH, ch = c % CH;
            const int key = n0 + r;
            const bool ok = key < kv_end;
            size_t off = 0;
            if (ok) {
                const int page = bt[key / block_size];
                off = (((size_t)page * num_kv_heads + kvh) * block_size + key % block_size) * HEAD_DIM;
            }
            cp_async16(kd + swz(r, ch), k_cache + off + ch * 8, ok);
            cp_async16(vd + swz(r, ch), v_cache + off + ch * 8, ok);
        }
    };
    load_kv(0, 0);
    cp_async_commit();

    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int i = 0; i < HEAD_DIM / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF}, row_sum[2] = {0.f, 0.f};
    unsigned qa[HEAD_DIM / 16][4];
    const float scale_log2 = scale * LOG2E_F;
    const int wrow = warp * 16;                     // warp's first row in the tile
    const int pos_g = past + m0 + wrow + g;         // pos of this lane's rows g and g + 8
    const int warp_pos_min = past + m0 + wrow;      // smallest pos among the warp's rows

    for (int it = 0; it < n_tiles; ++it) {
        cp_async_wait<0>();
        __syncthreads();  // tile it (and Q) landed for all; stage (it + 1) % 2 is free again
        if (it + 1 < n_tiles) load_kv(it + 1, (it + 1) & 1);
        cp_async_commit();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; ++kk)
                ldmatrix_x4(qa[kk], qs + swz(wrow + (lane & 15), 2 * kk + (lane >> 4)));
        }
        const int n0 = it * BLOCK_N;
        if (n0 > past + m0 + wrow + 15) continue;  // every key of this tile is in all rows' future
        const dtype_t* kt = ks + (it & 1) * TILE_ELEMS;
        const dtype_t* vt = vs + (it & 1) * TILE_ELEMS;

        // S = Q K^T: 8 n-tiles of 8 keys
        float s[BLOCK_N / 8][4];
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j)
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; kk += 2) {
                unsigned kb[4];  // k-steps kk and kk + 1 of keys 8j .. 8j + 7
                ldmatrix_x4(kb, kt + swz(8 * j + (lane & 7), 2 * kk + (lane >> 3)));
                mma16816(s[j], qa[kk], kb);
                mma16816(s[j], qa[kk + 1], kb + 2);
            }

        // scale, mask (causal and length), row max over the quad
        const bool needs_mask = n0 + BLOCK_N - 1 > warp_pos_min || n0 + BLOCK_N > kv_end;
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = s[j][e] * scale_log2;
                if (needs_mask) {
                    const int key = n0 + 8 * j + 2 * t + (e & 1);
                    const int pos = pos_g + (e >> 1) * 8;
                    if (key > pos || key >= kv_end) v = NEG_INF;
                }
                s[j][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], RE_SHFL_XOR(mx[r], 1));
            mx[r] = fmaxf(mx[r], RE_SHFL_XOR(mx[r], 2));
        }
        float alpha[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(row_max[r], mx[r]);
            base[r] = m_new == NEG_INF ? 0.f : m_new;  // a row with no visible key yet stays 0
            alpha[r] = exp2f(row_max[r] - base[r]);
            row_max[r] = m_new;
            row_sum[r] *= alpha[r];
        }
#pragma unroll
        for (int i = 0; i < HEAD_DIM / 8; ++i) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }

        // P = exp2(S - max) -> A fragments (k16 step kj = n-tiles 2kj, 2kj + 1); O += P V
#pragma unroll
        for (int kj = 0; kj < BLOCK_N / 16; ++kj) {
            float p[2][4];
#pragma unroll
            for (int u = 0; u < 2; ++u)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    p[u][e] = exp2f(s[2 * kj + u][e] - base[e >> 1]);
                    row_sum[e >> 1] += p[u][e];
                }
            const unsigned pa[4] = {pack2(p[0][0], p[0][1]), pack2(p[0][2], p[0][3]),
                                    pack2(p[1][0], p[1][1]), pack2(p[1][2], p[1][3])};
#pragma unroll
            for (int dn = 0; dn < HEAD_DIM / 8; dn += 2) {
                unsigned vb[4];  // d-tiles dn, dn + 1 of keys 16kj .. 16kj + 15, transposed
                ldmatrix_x4_trans(vb, vt + swz(16 * kj + (lane & 7) + ((lane >> 3) & 1) * 8,
                                               dn + (lane >> 4)));
                mma16816(o[dn], pa, vb);
                mma16816(o[dn + 1], pa, vb + 2);
            }
        }
    }

    // O / row sum -> out (rows past qlen are not written)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        row_sum[r] += RE_SHFL_XOR(row_sum[r], 1);
        row_sum[r] += RE_SHFL_XOR(row_sum[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = m0 + wrow + g + 8 * r;
        if (row >= qlen) continue;
        const float inv = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;
        dtype_t* dst = out + (size_t)(qs0 + row) * q_row_stride + h * HEAD_DIM + 2 * t;
#pragma unroll
        for (int i = 0; i < HEAD_DIM / 8; ++i)
            *reinterpret_cast<unsigned*>(dst + 8 * i) = pack2(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
    }
}
