// kv_read_floor.cu: a diagnostic, not an op. Streams every K and V byte of a paged decode step
// once, with no compute, so tools/read_floor.py can measure the bandwidth floor a page layout
// allows any decode-attention kernel (session 13: at B8 32/8 with shuffled 16-token pages the
// floor is ~3.04 TB/s, below torch's contiguous 3.1 TB/s; docs/decode_attention_notes.md).
//
//   k/v_cache    [NB, Hkv, BS, D] 2-byte elements (HEAD_MAJOR 0, the engine's layout) or
//                [Hkv, NB, BS, D] (HEAD_MAJOR 1: in-order pages give each head one contiguous run)
//   block_tables [B, pages_per_seq] int32, page ids < NB
//   out          [gridDim.x * gridDim.y * gridDim.z * 256] uint32: an XOR of the data read (keeps
//                the loads alive; its value means nothing)
//
// Grid (S, Hkv, B), 256 threads: block (split, h, b) reads pages [split * per, +per) of
// sequence b's table, head h; per = cdiv(pages_per_seq, S). One page run of K (and of V) is
// RUN = BS * D * 2 / 16 uint4; the threads cover it with 16-byte loads, UNROLL pages of K and V
// issued before any is used. Defines: RUN (uint4 per page run), UNROLL, HEAD_MAJOR.
// tools/read_floor.py launches it plainly (no programmatic launch), so calls never overlap; the
// PDL wait/trigger pair keeps the project's launch contract for any other caller.
#include "common.cuh"

#ifndef RUN
#define RUN 256
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#ifndef HEAD_MAJOR
#define HEAD_MAJOR 0
#endif

// K and V runs of head h in pages p .. p + UNROLL - 1 of one sequence's table bt (the last
// page < p_end repeated past it), read by the block's 256 threads; an XOR of the words read.
__device__ __forceinline__ unsigned read_pages(const uint4* __restrict__ k_cache,
                                               const uint4* __restrict__ v_cache,
                                               const int* __restrict__ bt, int p, int p_end,
                                               int h, int num_blocks, int num_kv_heads) {
    unsigned acc = 0;
    for (int i = threadIdx.x; i < RUN; i += 256) {
        uint4 kr[UNROLL], vr[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int page = bt[min(p + u, p_end - 1)];
            const size_t run = HEAD_MAJOR ? (size_t)h * num_blocks + page
                                          : (size_t)page * num_kv_heads + h;
            kr[u] = __ldg(k_cache + run * RUN + i);
            vr[u] = __ldg(v_cache + run * RUN + i);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) acc ^= kr[u].x ^ kr[u].w ^ vr[u].y ^ vr[u].z;
    }
    return acc;
}

extern "C" __global__ void __launch_bounds__(256)
kv_read_floor_kernel(const uint4* __restrict__ k_cache, const uint4* __restrict__ v_cache,
                     const int* __restrict__ block_tables, int pages_per_seq, int num_blocks,
                     int num_kv_heads, unsigned* __restrict__ out) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int per = (pages_per_seq + gridDim.x - 1) / gridDim.x;
    const int p0 = split * per, p1 = min(pages_per_seq, p0 + per);
    unsigned acc = 0;
    for (int p = p0; p < p1; p += UNROLL)
        acc ^= read_pages(k_cache, v_cache, block_tables + (size_t)b * pages_per_seq, p, p1, h,
                          num_blocks, num_kv_heads);
    const size_t blk = ((size_t)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    out[blk * 256 + threadIdx.x] = acc;
}

// Dynamic variant: the same reads, but blocks claim them from one atomic counter instead of
// owning a split, so a block on an SM that the memory system serves faster takes more of the
// work and all blocks stream until the end of the call (tools/timeline_attention.py showed
// the static splits' blocks ending 3-5% apart). Items: range r = (split, h, b) of the static
// grid (R = S * Hkv * B ranges, split fastest), step s of UNROLL pages inside it; item
// i = s * R + r, so at any moment the claimed items spread over all ranges, as in the static
// grid. Thread 0 claims the next item while the block reads the current one.
//   counters [2] int32: the claim counter and the finished-block count, zero on entry; the last
//   block to finish zeroes both (graph replays need no reset).
// Grid: any number of blocks (persistent: blocks per SM x SMs), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
kv_read_floor_dyn_kernel(const uint4* __restrict__ k_cache, const uint4* __restrict__ v_cache,
                         const int* __restrict__ block_tables, int pages_per_seq,
                         int num_blocks, int num_kv_heads, int batch, int num_splits,
                         int* __restrict__ counters, unsigned* __restrict__ out) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    __shared__ int claim_s[2];
    const int per = (pages_per_seq + num_splits - 1) / num_splits;
    const int num_ranges = num_splits * num_kv_heads * batch;
    const int steps = (per + UNROLL - 1) / UNROLL;
    const int total = num_ranges * steps;
    if (threadIdx.x == 0) claim_s[0] = atomicAdd(counters, 1);
    __syncthreads();
    int item = claim_s[0];
    unsigned acc = 0;
    for (int it = 0; item < total; ++it) {
        if (threadIdx.x == 0) claim_s[(it + 1) & 1] = atomicAdd(counters, 1);
        const int r = item % num_ranges, s = item / num_ranges;
        const int split = r % num_splits, h = (r / num_splits) % num_kv_heads;
        const int b = r / (num_splits * num_kv_heads);
        const int p_end = min(pages_per_seq, split * per + per);
        const int p = split * per + s * UNROLL;
        if (p < p_end)
            acc ^= read_pages(k_cache, v_cache, block_tables + (size_t)b * pages_per_seq, p,
                              p_end, h, num_blocks, num_kv_heads);
        __syncthreads();  // the next claim has landed; the slot read below is not rewritten
        item = claim_s[(it + 1) & 1];  // before every thread has passed the next barrier
    }
    out[(size_t)blockIdx.x * 256 + threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0 && arrive_acq_rel(counters + 1) == (int)gridDim.x - 1) {
        counters[0] = 0;  // every block has made its last claim
        counters[1] = 0;
    }
}
