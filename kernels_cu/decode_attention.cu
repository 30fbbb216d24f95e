// decode_attention.cu: single-token (decode) GQA attention over the paged KV cache, split-KV.
//
//   o[b, h] = sum_j p_j v[j, h/G] / sum_j p_j,  p_j = exp(scale * q[b, h] . k[j, h/G] - m),
//   j < seq_lens[b], G = Hq / Hkv. Any m gives the same o; only the float range cares.
//
//   q            [B, Hq, D] dtype_t
//   k/v_cache    [NB, Hkv, BS, D] dtype_t; key j of sequence b lives in block
//                block_tables[b, j >> LOG2_BS] at offset j & (BS - 1)   (BS a power of two)
//   block_tables [B, max_blocks] int32;  seq_lens [B] int32
//   out          [B, Hq * D] dtype_t
//   min_chunk    tokens per split at least (short sequences: few splits; TUNING['min_chunk'])
//   workspace (partials touched only when > 1 split is active), Y = gridDim.y head blocks,
//   S = gridDim.x splits:
//     part_o  [B, Y, S, GROUP, D] float32   unnormalised o of each split
//     part_ml [B, Y, S, GROUP] float2       (m, l) of each split, log2 units
//     counters [B, Y] int32                 zero between launches (the last block resets it)
//     fallback_count [1] int32              async blocks that fell back (monotonic, for tests)
//
// Grid (S, Hkv * G / GROUP, B), NUM_WARPS * 32 threads. A block owns GROUP query heads of one
// KV head (all of them when G <= 8), so each K/V byte is read once per step, and one chunk of
// the sequence. The chunk is sized on the device from the real seq_lens[b]:
//   c = max(cdiv(len, S), min_chunk)
//   chunk = c <= STEP ? roundup(c, STEP1) : roundup(c, STEP),  active splits = cdiv(len, chunk)
// so a captured graph (fixed S per bucket, sized for the bucket's capacity) spreads any length
// over at most S splits; a short sequence gets few (min_chunk) and splits past the end return
// at once. One active split writes o directly (no workspace, no merge). min_chunk = STEP gives
// the v1 rule roundup(cdiv(len, S), STEP).
// Chunks of at most STEP1 tokens (one block step at unroll 1) run the unroll-1 loop: each warp
// holds one K and one V load, so a short chunk costs one load round trip and ~1/UNROLL of the
// issue time of a full step (short contexts are latency-bound).
// Inside a block: LANES_PER_TOK = D/8 lanes own one token row (one 16-byte load each), a warp
// covers 32/LANES_PER_TOK tokens per load and UNROLL loads of K and of V are issued before any
// use. Warps take interleaved tiles of TILE tokens; each keeps its own softmax state, merged
// through shared memory at the end. Split results are merged with log-sum-exp by the last
// block of the (b, head block) to finish (atomic counter), so one launch does everything.
// Publication: __syncthreads, then one gpu-scope acq_rel atomic by thread 0 (cumulative over
// the block's partial stores; the CUTLASS semaphore pattern), not a fence in every thread.
//
// Variants (IS_ASYNC):
//  0 synchronized (Flash-Decoding): each warp keeps a running max m; per tile of TILE tokens
//    m is raised to the tile max and o, l are rescaled by 2^(m_old - m_new).
//  1 asynchronized (FlashDecoding++): every exponent uses one unified max phi (per-model
//    constant): p = 2^(s - phi), no max tracking across lanes, no rescaling; warp, block and
//    split results are plain sums (the shared merge helper sees equal m and weights 1).
//    Exactness: each lane keeps its true max (one FMNMX per score, reduced once per block).
//    If for any head the block's true max leaves [phi + lo, phi + hi] (overflow of the fp32
//    sums above, total underflow below), the block recomputes its chunk synchronously and
//    stores an ordinary (m, l, o) state; the split merge handles mixed states exactly.
//    No host round trip: graph-capturable. Saves the per-tile warp max and rescale: measured
//    0-2% faster than 0 on H100 (memory-bound), more where latency-bound; phi and the window
//    come from tools/calibrate_softmax.py.
// Programmatic launch: the kernel reads seq_lens, block_tables and the keys before len - 1
// ahead of its PDL wait (each warp's first step, when it holds only such keys), so the kernel
// it follows may write q and key len - 1 only: true of a decode step, whose inputs are copied
// in before the graph replay and whose K/V write is the newest key.
// Bulk build (BULK = S >= 2; sync only, no PREFETCH; sm_90): K/V do not come through
// registers. Each warp owns a ring of S slots in dynamic shared memory (one warp step each:
// K rows [TILE][D], then V rows [TILE][D]) and fills them with cp.async.bulk (the TMA unit's
// 1-D copy) completing on one mbarrier per slot, so S - 1 steps stay in flight while one is
// computed, at no register cost and one copy instruction per lane per step: lane j < R copies
// the j-th run of K rows of the step, lane R + j that of V, a run being min(BS, TILE) rows
// inside one page (single rows when the warp's tiles do not start on a run boundary). The
// compute is the same compute_step on registers read back from the slot. BlockSmem overlays
// the rings after the loop. Dynamic shared memory: max(NUM_WARPS * S * 2 * TILE * D * 2,
// sizeof(BlockSmem)); the kernel traps on less. Why: at G = 4 the register-fed loop tops out
// near 3.0 TB/s on H100 (the loads in flight per warp end where its compute begins).
// Defines: HEAD_DIM (64 | 128), GROUP (1..8), NUM_WARPS, UNROLL, IS_ASYNC, DTYPE_BF16,
// PREFETCH (1: L2-prefetch each warp's next tile while computing the current one),
// MIN_BLOCKS (launch bound: 16 warps / NUM_WARPS keeps G <= 4 at 128 registers), BULK;
// NO_MATH (probe builds only: the ring loops skip the math, o is garbage; tools/read_floor.py),
// MMA_MATH (BULK, D 128, UNROLL 4: the ring loops' math on tensor cores, decode_mma_step.cuh;
// 127 registers instead of 168, so two blocks fit per SM).
// The block/split half (BlockSmem, warp merge, partials, counter, split merge) lives in
// decode_common.cuh, shared with the tensor-core variant decode_attention_mma.cu.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef GROUP
#define GROUP 4
#endif
#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#ifndef IS_ASYNC
#define IS_ASYNC 0
#endif
#ifndef PREFETCH
#define PREFETCH 1
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1  // resident blocks per SM to guarantee (caps registers)
#endif
#ifndef NO_MATH
#define NO_MATH 0  // probe builds only: bulk/dyn loops read each slot but skip the math
#endif
#ifndef MMA_MATH
#define MMA_MATH 0  // 1: the bulk/dyn loops do their math on tensor cores (decode_mma_step.cuh)
#endif
#ifndef BULK
#define BULK 0  // > 0: K/V arrive through per-warp shared-memory rings of BULK slots (below)
#endif
#ifndef DYN
#define DYN 0  // 1: decode_attention_dyn_kernel (work stealing, below) instead of the static grid
#endif
#if DYN
#ifndef EXTRA
#define EXTRA 8  // stolen-state slots per cell
#endif
#ifndef MIN_STEAL
#define MIN_STEAL 16  // unclaimed tiles a range needs to be worth a steal (~3 us at B8 32/8)
#endif
#ifndef CLAIM
#define CLAIM 2  // tiles per claim (an atomic on the range's word)
#endif
#endif
#if BULK
#if IS_ASYNC || PREFETCH
#error "BULK builds the synchronized variant without the L2 prefetch"
#endif
#include "bulk.cuh"
#endif
#if DYN && (!BULK || O_PROJ)
#error "DYN builds the BULK kernel (no O_PROJ)"
#endif
// BlockSmem, merge helpers, finish_block (split merge):
#include "decode_common.cuh"
// per-block event log, probe builds only (TIMELINE=1: tools/timeline_attention.py):
#include "timeline.cuh"
// tensor-core helpers (MMA_MATH builds, attn_o.cuh); included here, unconditionally, because
// module.py inlines each header once, at its first #include line
#include "mma.cuh"

