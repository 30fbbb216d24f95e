// decode_attention_mma.cu: single-token (decode) GQA attention over the paged KV cache, split-KV,
// with Q K^T and P V on tensor cores (mma.sync m16n8k16, fp32 accumulate). Same function, same
// kernel signature, grid, chunking rule, workspace and counter protocol as decode_attention.cu
// (the CUDA-core kernel, which stays the reference and the default); the block/split half is
// the shared decode_common.cuh. Only the synchronized variant (running max): IS_ASYNC must be 0.
//
//   o[b, h] = sum_j p_j v[j, h/G] / sum_j p_j,  p_j = 2^(scale*log2e * q[b, h] . k[j, h/G] - m),
//   j < seq_lens[b], G = Hq / Hkv.
//
//   q            [B, Hq, D] dtype_t;  out [B, Hq * D] dtype_t
//   k/v_cache    [NB, Hkv, BS, D] dtype_t; key j of sequence b lives in block
//                block_tables[b, j >> log2_bs] at offset j & (BS - 1)   (BS a power of two)
//   block_tables [B, max_blocks] int32;  seq_lens [B] int32
//   part_o, part_ml, counters: as decode_attention.cu;  phi, lo, hi, fallback_count: unused
//
// Grid (S, Hkv * G / GROUP, B), NUM_WARPS * 32 threads, SMEM_BYTES of dynamic shared memory
// (attention.py computes the same number; the kernel traps if it got less). A block owns GROUP
// query heads of one KV head and one chunk of the sequence:
//   c = max(cdiv(len, S), min_chunk),  chunk = c <= STEP ? roundup(c, STEP1) : roundup(c, STEP)
// with STEP = TILE * NUM_WARPS (tokens per block step) and STEP1 = 16 * NUM_WARPS (one 16-token
// tile per warp: chunks of at most STEP1 tokens run the 16-token loop, as the unroll-1 loop of
// the CUDA-core kernel). Warps take interleaved tiles of TILE tokens, each with its own online
// softmax state, merged through shared memory at the end (BlockSmem, then finish_block).
//
// One warp step (TILE tokens, FA2 dataflow with the heads as the M dimension):
//   loads   each warp streams its own K and V tiles global -> shared with cp.async (16 B per
//           lane per copy; a warp-wide copy covers 32/(D/8) whole token rows), STAGES-deep
//           per-warp ring: STAGES-1 tiles are in flight while one is computed. Page ids: lane
//           j looks up token j of the tile one tile ahead (cache row (page*Hkv + kvh)*BS +
//           slot, 32-bit: the launcher requires NB * Hkv * BS < 2^32), and the copies take
//           it by shuffle. Tokens past `end` are
//           zero-filled (never read). Rings are per warp: __syncwarp only, no __syncthreads
//           in the loop. Row stride D + 8 elements: the 8 rows one ldmatrix reads start 16 B
//           apart modulo 128 B, so they hit 8 different bank groups (conflict-free).
//   S=QK^T  A = Q (16 rows: row g = head g < GROUP, rows >= GROUP and g + 8 zero; k = dims),
//           loaded once into registers: a0 = q[g][16kk + 2t, +1], a2 = q[g][16kk + 8 + 2t, +1],
//           a1 = a3 = 0 (lane = 4g + t). B = K^T (k = dims, n = 8 tokens): ldmatrix (non-trans)
//           of the row-major K tile gives the col-major B fragment directly; one x4 covers two
//           k16 steps of 8 tokens. C: s[j][0..1] = score of head g, tokens 8j + 2t, +1
//           (s[j][2..3], rows g + 8, are padding and stay 0).
//   softmax scores * scale*log2e (fp32; Q is not rounded after scaling), masked to -inf past
//           `end`, row max over the tile from the 4 lanes sharing g (shuffle xor 1, 2);
//           m, l, o rescaled by 2^(m_old - m_new); p = 2^(s - m) (ex2.approx).
//   O+=PV   P rounded to dtype_t and packed (pack2) is the A operand directly: the C tiles 2kj,
//           2kj + 1 are k16 step kj (a0 = tokens 16kj + 2t, +1; a2 = tokens 16kj + 8 + 2t, +1;
//           a1 = a3 = 0). B = V (k = tokens, n = 8 dims): ldmatrix.trans of the row-major V
//           tile, one x4 = two n8 tiles. O accumulates in fp32 C fragments, D/8 n8 tiles x 4
//           floats per lane: o[i][0..1] = head g, dims 8i + 2t, +1 (o[i][2..3] rows g + 8 = 0).
//           l sums the rounded p, so numerator and denominator see the same weights.
// End of chunk: l summed over the quad; lanes g < GROUP write (m, l, o) to BlockSmem (which
// overlays the rings after a __syncthreads), then the shared merge/partial/counter path.
//
// Why: the CUDA-core kernel spends G FMAs (fp32), shuffles and conversions on every K/V
// element; at G = 4 its blocks top out near 2.95 TB/s on H100 (~70 instructions per token per
// warp). Here a 16-token warp step of D = 128 is 16 cp.async, 16 ldmatrix, 32 mma and about
// 40 FMUL/ex2/shuffle/max plus address arithmetic, for any G <= 8 (estimated 15-20 SASS
// instructions per token per warp; not measured). Half of the m16 rows are padding (heads are
// at most 8): the tensor cores have ample headroom at decode's arithmetic intensity, so
// simplicity wins over packing two token groups into the rows.
// P is rounded to dtype_t before P V (as FlashAttention-2); scores, l and o stay fp32.
//
// Programmatic launch: the kernel reads seq_lens, block_tables and the keys before len - 1
// ahead of its PDL wait (the first ring tiles holding only such keys go out before it), so
// the kernel it follows may write q and key len - 1 only: true of a decode step, whose inputs
// are copied in before the graph replay and whose K/V write is the newest key.
//
// Defines: HEAD_DIM (64 | 128), GROUP (1..8), NUM_WARPS, TILE (tokens per warp step, 16 or
// 32), STAGES (cp.async ring depth, >= 2), MIN_BLOCKS (launch bound), DTYPE_BF16.
// Shared memory: max(NUM_WARPS * STAGES * 2 * TILE * (D + 8) * 2 B, sizeof(BlockSmem)),
// e.g. D = 128, 4 warps, TILE 16, STAGES 3: 104,448 B (2 blocks per H100 SM).
#include "common.cuh"
#include "mma.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef GROUP
#define GROUP 4
#endif
#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#ifndef TILE
#define TILE 16
#endif
#ifndef STAGES
#define STAGES 3
#endif
#ifndef L2_256
#define L2_256 0  // 1: K/V copies ask the L2 for whole 256-byte blocks (.L2::256B)
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 2  // resident blocks per SM to guarantee (caps registers at 255)
#endif
#if defined(IS_ASYNC) && IS_ASYNC
#error "decode_attention_mma.cu implements the synchronized variant only (IS_ASYNC 0)"
#endif
// BlockSmem, merge helpers, finish_block (split merge):
#include "decode_common.cuh"

