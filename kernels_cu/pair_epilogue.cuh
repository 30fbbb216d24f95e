// pair_epilogue.cuh: the paired output epilogues of gemv.cu and flat_gemm.cu's stream kernel.
// Both kernels see a product's rows in a "logical" order in which the two rows an epilogue
// combines are neighbours (logical rows 2i, 2i + 1 = pair i), and store pairs, not rows:
//   EPILOGUE 1 (decode qkv, HEAD_DIM = D): RoPE + paged K/V write of rope.cu. w is [q | k | v]
//       heads of D rows; pair i of head h is physical rows h*D + i, h*D + i + D/2 (PAIR_ROW).
//       rope_store: + bias, rounded to T (as the unfused GEMV), rotated with cos/sin at
//       positions[m] for q and k heads, then q -> y [M, Hq, D], k, v -> k_cache, v_cache
//       [NB, Hkv, BS, D] at slot_mapping[m] (slot < 0: padding, not written).
//   EPILOGUE 2 (decode gate_up): SiLU-and-mul of activation.cu. w is [gate | up], N = 2I rows;
//       pair i is gate row i and up row i (physical rows i, I + i); swiglu_store writes
//       y[m, i] = silu(g) * u [M, I], g and u rounded to T first (as the unfused path).
// Before inclusion: T, to_f32 / from_f32 (common.cuh), HAS_BIAS, HAS_RES, EPILOGUE, HEAD_DIM.
// Kernels taking an epilogue append EPILOGUE_PARAMS to their arguments and name their bias
// and output `bias`, `y`, their row count `N` (ROPE_ARGS, PAIR_STORE).
#pragma once

#if EPILOGUE == 1
#if HAS_RES
#error "EPILOGUE 1 takes no HAS_RES"
#endif
#define HALF_D (HEAD_DIM / 2)
// physical weight row of logical row n: pairs (i, i + D/2) become logical rows 2i, 2i+1
__device__ __forceinline__ int rope_row(int n) {
    const int j = n % HEAD_DIM;
    return n - j + (j >> 1) + (j & 1) * HALF_D;
}
// What the store of pair (mm, n) reads besides the product: cos, sin at positions[mm] (q and k
// heads) and slot_mapping[mm] (k and v heads). All are step inputs or constants, so a lane's
// first pair loads them before the PDL wait (rope_aux in the kernel, passed to rope_store).
struct RopeAux {
    float c, s;
    int slot;
};
__device__ __forceinline__ RopeAux rope_aux(int mm, int n, const int* __restrict__ positions,
                                            const int* __restrict__ slot_mapping,
                                            const float* __restrict__ cos_table,
                                            const float* __restrict__ sin_table,
                                            int num_q_heads, int num_kv_heads) {
    const int head = n / HEAD_DIM, i = (n % HEAD_DIM) >> 1;
    RopeAux a{1.f, 0.f, -1};
    if (head >= num_q_heads) {
        a.slot = slot_mapping[mm];
        if (a.slot < 0) return a;  // padding row: nothing is stored
    }
    if (head < num_q_heads + num_kv_heads) {
        const long long p = positions[mm];
        a.c = cos_table[p * HALF_D + i];
        a.s = sin_table[p * HALF_D + i];
    }
    return a;
}
// logical rows n (even), n + 1 of token mm: bias, round, rotate (q, k), store (q, k/v cache);
// is_pre: cos, sin and slot come from pre (rope_aux, loaded before the PDL wait), else from
// memory (a compile-time constant once the caller's loops are unrolled). The loads below are
// rope_aux's written out in their original order: calling rope_aux here made ptxas spill on
// sm_80 (MB 6-7 configs, tools/check_kernels.py).
__device__ __forceinline__ void rope_store(float v0, float v1, int mm, int n, bool is_pre,
                                           const RopeAux& pre,
                                           const T* __restrict__ bias, T* __restrict__ q_out,
                                           const int* __restrict__ positions,
                                           const int* __restrict__ slot_mapping,
                                           const float* __restrict__ cos_table,
                                           const float* __restrict__ sin_table,
                                           T* __restrict__ k_cache, T* __restrict__ v_cache,
                                           int num_q_heads, int num_kv_heads, int block_size) {
    const int head = n / HEAD_DIM, i = (n % HEAD_DIM) >> 1;
#if HAS_BIAS
    v0 += to_f32(bias[head * HEAD_DIM + i]);
    v1 += to_f32(bias[head * HEAD_DIM + i + HALF_D]);
#endif
    v0 = to_f32(from_f32<T>(v0));  // qkv rounded to T, as the unfused path stores it
    v1 = to_f32(from_f32<T>(v1));
    T* dst;
    bool rotate = true;
    if (head < num_q_heads) {
        dst = q_out + ((size_t)mm * num_q_heads + head) * HEAD_DIM;
    } else {
        const int slot = is_pre ? pre.slot : slot_mapping[mm];
        if (slot < 0) return;
        const bool is_v = head >= num_q_heads + num_kv_heads;
        const int kvh = head - num_q_heads - (is_v ? num_kv_heads : 0);
        const long long blk = slot / block_size, off = slot % block_size;
        dst = (is_v ? v_cache : k_cache) + ((blk * num_kv_heads + kvh) * block_size + off) * HEAD_DIM;
        rotate = !is_v;
    }
    if (rotate) {
        float c, s;
        if (is_pre) {
            c = pre.c;
            s = pre.s;
        } else {
            const long long p = positions[mm];
            c = cos_table[p * HALF_D + i];
            s = sin_table[p * HALF_D + i];
        }
        const float a = v0, b = v1;
        v0 = a * c - b * s;
        v1 = b * c + a * s;
    }
    dst[i] = from_f32<T>(v0);
    dst[i + HALF_D] = from_f32<T>(v1);
}
#define EPILOGUE_PARAMS                                                                       \
    , const int* __restrict__ positions, const int* __restrict__ slot_mapping,               \
        const float* __restrict__ cos_table, const float* __restrict__ sin_table,             \
        T* __restrict__ k_cache, T* __restrict__ v_cache, int num_q_heads, int num_kv_heads,  \
        int block_size