constexpr int VEC = 8;                               // 2-byte elements per 16-byte load
constexpr int LANES_PER_TOK = HEAD_DIM / VEC;        // 16 (D=128) or 8 (D=64)
constexpr int TOK_PER_LOAD = 32 / LANES_PER_TOK;     // tokens one warp-wide load covers
constexpr int TILE = TOK_PER_LOAD * UNROLL;          // tokens per warp per step
constexpr int STEP = TILE * NUM_WARPS;               // tokens per block per step
constexpr int STEP1 = TOK_PER_LOAD * NUM_WARPS;      // the same at unroll 1 (short chunks)
static_assert(LANES_PER_TOK <= 32 && 32 % LANES_PER_TOK == 0, "HEAD_DIM must be 64 or 128");
static_assert(NUM_WARPS <= 32 && (NUM_WARPS & (NUM_WARPS - 1)) == 0, "NUM_WARPS: power of 2");
#if MMA_MATH
#if !BULK || NO_MATH || UNROLL != 4
#error "MMA_MATH builds the BULK kernel's math (8-token warp tiles)"
#endif
#include "decode_mma_step.cuh"
typedef MmaQ QRegs;  // the block's q rows as tensor-core fragments
#else
typedef float QRegs[GROUP][VEC];  // this lane's 8 dims of each head's q, in log2 units
#endif
#if BULK
// Ring slot of one warp step: K rows [TILE][D], then V rows [TILE][D]. A slot is refilled by at
// most 2 * TILE row copies, one per lane, hence TILE <= 16.
constexpr int BULK_SLOT = 2 * TILE * HEAD_DIM;  // elements
constexpr int BULK_RING_BYTES = NUM_WARPS * BULK * BULK_SLOT * 2;
static_assert(TILE <= 16, "BULK needs TILE = 32 / (D / 8) * UNROLL <= 16 tokens");
__shared__ mbar_t bulk_bars[NUM_WARPS][BULK];
extern __shared__ __align__(128) unsigned char bulk_smem[];  // rings, then BlockSmem
#endif

// Streaming 16-byte load: read once, keep it out of L1, ask L2 for the whole 256-byte row.
__device__ __forceinline__ uint4 load_stream(const dtype_t* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

__device__ __forceinline__ void unpack8(const uint4& u, float f[VEC]) {
    const dtype_t* e = reinterpret_cast<const dtype_t*>(&u);
#pragma unroll
    for (int i = 0; i < VEC; ++i) f[i] = to_f32(e[i]);
}

// Phase stamps of the O_PROJ kernel (diagnostic; tools/trace_mlp.py).
#ifndef ATTN_O_TRACE
#define ATTN_O_TRACE 0  // diagnostic: thread 0 of each block stamps %globaltimer per phase
#endif
#if ATTN_O_TRACE && O_PROJ
__device__ unsigned long long attn_o_trace[1024][8];  // tools/trace_mlp.py reads it
#define AO_STAMP(i)                                                                        \
    if (threadIdx.x == 0) {                                                                \
        const unsigned bid_ = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x; \
        unsigned long long t_;                                                             \
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                             \
        if (bid_ < 1024) attn_o_trace[bid_][i] = t_;                                       \
    }
#else
#define AO_STAMP(i)
#endif

#if DYN
// One phase of a block of decode_attention_dyn_kernel: the range of tiles (TILE tokens each) it
// attends over and how its warps claim them.
struct DynPhase {
    unsigned long long* claim;  // the range's claim word: front claims (low 32), back (high 32)
    int n;                      // tiles in the range
    int k0;                     // tiles [0, k0) are the owner's unclaimed: its warps' first fills
    int tile0;                  // the range's first tile in the sequence
    bool front;                 // owner (claims from the front) or thief (from the back)
    int ci;                     // the warp's ring consume count, carried across phases
    int tiles;                  // out: tiles the warp computed in this phase
};
#define DYN_PHASE_PARAM , DynPhase& ph
#else
#define DYN_PHASE_PARAM
#endif

// Softmax state of this warp over its tiles of [start, end), per lane: o for its 8 dims.
// m is warp-uniform; l and o are folded over the warp's token groups before returning.
// ASYNC: m = phi fixed, m_true = true max of the scores seen (per head).
// U: K and V loads in flight per warp step (UNROLL, or 1 for short chunks).
// wait_fn() runs the PDL wait and fills qf: the warp's first step goes out before it when all
// its keys are older than `newest` (the key the previous kernel writes), so under programmatic
// launch its page lookups and DRAM reads overlap the previous kernel's tail.
// DYN: the warp attends over the tiles of the range in ph that it claims (start unused; end the
// sequence length); see decode_attention_dyn_kernel.
template <bool ASYNC, int U, typename WaitFn>
__device__ __forceinline__ void attend_chunk(const QRegs& qf, WaitFn wait_fn,
                                             const dtype_t* __restrict__ k_cache,
                                             const dtype_t* __restrict__ v_cache,
                                             const int* __restrict__ bt, int kv_head,
                                             int num_kv_heads, int log2_bs, int start, int end,
                                             int newest, float phi, float (&m)[GROUP],
                                             float (&l)[GROUP], float (&o)[GROUP][VEC],
                                             float (&m_true)[GROUP] DYN_PHASE_PARAM) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LANES_PER_TOK, dvec = lane % LANES_PER_TOK;
    const int bs_mask = (1 << log2_bs) - 1;
    constexpr int TILE_U = TOK_PER_LOAD * U, STEP_U = TILE_U * NUM_WARPS;
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = ASYNC ? phi : NEG_INF;
        l[g] = 0.f;
        m_true[g] = NEG_INF;
#pragma unroll
        for (int i = 0; i < VEC; ++i) o[g][i] = 0.f;
    }
    uint4 kr[U], vr[U];
    auto load_step = [&](int t0) {  // K and V of the warp step at t0 into kr, vr
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int tok = t0 + u * TOK_PER_LOAD + sub;
            kr[u] = vr[u] = make_uint4(0, 0, 0, 0);  // never load unused slots (may be NaN)
            if (tok < end) {
                const int page = __ldg(bt + (tok >> log2_bs));
                const size_t row = ((size_t)page * num_kv_heads + kv_head) << log2_bs;
                const size_t off = (row + (tok & bs_mask)) * HEAD_DIM + dvec * VEC;
                kr[u] = load_stream(k_cache + off);
                vr[u] = load_stream(v_cache + off);
            }
        }
    };
