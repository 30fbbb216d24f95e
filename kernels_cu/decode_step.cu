// decode_step.cu: one batch-1 decode step of a llama-family model (no biases) as ONE persistent
// kernel: embedding -> L x [rmsnorm+qkv, RoPE + attention, o, rmsnorm+gate_up+SiLU-mul, down]
// -> rmsnorm -> lm_head. For small models whose step is a chain of ~150 tiny dependent
// kernels (SmolLM2-135M: ~0.9 us per kernel boundary even with programmatic launch), this
// replaces every boundary by a grid barrier and streams each layer's weights into shared memory
// one layer ahead, off the dependency chain.
//
// Math (the unfused path's, rounded to dtype_t where it rounds):
//   h = round(resid + y) (layer 0: embed[id]);  x = round(h / rms(h) * norm_w)
//   qkv = round(W_qkv x);  q, k RoPE'd at pos = positions[0] (rotate_half), rounded
//   attn[hq] = softmax_j(scale q[hq] . k[j, hq/G]) v[j]  over j < len = seq_lens[0]
//   y = round(W_o attn);  h = round(resid + y);  a = round(silu(round(W_g x)) * round(W_u x))
//   y = round(W_down a);  logits = round(W_lm round(rmsnorm(round(resid + y))))
//
// Layouts: W row-major [N, K] dtype_t; qkv rows = [q heads | k heads | v heads]; gate_up rows =
// [gate (I) | up (I)]; k/v cache [NB, NKV, BS, D] (key j at block_tables[j / BS], j % BS);
// cos/sin [max_pos, D/2] float32; layers [L][8] u64 = input_norm, qkv, o, post_norm, gate_up,
// down, k_cache, v_cache. Scratch: resid [2][H], y [H], qkv [QKV_N], act [I] dtype_t;
// part_o [NKV][MAX_SPLITS][G][D] float; part_ml [NKV][MAX_SPLITS][G] float2 (m, l; log2 units);
// counters [2] u32, zero between launches.
//
// Grid: one block per SM (all resident; the launcher checks occupancy), NUM_WARPS warps.
// Block b owns rows [b*RPB, b*RPB + RPB) of each projection (gate_up: those rows of gate AND of
// up, so SiLU-mul stays in the block). Its slice of layer l+2 is bulk-copied (cp.async.bulk,
// one mbarrier per slot) into the slot layer l used, as soon as layer l is done, so DRAM works
// under the barrier chain. Attention: the sequence is cut into tiles of CH keys, split over at
// most MAX_SPLITS units per KV head (Flash-Decoding); each unit writes its partial (o, m, l)
// and every block merges them (log-sum-exp) while staging the o-projection input, so attention
// costs one barrier. The new token's K/V comes from the qkv buffer (the block holding it also
// writes it to the cache); older keys are staged with cp.async, the first tile before the
// barrier. Five grid barriers per layer.
// sm_90 only (bulk copies); the launcher uses the unfused step elsewhere.
// EXPERIMENTAL, off by default (RAWENGINE_DECODE_STEP=1): exact, but slower than the unfused
// PDL chain on the H100 (barriers ~1 us each, phases 1.4-6.8 us; docs/launch_notes.md).
#include "common.cuh"
#include "bulk.cuh"
#include "mma.cuh"
#include "grid_sync.cuh"

#ifndef NUM_WARPS
#define NUM_WARPS 8
#endif
#ifndef CH
#define CH 32
#endif
#ifndef MERGE_CHUNK
#define MERGE_CHUNK 16  // partial loads in flight per thread in the merge
#endif

