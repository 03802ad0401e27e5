/*
 * bk_vjp.h — the launch parameters of the backward-pass (VJP) kernels, plain C like bk_formats.h
 * (read by nvcc, by the host C compiler in tests/vjp_emu.rs, mirrored in Rust by
 * src/grad/gpu.rs; sizes and offsets pinned by static asserts here and const asserts there).
 *
 * Two kernels per compute type (f32, f64):
 *
 *  - bk_vjp[_f64]: one thread per row. Three sweeps over the row's pivots (see src/grad/mod.rs):
 *    forward α (keeping 1/α), backward β, G, λD and λα, forward again λβ. The per-row gradients
 *    leave in f64, position-major ([n][stride], so that the reduction below reads them in
 *    order): ∂L/∂v_i (the value the compute type produced, widened exactly), ∂L/∂k_i, and
 *    Σ_i (λα_i + λβ_i − λD_i) per row for ∂L/∂z. A per-row status word says what the host must
 *    redo or report, as for the solve kernels.
 *  - bk_vjp_reduce: one thread per position and block of `block_rows` rows: writes ∂L/∂v in the
 *    requested format (row-major, coalesced) and the sums of ∂L/∂v and ∂L/∂k over the rows of
 *    the block, in row order. The host adds the blocks in order. No atomics anywhere: the
 *    result is the same bits on every run, and does not depend on how a batch is split into
 *    launches as long as launches start on multiples of `block_rows`.
 */
#ifndef BK_VJP_H
#define BK_VJP_H

#include "bk_formats.h"

/* Threads per block of both kernels. */
#define BK_VJP_THREADS 64
/* Rows per partial sum of the reduction (launch chunks start on multiples of it). */
#define BK_VJP_BLOCK_ROWS 64
/* Compute-type values of scratch per position and row: d (1), 1/α, 1/β, λD, λα (2 each). */
#define BK_VJP_SCRATCH_VALUES 9

/* One launch of bk_vjp[_f64]. Row j of the launch (j < rows) is row row_index[j] of the chunk
 * (or j when row_index is 0); v, g_bar, status and the per-row gradients are indexed by that
 * chunk row, the scratch by j. Pointers are device addresses carried as u64. */
typedef struct bk_vjp_params {
    uint64_t v;          /* float/double[stride][n] when in_format is F32/F64 */
    uint64_t g_bar;      /* float2/double2[stride][n]: dL/dRe G + i dL/dIm G */
    uint64_t c;          /* compute type [n]: see bk_solve_params_t */
    uint64_t c_lo;       /* compute type [n] */
    uint64_t k;          /* compute type [n-1] (0 when n == 1) */
    uint64_t dv_row;     /* double[n][stride]: dL/dv per row, in the compute type's value */
    uint64_t dk_row;     /* double[n-1][stride]: dL/dk per row */
    uint64_t dz_row;     /* double2[stride]: sum over positions of lambda per row */
    uint64_t status;     /* uint32_t[stride] */
    uint64_t row_index;  /* uint32_t[rows] or 0 */
    uint64_t scratch;    /* compute type [BK_VJP_SCRATCH_VALUES][n][rows] */
    bk_qtensor_t v_q;    /* input codes when in_format is INT8/INT4 */
    double d_im;         /* -Im z */
    double v_limit;      /* |v| above this sets BK_STATUS_BIG_V (+inf: never) */
    uint32_t rows;       /* rows of this launch */
    uint32_t stride;     /* rows of the chunk: the stride of dv_row, dk_row */
    uint32_t n;
    uint32_t in_format;  /* BK_FMT_F32 / F64 / INT8 / INT4 */
    uint32_t gbar_format;/* BK_FMT_C64 / C128 */
    uint32_t compute;    /* BK_FMT_F32 or BK_FMT_F64: must match the kernel */
    uint32_t nan_policy; /* BK_NAN_* for dequantized potentials */
    uint32_t threads;    /* must equal blockDim.x (BK_VJP_THREADS) */
} bk_vjp_params_t;

BK_STATIC_ASSERT(sizeof(bk_vjp_params_t) == 192, "bk_vjp_params_t layout changed: update src/grad/gpu.rs");
BK_STATIC_ASSERT(offsetof(bk_vjp_params_t, v_q) == 88, "bk_vjp_params_t.v_q moved");
BK_STATIC_ASSERT(offsetof(bk_vjp_params_t, d_im) == 144, "bk_vjp_params_t.d_im moved");
BK_STATIC_ASSERT(offsetof(bk_vjp_params_t, rows) == 160, "bk_vjp_params_t.rows moved");

/* One launch of bk_vjp_reduce over a chunk: grid (ceil(n / threads), ceil(stride / block_rows)). */
typedef struct bk_vjp_reduce_params {
    uint64_t dv_row;     /* double[n][stride], as written by bk_vjp */
    uint64_t dk_row;     /* double[n-1][stride] */
    uint64_t dv;         /* float/double[stride][n]: dL/dv as the caller wants it */
    uint64_t part;       /* double[ceil(stride / block_rows)][2n - 1]: per block, sums of dv then dk */
    uint32_t stride;
    uint32_t n;
    uint32_t dv_format;  /* BK_FMT_F32 / F64 */
    uint32_t block_rows; /* rows per partial sum (BK_VJP_BLOCK_ROWS) */
} bk_vjp_reduce_params_t;

BK_STATIC_ASSERT(sizeof(bk_vjp_reduce_params_t) == 48, "bk_vjp_reduce_params_t layout changed: update src/grad/gpu.rs");
BK_STATIC_ASSERT(offsetof(bk_vjp_reduce_params_t, stride) == 32, "bk_vjp_reduce_params_t.stride moved");

#endif /* BK_VJP_H */
