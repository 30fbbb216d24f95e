// bulk.cuh: Hopper (sm_90+) bulk async copies global -> shared (the TMA unit's 1-D
// cp.async.bulk) completed on shared-memory mbarriers. Include after common.cuh.
//
//   mbar_init(bar, count)             arrival count of a fresh barrier (phase 0 pending)
//   mbar_init_fence()                 makes inits visible to the async proxy (the copies)
//   mbar_arrive_expect_tx(bar, bytes) one arrival that also expects `bytes` of copies
//   mbar_wait(bar, parity)            spin until the phase with this parity has completed
//   bulk_g2s(dst, src, bytes, bar)    copy bytes (multiple of 16; 16-byte aligned ends) from
//                                     global src to shared dst; completes on bar
//   fence_async_smem()                orders this thread's earlier shared-memory accesses before
//                                     later bulk copies into the same bytes (after a barrier:
//                                     the block's), for rings that shared memory overlaid
// Protocol per ring slot: one thread arrives with expect_tx(total bytes) before any copy of the
// slot is issued (the copying threads __syncwarp after it); a consumer waits for parity
// (use_count & 1); after the consumers' last read of the slot (ordered by __syncwarp / the use
// of the values), the slot may be refilled. The copies bypass registers entirely: bytes in flight
// are bounded by shared memory, not by the register file.
// CUDA-only (sm_90): a HIP build replaces this file; the launcher never picks a kernel built on
// it below sm_90.
#pragma once

typedef unsigned long long mbar_t;  // a shared-memory mbarrier (NVRTC has no <cstdint>)

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(mbar_t* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count)
                 : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(mbar_t* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(mbar_t* bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            " selp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    } while (!done);
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, unsigned bytes,
                                         mbar_t* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
        ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar))
        : "memory");
}
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