constexpr int NT = NUM_WARPS * 32;
constexpr int D = HEAD_DIM, G = NQ / NKV, LPT = D / 8, QD = NQ * D, KVD = NKV * D;
constexpr int QKV_N = QD + 2 * KVD;
constexpr int cmax(int a, int b) { return a > b ? a : b; }
constexpr int up16(int bytes) { return (bytes + 15) / 16 * 16; }
// shared memory: [2 weight slots][K/V tiles 2 stages x (K, V)][xs][outs][qf][sc][st][red][bars]
constexpr int OFF_O = RPB_QKV * HIDDEN * 2;
constexpr int OFF_G = OFF_O + RPB_O * QD * 2;
constexpr int OFF_U = OFF_G + RPB_GU * HIDDEN * 2;
constexpr int OFF_DN = OFF_U + RPB_GU * HIDDEN * 2;
constexpr int SLOT_BYTES = (OFF_DN + RPB_DN * INTER * 2 + 127) / 128 * 128;
constexpr int XS_N = (cmax(cmax(HIDDEN, INTER), QD) + 3) / 4 * 4;
constexpr int LM_ROWS = SLOT_BYTES / (HIDDEN * 2);  // lm_head rows per slot-sized chunk
constexpr int OUT_N = (cmax(cmax(cmax(RPB_QKV, RPB_O), cmax(2 * RPB_GU, RPB_DN)), LM_ROWS) + 3) / 4 * 4;
constexpr int S_TILES = 2 * SLOT_BYTES;
constexpr int S_XS = S_TILES + 2 * 2 * CH * D * 2;
constexpr int S_OUTS = S_XS + XS_N * 4;
constexpr int S_QF = S_OUTS + OUT_N * 4;
constexpr int S_SC = S_QF + G * D * 4;
constexpr int S_ST = S_SC + up16(G * CH * 4);
constexpr int S_RED = S_ST + up16(3 * G * 4);
constexpr int S_BARS = S_RED + 32 * 4;
constexpr int SMEM_BYTES = S_BARS + 16;
static_assert(HIDDEN % 8 == 0 && INTER % 8 == 0 && D % 8 == 0, "16-byte rows");
static_assert(G <= NUM_WARPS && D / 2 + D <= NT && CH <= 64, "a warp per head, a thread per new K/V element");
constexpr int ACC_N = (G * D + NT - 1) / NT;  // (head, dim) outputs of a group per thread
static_assert(HIDDEN / 8 <= NT, "one 16-byte vector of the hidden state per thread");
constexpr int ISSUER = NT - 32;  // lane 0 of the last warp issues the bulk copies, not the
                                 // barrier's thread 0 (measured the same either way)

// STEP_TIMING=1 (tools/profile_decode_step.py): %globaltimer stamps of every block's arrival at
// each grid barrier and of block 0's release from it; index 0 = after the PDL wait.
#ifndef STEP_TIMING
#define STEP_TIMING 0
#endif
#if STEP_TIMING
__device__ unsigned long long step_arrive[1024 * 160], step_leave[1024];
__device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#endif

// One grid barrier of the step (target counts them), stamped under STEP_TIMING.
__device__ __forceinline__ void step_sync(unsigned* counters, unsigned& target) {
#if STEP_TIMING
    __syncthreads();
    if (threadIdx.x == 0) step_arrive[(target / gridDim.x + 1) * gridDim.x + blockIdx.x] = gtime();
#endif
    grid_sync(counters, target += gridDim.x);
#if STEP_TIMING
    if (threadIdx.x == 0 && blockIdx.x == 0) step_leave[target / gridDim.x] = gtime();
#endif
}

__device__ __forceinline__ int rows_of(int n, int rpb) {
    return max(0, min(rpb, n - (int)blockIdx.x * rpb));
}

// Slot items, in order: this block's slice of layer 0 .. L-1, then its lm_head rows in chunks of
// LM_ROWS. Item i goes to slot i & 1 as that slot's (i >> 1)-th fill (mbarrier parity).
__device__ void issue_layer(const unsigned long long* __restrict__ layers, int layer,
                            unsigned char* slot, mbar_t* bar);
__device__ void issue_item(const unsigned long long* __restrict__ layers, int num_layers,
                           const dtype_t* __restrict__ lm_head, int vocab, int item,
                           unsigned char* slot, mbar_t* bar) {
    if (item < num_layers) {
        issue_layer(layers, item, slot, bar);
        return;
    }
    const int rpb = cdiv(vocab, gridDim.x), v0 = blockIdx.x * rpb, v1 = min(vocab, v0 + rpb);
    const int r0 = v0 + (item - num_layers) * LM_ROWS, n = min(LM_ROWS, v1 - r0);
    if (n <= 0) return;
    mbar_arrive_expect_tx(bar, 2u * n * HIDDEN);
    bulk_g2s(slot, lm_head + (size_t)r0 * HIDDEN, n * HIDDEN * 2, bar);
}

