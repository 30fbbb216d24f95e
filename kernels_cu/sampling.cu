// sampling.cu: next-token selection on the GPU; only the token ids go back to the host.
//
// logits [B, V] logit_t (dtype_t, or float with -DLOGITS_F32=1), row-major, contiguous.
// seen [B, V] uint8 (1: token in prompt/output; read only when has_seen and penalty != 1);
// temperature, top_p, min_p, rep_penalty [B] float32; top_k, steps [B] int32; seeds [B] uint64;
// out [B] int32.
//
// Variant 1, greedy: argmax_kernel (multi-block, one launch, for big V).
//   out[b] = first index of max_i logits[b, i]  (numpy.argmax tie rule)
//   grid (num_chunks, B), block 256: block c reduces elements [c * chunk, (c + 1) * chunk) to
//   (val, idx) in part_val / part_idx [B, num_chunks]; the last block of row b to finish
//   (counters[b]: gpu-scope acq_rel arrival, zero between launches, reset by that block)
//   reduces the row's partials and writes out[b]. One launch instead of partial + reduce: at a
//   batch-1 decode step the second kernel boundary cost more than the reduction (H100).
//   host_out (nullable): pinned host memory [2, B] int32, mapped (unified addressing); the same
//   block also stores out[b] to host_out[*host_slot * B + b], so a decode graph hands its tokens
//   to the host without a device-to-host copy on the stream (a copy cost ~10 us a step on the
//   H100, the store nothing measurable: docs/launch_notes.md, "Session 11"). The host alternates
//   the slot, so it reads step k's tokens while step k + 1 writes the other one.
// Variant 2, sample_kernel: grid B, block 1024 (one block per row; V is L2-resident, each pass
// reads it once). Same order of operations as rawengine/sampling.py:
//   1. repetition penalty on seen[b, i] != 0:  x = l > 0 ? l / r : l * r
//   2. greedy (temperature == 0 or top_k == 1): argmax, done
//   3. d_i = (max x - x_i) / T >= 0, so prob_i ~ exp(-d_i)
//   4. top-k: keep the k smallest d        (k <= 0 or k >= V: disabled)
//   5. top-p: keep the smallest prefix (by increasing d) of the top-k set with mass >= p
//   6. min-p: keep exp(-d_i) >= min_p     (prob_i >= min_p * max prob)
//   7. draw: argmax over kept i of (-d_i - log E_i), E_i ~ Exp(1) from a counter-based hash of
//      (seed[b], step[b], i): the "exponential race", an exact draw from the renormalised
//      distribution in one pass, with no scan and no sort.
// Thresholds for 4 and 5 come from a 3-level histogram search over d (1024 bins a level: bins
// of 1/16, then /1024, then /1024 again: 2^-24 resolution), counting for top-k, summing mass
// for top-p. Elements with d >= 64 (prob < 1.6e-28 of the max) share the level-0 tail bin; if
// the threshold lands there every token is kept. Top-k keeps every token tied with the k-th
// (as the reference does); top-p keeps tied tokens in index order (the reference's stable
// sort) via an index cut-off inside the final bin. Distinct values closer than 2^-24 in d
// count as tied: the only deviation from the sort-based reference. V <= 2^20.
#include "common.cuh"

#ifndef LOGITS_F32
#define LOGITS_F32 0
#endif
#if LOGITS_F32
typedef float logit_t;
#else
typedef dtype_t logit_t;
#endif

#define NB 1024           // bins per level == sample_kernel block size
#define LEVEL0_SCALE 16.f // level-0 bin width 1/16 in d
#define RE_FLT_MAX 3.402823466e38f

// (v, i) beats (ov, oi): larger value, then smaller index
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int m = RE_WARP_SIZE / 2; m > 0; m >>= 1)
        argmax_merge(v, i, RE_SHFL_XOR(v, m), RE_SHFL_XOR(i, m));
}

// Whole-block argmax; every thread gets the result. sv, si: __shared__ [32].
__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si) {
    const int lane = threadIdx.x % RE_WARP_SIZE, warp = threadIdx.x / RE_WARP_SIZE;
    warp_argmax(v, i);
    __syncthreads();
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    const bool ok = lane < (int)(blockDim.x / RE_WARP_SIZE);
    v = ok ? sv[lane] : -RE_FLT_MAX;
    i = ok ? si[lane] : 0x7fffffff;
    warp_argmax(v, i);
}