#if MMA_MATH
    (void)load_step;
    MmaState st;  // the warp's state on tensor cores, turned into m, l, o after its tiles
    mma_state_init(st);
#else
    // One warp step on kr, vr. t0 is warp-uniform, so full-mask shuffles are safe; token t0
    // itself is valid.
    auto compute_step = [&](int t0) {
#if PREFETCH
        // Pull this warp's next tile into L2 while this one computes: doubles the bytes in
        // flight per warp without holding registers. One 128-byte line per lane at U = 4.
        {
            constexpr int LINES_PER_ROW = HEAD_DIM * 2 / 128;
            constexpr int LINES = TILE_U * 2 * LINES_PER_ROW;  // K and V rows of the tile
            const int tn = t0 + STEP_U;
#pragma unroll
            for (int i = lane; i < LINES; i += 32) {
                const int tok = tn + i / (2 * LINES_PER_ROW), r = i % (2 * LINES_PER_ROW);
                if (tok < end) {
                    const int page = __ldg(bt + (tok >> log2_bs));
                    const size_t row = ((((size_t)page * num_kv_heads + kv_head) << log2_bs) +
                                        (tok & bs_mask)) * HEAD_DIM;
                    const dtype_t* line = (r < LINES_PER_ROW ? k_cache : v_cache) + row +
                                          (r % LINES_PER_ROW) * 64;
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
                }
            }
        }
#endif
        float s[U][GROUP];  // scores, then probabilities
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[VEC];
            unpack8(kr[u], kf);
            const bool valid = t0 + u * TOK_PER_LOAD + sub < end;
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                float acc = 0.f;
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc = fmaf(qf[g][i], kf[i], acc);
#pragma unroll
                for (int x = LANES_PER_TOK / 2; x > 0; x >>= 1) acc += RE_SHFL_XOR(acc, x);
                s[u][g] = valid ? acc : NEG_INF;
            }
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            if (ASYNC) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    m_true[g] = fmaxf(m_true[g], s[u][g]);
                    s[u][g] = exp2_approx(s[u][g] - phi);
                    l[g] += s[u][g];
                }
            } else {
                float mx = s[0][g];
#pragma unroll
                for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u][g]);
#pragma unroll
                for (int x = LANES_PER_TOK; x < 32; x <<= 1) mx = fmaxf(mx, RE_SHFL_XOR(mx, x));
                const float m_new = fmaxf(m[g], mx);  // finite: token t0 is valid
                const float corr = merge_weight(m[g], m_new);
                m[g] = m_new;
                l[g] *= corr;
#pragma unroll
                for (int i = 0; i < VEC; ++i) o[g][i] *= corr;
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    s[u][g] = exp2_approx(s[u][g] - m_new);
                    l[g] += s[u][g];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float vf[VEC];
            unpack8(vr[u], vf);
#pragma unroll
            for (int g = 0; g < GROUP; ++g)
#pragma unroll
                for (int i = 0; i < VEC; ++i) o[g][i] = fmaf(s[u][g], vf[i], o[g][i]);
        }
    };
    // The ring loops' math: NO_MATH probe builds (tools/read_floor.py) only fold the slot's
    // registers into o, so they time the ring and its reads without the math.
    auto use_step = [&](int t0) {
#if NO_MATH
        unsigned x = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) x ^= kr[u].x ^ kr[u].w ^ vr[u].y ^ vr[u].z;
        o[0][0] += (float)(x & 1u);
        (void)t0;
#else
        compute_step(t0);
#endif
    };
    (void)use_step;
#endif
#if BULK
    // The math of the ring slot `slot` holding the warp tile at token t0 (K rows [TILE][D], then
    // V rows; rows past `end` were never copied), shared by the static and DYN ring loops.
    auto use_slot = [&](const dtype_t* slot, int t0) {
#if MMA_MATH
        mma_step(slot, min(TILE_U, end - t0), qf, st);
#else
        const dtype_t* rows = slot + dvec * VEC;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int r = u * TOK_PER_LOAD + sub;
            kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
            if (t0 + r < end) {
                kr[u] = *reinterpret_cast<const uint4*>(rows + r * HEAD_DIM);
                vr[u] = *reinterpret_cast<const uint4*>(rows + (TILE + r) * HEAD_DIM);
            }
        }
        use_step(t0);