// Bulk-copy this block's slice of layer `layer` into `slot`, completing on `bar`.
__device__ void issue_layer(const unsigned long long* __restrict__ layers, int layer,
                            unsigned char* slot, mbar_t* bar) {
    const unsigned long long* p = layers + layer * 8;
    const int b = blockIdx.x;
    const int nq = rows_of(QKV_N, RPB_QKV), no = rows_of(HIDDEN, RPB_O);
    const int ng = rows_of(INTER, RPB_GU), nd = rows_of(HIDDEN, RPB_DN);
    mbar_arrive_expect_tx(bar, 2u * (nq * HIDDEN + no * QD + 2 * ng * HIDDEN + nd * INTER));
    const dtype_t* qkv = reinterpret_cast<const dtype_t*>(p[1]);
    const dtype_t* o = reinterpret_cast<const dtype_t*>(p[2]);
    const dtype_t* gu = reinterpret_cast<const dtype_t*>(p[4]);
    const dtype_t* dn = reinterpret_cast<const dtype_t*>(p[5]);
    if (nq) bulk_g2s(slot, qkv + (size_t)b * RPB_QKV * HIDDEN, nq * HIDDEN * 2, bar);
    if (no) bulk_g2s(slot + OFF_O, o + (size_t)b * RPB_O * QD, no * QD * 2, bar);
    if (ng) {
        bulk_g2s(slot + OFF_G, gu + (size_t)b * RPB_GU * HIDDEN, ng * HIDDEN * 2, bar);
        bulk_g2s(slot + OFF_U, gu + ((size_t)INTER + b * RPB_GU) * HIDDEN, ng * HIDDEN * 2, bar);
    }
    if (nd) bulk_g2s(slot + OFF_DN, dn + (size_t)b * RPB_DN * INTER, nd * INTER * 2, bar);
}

// h = round(resid + x) (resid null: h = x), block 0 writes it to resid_out (if any);
// xs = round(h * rsqrt(mean(h^2) + eps) * w). x_in_kernel: x was written in this launch.
// Thread v owns elements 8v .. 8v+7; its piece of w is loaded with x (one round trip).
__device__ void norm_input(const dtype_t* resid, const dtype_t* x, bool x_in_kernel,
                           dtype_t* resid_out, const dtype_t* __restrict__ w, float eps,
                           float* xs, float* red) {
    const uint4 w_piece = threadIdx.x < HIDDEN / 8
                              ? *reinterpret_cast<const uint4*>(w + threadIdx.x * 8)
                              : make_uint4(0, 0, 0, 0);
    float ss = 0.f;
    for (int v = threadIdx.x; v < HIDDEN / 8; v += NT) {
        float h[8], r[8];
        if (x_in_kernel) {
            load8_cg(x + v * 8, h);
        } else {
            load8(x + v * 8, h);
        }
        if (resid) {
            load8_cg(resid + v * 8, r);
#pragma unroll
            for (int e = 0; e < 8; ++e) h[e] = to_f32(from_f32<dtype_t>(h[e] + r[e]));
        }
        if (resid_out && blockIdx.x == 0) store8(resid_out + v * 8, h);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            xs[v * 8 + e] = h[e];
            ss += h[e] * h[e];
        }
    }
    const float inv = rsqrtf(block_sum(ss, red) / HIDDEN + eps);
    const int v = threadIdx.x;  // each thread rescales its own xs
    if (v < HIDDEN / 8) {
        float wv[8];
        load8(reinterpret_cast<const dtype_t*>(&w_piece), wv);
#pragma unroll
        for (int e = 0; e < 8; ++e)
            xs[v * 8 + e] = to_f32(from_f32<dtype_t>(xs[v * 8 + e] * inv * wv[e]));
    }
    __syncthreads();
}

// outs[r] = W[r, :] . xs for the rows r < nrows with r % period < nvalid; W [nrows, K] in smem.
// One warp per row, lanes over 16-byte pieces.
template <int K>
__device__ void gemv_smem(const dtype_t* W, int nrows, int period, int nvalid, const float* xs,
                          float* outs) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < nrows; r += NUM_WARPS) {
        if (r % period >= nvalid) continue;
        float acc = 0.f;
#pragma unroll 3  // smem operands: no need for deep unrolling (full unroll spills at 512 threads)
        for (int v = lane; v < K / 8; v += 32) {
            float wv[8];
            load8(W + (size_t)r * K + v * 8, wv);
            const float4 a = *reinterpret_cast<const float4*>(xs + v * 8);
            const float4 c = *reinterpret_cast<const float4*>(xs + v * 8 + 4);
            acc += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * c.x +
                   wv[5] * c.y + wv[6] * c.z + wv[7] * c.w;
        }
        acc = warp_sum(acc);
        if (lane == 0) outs[r] = acc;
    }
    __syncthreads();
}

