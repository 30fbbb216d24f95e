// decode_mma_step.cuh: tensor-core math for one warp step of decode attention's ring loops
// (MMA_MATH builds of decode_attention.cu: BULK, HEAD_DIM 128, 8-token warp tiles,
// GROUP <= 8). It computes the same state as the CUDA-core compute_step. Why: at 3 TB/s the
// H100 runs at its 700 W cap, and the CUDA-core math is about a quarter of the bulk kernel's
// power; tensor cores spend far fewer instructions and far less energy per multiply-add
// (docs/decode_attention_notes.md, session 21).
//
//   S   = Q K^T      mma m16n8k16: A = Q (rows: the GROUP heads, padded to 16; k: dims),
//                    B = K^T (k: dims; n: the tile's 8 tokens)
//   m, l             per head, in log2 units: running max and sum of 2^(s - m)
//   P   = 2^(S - m)  rounded to dtype_t (as FlashAttention does)
//   O^T += V^T P^T   mma m16n8k8: A = V^T (rows: dims; k: tokens), B = P^T (n: heads)
//
// Lane l = 4 r + q holds fragment row r (A, C) or column r (B); mma.cuh has the layouts.
// - Slot reads: lane l reads token r's K row (then its V row) as 16-byte chunks 4 g + q,
//   g = 0..3. At load j, lanes of odd r read chunk group j ^ 1, so the two tokens of a quarter
//   warp hit 32 different banks. Each lane then selects its registers of group g (j = g ^ (r & 1)).
// - The dot product's k index is a permutation of the dims, the same for Q and K:
//   mma (g, h) takes words 2h, 2h + 1 of chunk 4 g + q (dims 32 g + 8 q + 4 h + 0..3).
// - V^T needs pairs of tokens per register. Word w of group g is the 8x8 matrix
//   M[token r][2 q + e] = V[r][32 g + 8 q + 2 w + e]; movmatrix.trans turns it into the A
//   fragment {V[2 q][d], V[2 q + 1][d]}, d = 32 g + 8 (r / 2) + 2 w + (r & 1), rows r of
//   m-tile 2 g + p (w = 2 p) and r + 8 (w = 2 p + 1).
// - acc[2 g + p] therefore holds O^T: c0, c1 for dim d(w = 2 p) and c2, c3 for dim
//   d(w = 2 p + 1), for heads 2 q and 2 q + 1.
// Rows of the tile at or past `valid` (never copied) read as zeros; their scores are -inf.
// Include after common.cuh, mma.cuh, decode_common.cuh and decode_attention.cu's TILE.
#pragma once

static_assert(HEAD_DIM == 128 && GROUP <= 8, "MMA_MATH: head_dim 128, GROUP <= 8");
constexpr int MMA_NG = HEAD_DIM / 32;  // 32-dim chunk groups per row

struct MmaQ {
    unsigned a[MMA_NG][4];  // chunk 4 g + q of head r's q row (0 for r >= GROUP)
    float scale;            // scale * log2(e): scores in log2 units
};

struct MmaState {
    float acc[2 * MMA_NG][4];  // O^T (see above)
    float m, l;                // head r's running max, this lane's part of its sum
};

// q_heads: the block's GROUP query rows [GROUP][HEAD_DIM].
__device__ __forceinline__ void mma_load_q(MmaQ& qa, const dtype_t* __restrict__ q_heads,
                                           float scale_log2) {
    const int lane = threadIdx.x & 31, r = lane >> 2, qd = lane & 3;
#pragma unroll
    for (int g = 0; g < MMA_NG; ++g) {
        uint4 x = make_uint4(0, 0, 0, 0);
        if (r < GROUP)
            x = *reinterpret_cast<const uint4*>(q_heads + r * HEAD_DIM + 8 * (4 * g + qd));
        qa.a[g][0] = x.x;
        qa.a[g][1] = x.y;
        qa.a[g][2] = x.z;
        qa.a[g][3] = x.w;
    }
    qa.scale = scale_log2;
}

__device__ __forceinline__ void mma_state_init(MmaState& st) {
#pragma unroll
    for (int i = 0; i < 2 * MMA_NG; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) st.acc[i][c] = 0.f;
    st.m = NEG_INF;
    st.l = 0.f;
}

// Token r's row of one half of the slot (K at rows, V at rows + TILE * HEAD_DIM), chunk groups
// in bank-conflict-free order, then selected back so x[g] is group g; zeros past `valid`.
__device__ __forceinline__ void mma_read_rows(uint4 (&x)[MMA_NG], const dtype_t* rows,
                                              int valid) {
    const int lane = threadIdx.x & 31, r = lane >> 2, qd = lane & 3, odd = r & 1;
    uint4 y[MMA_NG];
#pragma unroll
    for (int j = 0; j < MMA_NG; ++j) {
        y[j] = make_uint4(0, 0, 0, 0);
        if (r < valid)
            y[j] = *reinterpret_cast<const uint4*>(rows + r * HEAD_DIM +
                                                   8 * (4 * (j ^ odd) + qd));
    }
#pragma unroll
    for (int g = 0; g < MMA_NG; ++g) x[g] = odd ? y[g ^ 1] : y[g];
}