#define ROPE_ARGS \
    bias, y, positions, slot_mapping, cos_table, sin_table, k_cache, v_cache, num_q_heads, \
        num_kv_heads, block_size
#define ROPE_AUX(mm, n) \
    rope_aux(mm, n, positions, slot_mapping, cos_table, sin_table, num_q_heads, num_kv_heads)
#elif EPILOGUE == 2
#if HAS_RES || HAS_BIAS
#error "EPILOGUE 2 takes no HAS_BIAS and no HAS_RES"
#endif
// physical weight row of logical row n: gate row i, up row i become logical rows 2i, 2i+1
__device__ __forceinline__ int swiglu_row(int n, int N) { return (n & 1) * (N >> 1) + (n >> 1); }
// logical rows n (even), n + 1 of token mm: y[mm, n / 2] = silu(g) * u, as activation.cu
__device__ __forceinline__ void swiglu_store(float g, float u, int mm, int n, T* __restrict__ y,
                                             int N) {
    g = to_f32(from_f32<T>(g));  // gate_up rounded to T, as the unfused path stores it
    u = to_f32(from_f32<T>(u));
    y[(size_t)mm * (N >> 1) + (n >> 1)] = from_f32<T>(g / (1.f + __expf(-g)) * u);
}
#define EPILOGUE_PARAMS
#else
#define EPILOGUE_PARAMS
#endif
// Paired epilogues (1, 2): the physical row behind logical row n, and the store of a pair
#if EPILOGUE == 1
#define PAIR_ROW(n) rope_row(n)
#define PAIR_STORE(v0, v1, mm, n, pre, aux) rope_store(v0, v1, mm, n, pre, aux, ROPE_ARGS)
#elif EPILOGUE == 2
#define PAIR_ROW(n) swiglu_row(n, N)
#define PAIR_STORE(v0, v1, mm, n, pre, aux) swiglu_store(v0, v1, mm, n, y, N)
#endif