// ---- variant 1: greedy ---------------------------------------------------------------------
extern "C" __global__ void argmax_kernel(const logit_t* __restrict__ logits, int vocab,
                                         int chunk, float* __restrict__ part_val,
                                         int* __restrict__ part_idx, int* __restrict__ counters,
                                         int* __restrict__ out, int* __restrict__ host_out,
                                         const int* __restrict__ host_slot) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ int is_last;
    const int b = blockIdx.y, c = blockIdx.x, num_chunks = gridDim.x;
    const logit_t* row = logits + (long long)b * vocab;
    const int end = min(vocab, (c + 1) * chunk);
    float v = -RE_FLT_MAX;
    int idx = 0x7fffffff;
#pragma unroll 4
    for (int i = c * chunk + threadIdx.x; i < end; i += blockDim.x)
        argmax_merge(v, idx, to_f32(row[i]), i);
    block_argmax(v, idx, sv, si);
    if (threadIdx.x == 0) {
        part_val[b * num_chunks + c] = v;
        part_idx[b * num_chunks + c] = idx;
        is_last = arrive_acq_rel(counters + b) == num_chunks - 1;  // releases the partial
    }
    __syncthreads();
    if (!is_last) return;  // block-uniform
    v = -RE_FLT_MAX;
    idx = 0x7fffffff;
    for (int k = threadIdx.x; k < num_chunks; k += blockDim.x)
        argmax_merge(v, idx, __ldcg(part_val + b * num_chunks + k),
                     __ldcg(part_idx + b * num_chunks + k));
    block_argmax(v, idx, sv, si);
    if (threadIdx.x == 0) {
        out[b] = idx;
        if (host_out != nullptr) host_out[*host_slot * gridDim.y + b] = idx;
        counters[b] = 0;  // ready for the next launch (graph replay)
    }
}

// ---- variant 2: sampling -------------------------------------------------------------------
struct Row {  // per-row view of the inputs
    const logit_t* logits;
    const unsigned char* seen;  // nullptr: no repetition penalty
    float penalty, max_x, inv_temp;
};

__device__ __forceinline__ float penalised(const Row& r, int i) {
    float x = to_f32(r.logits[i]);
    if (r.seen != nullptr && r.seen[i]) x = x > 0.f ? x / r.penalty : x * r.penalty;
    return x;
}

__device__ __forceinline__ float dist(const Row& r, int i) {
    return (r.max_x - penalised(r, i)) * r.inv_temp;
}

// Selected bins of the 3 levels. b1 == NB means "everything in bin b0" (the tail was selected).
struct Sel {
    int b0, b1, b2;
};

__device__ __forceinline__ int bin0(float d) { return min((int)(d * LEVEL0_SCALE), NB - 1); }
__device__ __forceinline__ int bin_at(float d, float lo, float scale) {
    return max(0, min((int)((d - lo) * scale), NB - 1));
}
#define SCALE1 (LEVEL0_SCALE * NB)
#define SCALE2 (LEVEL0_SCALE * NB * NB)  // 2^24: exact in float
__device__ __forceinline__ float lo1(const Sel& s) { return s.b0 / LEVEL0_SCALE; }
__device__ __forceinline__ float lo2(const Sel& s) { return lo1(s) + s.b1 / SCALE1; }

// Is d at or before the selected threshold (lexicographic over the levels)?
__device__ __forceinline__ bool sel_keep(float d, const Sel& s) {
    const int c0 = bin0(d);
    if (c0 != s.b0) return c0 < s.b0;
    if (s.b1 >= NB) return true;
    const int c1 = bin_at(d, lo1(s), SCALE1);
    if (c1 != s.b1) return c1 < s.b1;
    return bin_at(d, lo2(s), SCALE2) <= s.b2;
}

// Block-wide inclusive scan of one float per thread (blockDim.x == NB). scratch: [32].
__device__ __forceinline__ float block_scan(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = RE_SHFL_UP(v, o);
        if (lane >= o) v += n;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = scratch[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float n = RE_SHFL_UP(w, o);
            if (lane >= o) w += n;
        }
        scratch[lane] = w;
    }
    __syncthreads();
    return v + (warp > 0 ? scratch[warp - 1] : 0.f);
}