// One warp tile: slot = K rows [TILE][HEAD_DIM], then V rows [TILE][HEAD_DIM]; the first
// `valid` (>= 1) rows are tokens of the sequence.
__device__ __forceinline__ void mma_step(const dtype_t* slot, int valid, const MmaQ& qa,
                                         MmaState& st) {
    const int lane = threadIdx.x & 31, qd = lane & 3;
    uint4 x[MMA_NG];
    mma_read_rows(x, slot, valid);
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int g = 0; g < MMA_NG; ++g) {
        const unsigned a0[4] = {qa.a[g][0], 0u, qa.a[g][1], 0u}, b0[2] = {x[g].x, x[g].y};
        mma16816(s, a0, b0);
        const unsigned a1[4] = {qa.a[g][2], 0u, qa.a[g][3], 0u}, b1[2] = {x[g].z, x[g].w};
        mma16816(s, a1, b1);
    }
    // head r, tokens 2 q and 2 q + 1 (rows r + 8 of S are padding)
    const float s0 = 2 * qd < valid ? s[0] * qa.scale : NEG_INF;
    const float s1 = 2 * qd + 1 < valid ? s[1] * qa.scale : NEG_INF;
    float mx = fmaxf(s0, s1);
    mx = fmaxf(mx, RE_SHFL_XOR(mx, 1));
    mx = fmaxf(mx, RE_SHFL_XOR(mx, 2));
    const float m_new = fmaxf(st.m, mx);  // finite: row 0 is a token
    const float corr = merge_weight(st.m, m_new);
    st.m = m_new;
    const float p0 = exp2_approx(s0 - m_new), p1 = exp2_approx(s1 - m_new);
    st.l = fmaf(st.l, corr, p0 + p1);
    // O^T columns are heads 2 q and 2 q + 1: their corr lives in lanes 8 q and 8 q + 4
    const float c_lo = RE_SHFL(corr, 8 * qd), c_hi = RE_SHFL(corr, 8 * qd + 4);
#pragma unroll
    for (int i = 0; i < 2 * MMA_NG; ++i) {
        st.acc[i][0] *= c_lo;
        st.acc[i][1] *= c_hi;
        st.acc[i][2] *= c_lo;
        st.acc[i][3] *= c_hi;
    }
    const unsigned pb = pack2(p0, p1);
    mma_read_rows(x, slot + TILE * HEAD_DIM, valid);
#pragma unroll
    for (int g = 0; g < MMA_NG; ++g) {
        const unsigned a0[2] = {movmatrix_trans(x[g].x), movmatrix_trans(x[g].y)};
        mma1688(st.acc[2 * g], a0, pb);
        const unsigned a1[2] = {movmatrix_trans(x[g].z), movmatrix_trans(x[g].w)};
        mma1688(st.acc[2 * g + 1], a1, pb);
    }
}

// The warp's state in compute_step's layout: m[g], l[g] and o[g][i] (dims dvec * 8 + i) in
// lanes 0..15, l and o zero in lanes 16..31 (the caller's fold over token groups adds them).
// scratch: GROUP * HEAD_DIM floats of this warp's shared memory, free.
__device__ __forceinline__ void mma_state_out(const MmaState& st, float* scratch,
                                              float (&m)[GROUP], float (&l)[GROUP],
                                              float (&o)[GROUP][8]) {
    const int lane = threadIdx.x & 31, r = lane >> 2, qd = lane & 3;
    float lsum = st.l + RE_SHFL_XOR(st.l, 1);
    lsum += RE_SHFL_XOR(lsum, 2);
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = RE_SHFL(st.m, 4 * g);
        const float lg = RE_SHFL(lsum, 4 * g);
        l[g] = lane < 16 ? lg : 0.f;
    }
#pragma unroll
    for (int g = 0; g < MMA_NG; ++g)
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int d = 32 * g + 8 * (r >> 1) + 4 * p + (r & 1);  // c0, c1; c2, c3 at d + 2
            const float* c = st.acc[2 * g + p];
            if (2 * qd < GROUP) {
                scratch[2 * qd * HEAD_DIM + d] = c[0];
                scratch[2 * qd * HEAD_DIM + d + 2] = c[2];
            }
            if (2 * qd + 1 < GROUP) {
                scratch[(2 * qd + 1) * HEAD_DIM + d] = c[1];
                scratch[(2 * qd + 1) * HEAD_DIM + d + 2] = c[3];
            }
        }
    __syncwarp();
    const int dvec = lane & 15;
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        const float4* src = reinterpret_cast<const float4*>(scratch + g * HEAD_DIM + dvec * 8);
        const float4 u = src[0], v = src[1];
        const bool mine = lane < 16;
        o[g][0] = mine ? u.x : 0.f;
        o[g][1] = mine ? u.y : 0.f;
        o[g][2] = mine ? u.z : 0.f;
        o[g][3] = mine ? u.w : 0.f;
        o[g][4] = mine ? v.x : 0.f;
        o[g][5] = mine ? v.y : 0.f;
        o[g][6] = mine ? v.z : 0.f;
        o[g][7] = mine ? v.w : 0.f;
    }
    __syncwarp();  // scratch is read before anything else writes it
}