constexpr int CH = HEAD_DIM / 8;           // 16-byte chunks per K/V row
constexpr int LDS = HEAD_DIM + 8;          // shared row stride (elements): conflict-free ldmatrix
constexpr int TILE1 = 16;                  // tile of the short-chunk loop (one k16 of tokens)
constexpr int STEP = TILE * NUM_WARPS;     // tokens per block step
constexpr int STEP1 = TILE1 * NUM_WARPS;   // the same for short chunks
constexpr int SLOT = 2 * TILE * LDS;       // elements per ring slot: K tile, then V tile
constexpr int KSTEPS = HEAD_DIM / 16;      // k16 steps of Q K^T
constexpr int NT = HEAD_DIM / 8;           // n8 tiles of O
constexpr int RING_BYTES = NUM_WARPS * STAGES * SLOT * 2;
constexpr int SMEM_BYTES =
    RING_BYTES > (int)sizeof(BlockSmem) ? RING_BYTES : (int)sizeof(BlockSmem);
static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "HEAD_DIM must be 64 or 128");
static_assert(GROUP >= 1 && GROUP <= 8, "GROUP: 1..8 heads (rows g of the m16 fragment)");
static_assert(TILE % 16 == 0 && TILE <= 32, "TILE: 16 or 32 (a lane looks up one token's page)");
static_assert(STAGES >= 2, "STAGES >= 2");
static_assert(NUM_WARPS <= 32 && (NUM_WARPS & (NUM_WARPS - 1)) == 0, "NUM_WARPS: power of 2");

