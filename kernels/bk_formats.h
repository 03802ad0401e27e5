/*
 * bk_formats.h — the one declaration of bk-infer's quantized layouts, scalar quantization rules
 * and kernel parameter structs. Plain C (C11 / C++), read by nvcc for the kernels, by the host C
 * compiler in tests/layout.rs, and mirrored in Rust by src/layout.rs. Sizes and offsets are pinned
 * by static asserts here and by const asserts there; tests/layout.rs compiles this header and
 * compares every offset with the Rust mirror, and checks bk_quantize/bk_dequantize against the Rust
 * codec bit for bit.
 *
 * A quantized real tensor of shape (rows, n) is quantized along the sequence axis in groups of
 * group_size positions (1 = per channel; the last group may be partial). Each group has a scale
 * (f32) and, when asymmetric, a zero point (i16): x = (q - zero) * scale. Static parameters are
 * shared by every row ([groups]); dynamic ones are per row ([rows][groups]).
 * INT8 codes: one signed byte per value, rows of n bytes.
 * INT4 codes: two signed nibbles per byte, even positions in the low nibble, rows of ceil(n/2)
 * bytes (an odd row ends with a zero high nibble).
 */
#ifndef BK_FORMATS_H
#define BK_FORMATS_H

#include <stdint.h>
#ifndef __cplusplus
#include <assert.h>
#include <math.h>
#include <stddef.h>
#define BK_STATIC_ASSERT(c, m) _Static_assert(c, m)
#else
#include <cmath>
#include <cstddef>
#define BK_STATIC_ASSERT(c, m) static_assert(c, m)
#endif

#if defined(__CUDACC__)
#define BK_HD __host__ __device__ __forceinline__
#else
#define BK_HD static inline
#endif

#define BK_FORMATS_VERSION 2

/* Element formats. */
enum {
    BK_FMT_F32 = 0,  /* real input, f32 */
    BK_FMT_F64 = 1,  /* real input, f64 */
    BK_FMT_INT8 = 2, /* quantized, 8-bit codes */
    BK_FMT_INT4 = 3, /* quantized, packed 4-bit codes */
    BK_FMT_C64 = 4,  /* complex output, interleaved f32 (re, im) */
    BK_FMT_C128 = 5  /* complex output, interleaved f64 (re, im) */
};

/* Code ranges. Symmetric INT8 drops -128 so the range is symmetric. */
#define BK_INT8_QMIN_SYM (-127)
#define BK_INT8_QMIN (-128)
#define BK_INT8_QMAX 127
#define BK_INT4_QMIN (-8)
#define BK_INT4_QMAX 7

/* A quantized real tensor as the kernels read (input v) or write (output G re/im) it.
 * Pointers are device addresses carried as u64 so that the layout is the same in C, CUDA and Rust. */
typedef struct bk_qtensor {
    uint64_t codes;      /* int8_t[rows][row_bytes] or packed int4 */
    uint64_t scale;      /* float[param_rows][groups] */
    uint64_t zero;       /* int16_t[param_rows][groups]; 0 (null) when symmetric */
    uint64_t row_bytes;  /* bytes per row of codes */
    uint32_t group_size; /* positions per group; 1 = per channel */
    uint32_t groups;     /* ceil(n / group_size) */
    uint32_t format;     /* BK_FMT_INT8 or BK_FMT_INT4 */
    uint32_t dynamic;    /* 0: parameters shared by all rows; 1: one set per row */
    int32_t qmin;
    int32_t qmax;
} bk_qtensor_t;

BK_STATIC_ASSERT(sizeof(bk_qtensor_t) == 56, "bk_qtensor_t layout changed: update src/layout.rs");
BK_STATIC_ASSERT(offsetof(bk_qtensor_t, row_bytes) == 24, "bk_qtensor_t.row_bytes moved");
BK_STATIC_ASSERT(offsetof(bk_qtensor_t, group_size) == 32, "bk_qtensor_t.group_size moved");
BK_STATIC_ASSERT(offsetof(bk_qtensor_t, qmin) == 48, "bk_qtensor_t.qmin moved");

