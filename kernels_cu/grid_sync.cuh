// grid_sync.cuh: a grid-wide barrier for persistent kernels whose blocks are all resident at
// once (grid <= SMs x resident blocks per SM; the launcher checks the occupancy). Include after
// common.cuh.
//
//   grid_sync(counter, target)   every block arrives once (counter += 1, gpu-scope release by
//                                thread 0 after __syncthreads, cumulative over the block's
//                                stores) and waits until counter >= target (acquire), then
//                                __syncthreads. Barrier k of a launch passes target = k * gridDim.x
//                                (the counter only grows within a launch).
//   grid_exit(counters)          counters[1] counts exited blocks; the last block to exit has
//                                seen every other block pass every barrier, so it resets both
//                                counters to 0 for the next launch (stream order publishes it).
//   load8_cg(p, f[8])            load8 of data another block wrote in this launch: L2 only
//                                (.cg), never a stale L1 line.
// A barrier that cannot complete (a block that never arrives) traps after ~2^24 polls (seconds)
// instead of hanging the process.
// CUDA-only inline PTX (sm_70+ memory-model ops); a HIP build replaces this file.
#pragma once

__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
        unsigned seen, polls = 0;
        do {  // (relaxed polls + one acquire fence measured slower: 1.34 vs 1.02 us)
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target && ++polls < (1u << 24));
        if (seen < target) __trap();
    }
    __syncthreads();
}

__device__ __forceinline__ void grid_exit(unsigned* counters) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(old) : "l"(counters + 1) : "memory");
        if (old == gridDim.x - 1) {
            counters[0] = 0;
            counters[1] = 0;
        }
    }
}

template <typename T>
__device__ __forceinline__ void load8_cg(const T* p, float f[8]) {
    const uint4 u = __ldcg(reinterpret_cast<const uint4*>(p));
    load8(reinterpret_cast<const T*>(&u), f);
}