// Split plan of the attention phase (phases B and C must agree): tiles of CH keys, at most
// MAX_SPLITS units per KV head, each unit tps consecutive tiles.
struct Plan {
    int tiles, tps, splits;
};
__device__ __forceinline__ Plan plan_splits(int len) {
    Plan p;
    p.tiles = cdiv(len, CH);
    p.tps = cdiv(p.tiles, min(p.tiles, MAX_SPLITS));
    p.splits = cdiv(p.tiles, p.tps);
    return p;
}

// cp.async the cached keys/values j < len - 1 of tile t (KV head kvh) into Ks/Vs; one group.
__device__ void stage_tile(dtype_t* Ks, dtype_t* Vs, const dtype_t* kc, const dtype_t* vc,
                           const int* __restrict__ table, int bs, int kvh, int t, int len) {
    for (int i = threadIdx.x; i < 2 * CH * LPT; i += NT) {
        const bool is_v = i >= CH * LPT;
        const int r = (i % (CH * LPT)) / LPT, piece = i % LPT, j = t * CH + r;
        if (j >= len - 1) continue;  // past the end, or the new key (from qkv, after the barrier)
        const size_t src = (((size_t)table[j / bs] * NKV + kvh) * bs + j % bs) * D + piece * 8;
        cp_async16((is_v ? Vs : Ks) + r * D + piece * 8, (is_v ? vc : kc) + src, true);
    }
    cp_async_commit();
}