/* Per-row status flags, written once per processed row by the solve kernels (never read back
 * by them), so that the host can tell which rows to redo in f64 or report. */
#define BK_STATUS_WRITTEN 0x100u    /* set for every row a kernel processed */
#define BK_STATUS_NONFINITE_G 0x1u  /* some G of the row is NaN or infinite */
#define BK_STATUS_NONFINITE_V 0x2u  /* some potential is NaN or infinite (and the policy kept it) */
#define BK_STATUS_BIG_V 0x4u        /* some |v| > v_limit (f32 pivots could overflow) */
#define BK_STATUS_BAD_LAUNCH 0x80u  /* launch geometry or formats disagree with the kernel */

/* NaN policies for potentials the kernel dequantizes (f32/f64 inputs are cleaned on the host). */
#define BK_NAN_ERROR 0
#define BK_NAN_ZERO 1
#define BK_NAN_PROPAGATE 2

/* Positions per thread (one chunk) for each compute type, and the largest block. The host picks
 * threads = clamp(round_up(ceil(n / chunk), 32), 32, BK_MAX_THREADS) from n alone, so a row's
 * result never depends on how the batch was split. */
#define BK_CHUNK_F32 8
#define BK_CHUNK_F64 8
#define BK_MAX_THREADS 256
/* A dynamic-output row is staged in shared memory up to this many positions (8 bytes each). */
#define BK_STAGE_SHARED_MAX_N 4096

/* Everything one solve launch needs. The recursion constants are precomputed on the host in the
 * compute type: c_i = f(h0_diag_i - Re z), c_lo_i = (h0_diag_i - Re z) - c_i (the rounding error
 * of c_i, added back so it does not act as one shift of every potential), k_i = h0_super_i *
 * h0_sub_i; then d_i = (c_i + v_i) + c_lo_i - i Im z.
 * Launch: grid-stride over rows (block b handles launch rows b, b + gridDim.x, ...), one block of
 * `threads` threads per row; scratch is per block (indexed by blockIdx.x). */
typedef struct bk_solve_params {
    uint64_t v;          /* float/double[rows][n] when in_format is F32/F64 */
    uint64_t c;          /* compute type [n] */
    uint64_t c_lo;       /* compute type [n] */
    uint64_t k;          /* compute type [n-1] (0 when n == 1) */
    uint64_t g;          /* complex output [rows][n] when out_format is C64/C128 */
    uint64_t status;     /* uint32_t[total rows], indexed by the row actually processed */
    uint64_t row_index;  /* uint32_t[rows] or 0: launch row j processes row row_index[j] */
    uint64_t ain;        /* scratch, compute-type complex [gridDim.x][tiles * threads], tiles > 1 */
    uint64_t stage;      /* scratch, float2 [gridDim.x][n], dynamic output not staged in shared */
    bk_qtensor_t v_q;    /* input codes when in_format is INT8/INT4 */
    bk_qtensor_t g_re;   /* output codes when out_format is INT8/INT4 */
    bk_qtensor_t g_im;
    double d_im;         /* -Im z */
    double v_limit;      /* |v| above this sets BK_STATUS_BIG_V (+inf: never) */
    uint32_t rows;       /* rows of this launch */
    uint32_t n;
    uint32_t in_format;  /* BK_FMT_F32 / F64 / INT8 / INT4: must match the kernel */
    uint32_t out_format; /* BK_FMT_C64 / C128 / INT8 / INT4: must match the kernel */
    uint32_t compute;    /* BK_FMT_F32 or BK_FMT_F64: must match the kernel */
    uint32_t chunk;      /* must equal the kernel's chunk (BK_CHUNK_F32 / BK_CHUNK_F64) */
    uint32_t threads;    /* must equal blockDim.x */
    uint32_t nan_policy; /* BK_NAN_* for dequantized potentials */
    uint32_t stage_in_shared; /* 1: dynamic output staged in dynamic shared memory (n * 8 bytes) */
    uint32_t scan64;     /* 1: f32 compute with the chunk matrices and scan in f64 (the _s64 kernels) */
} bk_solve_params_t;

