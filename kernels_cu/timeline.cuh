// timeline.cuh: a per-block event log for probe builds (tools/timeline_gemm.py,
// tools/timeline_attention.py), off unless TIMELINE is defined to 1. Thread 0 of a block
// appends one record per RE_TL_MARK(ptr, ev):
//   re_tl_t[i]   %globaltimer (ns, one clock for all SMs)
//   re_tl_p[i]   ptr (a pointer that tells launches of a chain apart: the GEMMs pass their
//                weight, decode attention its output)
//   re_tl_tag[i] bits 0-3 event, 4-11 SM id (mod 256), 12-31 linear block id
//                (x + X * (y + Y * z), mod 2^20)
// i = atomicAdd(&re_tl_n, 1) mod RE_TL_CAP (2^18); the host zeroes re_tl_n before the run it reads.
// Events the kernels use: 0 entry, 1 past RE_PDL_WAIT, 2 past the weight (K/V) stream, 3 exit.
#pragma once
#ifndef TIMELINE
#define TIMELINE 0
#endif
#if TIMELINE && !defined(__HIP_PLATFORM_AMD__)
#define RE_TL_CAP (1 << 18)
__device__ unsigned long long re_tl_t[RE_TL_CAP];
__device__ unsigned long long re_tl_p[RE_TL_CAP];
__device__ unsigned re_tl_tag[RE_TL_CAP];
__device__ unsigned re_tl_n;
__device__ __forceinline__ void re_tl_mark(const void* p, unsigned ev) {
    if (threadIdx.x != 0) return;
    unsigned long long t;
    unsigned sm;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned i = atomicAdd(&re_tl_n, 1u) & (RE_TL_CAP - 1);
    re_tl_t[i] = t;
    re_tl_p[i] = reinterpret_cast<unsigned long long>(p);
    const unsigned blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    re_tl_tag[i] = blk << 12 | (sm & 255u) << 4 | ev;
}
#define RE_TL_MARK(p, ev) re_tl_mark((p), (ev))
#else
#define RE_TL_MARK(p, ev) do { } while (0)
#endif