extern "C" __global__ void __launch_bounds__(NT, 1) decode_step_kernel(
    const int* __restrict__ ids, const int* __restrict__ positions,
    const int* __restrict__ slot_mapping, const int* __restrict__ seq_lens,
    const int* __restrict__ block_tables, int block_size, int num_layers, int vocab,
    const unsigned long long* __restrict__ layers, const dtype_t* __restrict__ embed,
    const dtype_t* __restrict__ final_norm, const dtype_t* __restrict__ lm_head,
    const float* __restrict__ cos_table, const float* __restrict__ sin_table,
    dtype_t* __restrict__ logits, dtype_t* resid, dtype_t* y, dtype_t* qkv, dtype_t* act,
    float* part_o, float2* part_ml, unsigned* counters, float eps,
    float scale_log2) {  // scale_log2 = head_dim^-0.5 * log2(e)
    extern __shared__ __align__(128) unsigned char smem[];
    dtype_t* tiles = reinterpret_cast<dtype_t*>(smem + S_TILES);  // [stage][K | V][CH][D]
    float* xs = reinterpret_cast<float*>(smem + S_XS);
    float* outs = reinterpret_cast<float*>(smem + S_OUTS);
    float* qf = reinterpret_cast<float*>(smem + S_QF);
    float* sc = reinterpret_cast<float*>(smem + S_SC);
    float* st_m = reinterpret_cast<float*>(smem + S_ST);
    float* st_l = st_m + G;
    float* st_a = st_l + G;
    float* red = reinterpret_cast<float*>(smem + S_RED);
    mbar_t* bars = reinterpret_cast<mbar_t*>(smem + S_BARS);
    const int tid = threadIdx.x, b = blockIdx.x;
    require_dynamic_smem(SMEM_BYTES);

    if (tid == ISSUER) {  // weights are constant during the step: start them before the wait
        mbar_init(&bars[0], 1);
        mbar_init(&bars[1], 1);
        mbar_init_fence();
        for (int i = 0; i < 2; ++i)
            issue_item(layers, num_layers, lm_head, vocab, i, smem + i * SLOT_BYTES, &bars[i]);
    }
    RE_PDL_WAIT();
#if STEP_TIMING
    if (tid == 0 && b == 0) step_leave[0] = gtime();
#endif
    const int len = seq_lens[0], pos = positions[0];
    const Plan plan = plan_splits(len);
    unsigned target = 0;
    dtype_t* resid0 = resid;
    dtype_t* resid1 = resid + HIDDEN;

    for (int l = 0; l < num_layers; ++l) {
        const unsigned long long* p = layers + l * 8;
        unsigned char* slot = smem + (l & 1) * SLOT_BYTES;
        dtype_t* kc = reinterpret_cast<dtype_t*>(p[6]);
        dtype_t* vc = reinterpret_cast<dtype_t*>(p[7]);

        // ---- A: h = resid + y, rmsnorm, qkv rows ----
        if (l > 0) step_sync(counters, target);
        if (l == 0)
            norm_input(nullptr, embed + (size_t)ids[0] * HIDDEN, false, resid1, reinterpret_cast<const dtype_t*>(p[0]), eps, xs, red);
        else
            norm_input(resid0, y, true, resid1, reinterpret_cast<const dtype_t*>(p[0]), eps, xs, red);
        mbar_wait(&bars[l & 1], (l >> 1) & 1);
        const int nq = rows_of(QKV_N, RPB_QKV);
        gemv_smem<HIDDEN>(reinterpret_cast<const dtype_t*>(slot), nq, RPB_QKV, nq, xs, outs);
        if (tid < nq) qkv[b * RPB_QKV + tid] = from_f32<dtype_t>(outs[tid]);
        if (b < NKV * plan.splits) {  // this block's first attention tile: cached keys only
            const int s = b % plan.splits;
            stage_tile(tiles, tiles + CH * D, kc, vc, block_tables, block_size,
                       b / plan.splits, s * plan.tps, len);
        }
        step_sync(counters, target);

        // ---- B: attention units (KV head, split) -> partials ----
        bool staged = true;
        for (int u = b; u < NKV * plan.splits; u += gridDim.x, staged = false) {
            const int kvh = u / plan.splits, s = u % plan.splits;
            const int t0 = s * plan.tps, t1 = min(plan.tiles, t0 + plan.tps);
            for (int i = tid; i < G * D / 2; i += NT) {  // q of the group, RoPE'd, log2 scale
                const int g = i / (D / 2), e = i % (D / 2);
                const dtype_t* qh = qkv + (kvh * G + g) * D;
                const float x0 = to_f32(__ldcg(qh + e)), x1 = to_f32(__ldcg(qh + e + D / 2));
                const float c = cos_table[(size_t)pos * (D / 2) + e];
                const float sn = sin_table[(size_t)pos * (D / 2) + e];
                qf[g * D + e] = to_f32(from_f32<dtype_t>(x0 * c - x1 * sn)) * scale_log2;
                qf[g * D + e + D / 2] = to_f32(from_f32<dtype_t>(x1 * c + x0 * sn)) * scale_log2;
            }
            if (tid < G) {
                st_m[tid] = NEG_INF;
                st_l[tid] = 0.f;
            }
            if (!staged)
                stage_tile(tiles, tiles + CH * D, kc, vc, block_tables, block_size, kvh, t0, len);
            float acc[ACC_N];
#pragma unroll
            for (int i = 0; i < ACC_N; ++i) acc[i] = 0.f;
            for (int t = t0; t < t1; ++t) {
                dtype_t* Ks = tiles + ((t - t0) & 1) * 2 * CH * D;
                dtype_t* Vs = Ks + CH * D;
                if (t + 1 < t1) {
                    dtype_t* nk = tiles + ((t + 1 - t0) & 1) * 2 * CH * D;
                    stage_tile(nk, nk + CH * D, kc, vc, block_tables, block_size, kvh, t + 1, len);
                    cp_async_wait<1>();
                } else {
                    cp_async_wait<0>();
                }
                const int nvalid = min(CH, len - t * CH);
                if (len - 1 < t * CH + CH) {  // the new key: RoPE'd from qkv, also written to the cache
                    const int row = len - 1 - t * CH, slotj = slot_mapping[0];
                    const size_t dst = (((size_t)(slotj / block_size) * NKV + kvh) * block_size +
                                        slotj % block_size) * D;
                    const dtype_t* kh = qkv + QD + kvh * D;
                    const dtype_t* vh = qkv + QD + KVD + kvh * D;
                    if (tid < D / 2) {
                        const float x0 = to_f32(__ldcg(kh + tid)), x1 = to_f32(__ldcg(kh + tid + D / 2));
                        const float c = cos_table[(size_t)pos * (D / 2) + tid];
                        const float sn = sin_table[(size_t)pos * (D / 2) + tid];
                        const dtype_t k0 = from_f32<dtype_t>(x0 * c - x1 * sn);
                        const dtype_t k1 = from_f32<dtype_t>(x1 * c + x0 * sn);
                        Ks[row * D + tid] = k0;
                        Ks[row * D + tid + D / 2] = k1;
                        if (slotj >= 0) {
                            kc[dst + tid] = k0;
                            kc[dst + tid + D / 2] = k1;
                        }
                    } else if (tid < D / 2 + D) {
                        const dtype_t v = __ldcg(vh + tid - D / 2);
                        Vs[row * D + tid - D / 2] = v;
                        if (slotj >= 0) vc[dst + tid - D / 2] = v;
                    }
                }
                __syncthreads();
                for (int i = tid; i < G * CH; i += NT) {  // scores (log2 units)
                    const int g = i / CH, j = i % CH;
                    if (j >= nvalid) continue;
                    float s2 = 0.f;
#pragma unroll
                    for (int pc = 0; pc < LPT; ++pc) {
                        const int piece = (pc + j) % LPT;  // rotate: rows are 2*D bytes apart
                        float kv[8];
                        load8(Ks + j * D + piece * 8, kv);
#pragma unroll
                        for (int e = 0; e < 8; ++e) s2 += qf[g * D + piece * 8 + e] * kv[e];
                    }
                    sc[g * CH + j] = s2;
                }
                __syncthreads();
                if (tid / 32 < G) {  // warp g: running max, probabilities, running sum
                    const int g = tid / 32, lane = tid % 32;
                    float mt = NEG_INF;
                    for (int j = lane; j < nvalid; j += 32) mt = fmaxf(mt, sc[g * CH + j]);
                    mt = warp_max(mt);
                    const float m_old = st_m[g], m_new = fmaxf(m_old, mt);
                    float ps = 0.f;
                    for (int j = lane; j < nvalid; j += 32) {
                        const float pj = exp2f(sc[g * CH + j] - m_new);
                        sc[g * CH + j] = pj;
                        ps += pj;
                    }
                    ps = warp_sum(ps);
                    __syncwarp();
                    if (lane == 0) {
                        const float alpha = exp2f(m_old - m_new);  // m_old = -inf: 0
                        st_a[g] = alpha;
                        st_l[g] = st_l[g] * alpha + ps;
                        st_m[g] = m_new;
                    }
                }
                __syncthreads();
#pragma unroll
                for (int i = 0; i < ACC_N; ++i) {
                    const int gd = tid + i * NT, g = gd / D, d = gd % D;
                    if (gd >= G * D) break;
                    float o = acc[i] * st_a[g];
                    for (int j = 0; j < nvalid; ++j) o += sc[g * CH + j] * to_f32(Vs[j * D + d]);
                    acc[i] = o;
                }
                __syncthreads();
            }
            const int cell = kvh * MAX_SPLITS + s;
#pragma unroll
            for (int i = 0; i < ACC_N; ++i)
                if (tid + i * NT < G * D) part_o[(size_t)cell * G * D + tid + i * NT] = acc[i];
            if (tid < G) part_ml[cell * G + tid] = make_float2(st_m[tid], st_l[tid]);
        }
        step_sync(counters, target);

        // ---- C: merge the partials into xs, o rows ----
#pragma unroll 1
        for (int e = tid; e < QD; e += NT) {  // loads of MERGE_CHUNK splits in flight at once
            const int h = e / D, d = e % D, kvh = h / G, g = h % G;
            const int base = kvh * MAX_SPLITS;
            float M = NEG_INF, num = 0.f, den = 0.f;
#pragma unroll 1
            for (int s0 = 0; s0 < plan.splits; s0 += MERGE_CHUNK) {
                float2 ml[MERGE_CHUNK];
                float ov[MERGE_CHUNK];
#pragma unroll
                for (int i = 0; i < MERGE_CHUNK; ++i) {
                    const bool ok = s0 + i < plan.splits;
                    const int cell = base + (ok ? s0 + i : 0);
                    ml[i] = ok ? __ldcg(&part_ml[cell * G + g]) : make_float2(NEG_INF, 0.f);
                    ov[i] = ok ? __ldcg(&part_o[((size_t)cell * G + g) * D + d]) : 0.f;
                }
                float mc = M;
#pragma unroll
                for (int i = 0; i < MERGE_CHUNK; ++i) mc = fmaxf(mc, ml[i].x);
                const float r = M == NEG_INF ? 0.f : exp2f(M - mc);  // rescale the running sums
                num *= r;
                den *= r;
#pragma unroll
                for (int i = 0; i < MERGE_CHUNK; ++i) {
                    const float w = ml[i].x == NEG_INF ? 0.f : exp2f(ml[i].x - mc);
                    den += w * ml[i].y;
                    num += w * ov[i];
                }
                M = mc;
            }
            xs[e] = to_f32(from_f32<dtype_t>(num / den));
        }
        __syncthreads();
        const int no = rows_of(HIDDEN, RPB_O);
        gemv_smem<QD>(reinterpret_cast<const dtype_t*>(slot + OFF_O), no, RPB_O, no, xs, outs);
        if (tid < no) y[b * RPB_O + tid] = from_f32<dtype_t>(outs[tid]);
        step_sync(counters, target);

        // ---- D: h = resid + y, rmsnorm, gate/up rows, SiLU-mul ----
        norm_input(resid1, y, true, resid0, reinterpret_cast<const dtype_t*>(p[3]), eps, xs, red);
        const int ng = rows_of(INTER, RPB_GU);
        gemv_smem<HIDDEN>(reinterpret_cast<const dtype_t*>(slot + OFF_G), 2 * RPB_GU, RPB_GU, ng,
                          xs, outs);
        if (tid < ng) {
            const float gt = to_f32(from_f32<dtype_t>(outs[tid]));
            const float upv = to_f32(from_f32<dtype_t>(outs[RPB_GU + tid]));
            act[b * RPB_GU + tid] = from_f32<dtype_t>(gt / (1.f + __expf(-gt)) * upv);
        }
        step_sync(counters, target);

        // ---- E: down rows ----
        for (int v = tid; v < INTER / 8; v += NT) {
            float f[8];
            load8_cg(act + v * 8, f);
#pragma unroll
            for (int e = 0; e < 8; ++e) xs[v * 8 + e] = f[e];
        }
        __syncthreads();
        const int nd = rows_of(HIDDEN, RPB_DN);
        gemv_smem<INTER>(reinterpret_cast<const dtype_t*>(slot + OFF_DN), nd, RPB_DN, nd, xs, outs);
        if (tid < nd) y[b * RPB_DN + tid] = from_f32<dtype_t>(outs[tid]);
        // every warp is done with this slot (gemv_smem ends in __syncthreads): refill it
        if (tid == ISSUER)
            issue_item(layers, num_layers, lm_head, vocab, l + 2, slot, &bars[l & 1]);
    }

    // ---- F: rmsnorm, lm_head rows in slot-sized chunks through the same two-slot ring ----
    step_sync(counters, target);
    norm_input(resid0, y, true, nullptr, final_norm, eps, xs, red);
    RE_PDL_TRIGGER();
    const int rpb_lm = cdiv(vocab, gridDim.x), v0 = b * rpb_lm, v1 = min(vocab, v0 + rpb_lm);
    for (int c = 0; v0 + c * LM_ROWS < v1; ++c) {
        const int item = num_layers + c, r0 = v0 + c * LM_ROWS, n = min(LM_ROWS, v1 - r0);
        unsigned char* slot = smem + (item & 1) * SLOT_BYTES;
        mbar_wait(&bars[item & 1], (item >> 1) & 1);
        gemv_smem<HIDDEN>(reinterpret_cast<const dtype_t*>(slot), n, LM_ROWS, n, xs, outs);
        if (tid < n) logits[r0 + tid] = from_f32<dtype_t>(outs[tid]);
        if (tid == ISSUER)
            issue_item(layers, num_layers, lm_head, vocab, item + 2, slot, &bars[item & 1]);
        __syncthreads();  // outs is rewritten by the next chunk
    }
#if STEP_TIMING
    __syncthreads();
    if (tid == 0) step_arrive[(target / gridDim.x + 1) * gridDim.x + b] = gtime();
#endif
    grid_exit(counters);
}

// Diagnostic: n grid barriers and nothing else (tests: the barrier holds; tools: its cost).
// out[b] = the counter value block b saw after its last barrier (>= n * gridDim.x).
extern "C" __global__ void grid_sync_probe_kernel(unsigned* counters, int n, unsigned* out) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    unsigned target = 0;
    for (int i = 0; i < n; ++i) grid_sync(counters, target += gridDim.x);
    if (threadIdx.x == 0) out[blockIdx.x] = __ldcg(counters);
    grid_exit(counters);
}