#endif
    };
#endif
#if DYN
    // The warp's ring (as below), filled with the tiles it claims: ph.front, its first BULK fills
    // are its tiles of [0, k0) (warp + j * NUM_WARPS), then lane 0 claims CLAIM tiles at a time
    // from the front of the range; a thief claims from the back. A claim adds to the range's
    // word and gets the tiles its old value names while k0 + front + back claims < n, so the
    // owner and thieves never take the same tile and stop when they meet. Claims and page ids
    // are asked for ahead of their use, so their round trips overlap tiles. The mbarriers are
    // initialised once by the kernel; ph.ci keeps their parity across phases.
    static_assert(U == UNROLL, "DYN tiles are UNROLL steps");
    (void)load_step;
    (void)start;
    dtype_t* ring = reinterpret_cast<dtype_t*>(bulk_smem) + warp * (BULK * BULK_SLOT);
    mbar_t* bars = bulk_bars[warp];
    const int run = min(bs_mask + 1, TILE);  // tiles start on TILE boundaries: whole runs
    const int runs = TILE / run, jr = lane % runs;
    const bool is_copier = lane < 2 * runs;
    const dtype_t* src = (lane >= runs ? v_cache : k_cache) +
                         ((size_t)kv_head << log2_bs) * HEAD_DIM;
    const int dst_off = (lane >= runs ? TILE * HEAD_DIM : 0) + jr * run * HEAD_DIM;
    auto issue = [&](int slot, int tile, int page) {  // the range's tile into ring slot `slot`
        const int t = (ph.tile0 + tile) * TILE, tok = t + jr * run;
        mbar_t* bar = bars + slot;
        if (lane == 0) mbar_arrive_expect_tx(bar, 2 * min(TILE, end - t) * HEAD_DIM * 2);
        __syncwarp();
        if (is_copier && tok < end)
            bulk_g2s(ring + slot * BULK_SLOT + dst_off,
                     src + ((((size_t)page * num_kv_heads) << log2_bs) + (tok & bs_mask)) *
                               HEAD_DIM,
                     min(run, end - tok) * HEAD_DIM * 2, bar);
    };
    auto page_for = [&](int tile) {  // this lane's page of the tile (0 when it copies none)
        const int tok = (ph.tile0 + tile) * TILE + jr * run;
        return tile >= 0 && is_copier && tok < end ? __ldg(bt + (tok >> log2_bs)) : 0;
    };
    const unsigned long long one = ph.front ? 1ull : 1ull << 32;
    auto claim = [&]() { return lane == 0 ? atomicAdd(ph.claim, one * CLAIM) : 0ull; };
    auto claimed = [&](unsigned long long c, int i) {  // tile of claim i of those at c, or -1
        c = RE_SHFL(c, 0);
        const long long f = (long long)(c & 0xffffffffull), bk = (long long)(c >> 32);
        if (ph.k0 + f + bk + i >= ph.n) return -1;
        return ph.front ? (int)(ph.k0 + f + i) : (int)(ph.n - 1 - bk - i);
    };
    // Claims go out CLAIM tiles at a time, two batches ahead: `cur` is being handed out (its
    // claim pi next), `nxt` is in flight. Once a claim fails every later one fails too (the
    // range is used up), so no claimed tile is left behind.
    unsigned long long cur = 0, nxt = 0;
    int pi = 0;
    bool more = false;  // claims may still get tiles (warp-uniform)
    auto take = [&]() {  // the next claimed tile, or -1 from now on
        if (!more) return -1;
        const int t = claimed(cur, pi);
        more = t >= 0;
        if (more && ++pi == CLAIM) {
            cur = nxt;
            nxt = claim();
            pi = 0;
        }
        return t;
    };
    int next[BULK];  // tiles of the next BULK consume counts; -1 (none) only as a suffix
    auto is_old = [&](int tile) { return min((ph.tile0 + tile + 1) * TILE, end) <= newest; };
#pragma unroll
    for (int j = 0; j < BULK; ++j) {
        const int st = warp + j * NUM_WARPS;  // the owner's unclaimed first fills
        next[j] = ph.front && st < ph.k0 ? st : -1;
        if (next[j] >= 0 && is_old(next[j])) issue((ph.ci + j) % BULK, next[j], page_for(next[j]));
    }
    wait_fn();
    more = !ph.front || ph.k0 < ph.n;  // k0 = min(n, NUM_WARPS * BULK)
    if (more) {
        cur = claim();
        nxt = claim();
    }
#pragma unroll
    for (int j = 0; j < BULK; ++j) {
        if (!ph.front) next[j] = take();
        if (next[j] >= 0 && (!ph.front || !is_old(next[j])))
            issue((ph.ci + j) % BULK, next[j], page_for(next[j]));
    }
    int tile_ahead = take();  // the next refill's tile and page, looked up a refill early
    int page_ahead = page_for(tile_ahead);
    ph.tiles = 0;
    while (next[0] >= 0) {  // warp-uniform
        const int slot = ph.ci % BULK;
        const int t0 = (ph.tile0 + next[0]) * TILE;
        mbar_wait(bars + slot, (ph.ci / BULK) & 1);
        use_slot(ring + slot * BULK_SLOT, t0);
        ++ph.tiles;
        __syncwarp();  // every lane has used the slot: refill it
        const int tn = tile_ahead;
        if (tn >= 0) {
            issue(slot, tn, page_ahead);
            tile_ahead = take();
            page_ahead = page_for(tile_ahead);
        }
#pragma unroll
        for (int j = 0; j + 1 < BULK; ++j) next[j] = next[j + 1];
        next[BULK - 1] = tn;
        ++ph.ci;
    }
#if MMA_MATH
    mma_state_out(st, reinterpret_cast<float*>(ring), m, l, o);  // every copy has landed