// First bin whose inclusive prefix reaches target (NB-1 if none); target -= mass before it.
// Bin NB-1 never counts at level 0 (tail), so "none" there means "the tail".
__device__ __forceinline__ int find_bin(const float* hist, float& target, float* scratch, int* result,
                        float* result_excl) {
    const float h = hist[threadIdx.x];
    const float incl = block_scan(h, scratch);
    if (threadIdx.x == 0) { *result = NB - 1; *result_excl = 0.f; }
    __syncthreads();
    if (h > 0.f && incl >= target && incl - h < target) { *result = threadIdx.x; *result_excl = incl - h; }
    __syncthreads();
    target -= *result_excl;
    return *result;
}

// Histogram pass of one level. Candidates: (has_prior ? sel_keep(d, prior) : all); weights are
// counts (is_mass == 0) or exp(-d). level 1/2 only look inside the bins chosen so far.
__device__ __forceinline__ void histogram(const Row& r, int vocab, int level, const Sel& cur, bool has_prior,
                          const Sel& prior, bool is_mass, float* hist) {
    hist[threadIdx.x] = 0.f;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += NB) {
        const float d = dist(r, i);
        if (has_prior && !sel_keep(d, prior)) continue;
        const int c0 = bin0(d);
        int bin;
        if (level == 0) {
            if (c0 == NB - 1) continue;  // tail: never needs its own count
            bin = c0;
        } else {
            if (c0 != cur.b0) continue;
            const int c1 = bin_at(d, lo1(cur), SCALE1);
            if (level == 1) bin = c1;
            else if (c1 != cur.b1) continue;
            else bin = bin_at(d, lo2(cur), SCALE2);
        }
        atomicAdd(&hist[bin], is_mass ? __expf(-d) : 1.f);
    }
    __syncthreads();
}

struct SampleSmem {
    float hist[NB];
    float scratch[32];
    int si[32];
    int result;
    float result_excl;
};

// Threshold Sel: first position (by increasing d) where cumulative weight reaches target.
// target: in = weight to reach; out = what remains of it inside the final bin.
__device__ __forceinline__ Sel select_threshold(const Row& r, int vocab, float& target, bool has_prior,
                                const Sel& prior, bool is_mass, SampleSmem& sm) {
    Sel s = {NB - 1, NB, NB};
    histogram(r, vocab, 0, s, has_prior, prior, is_mass, sm.hist);
    s.b0 = find_bin(sm.hist, target, sm.scratch, &sm.result, &sm.result_excl);
    if (s.b0 == NB - 1) return s;  // tail: keep everything
    histogram(r, vocab, 1, s, has_prior, prior, is_mass, sm.hist);
    s.b1 = find_bin(sm.hist, target, sm.scratch, &sm.result, &sm.result_excl);
    histogram(r, vocab, 2, s, has_prior, prior, is_mass, sm.hist);
    s.b2 = find_bin(sm.hist, target, sm.scratch, &sm.result, &sm.result_excl);
    return s;
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1) from (seed, step, token): 24 random bits, centred in their interval.
__device__ __forceinline__ float uniform(unsigned long long key, int i) {
    const unsigned long long h = mix64(key + (unsigned long long)i * 0x9E3779B97F4A7C15ull);
    return ((float)(h >> 40) + 0.5f) * (1.f / 16777216.f);
}

__device__ __forceinline__ bool in_final_bin(float d, const Sel& prior, const Sel& s) {
    return sel_keep(d, prior) && bin0(d) == s.b0 && bin_at(d, lo1(s), SCALE1) == s.b1 &&
           bin_at(d, lo2(s), SCALE2) == s.b2;
}

// Count histogram over index bits of the tokens in top-p's final bin (idx >> shift == hi_sel
// at the second level), for the index cut-off below.
__device__ __forceinline__ void index_histogram(const Row& r, int vocab, const Sel& prior,
                                                const Sel& s, int shift, int hi_sel, float* hist) {
    hist[threadIdx.x] = 0.f;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += NB) {
        if (!in_final_bin(dist(r, i), prior, s)) continue;
        if (hi_sel < 0) atomicAdd(&hist[i >> shift], 1.f);
        else if ((i >> shift) == hi_sel) atomicAdd(&hist[i & ((1 << shift) - 1)], 1.f);
    }
    __syncthreads();
}

