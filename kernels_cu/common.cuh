// common.cuh: shared device helpers for every rawengine kernel. Include it first.
// STABLE: other kernel files depend on it; add new helpers, never change existing ones.
//
// Element type `dtype_t` (activations, weights, KV cache), chosen at compile time:
//   -DDTYPE=half | -DDTYPE=__nv_bfloat16   explicit, wins over the switches below
//   -DUSE_BF16=1 or -DDTYPE_BF16=1         bfloat16
//   (nothing)                              half (fp16)
// All math is done in float: load with to_f32(), store with from_f32<T>().
//
// Helpers:
//   to_f32(x) / from_f32<T>(f)             scalar conversion (half, bf16, float)
//   load8(p, f[8]) / store8(p, f[8])       16-byte vector load/store of 8 dtype_t <-> 8 floats
//                                          (p must be 16-byte aligned)
//   ld_stream16(p)                         16-byte read-only load that skips L1, for data read
//                                          exactly once (weights); p 16-byte aligned
//   warp_sum / warp_max                    butterfly reductions; every lane gets the result
//   block_sum / block_max(v, scratch)      whole-block reductions; scratch: __shared__ float[32];
//                                          every thread gets the result; blockDim.x % 32 == 0
//   NEG_INF, cdiv
//   arrive_acq_rel(p)                      counter arrival (gpu-scope acq_rel) of a last-block
//                                          merge; returns the old count
//   add_acq_rel_u64(p, v)                  the same for a 64-bit word and any addend
//   require_dynamic_smem(bytes)            trap unless launched with >= bytes of dynamic smem
//   RE_PDL_WAIT() / RE_PDL_TRIGGER()       programmatic dependent launch (below)
//   RE_PREFETCH_L2(p, bytes)               L2 prefetch hint of a byte range (sm_90, else no-op)
// Portability: CUDA-only intrinsics sit behind the RE_* macros so a HIP build only edits this file.
#pragma once

#ifdef __HIP_PLATFORM_AMD__
#include <hip/hip_fp16.h>
#include <hip/hip_bf16.h>
typedef __hip_bfloat16 __nv_bfloat16;
#define RE_WARP_SIZE 64
#define RE_SHFL_XOR(v, m) __shfl_xor((v), (m))
#define RE_SHFL(v, src) __shfl((v), (src))
#define RE_SHFL_UP(v, d) __shfl_up((v), (d))
#define RE_LDG(p) (*(p))
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define RE_WARP_SIZE 32
#define RE_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define RE_SHFL(v, src) __shfl_sync(0xffffffffu, (v), (src))
#define RE_SHFL_UP(v, d) __shfl_up_sync(0xffffffffu, (v), (d))
#define RE_LDG(p) __ldg(p)
#endif

#ifndef DTYPE
#if (defined(USE_BF16) && USE_BF16) || (defined(DTYPE_BF16) && DTYPE_BF16)
#define DTYPE __nv_bfloat16
#else
#define DTYPE half
#endif
#endif
typedef DTYPE dtype_t;

#define NEG_INF (__int_as_float(0xff800000))

// ---- programmatic dependent launch (sm_90+) -------------------------------------------------
// Inside a CUDA graph the launcher (module.py) lets each kernel start while the kernel before it
// is still finishing, hiding ~0.3 us of launch latency per kernel plus the next kernel's weight
// ramp-up. The contract every kernel in kernels_cu/ keeps (tests/test_kernels_compile.py checks
// that each one calls RE_PDL_WAIT):
//   RE_PDL_WAIT()    blocks until the previous kernel in the stream has completed and its writes
//                    are visible. Before it a kernel may only read memory no kernel writes during
//                    the step (weights) and must not write anything. Because every kernel waits,
//                    completion stays ordered along the whole chain.
//   RE_PDL_TRIGGER() lets the next kernel launch now; its blocks fill free SM slots and sit in
//                    their own RE_PDL_WAIT until this kernel has finished.
// Both are no-ops on older GPUs, on HIP, and when the kernel was launched without the attribute.
// RE_PDL_EARLY is 1 where it exists: kernels that hoist weight loads above the wait for it can
// skip the hoist (and its register pressure) elsewhere.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIP_PLATFORM_AMD__)
#define RE_PDL_EARLY 1
#define RE_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define RE_PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define RE_PDL_EARLY 0
#define RE_PDL_WAIT() do { } while (0)
#define RE_PDL_TRIGGER() do { } while (0)
#endif

// RE_PREFETCH_L2(p, bytes): a hint that L2 should fetch [p, p + bytes) (p 16-byte aligned, bytes
// a multiple of 16); it takes no registers and nothing waits for it. sm_90: one
// cp.async.bulk.prefetch.L2; elsewhere nothing.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIP_PLATFORM_AMD__)
#define RE_PREFETCH_L2(p, bytes) \
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory")
#else
#define RE_PREFETCH_L2(p, bytes) do { } while (0)
#endif

__device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

// Counter arrival of a last-block-finishes pattern: returns the old count. gpu-scope acq_rel:
// releases what this thread (and, after a __syncthreads, its block) wrote before it; the last
// arrival acquires every earlier block's writes (then a __syncthreads shares them).
#if defined(__HIP_PLATFORM_AMD__)
__device__ __forceinline__ int arrive_acq_rel(int* p) {
    return __hip_atomic_fetch_add(p, 1, __ATOMIC_ACQ_REL, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ __forceinline__ unsigned long long add_acq_rel_u64(unsigned long long* p,
                                                              unsigned long long v) {
    return __hip_atomic_fetch_add(p, v, __ATOMIC_ACQ_REL, __HIP_MEMORY_SCOPE_AGENT);
}
#else
__device__ __forceinline__ int arrive_acq_rel(int* p) {
    int old;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(p) : "memory");
    return old;
}
__device__ __forceinline__ unsigned long long add_acq_rel_u64(unsigned long long* p,
                                                              unsigned long long v) {
    unsigned long long old;
    asm volatile("atom.acq_rel.gpu.global.add.u64 %0, [%1], %2;"
                 : "=l"(old) : "l"(p), "l"(v) : "memory");
    return old;
}
#endif

// Kernels whose shared-memory layout the launcher sizes (rings) must not run on less.
__device__ __forceinline__ void require_dynamic_smem(unsigned bytes) {
    unsigned dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    if (dyn < bytes) __trap();
}

// ---- scalar conversion ---------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ half from_f32<half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// ---- 16-byte vectors: 8 x 2-byte elements ----------------------------------------------------
// uint4 moves the bytes in one 128-bit access; the elements are reinterpreted in registers.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float f[8]) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_f32(e[i]);
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const float f[8]) {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = from_f32<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = u;
}

// Weights are streamed once per step: the non-coherent path, no L1 allocation.
template <typename E>
__device__ __forceinline__ uint4 ld_stream16(const E* p) {
#ifdef __HIP_PLATFORM_AMD__
    return *reinterpret_cast<const uint4*>(p);
#else
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
#endif
}

// ---- reductions ------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = RE_WARP_SIZE / 2; m > 0; m >>= 1) v += RE_SHFL_XOR(v, m);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = RE_WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, RE_SHFL_XOR(v, m));
    return v;
}

// scratch: __shared__ float[32]. The leading barrier lets callers reuse scratch back to back.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % RE_WARP_SIZE, warp = threadIdx.x / RE_WARP_SIZE;
    const int num_warps = blockDim.x / RE_WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % RE_WARP_SIZE, warp = threadIdx.x / RE_WARP_SIZE;
    const int num_warps = blockDim.x / RE_WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}