#endif
#elif BULK
    // The warp's steps (tiles i = 0, 1, ... at t_first + i * STEP_U) stream through its own
    // ring of BULK slots with cp.async.bulk: BULK - 1 tiles stay in flight while one computes,
    // at no register cost. A tile is copied in runs of whole rows inside one page: `run` rows
    // (the page size or the tile, whichever is smaller, when the tile starts on a run boundary;
    // else single rows), lane j < runs copying K run j and lane runs + j V run j.
    (void)load_step;
    dtype_t* ring = reinterpret_cast<dtype_t*>(bulk_smem) + warp * (BULK * BULK_SLOT);
    mbar_t* bars = bulk_bars[warp];
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < BULK; ++i) mbar_init(bars + i, 1);
        mbar_init_fence();
    }
    __syncwarp();
    const int t_first = start + warp * TILE_U;
    const int n_tiles = t_first < end ? cdiv(end - t_first, STEP_U) : 0;
    const int run0 = min(bs_mask + 1, TILE_U);
    const int run = (t_first & (run0 - 1)) == 0 ? run0 : 1;
    const int runs = TILE_U / run, jr = lane % runs;
    const bool is_copier = lane < 2 * runs;
    // per-lane constants of the copies: source head base, slot offset, first token of the run
    const dtype_t* src = (lane >= runs ? v_cache : k_cache) +
                         ((size_t)kv_head << log2_bs) * HEAD_DIM;
    const int dst_off = (lane >= runs ? TILE * HEAD_DIM : 0) + jr * run * HEAD_DIM;
    const int tok_lane = t_first + jr * run;
    auto page_of = [&](int i) {  // page of this lane's run of tile i (0 when it copies none)
        const int tok = tok_lane + i * STEP_U;
        return is_copier && i < n_tiles && tok < end ? __ldg(bt + (tok >> log2_bs)) : 0;
    };
    auto issue = [&](int i, int page) {  // tile i into slot i % BULK (warp-uniform call)
        const int t = t_first + i * STEP_U, tok = tok_lane + i * STEP_U;
        mbar_t* bar = bars + i % BULK;
        if (lane == 0) mbar_arrive_expect_tx(bar, 2 * min(TILE_U, end - t) * HEAD_DIM * 2);
        __syncwarp();
        if (is_copier && tok < end)
            bulk_g2s(ring + (i % BULK) * BULK_SLOT + dst_off,
                     src + ((((size_t)page * num_kv_heads) << log2_bs) + (tok & bs_mask)) *
                               HEAD_DIM,
                     min(run, end - tok) * HEAD_DIM * 2, bar);
    };
    auto is_old = [&](int i) {  // tile i holds only keys older than `newest`
        return min(t_first + i * STEP_U + TILE_U, end) <= newest;
    };
#pragma unroll
    for (int i = 0; i < BULK; ++i)
        if (i < n_tiles && is_old(i)) issue(i, page_of(i));
    wait_fn();
#pragma unroll
    for (int i = 0; i < BULK; ++i)
        if (i < n_tiles && !is_old(i)) issue(i, page_of(i));
    int page_next = page_of(BULK);
    for (int i = 0; i < n_tiles; ++i) {
        const int t0 = t_first + i * STEP_U;
        mbar_wait(bars + i % BULK, (i / BULK) & 1);
        if (i == 0) AO_STAMP(6);  // warp 0's first tile landed
        use_slot(ring + (i % BULK) * BULK_SLOT, t0);
        if (i == n_tiles - 1) AO_STAMP(7);  // warp 0's last tile computed
        __syncwarp();  // every lane has used the slot: refill it
        if (i + BULK < n_tiles) {
            issue(i + BULK, page_next);
            page_next = page_of(i + BULK + 1);
        }
    }
#if MMA_MATH
    mma_state_out(st, reinterpret_cast<float*>(ring), m, l, o);  // every copy has landed
#endif
#else
    // The first step is peeled (kr, vr are not loop-carried: no extra live registers).
    int t0 = start + warp * TILE_U;  // warp-uniform
    const bool is_early = t0 < end && min(t0 + TILE_U, end) <= newest;
    if (is_early) load_step(t0);
    wait_fn();
    if (t0 < end) {
        if (!is_early) load_step(t0);
        compute_step(t0);
    }
    for (t0 += STEP_U; t0 < end; t0 += STEP_U) {
        load_step(t0);
        compute_step(t0);
    }
#endif
    // Token groups of the warp share m (warp-wide max, or phi): their l and o just add up.
#pragma unroll
    for (int x = LANES_PER_TOK; x < 32; x <<= 1) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            l[g] += RE_SHFL_XOR(l[g], x);
            if (ASYNC) m_true[g] = fmaxf(m_true[g], RE_SHFL_XOR(m_true[g], x));
#pragma unroll
            for (int i = 0; i < VEC; ++i) o[g][i] += RE_SHFL_XOR(o[g][i], x);
        }
    }
}

// This lane's 8 dims of the GROUP query heads head0.. of sequence b, scaled to log2 units
// (scores come out as scale * log2e * q.k). Run after RE_PDL_WAIT: q is the previous kernel's.
// dvec = (lane % LANES_PER_TOK): the lane's 8-dim piece.
__device__ __forceinline__ void load_q(QRegs& qf, const dtype_t* __restrict__ q,
                                       int b, int num_q_heads, int head0, int dvec,
                                       float scale_log2) {
#if MMA_MATH
    (void)dvec;
    mma_load_q(qf, q + ((size_t)b * num_q_heads + head0) * HEAD_DIM, scale_log2);
#else
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        unpack8(*reinterpret_cast<const uint4*>(
                    q + ((size_t)b * num_q_heads + head0 + g) * HEAD_DIM + dvec * VEC),
                qf[g]);
#pragma unroll
        for (int i = 0; i < VEC; ++i) qf[g][i] *= scale_log2;  // scores in log2 units
    }
#endif
}

__device__ __forceinline__ void stash_warp(BlockSmem& sm, const float (&m)[GROUP],
                                           const float (&l)[GROUP], const float (&o)[GROUP][VEC],
                                           const float (&m_true)[GROUP]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < LANES_PER_TOK) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            float4* dst = reinterpret_cast<float4*>(&sm.o[warp][g][lane * VEC]);
            dst[0] = make_float4(o[g][0], o[g][1], o[g][2], o[g][3]);
            dst[1] = make_float4(o[g][4], o[g][5], o[g][6], o[g][7]);
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            sm.m[warp][g] = m[g];
            sm.l[warp][g] = l[g];
            sm.m_true[warp][g] = m_true[g];
        }
    }
}

