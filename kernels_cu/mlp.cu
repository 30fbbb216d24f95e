// mlp.cu: a small model's whole decode MLP in one launch, for batch sizes where the chain of
// dependent kernels, not the bytes, is the cost (SmolLM2-135M: 5.3 MB of MLP weights a layer).
//
//   r = x + res                  rounded to T; block 0 writes it to r_out (HAS_RES 0: r = x)
//   h = r / sqrt(mean(r^2) + eps) * norm_w                                   rounded to T
//   g = h @ Wg^T, u = h @ Wu^T   each rounded to T;   a = silu(g) * u        rounded to T
//   y = a @ Wd^T                 summed across blocks in fixed point into acc (fixed_sum.cuh)
// Every rounding sits where the unfused ops (norm_linear_silu + the down GEMV) round, so y
// equals their output up to the order of its fp32 sums.
//
// Layouts (row-major): x, res, r_out [M, H] T (X_FIXED: x [FIXED_REPLICAS, M, H] int64 fixed
//   sums, read only: the next fixed-sum producer clears it); norm_w [H] T; w_gu [2I, H] T = [gate | up];
//   w_d [H, I] T; acc [FIXED_REPLICAS, M, H] int64, zero on entry (block b adds into replica
//   b % FIXED_REPLICAS); clear [n_clear] int64, zeroed here (a fixed sum whose last reader has
//   finished: that reader ran before this kernel's RE_PDL_WAIT returns).
// Grid: cdiv(I, C) blocks; block c owns intermediate columns [c*C, c*C + C): gate and up rows,
//   the matching C columns of Wd. Block: WARPS warps.
// Why this shape: the block's weights (6*C*H bytes, 55 KB for SmolLM2 at mlp.py's C = 16) are
// constant during a step, so all of them are copied into shared memory (cp.async) before
// RE_PDL_WAIT, under the previous kernels. After the wait the block needs x (one L2 read, one
// barrier), per warp a shuffle reduction and 2C/WARPS dot products, a second barrier, then H*C
// FMAs from shared memory and M*H 64-bit atomic adds: the gate_up -> down kernel boundary and
// down's weight ramp-up are gone. After the wait the path is latency
// bound (a few dependent instructions per thread at a time), so H is a compile-time constant:
// every index is a multiply-shift, not a division.
// Needs H % 8 == 0, I % 8 == 0, C % 8 == 0, C % WARPS == 0, 16-byte aligned pointers, M <= MB.
// Defines: DTYPE_BF16, HIDDEN (H), MB, C, WARPS, HAS_RES, X_FIXED, FIXED_REPLICAS, MLP_TRACE
//   (diagnostic: thread 0 of each block stamps %globaltimer at each phase into mlp_trace;
//   tools/trace_mlp.py reads it).
#include "common.cuh"
#include "mma.cuh"
#include "fixed_sum.cuh"

typedef dtype_t T;

// acc [FIXED_REPLICAS, n] fixed sums -> y [n] T, clearing acc (for readers that cannot take a
// fixed sum). One thread per 8 elements; n % 8 == 0.
extern "C" __global__ void fixed_to_dtype_kernel(long long* __restrict__ acc, T* __restrict__ y,
                                                 int n) {
    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float f[8];
    fixed_load8(acc + i, n, f);
    fixed_clear8(acc + i, n);
    store8(y + i, f);
}

#ifdef HIDDEN  // norm_mlp_kernel is built per model: HIDDEN is its hidden size
#ifndef MB
#define MB 1
#endif
#ifndef C
#define C 8
#endif
#ifndef WARPS
#define WARPS 8
#endif
#ifndef HAS_RES
#define HAS_RES 1
#endif
#ifndef MLP_TRACE
#define MLP_TRACE 0
#endif
#ifndef X_FIXED
#define X_FIXED 0  // 1: x is a fixed sum [FIXED_REPLICAS, M, H] int64 (attention_o's output)
#endif
#if X_FIXED
typedef long long x_t;
#else
typedef T x_t;
#endif
#define H HIDDEN
#define HV (H / 8)  // 16-byte pieces per row of H
#define THREADS (WARPS * 32)
#if C % 8 != 0 || C % WARPS != 0 || H % 8 != 0
#error "C and H must be multiples of 8, and C a multiple of WARPS"
#endif

