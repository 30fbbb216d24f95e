// mma.cuh: tensor-core and async-copy helpers (sm_80+ PTX) shared by flat_gemm.cu and
// attention_prefill_mma.cu. Include after common.cuh. Element type: dtype_t (fp16 or bf16).
//
//   cp_async16(dst_smem, src_global, valid)   16-byte async copy; valid = false zero-fills
//   cp_async16_l2_256(dst, src, valid)        the same, the L2 fetching the whole 256-byte
//                                             block on a miss (.L2::256B prefetch size)
//   cp_async_commit() / cp_async_wait<N>()    close a group / wait until <= N groups pending
//   ldmatrix_x4 / ldmatrix_x2 (r, p)          8x8 b16 matrices from shared memory; lane l gives
//                                             the row address of matrix l / 8
//   ldmatrix_x4_trans(r, p)                   the same, each matrix transposed
//   mma16816(c, a, b)                         c[4] += A (16x16, row) * B (16x8, col), fp32 acc
//   mma1688(c, a, b)                          c[4] += A (16x8, row) * B (8x8, col), fp32 acc
//                                             (a[2]: a0, a1 of the A layout below; b: b0)
//   movmatrix_trans(x)                        the 8x8 b16 matrix the warp holds in x (lane l:
//                                             row l / 4, cols 2 (l % 4) ..), transposed
//   pack2(lo, hi)                             two floats -> one 32-bit register of dtype_t
// Fragment layouts (lane = 4 * g + t): A a0 (row g, k 2t..2t+1), a1 (g + 8, same k),
// a2 (g, k 2t+8..), a3 (g + 8, k 2t+8..); B b0 (k 2t..2t+1, col g), b1 (k 2t+8.., g);
// C c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g + 8, same cols).
// CUDA-only: a HIP build replaces this file (MFMA), nothing else.
#pragma once

#if (defined(USE_BF16) && USE_BF16) || (defined(DTYPE_BF16) && DTYPE_BF16)
#define MMA_TYPE "bf16"
#else
#define MMA_TYPE "f16"
#endif

__device__ __forceinline__ void cp_async16(dtype_t* dst, const dtype_t* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    const int n = valid ? 16 : 0;  // 0: zero-fill the 16 bytes
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async16_l2_256(dtype_t* dst, const dtype_t* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N_PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N_PENDING));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const dtype_t* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const dtype_t* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const dtype_t* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_TYPE "." MMA_TYPE ".f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma1688(float c[4], const unsigned a[2], unsigned b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." MMA_TYPE "." MMA_TYPE ".f32 "
                 "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
}
__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
    unsigned y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned u;
    dtype_t* e = reinterpret_cast<dtype_t*>(&u);
    e[0] = from_f32<dtype_t>(lo);
    e[1] = from_f32<dtype_t>(hi);
    return u;
}