// Does any head's true max (over the block) leave [lo_abs, hi_abs]? Every warp computes it
// from shared memory (lane i: head i / NUM_WARPS, warp i % NUM_WARPS), so no extra barrier.
__device__ __forceinline__ bool is_block_out_of_window(const BlockSmem& sm, float lo_abs,
                                                       float hi_abs) {
    const int lane = threadIdx.x & 31;
    bool is_out = false;
#pragma unroll
    for (int i0 = 0; i0 < GROUP * NUM_WARPS; i0 += 32) {
        const int i = i0 + lane;
        const bool is_used = i < GROUP * NUM_WARPS;
        float mt = is_used ? sm.m_true[i % NUM_WARPS][i / NUM_WARPS] : NEG_INF;
#pragma unroll
        for (int x = 1; x < NUM_WARPS; x <<= 1) mt = fmaxf(mt, RE_SHFL_XOR(mt, x));
        is_out |= is_used && !(mt >= lo_abs && mt <= hi_abs);
    }
    return __any_sync(0xffffffffu, is_out);
}

template <bool ASYNC, typename WaitFn>
__device__ __forceinline__ void attend_any(const QRegs& qf, WaitFn wait_fn,
                                           const dtype_t* __restrict__ k_cache,
                                           const dtype_t* __restrict__ v_cache,
                                           const int* __restrict__ bt, int kv_head,
                                           int num_kv_heads, int log2_bs, int start, int end,
                                           int newest, float phi, float (&m)[GROUP],
                                           float (&l)[GROUP], float (&o)[GROUP][VEC],
                                           float (&m_true)[GROUP]) {
    if (end - start <= STEP1)  // block-uniform
        attend_chunk<ASYNC, 1>(qf, wait_fn, k_cache, v_cache, bt, kv_head, num_kv_heads,
                               log2_bs, start, end, newest, phi, m, l, o, m_true);
    else
        attend_chunk<ASYNC, UNROLL>(qf, wait_fn, k_cache, v_cache, bt, kv_head, num_kv_heads,
                                    log2_bs, start, end, newest, phi, m, l, o, m_true);
}

#if !DYN
extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS)
decode_attention_kernel(const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,
                        const dtype_t* __restrict__ v_cache, const int* __restrict__ block_tables,
                        const int* __restrict__ seq_lens, dtype_t* __restrict__ out,
                        float* __restrict__ part_o, float2* __restrict__ part_ml,
                        int* __restrict__ counters, int* __restrict__ fallback_count,
                        int num_q_heads, int num_kv_heads, int max_blocks, int log2_bs,
                        float scale_log2, float phi, float lo, float hi, int min_chunk) {
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
    RE_TL_MARK(out, 0);

#if BULK
    require_dynamic_smem(max(BULK_RING_BYTES, (int)sizeof(BlockSmem)));
    BlockSmem& sm = *reinterpret_cast<BlockSmem*>(bulk_smem);  // overlays the rings, later
#else
    __shared__ BlockSmem sm;
#endif
    const int dvec = (threadIdx.x & 31) % LANES_PER_TOK;
    QRegs qf;
    auto wait_and_load_q = [&]() {  // run by attend_chunk once its first safe loads are out
        RE_PDL_WAIT();
        RE_PDL_TRIGGER();
        RE_TL_MARK(out, 1);
        load_q(qf, q, b, num_q_heads, head0, dvec, scale_log2);
    };
    const int* bt = block_tables + (size_t)b * max_blocks;
    float m[GROUP], l[GROUP], o[GROUP][VEC], m_true[GROUP];
    attend_any<IS_ASYNC != 0>(qf, wait_and_load_q, k_cache, v_cache, bt, kv_head, num_kv_heads,
                              log2_bs, start, end, len - 1, phi, m, l, o, m_true);
#if BULK
    __syncthreads();  // every warp is done with its ring: BlockSmem overlays them
#endif
    stash_warp(sm, m, l, o, m_true);
    __syncthreads();
    RE_TL_MARK(out, 2);  // every warp has streamed its tiles
#if IS_ASYNC
    if (start < end && is_block_out_of_window(sm, phi + lo, phi + hi)) {  // block-uniform
        // exactness fallback: recompute with a running max
        if (threadIdx.x == 0) atomicAdd(fallback_count, 1);
        attend_any<false>(qf, [] {}, k_cache, v_cache, bt, kv_head, num_kv_heads, log2_bs,
                          start, end, len - 1, phi, m, l, o, m_true);
        __syncthreads();  // every warp has read sm.m_true
        stash_warp(sm, m, l, o, m_true);
        __syncthreads();
    }
#endif
    finish_block(sm, out, part_o, part_ml, counters, num_q_heads, head0, b, hblk, split,
                 num_splits, num_active);
    RE_TL_MARK(out, 3);
}
#endif  // !DYN

#if DYN
// ---------------------------------------------------------------------------------------------
// decode_attention_dyn_kernel (DYN build of the BULK kernel, sync): the same o, with the tiles
// (TILE tokens) of each split claimed at run time, so a block the memory system serves faster
// takes over the tail of a slower one and every block streams until the call ends. Why: with
// static splits the blocks of one call finish 3-5% apart on the H100 (tools/
// timeline_attention.py) and a read kernel that claims its work dynamically streams 1-3% faster
// than the best static one (tools/read_floor.py); docs/decode_attention_notes.md, session 18.
//
//   Grid (S, Y, B) as decode_attention_kernel. Block (split, hblk, b) owns range
//   r = split + S * (hblk + Y * b): tiles [split * per, +per) of cell (b, hblk) (T = cdiv(len,
//   TILE) tiles, per = cdiv(T, S)). It attends over the tiles it claims from the front of r,
//   writes the state as partial slot `split` of the cell and counts it in. Then, until no range
//   has MIN_STEAL unclaimed tiles, it steals: warp 0 picks the range with the most unclaimed
//   tiles, reserves an extra slot S + e (e < EXTRA) of its cell, the block claims tiles from the
//   back of that range and writes that state into the reserved slot.
//   The contribution that completes a cell (all T tiles counted, and every reserved slot
//   written) merges its S + reserved slots into o; a reservation is refused once all T tiles
//   are counted, so the merge cannot miss a slot. Partial states are summed in slot order; which
//   tiles land in which slot depends on timing, so o can differ in its last bits between calls.
//
//   part_o [B, Y, S + EXTRA, GROUP, D] float32, part_ml [B, Y, S + EXTRA, GROUP] float2
//   words  uint64 [one word of two int32: finished blocks, steals (monotonic, for tests),
//                  S * Y * B claim words (front claims | back claims << 32),
//                  Y * B cell words (tiles counted | slots written << 32 | reserved << 48)]
//          zero on the first launch; the last block to finish zeroes all but the steal count.
// Claims and cell words are used only after RE_PDL_WAIT (a previous launch's reset is visible).

extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS)
decode_attention_dyn_kernel(const dtype_t* __restrict__ q, const dtype_t* __restrict__ k_cache,
                            const dtype_t* __restrict__ v_cache,
                            const int* __restrict__ block_tables,
                            const int* __restrict__ seq_lens, dtype_t* __restrict__ out,
                            float* __restrict__ part_o, float2* __restrict__ part_ml,
                            unsigned long long* __restrict__ words, int num_q_heads,
                            int num_kv_heads, int max_blocks, int log2_bs, float scale_log2) {
    const int S = gridDim.x, Y = gridDim.y, B = gridDim.z;
    const int num_ranges = S * Y * B, num_cells = Y * B, num_slots = S + EXTRA;
    int* counts = reinterpret_cast<int*>(words);
    unsigned long long* claims = words + 1;
    unsigned long long* cells = words + 1 + num_ranges;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int dvec = lane % LANES_PER_TOK, group_q = num_q_heads / num_kv_heads;
    auto home_wait = [&] {  // run by the home phase once its first (static) tiles are out
        RE_PDL_WAIT();
        RE_PDL_TRIGGER();
        RE_TL_MARK(out, 1);
    };
    require_dynamic_smem(max(BULK_RING_BYTES, (int)sizeof(BlockSmem)));
    BlockSmem& sm = *reinterpret_cast<BlockSmem*>(bulk_smem);  // overlays the rings, per phase
    __shared__ int tiles_s[NUM_WARPS];
    __shared__ int done_s[2];   // a flush: merge this cell?, slots to merge; the end: last block?
    __shared__ int steal_s[2];  // victim range (-1: stop), its reserved slot
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < BULK; ++i) mbar_init(bulk_bars[warp] + i, 1);
        mbar_init_fence();
    }
    __syncwarp();
    auto range_of = [&](int r, int& len, int& n, int& tile0) {  // sequence length, tiles, first
        len = seq_lens[r / (S * Y)];
        const int per = cdiv(cdiv(len, TILE), S);
        tile0 = (r % S) * per;
        n = max(0, min(cdiv(len, TILE) - tile0, per));
    };
    QRegs qf;
    float m[GROUP], l[GROUP], o[GROUP][VEC], m_true[GROUP];
    DynPhase ph;
    ph.ci = 0;
    // Attend over the claimed tiles of range r, write the state into `slot` of its cell, count
    // it in; the contribution that completes the cell merges it.
    auto run_phase = [&](int r, int slot, bool front, auto wait_fn) {
        int len, n, tile0;
        range_of(r, len, n, tile0);
        const int b = r / (S * Y), cell = r / S, head0 = (cell % Y) * GROUP;
        ph.claim = claims + r;
        ph.n = n;
        ph.k0 = min(n, NUM_WARPS * BULK);
        ph.tile0 = tile0;
        ph.front = front;
        auto wait_and_load_q = [&]() {
            wait_fn();
            load_q(qf, q, b, num_q_heads, head0, dvec, scale_log2);
        };
        attend_chunk<false, UNROLL>(qf, wait_and_load_q, k_cache, v_cache,
                                    block_tables + (size_t)b * max_blocks, head0 / group_q,
                                    num_kv_heads, log2_bs, 0, len, len - 1, 0.f, m, l, o, m_true,
                                    ph);
        __syncthreads();  // every warp is done with its ring: BlockSmem overlays them
        stash_warp(sm, m, l, o, m_true);
        if (lane == 0) tiles_s[warp] = ph.tiles;
        __syncthreads();
        write_partial(sm, part_o, part_ml, ((size_t)cell * num_slots + slot) * GROUP);
        __syncthreads();  // publish the partial, then count it in
        if (threadIdx.x == 0) {
            int tiles = 0;
#pragma unroll
            for (int w = 0; w < NUM_WARPS; ++w) tiles += tiles_s[w];
            const unsigned long long add = (1ull << 32) + tiles;
            const unsigned long long now = add_acq_rel_u64(cells + cell, add) + add;
            const int written = (int)((now >> 32) & 0xffff), reserved = (int)(now >> 48);
            done_s[0] = (int)(now & 0xffffffffu) == cdiv(len, TILE) && written == S + reserved;
            done_s[1] = S + reserved;
        }
        __syncthreads();
        if (done_s[0])
            merge_partials(part_o + (size_t)cell * num_slots * GROUP * HEAD_DIM,
                           part_ml + (size_t)cell * num_slots * GROUP, done_s[1],
                           out + ((size_t)b * num_q_heads + head0) * HEAD_DIM);
        __syncthreads();    // BlockSmem is read: the rings may refill
        fence_async_smem();  // ... after these generic accesses, in the async proxy's order
    };
    const int home = blockIdx.x + S * (blockIdx.y + Y * blockIdx.z);
    RE_TL_MARK(out, 0);
    run_phase(home, blockIdx.x, true, home_wait);
    RE_TL_MARK(out, 2);
    for (;;) {
        if (warp == 0) {  // the range with the most unclaimed tiles, and a slot of its cell
            int best = -1, best_rem = MIN_STEAL - 1;
            for (int r = lane; r < num_ranges; r += 32) {
                int len, n, tile0;
                range_of(r, len, n, tile0);
                const unsigned long long c = *reinterpret_cast<volatile unsigned long long*>(
                    claims + r);
                const long long rem = (long long)n - min(n, NUM_WARPS * BULK) -
                                      (long long)(c & 0xffffffffull) - (long long)(c >> 32);
                if (rem > best_rem) {
                    best_rem = (int)rem;
                    best = r;
                }
            }
#pragma unroll
            for (int x = 16; x > 0; x >>= 1) {  // most unclaimed, then the lower range
                const int o_rem = RE_SHFL_XOR(best_rem, x), o_best = RE_SHFL_XOR(best, x);
                if (o_rem > best_rem || (o_rem == best_rem && (unsigned)o_best < (unsigned)best)) {
                    best_rem = o_rem;
                    best = o_best;
                }
            }
            if (lane == 0) {
                int slot = -1;
                if (best >= 0) {  // reserve, unless the cell is counted complete or full
                    int len, n, tile0;
                    range_of(best, len, n, tile0);
                    unsigned long long* w = cells + best / S;
                    unsigned long long c = *reinterpret_cast<volatile unsigned long long*>(w);
                    while ((int)(c & 0xffffffffu) < cdiv(len, TILE) && (int)(c >> 48) < EXTRA) {
                        const unsigned long long prev = atomicCAS(w, c, c + (1ull << 48));
                        if (prev == c) {
                            slot = S + (int)(c >> 48);
                            atomicAdd(counts + 1, 1);
                            break;
                        }
                        c = prev;
                    }
                }
                steal_s[0] = slot >= 0 ? best : -1;
                steal_s[1] = slot;
            }
        }
        __syncthreads();
        if (steal_s[0] < 0) break;  // block-uniform
        run_phase(steal_s[0], steal_s[1], false, [] {});
    }
    // The last block to finish zeroes the claim and cell words for the next launch.
    __syncthreads();
    if (threadIdx.x == 0) done_s[0] = arrive_acq_rel(counts) == num_ranges - 1;
    __syncthreads();
    if (done_s[0]) {
        for (int i = threadIdx.x; i < num_ranges + num_cells; i += NUM_THREADS) claims[i] = 0;
        if (threadIdx.x == 0) counts[0] = 0;
    }
    RE_TL_MARK(out, 3);
}
#endif  // DYN