#if MLP_TRACE
__device__ unsigned long long mlp_trace[1024][8];
#define STAMP(i)                                                                     \
    if (threadIdx.x == 0 && blockIdx.x < 1024) {                                     \
        unsigned long long t_;                                                       \
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                       \
        mlp_trace[blockIdx.x][i] = t_;                                               \
    }
#else
#define STAMP(i)
#endif

// Dynamic shared memory (mlp.py's smem_bytes): gu_s [2C][H] T, wd_s [H][C] T, xs [MB][H] float
// = 6*C*H + 4*MB*H bytes.

extern "C" __global__ void __launch_bounds__(THREADS)
norm_mlp_kernel(const x_t* __restrict__ x, const T* __restrict__ res, const T* __restrict__ norm_w,
                const T* __restrict__ w_gu, const T* __restrict__ w_d, T* __restrict__ r_out,
                long long* __restrict__ acc, long long* __restrict__ clear, int n_clear, int M,
                int I, float eps) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* gu_s = reinterpret_cast<T*>(smem_raw);  // [2C][H]: gate rows c0.., then up rows c0..
    T* wd_s = gu_s + 2 * C * H;                 // [H][C]: Wd[:, c0:c0+C]
    float* xs = reinterpret_cast<float*>(wd_s + H * C);  // [MB][H]: r rounded to T
    __shared__ float s_act[MB][C];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c0 = blockIdx.x * C;
    STAMP(0);

    // weights first: constant during the step, so they may be read before the wait
    for (int i = tid; i < 2 * C * HV; i += THREADS) {
        const int row = i / HV, k = (i - row * HV) * 8;
        const int col = c0 + (row < C ? row : row - C);
        const int src_row = (row < C ? 0 : I) + (col < I ? col : 0);
        cp_async16(gu_s + row * H + k, w_gu + (size_t)src_row * H + k, col < I);
    }
    for (int i = tid; i < H * (C / 8); i += THREADS) {
        const int n = i / (C / 8), j = (i - n * (C / 8)) * 8;
        const bool ok = c0 + j < I;
        cp_async16(wd_s + n * C + j, w_d + (size_t)n * I + (ok ? c0 + j : 0), ok);
    }
    cp_async_commit();
    // the norm weights of this lane's pieces of a row (v = lane + 32 t, below), in registers
    constexpr int VPL = (HV + 31) / 32;
    float nw[VPL][8];