// Exact top-p at ties (frequent with bf16 logits): the final bin holds tokens of one value,
// and the reference's stable sort keeps them in index order while the mass before each is
// < p. rem: mass still allowed inside the bin. Returns the largest kept index of the bin
// (INT_MAX: keep the whole bin). Needs V <= 2^20 (two levels of 10 index bits).
__device__ __forceinline__ int tie_cutoff(const Row& r, int vocab, const Sel& prior, const Sel& s,
                                          float rem, SampleSmem& sm) {
    if (s.b1 >= NB) return 0x7fffffff;
    float cnt = 0.f, mass = 0.f;
    for (int i = threadIdx.x; i < vocab; i += NB) {
        const float d = dist(r, i);
        if (in_final_bin(d, prior, s)) { cnt += 1.f; mass += __expf(-d); }
    }
    cnt = block_sum(cnt, sm.scratch);
    mass = block_sum(mass, sm.scratch);
    float keep = fminf(cnt, fmaxf(1.f, ceilf(rem / (mass / fmaxf(cnt, 1.f)))));
    if (cnt <= 1.f || keep >= cnt) return 0x7fffffff;
    int shift = 0;
    while (((vocab - 1) >> shift) >= NB) ++shift;
    index_histogram(r, vocab, prior, s, shift, -1, sm.hist);
    const int hi = find_bin(sm.hist, keep, sm.scratch, &sm.result, &sm.result_excl);
    if (shift == 0) return hi;
    index_histogram(r, vocab, prior, s, shift, hi, sm.hist);
    return (hi << shift) | find_bin(sm.hist, keep, sm.scratch, &sm.result, &sm.result_excl);
}

extern "C" __global__ void __launch_bounds__(NB, 1)
sample_kernel(const logit_t* __restrict__ logits, int vocab, const unsigned char* __restrict__ seen,
              const float* __restrict__ temperature, const int* __restrict__ top_k,
              const float* __restrict__ top_p, const float* __restrict__ min_p,
              const float* __restrict__ rep_penalty, int has_seen,
              const unsigned long long* __restrict__ seeds,
              const int* __restrict__ steps, int* __restrict__ out) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    __shared__ SampleSmem sm;
    const int b = blockIdx.x;
    Row r;
    r.logits = logits + (long long)b * vocab;
    r.penalty = rep_penalty[b];
    r.seen = (has_seen && r.penalty != 1.f) ? seen + (long long)b * vocab : nullptr;

    float v = -RE_FLT_MAX;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += NB) argmax_merge(v, idx, penalised(r, i), i);
    block_argmax(v, idx, sm.scratch, sm.si);
    const float temp = temperature[b];
    const int k = top_k[b];
    if (temp == 0.f || k == 1) {
        if (threadIdx.x == 0) out[b] = idx;
        return;
    }
    r.max_x = v;
    r.inv_temp = 1.f / temp;

    const Sel all = {NB - 1, NB, NB};
    Sel sel_k = all;
    float target = (float)k;
    if (k > 0 && k < vocab) sel_k = select_threshold(r, vocab, target, false, all, false, sm);
    Sel sel_p = all;
    int cutoff = 0x7fffffff;
    const float p = top_p[b];
    if (p < 1.f) {
        float mass = 0.f;
        for (int i = threadIdx.x; i < vocab; i += NB) {
            const float d = dist(r, i);
            if (sel_keep(d, sel_k)) mass += __expf(-d);
        }
        mass = block_sum(mass, sm.scratch);
        target = p * mass;
        sel_p = select_threshold(r, vocab, target, true, sel_k, true, sm);
        cutoff = tie_cutoff(r, vocab, sel_k, sel_p, target, sm);
    }

    const float mp = min_p[b];
    const unsigned long long key = mix64(seeds[b] ^ ((unsigned long long)(unsigned)steps[b] << 32));
    v = -RE_FLT_MAX;
    idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += NB) {
        const float d = dist(r, i);
        if (!sel_keep(d, sel_k) || !sel_keep(d, sel_p) || __expf(-d) < mp) continue;
        if (i > cutoff && in_final_bin(d, sel_k, sel_p)) continue;  // top-p ties, index order
        argmax_merge(v, idx, -d - logf(-logf(uniform(key, i))), i);
    }
    block_argmax(v, idx, sm.scratch, sm.si);
    if (threadIdx.x == 0) out[b] = idx;
}