BK_STATIC_ASSERT(sizeof(bk_solve_params_t) == 296, "bk_solve_params_t layout changed: update src/layout.rs");
BK_STATIC_ASSERT(offsetof(bk_solve_params_t, v_q) == 72, "bk_solve_params_t.v_q moved");
BK_STATIC_ASSERT(offsetof(bk_solve_params_t, d_im) == 240, "bk_solve_params_t.d_im moved");
BK_STATIC_ASSERT(offsetof(bk_solve_params_t, rows) == 256, "bk_solve_params_t.rows moved");

/* The scalar rules (identical to src/quant/codec.rs and AffineParams::from_range). Division, rint,
 * min/max and one multiply: IEEE correctly rounded on CPU and GPU alike, so codes, values and
 * dynamic parameters agree bit for bit. Build without --use_fast_math. */
BK_HD int32_t bk_quantize(float x, float scale, int32_t zero, int32_t qmin, int32_t qmax)
{
    float t = rintf(x / scale);
    float lo = (float)(qmin - zero), hi = (float)(qmax - zero);
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    /* NaN passes both comparisons unchanged; map it to the zero point like the Rust cast does. */
    return (t == t ? (int32_t)t : 0) + zero;
}

BK_HD float bk_dequantize(int32_t q, float scale, int32_t zero)
{
#if defined(__CUDA_ARCH__)
    /* An explicit round-to-nearest multiply: nvcc must not fuse it into the add that follows
     * (d = c + v), or GPU potentials would differ from the CPU's in the last bit. */
    return __fmul_rn((float)(q - zero), scale);
#else
    return (float)(q - zero) * scale;
#endif
}

/* Code at position i of a row of codes. */
BK_HD int32_t bk_code_at(const uint8_t *row, uint32_t format, uint32_t i)
{
    if (format == BK_FMT_INT8) return (int32_t)(int8_t)row[i];
    uint8_t b = row[i >> 1];
    uint8_t nib = (i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0x0f);
    return (int32_t)(int8_t)(uint8_t)(nib << 4) >> 4;
}

/* A scale that is positive and finite even for an all-zero or constant range (safe_scale). */
BK_HD float bk_safe_scale(float s, float magnitude)
{
    const float tiny = 0x1p-126f * 1e6f; /* f32::MIN_POSITIVE * 1e6, rounded in f32 */
    if (isfinite(s) && s > tiny) return s;
    if (isfinite(magnitude) && magnitude > 0.0f) return magnitude;
    return 1.0f;
}

/* Zero point: round half to even, clamp to i16, NaN to 0 (the Rust `as i16` cast). */
BK_HD int16_t bk_zero_point(float z)
{
    float t = rintf(z);
    t = t < -32768.0f ? -32768.0f : t;
    t = t > 32767.0f ? 32767.0f : t;
    return t == t ? (int16_t)t : (int16_t)0;
}

/* min/max that return the other operand when one is NaN, quiet or signaling, like Rust's
 * f32::min/max (C's fminf/fmaxf return NaN for a signaling NaN). Which zero comes back for
 * (+0, -0) is unspecified there as here; no caller depends on it. */
BK_HD float bk_minf(float a, float b) { return a != a ? b : (b != b ? a : (b < a ? b : a)); }
BK_HD float bk_maxf(float a, float b) { return a != a ? b : (b != b ? a : (b > a ? b : a)); }

/* (scale, zero) covering [lo, hi] (AffineParams::from_range). The sign of a zero bound never
 * changes the result. */
BK_HD void bk_params_from_range(float lo, float hi, int32_t symmetric, int32_t qmin, int32_t qmax,
                                float *scale, int16_t *zero)
{
    float fqmin = (float)qmin, fqmax = (float)qmax;
    if (symmetric) {
        float amax = bk_maxf(fabsf(lo), fabsf(hi));
        *scale = bk_safe_scale(amax / fqmax, amax);
        *zero = 0;
    } else {
        float l = bk_minf(lo, hi), h = bk_maxf(hi, lo);
        float s = bk_safe_scale((h - l) / (fqmax - fqmin), bk_maxf(fabsf(l), fabsf(h)));
        *scale = s;
        *zero = bk_zero_point(fqmin - l / s);
    }
}

#endif /* BK_FORMATS_H */
