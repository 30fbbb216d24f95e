// fixed_sum.cuh: activations summed across thread blocks in 64-bit fixed point.
//
// A kernel whose every block adds a partial to the same output row (the fused decode MLP,
// mlp.cu: each block owns a slice of the intermediate dimension, so each holds a partial of
// every element of down's output) needs a cross-block sum without a second pass. Float atomics
// would make the result depend on arrival order; integer addition does not. So each partial p is
// rounded once to an integer multiple of 2^-FIXED_SHIFT and added with a 64-bit atomic: the
// total is the exact sum of the rounded partials, bit-identical on every run, then rounded once
// to float by the reader.
//
//   stored:  s[r] = sum over blocks b with b % R == r of rint(p_b * 2^FIXED_SHIFT)   int64
//   read:    y = float(sum_r s[r]) * 2^-FIXED_SHIFT       one rounding (then to dtype_t)
//
// R = FIXED_REPLICAS copies of the output, [R, rows, cols]: atomics on one address serialise in
// its L2 slice, and R copies spread them over R times the lines. Readers sum the R copies in
// int64 (still exact, so still order-free) before the one conversion. Measured on SmolLM2
// (docs/launch_notes.md, "Session 9"): 192 blocks (C = 8) x 576 outputs cost ~1.3 us per layer of
// contention that 8 copies remove, but the readers' 8x loads cost more than that, so the
// launchers build R = 1 (fixed_sum.py REPLICAS).
// FIXED_SHIFT 32 for fp16: range +-2^31 (fp16's own range is +-65504, so nothing an fp16 model
// can represent overflows), resolution 2^-32 per partial. 24 for bf16: range +-2^39 (5.5e11),
// resolution 6e-8 (bf16 keeps 8 bits of mantissa: 6e-8 is below its spacing above 1.5e-5).
// Buffers start at zero; whoever reads one last clears it (rawengine/backends/cuda/fixed_sum.py
// keeps that bookkeeping).
#pragma once

#ifndef FIXED_SHIFT
#if (defined(USE_BF16) && USE_BF16) || (defined(DTYPE_BF16) && DTYPE_BF16)
#define FIXED_SHIFT 24
#else
#define FIXED_SHIFT 32
#endif
#endif

__device__ __forceinline__ void fixed_add(long long* dst, float p) {
    const long long v = __float2ll_rn(p * (float)(1ull << FIXED_SHIFT));  // exact scaling
    atomicAdd(reinterpret_cast<unsigned long long*>(dst), (unsigned long long)v);
}

__device__ __forceinline__ float fixed_to_f32(long long s) {
    return __ll2float_rn(s) * (1.f / (float)(1ull << FIXED_SHIFT));
}

#ifndef FIXED_REPLICAS
#define FIXED_REPLICAS 1
#endif

// Elements i..i+7 of a fixed sum (p = base + i, 16-byte aligned; stride = rows * cols, the
// distance between replicas) -> 8 floats
__device__ __forceinline__ void fixed_load8(const long long* p, size_t stride, float f[8]) {
    long long s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int r = 0; r < FIXED_REPLICAS; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const longlong2 v = reinterpret_cast<const longlong2*>(p + r * stride)[i];
            s[2 * i] += v.x;
            s[2 * i + 1] += v.y;
        }
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = fixed_to_f32(s[i]);
}

__device__ __forceinline__ float fixed_load1(const long long* p, size_t stride) {
    long long s = 0;
#pragma unroll
    for (int r = 0; r < FIXED_REPLICAS; ++r) s += p[r * stride];
    return fixed_to_f32(s);
}

__device__ __forceinline__ void fixed_clear8(long long* p, size_t stride) {
#pragma unroll
    for (int r = 0; r < FIXED_REPLICAS; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            reinterpret_cast<longlong2*>(p + r * stride)[i] = make_longlong2(0, 0);
}