#pragma unroll
    for (int t = 0; t < VPL; ++t) {
        const int v = lane + 32 * t;
        if (v < HV) load8(norm_w + v * 8, nw[t]);
    }

    RE_PDL_WAIT();
    RE_PDL_TRIGGER();
    STAMP(1);

    for (int i = blockIdx.x * THREADS + tid; i < n_clear; i += gridDim.x * THREADS) clear[i] = 0;

    // r = x (+ res) rounded to T -> xs (float)
    const int mb = min(M, MB);
    for (int i = tid; i < mb * HV; i += THREADS) {
        const int m = i / HV, k = (i - m * HV) * 8;
        const int off = m * H + k;
        float f[8];
#if X_FIXED  // rounded to T first, where the unfused o_proj's output is
        fixed_load8(x + off, (size_t)M * H, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] = to_f32(from_f32<T>(f[j]));
#else
        load8(x + off, f);
#endif
#if HAS_RES
        {
            float g[8];
            load8(res + off, g);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = to_f32(from_f32<T>(f[j] + g[j]));
            if (blockIdx.x == 0) store8(r_out + off, f);
        }
#endif
        *reinterpret_cast<float4*>(xs + off) = make_float4(f[0], f[1], f[2], f[3]);
        *reinterpret_cast<float4*>(xs + off + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
    STAMP(2);
    cp_async_wait<0>();
    __syncthreads();
    STAMP(3);

    // Warp w owns columns [w*CPW, w*CPW + CPW): their gate and up rows (R dot products of length
    // H), so SiLU-mul needs no block barrier. Every warp normalises the whole row itself (its
    // lanes cover H, so its sum of squares needs only shuffles): after the one barrier above
    // the chain is shared-memory loads, shuffles and FMAs, with the R rows' sums in flight
    // together. All warps sum the squares in the same order, so every block gets the same h.
    constexpr int CPW = C / WARPS, R = 2 * CPW;
    float d[MB][R];
#pragma unroll
    for (int m = 0; m < MB; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) d[m][r] = 0.f;
#pragma unroll
    for (int m = 0; m < MB; ++m) {
        if (m >= mb) break;
        float h[VPL][8], ss_t[VPL];  // sums of squares per piece: short dependent chains
#pragma unroll
        for (int t = 0; t < VPL; ++t) {
            const int v = lane + 32 * t;
#pragma unroll
            for (int j = 0; j < 8; ++j) h[t][j] = 0.f;
            if (v < HV) {
                const float4 a = *reinterpret_cast<const float4*>(xs + m * H + v * 8);
                const float4 b = *reinterpret_cast<const float4*>(xs + m * H + v * 8 + 4);
                h[t][0] = a.x; h[t][1] = a.y; h[t][2] = a.z; h[t][3] = a.w;
                h[t][4] = b.x; h[t][5] = b.y; h[t][6] = b.z; h[t][7] = b.w;
            }
            ss_t[t] = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) ss_t[t] = fmaf(h[t][j], h[t][j], ss_t[t]);
        }
        float ss = 0.f;
#pragma unroll
        for (int t = 0; t < VPL; ++t) ss += ss_t[t];
        const float inv_rms = rsqrtf(warp_sum(ss) * (1.f / H) + eps);
#pragma unroll
        for (int t = 0; t < VPL; ++t) {
            const int v = lane + 32 * t;
            if (v >= HV) continue;  // h stays 0: adds nothing below
#pragma unroll
            for (int j = 0; j < 8; ++j) h[t][j] = to_f32(from_f32<T>(h[t][j] * inv_rms * nw[t][j]));
        }
        if (m == 0) STAMP(4);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int row = (r < CPW ? 0 : C - CPW) + warp * CPW + r;  // gate rows, then up rows
#pragma unroll
            for (int t = 0; t < VPL; ++t) {
                const int v = lane + 32 * t;
                if (v >= HV) continue;
                float w[8], p = 0.f;  // per piece, then added: short dependent chains
                load8(gu_s + row * H + v * 8, w);
#pragma unroll
                for (int j = 0; j < 8; ++j) p = fmaf(w[j], h[t][j], p);
                d[m][r] += p;
            }
        }
    }
#pragma unroll
    for (int s = 16; s > 0; s >>= 1)  // the MB * R butterflies interleaved
#pragma unroll
        for (int m = 0; m < MB; ++m)
#pragma unroll
            for (int r = 0; r < R; ++r) d[m][r] += RE_SHFL_XOR(d[m][r], s);
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < MB; ++m)
#pragma unroll
            for (int j = 0; j < CPW; ++j) {
                const float g = to_f32(from_f32<T>(d[m][j])), u = to_f32(from_f32<T>(d[m][CPW + j]));
                s_act[m][warp * CPW + j] = to_f32(from_f32<T>(g / (1.f + __expf(-g)) * u));
            }
    }
    __syncthreads();
    STAMP(5);

    // down: this block's partial of every output element, added in fixed point to its replica
    long long* out = acc + (size_t)(blockIdx.x % FIXED_REPLICAS) * M * H;
    for (int n = tid; n < H; n += THREADS) {
        float w[C];
#pragma unroll
        for (int j = 0; j < C; j += 8) load8(wd_s + n * C + j, w + j);
        for (int m = 0; m < mb; ++m) {
            float p = 0.f;
#pragma unroll
            for (int j = 0; j < C; ++j) p = fmaf(w[j], s_act[m][j], p);
            fixed_add(out + m * H + n, p);
        }
    }
#if MLP_TRACE
    __syncthreads();
    STAMP(6);
#endif
}
#endif  // HIDDEN