#if O_PROJ
// ---------------------------------------------------------------------------------------------
// decode_attention_o_kernel (O_PROJ build, with BULK): a small model's decode attention and its
// output projection in one launch, the projection summed across blocks in fixed point.
//
//   a[b, h]  = attention of query head h as above (all keys of the sequence, no split), rounded
//              to dtype_t where the unfused attention kernel rounds its output
//   y[b, n] += sum_{h in this KV head's group} sum_d Wo[n, h * D + d] * a[b, h, d]
//              n in this block's rows; one fixed_add per (b, n, KV head): fixed_sum.cuh
//
//   w_o  [H, Hq * D] dtype_t (row-major, o_proj.weight);  acc [B, H] int64, zero on entry
//   clear [n_clear] int64: a fixed sum whose last reader finished before this kernel's
//   RE_PDL_WAIT returns (rawengine/backends/cuda/fixed_sum.py), zeroed here
// Grid (cdiv(H, ROWS), Hkv, B): block (r, g, b) owns output rows [r * ROWS, r * ROWS + ROWS)
//   and KV head g (GROUP = every query head of it). Each of the cdiv(H, ROWS) blocks of a KV
//   head computes the same attention: redundant FMAs, but no split merge and no kernel
//   boundary between attention and o_proj, which is what a latency-bound small-model step
//   pays for (docs/launch_notes.md, "Session 10").
// Before RE_PDL_WAIT the block copies its Wo slice (ROWS x GROUP * D) into shared memory and
// its warps' BULK-slot rings take the first BULK tiles of keys older than the newest, so a
// context of up to NUM_WARPS * TILE * BULK tokens is on chip when the wait returns; longer
// ones stream through the rings (correct, slower: the launcher keeps this kernel to short
// contexts). Dynamic shared memory: the rings (BlockSmem overlays them after the loop), then
// the Wo slice.
#if !BULK || IS_ASYNC
#error "O_PROJ builds the synchronized BULK kernel"
#endif
#include "attn_o.cuh"
constexpr int RING_OR_SMEM = BULK_RING_BYTES > (int)sizeof(BlockSmem) ? BULK_RING_BYTES
                                                                        : (int)sizeof(BlockSmem);
static_assert(RING_OR_SMEM % 16 == 0, "16-byte aligned Wo slice");

extern "C" __global__ void __launch_bounds__(NUM_THREADS, 1)
decode_attention_o_kernel(ATTN_O_PARAMS) {
    const int kv_head = blockIdx.y, b = blockIdx.z, n0 = blockIdx.x * ROWS;
    const int head0 = kv_head * GROUP;
    require_dynamic_smem(RING_OR_SMEM + ROWS * GD * 2);
    BlockSmem& sm = *reinterpret_cast<BlockSmem*>(bulk_smem);  // overlays the rings, later
    dtype_t* wo_s = reinterpret_cast<dtype_t*>(bulk_smem + RING_OR_SMEM);  // [ROWS][GD]
    __shared__ __align__(16) float a_s[GD];
    AO_STAMP(0);

    attn_o_load_wo(wo_s, w_o, n0, hidden, num_q_heads, head0);  // constant during the step

    const int len = seq_lens[b];
    const int dvec = (threadIdx.x & 31) % LANES_PER_TOK;
    float qf[GROUP][VEC];
    auto wait_and_load_q = [&]() {
        RE_PDL_WAIT();
        RE_PDL_TRIGGER();
        AO_STAMP(1);
        attn_o_clear(clear, n_clear);
        load_q(qf, q, b, num_q_heads, head0, dvec, scale_log2);
#if ATTN_O_TRACE
        if (__float_as_uint(qf[0][0]) != 0x7fc00001u) AO_STAMP(5);  // waits for q to land
#endif
    };
    const int* bt = block_tables + (size_t)b * max_blocks;
    float m[GROUP], l[GROUP], o[GROUP][VEC], m_true[GROUP];
    if (len > 0) {
        attend_any<false>(qf, wait_and_load_q, k_cache, v_cache, bt, kv_head, num_kv_heads,
                          log2_bs, 0, len, len - 1, 0.f, m, l, o, m_true);
    } else {  // an empty sequence: o = 0, nothing to add (block-uniform)
        wait_and_load_q();
        cp_async_wait<0>();
        return;
    }
    __syncthreads();  // every warp is done with its ring: BlockSmem overlays them
    AO_STAMP(2);
    stash_warp(sm, m, l, o, m_true);
    __syncthreads();
    attn_o_finish(sm, a_s, wo_s, acc, b, n0, hidden);
#if ATTN_O_TRACE
    __syncthreads();
    AO_STAMP(4);
#endif
}
#endif  // O_PROJ