// rounded p pair (one packed register) -> its float sum
__device__ __forceinline__ float sum2(unsigned u) {
    const dtype_t* e = reinterpret_cast<const dtype_t*>(&u);
    return to_f32(e[0]) + to_f32(e[1]);
}

// Softmax state of this warp over its TT-token tiles of [start, end), rows g of the fragment:
// m (log2 units, equal over the quad), l (summed over the quad before returning), o[i][0..1]
// = head g, dims 8i + 2t, +1 (unnormalised). qa: the Q A fragments (scores come out unscaled),
// filled by wait_and_load_q(), which runs the PDL wait: the first ring tiles whose keys are all
// older than `newest` (the key the previous kernel writes) are issued before it, so under
// programmatic launch their page lookups and DRAM reads overlap the previous kernel's tail.
template <int TT, typename WaitFn>
__device__ __forceinline__ void attend_chunk_mma(unsigned (&qa)[KSTEPS][4], WaitFn wait_and_load_q,
                                                 dtype_t* ring,
                                                 const dtype_t* __restrict__ k_cache,
                                                 const dtype_t* __restrict__ v_cache,
                                                 const int* __restrict__ bt, int kv_head,
                                                 int num_kv_heads, int log2_bs, int start,
                                                 int end, int newest, float scale_log2, float& m,
                                                 float& l, float (&o)[NT][4]) {
    constexpr int NJ = TT / 8;                 // n8 tiles of S per step
    constexpr int STEP_TT = TT * NUM_WARPS;
    constexpr int ROWS_PER_COPY = 32 / CH;     // token rows one warp-wide 16-byte copy covers
    constexpr int COPIES = TT / ROWS_PER_COPY; // copies per lane per K (and per V) tile
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3;
    const int bs_mask = (1 << log2_bs) - 1;
    m = NEG_INF;
    l = 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    const int first = start + warp * TT;  // this warp's first token; tile i at first + i*STEP_TT
    const int n_tiles = first < end ? cdiv(end - first, STEP_TT) : 0;  // warp-uniform

    // cache row of token `tok` (lane j: token j of a tile); 0 past the end (never loaded)
    auto row_of = [&](int tok) -> unsigned {
        if (tok >= end) return 0u;
        const unsigned page = (unsigned)__ldg(bt + (tok >> log2_bs));
        return ((page * (unsigned)num_kv_heads + (unsigned)kv_head) << log2_bs) +
               (unsigned)(tok & bs_mask);
    };
    const int my_tok = lane % TT;
    unsigned row_next = row_of(first + my_tok);  // rows of the next tile to issue
    int i_issue = 0, slot_issue = 0;
    // Issue tile i_issue (if any) into slot_issue and look up the pages of the tile after it;
    // always commit a group so the wait count below stays uniform.
    auto issue_next = [&]() {
        if (i_issue < n_tiles) {
            const int t0 = first + i_issue * STEP_TT;
            const unsigned row = row_next;
            row_next = row_of(t0 + STEP_TT + my_tok);
            dtype_t* ks = ring + slot_issue * SLOT;
            dtype_t* vs = ks + TILE * LDS;
#pragma unroll
            for (int c = 0; c < COPIES; ++c) {
                const int r = c * ROWS_PER_COPY + lane / CH, ch = lane % CH;
                const unsigned rr = __shfl_sync(0xffffffffu, row, r);
                const bool ok = t0 + r < end;
                const size_t off = (size_t)rr * HEAD_DIM + ch * 8;
#if L2_256
                cp_async16_l2_256(ks + r * LDS + ch * 8, k_cache + off, ok);
                cp_async16_l2_256(vs + r * LDS + ch * 8, v_cache + off, ok);
#else
                cp_async16(ks + r * LDS + ch * 8, k_cache + off, ok);
                cp_async16(vs + r * LDS + ch * 8, v_cache + off, ok);
#endif
            }
        }
        cp_async_commit();
        ++i_issue;
        slot_issue = slot_issue + 1 == STAGES ? 0 : slot_issue + 1;
    };
    // tiles of keys < newest only (warp-uniform test), then the wait, then the rest
    while (i_issue < STAGES - 1 && i_issue < n_tiles &&
           min(first + i_issue * STEP_TT + TT, end) <= newest)
        issue_next();
    wait_and_load_q();
    while (i_issue < STAGES - 1) issue_next();

    int slot = 0;
    for (int i = 0; i < n_tiles; ++i) {
        __syncwarp();  // every lane's ldmatrix reads of tile i - 1 (slot_issue) are done
        issue_next();  // tile i + STAGES - 1
        cp_async_wait<STAGES - 1>();  // this lane's copies of tile i have landed
        __syncwarp();                 // ... and every lane's
        const dtype_t* ks = ring + slot * SLOT;
        const dtype_t* vs = ks + TILE * LDS;
        slot = slot + 1 == STAGES ? 0 : slot + 1;
        const int t0 = first + i * STEP_TT;  // < end

        // S = Q K^T: NJ n8 tiles of tokens, k16 steps over the head dims
        float s[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk += 2) {
                unsigned kb[4];  // k steps kk, kk + 1 of tokens 8j .. 8j + 7
                ldmatrix_x4(kb, ks + (8 * j + (lane & 7)) * LDS + (2 * kk + (lane >> 3)) * 8);
                mma16816(s[j], qa[kk], kb);
                mma16816(s[j], qa[kk + 1], kb + 2);
            }

        // scale to log2 units, mask past the end, row max over the quad, rescale the state
        const bool is_partial = t0 + TT > end;  // warp-uniform
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float v = s[j][e] * scale_log2;
                if (is_partial && t0 + 8 * j + 2 * t + e >= end) v = NEG_INF;
                s[j][e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, RE_SHFL_XOR(mx, 1));
        mx = fmaxf(mx, RE_SHFL_XOR(mx, 2));
        const float m_new = fmaxf(m, mx);  // finite: token t0 is valid
        const float corr = merge_weight(m, m_new);
        m = m_new;
        l *= corr;
#pragma unroll
        for (int i2 = 0; i2 < NT; ++i2) {
            o[i2][0] *= corr;
            o[i2][1] *= corr;
        }

        // O += P V, P re-packed from the S accumulators (k16 step kj = n8 tiles 2kj, 2kj + 1)
#pragma unroll
        for (int kj = 0; kj < NJ / 2; ++kj) {
            const unsigned p0 = pack2(exp2_approx(s[2 * kj][0] - m_new),
                                      exp2_approx(s[2 * kj][1] - m_new));
            const unsigned p1 = pack2(exp2_approx(s[2 * kj + 1][0] - m_new),
                                      exp2_approx(s[2 * kj + 1][1] - m_new));
            l += sum2(p0) + sum2(p1);
            const unsigned pa[4] = {p0, 0u, p1, 0u};
#pragma unroll
            for (int dn = 0; dn < NT; dn += 2) {
                unsigned vb[4];  // d tiles dn, dn + 1 of tokens 16kj .. 16kj + 15, transposed
                ldmatrix_x4_trans(vb, vs + (16 * kj + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS +
                                          (dn + (lane >> 4)) * 8);
                mma16816(o[dn], pa, vb);
                mma16816(o[dn + 1], pa, vb + 2);
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending; leave nothing behind
    l += RE_SHFL_XOR(l, 1);
    l += RE_SHFL_XOR(l, 2);
}

// Q as A fragments (lane = 4g + t): row g = head head0 + g (zero for g >= GROUP), rows g + 8
// zero. Run after RE_PDL_WAIT: q is the previous kernel's.
__device__ __forceinline__ void load_q_frags(unsigned (&qa)[KSTEPS][4],
                                             const dtype_t* __restrict__ q, int b,
                                             int num_q_heads, int head0, int g, int t) {
    const bool has_head = g < GROUP;
    const unsigned* qh = reinterpret_cast<const unsigned*>(
        q + ((size_t)b * num_q_heads + head0 + (has_head ? g : 0)) * HEAD_DIM + 2 * t);
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        qa[kk][0] = has_head ? qh[8 * kk] : 0u;      // dims 16kk + 2t, +1
        qa[kk][1] = 0u;
        qa[kk][2] = has_head ? qh[8 * kk + 4] : 0u;  // dims 16kk + 8 + 2t, +1
        qa[kk][3] = 0u;
    }
}

// This warp's softmax state (rows g < GROUP of the fragments) -> BlockSmem.
__device__ __forceinline__ void stash_warp_mma(BlockSmem& sm, float m, float l,
                                               const float (&o)[NT][4], int warp, int g, int t) {
    if (g < GROUP) {
#pragma unroll
        for (int i = 0; i < NT; ++i)  // dims 8i + 2t, +1 of head g
            *reinterpret_cast<float2*>(&sm.o[warp][g][8 * i + 2 * t]) =
                make_float2(o[i][0], o[i][1]);
        if (t == 0) {
            sm.m[warp][g] = m;
            sm.l[warp][g] = l;
        }
    }
}

extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS)
decode_attention_mma_kernel(const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,
                            const dtype_t* __restrict__ v_cache,
                            const int* __restrict__ block_tables, const int* __restrict__ seq_lens,
                            dtype_t* __restrict__ out, float* __restrict__ part_o,
                            float2* __restrict__ part_ml, int* __restrict__ counters,
                            int* __restrict__ fallback_count, int num_q_heads, int num_kv_heads,
                            int max_blocks, int log2_bs, float scale_log2, float phi, float lo,
                            float hi, int min_chunk) {
    const int split = blockIdx.x, num_splits = gridDim.x, hblk = blockIdx.y, b = blockIdx.z;
    const int head0 = hblk * GROUP;  // first query head of this block
    const int kv_head = head0 / (num_q_heads / num_kv_heads);
    // Read before the PDL wait: seq_lens, block_tables and the keys before len - 1 are step
    // inputs or earlier steps' writes; only q and key len - 1 come from the previous kernel.
    const int len = seq_lens[b];
    int start, end, num_active;
    // an empty split writes nothing, the merge skips it
    if (!split_range<STEP, STEP1>(len, num_splits, split, min_chunk, start, end, num_active))
        return;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    require_dynamic_smem(SMEM_BYTES);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;

    // Q as A fragments, loaded after the PDL wait, which attend_chunk_mma runs once its first
    // safe tiles are in flight
    unsigned qa[KSTEPS][4];
    auto wait_and_load_q = [&]() {
        RE_PDL_WAIT();
        RE_PDL_TRIGGER();
        load_q_frags(qa, q, b, num_q_heads, head0, g, t);
    };
    dtype_t* ring = reinterpret_cast<dtype_t*>(smem_raw) + warp * (STAGES * SLOT);
    const int* bt = block_tables + (size_t)b * max_blocks;
    float m, l, o[NT][4];
    if constexpr (TILE == TILE1) {
        attend_chunk_mma<TILE>(qa, wait_and_load_q, ring, k_cache, v_cache, bt, kv_head,
                               num_kv_heads, log2_bs, start, end, len - 1, scale_log2, m, l, o);
    } else {
        if (end - start <= STEP1)  // block-uniform
            attend_chunk_mma<TILE1>(qa, wait_and_load_q, ring, k_cache, v_cache, bt, kv_head,
                                    num_kv_heads, log2_bs, start, end, len - 1, scale_log2, m,
                                    l, o);
        else
            attend_chunk_mma<TILE>(qa, wait_and_load_q, ring, k_cache, v_cache, bt, kv_head,
                                   num_kv_heads, log2_bs, start, end, len - 1, scale_log2, m,
                                   l, o);
    }
    __syncthreads();  // every warp is done with its ring: BlockSmem overlays the rings
    BlockSmem& sm = *reinterpret_cast<BlockSmem*>(smem_raw);
    stash_warp_mma(sm, m, l, o, warp, g, t);
    __syncthreads();
    finish_block(sm, out, part_o, part_ml, counters, num_q_heads, head0, b, hblk, split,
                 num_splits, num_active);
}

#if O_PROJ
// decode_attention_o_kernel (O_PROJ build): the tensor-core attention of a whole sequence (no
// split) and o_proj in one launch, as the BULK O_PROJ build of decode_attention.cu (same
// signature, grid, layouts and fixed-point output; see there and attn_o.cuh), with this file's
// Q K^T and P V on tensor cores: the attention is redundant over the cdiv(H, ROWS) blocks of a
// KV head, so each block does all of it, and the CUDA-core loop's ~70 instructions a token a
// warp made that the longest phase of the kernel (docs/launch_notes.md, "Session 10").
// Dynamic shared memory: SMEM_BYTES (rings, BlockSmem overlaying them), then the Wo slice.
#include "attn_o.cuh"
static_assert(SMEM_BYTES % 16 == 0, "16-byte aligned Wo slice");

extern "C" __global__ void __launch_bounds__(NUM_THREADS, 1)
decode_attention_o_kernel(ATTN_O_PARAMS) {
    const int kv_head = blockIdx.y, b = blockIdx.z, n0 = blockIdx.x * ROWS;
    const int head0 = kv_head * GROUP;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    require_dynamic_smem(SMEM_BYTES + ROWS * GD * 2);
    dtype_t* wo_s = reinterpret_cast<dtype_t*>(smem_raw + SMEM_BYTES);  // [ROWS][GD]
    __shared__ __align__(16) float a_s[GD];
    attn_o_load_wo(wo_s, w_o, n0, hidden, num_q_heads, head0);  // constant during the step

    const int len = seq_lens[b];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    unsigned qa[KSTEPS][4];
    auto wait_and_load_q = [&]() {
        RE_PDL_WAIT();
        RE_PDL_TRIGGER();
        attn_o_clear(clear, n_clear);
        load_q_frags(qa, q, b, num_q_heads, head0, g, t);
    };
    if (len <= 0) {  // an empty sequence: o = 0, nothing to add (block-uniform)
        wait_and_load_q();
        cp_async_wait<0>();
        return;
    }
    dtype_t* ring = reinterpret_cast<dtype_t*>(smem_raw) + warp * (STAGES * SLOT);
    const int* bt = block_tables + (size_t)b * max_blocks;
    float m, l, o[NT][4];
    if (len <= STEP1)  // block-uniform
        attend_chunk_mma<TILE1>(qa, wait_and_load_q, ring, k_cache, v_cache, bt, kv_head,
                                num_kv_heads, log2_bs, 0, len, len - 1, scale_log2, m, l, o);
    else
        attend_chunk_mma<TILE>(qa, wait_and_load_q, ring, k_cache, v_cache, bt, kv_head,
                               num_kv_heads, log2_bs, 0, len, len - 1, scale_log2, m, l, o);
    __syncthreads();  // every warp is done with its ring: BlockSmem overlays the rings
    BlockSmem& sm = *reinterpret_cast<BlockSmem*>(smem_raw);
    stash_warp_mma(sm, m, l, o, warp, g, t);
    __syncthreads();
    attn_o_finish(sm, a_s, wo_s, acc, b, n0, hidden);
}
#endif  // O_PROJ
