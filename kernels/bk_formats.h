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
#include <cstddef>
#define BK_STATIC_ASSERT(c, m) static_assert(c, m)
#endif

#if defined(__CUDACC__)
#define BK_HD __host__ __device__ __forceinline__
#else
#define BK_HD static inline
#endif

#define BK_FORMATS_VERSION 1

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

/* Everything one solve launch needs. The recursion constants are precomputed on the host:
 * c_i = h0_diag_i - Re z and k_i = h0_super_i * h0_sub_i, so d_i = c_i + v_i - i Im z. */
typedef struct bk_solve_params {
    uint64_t v;        /* float/double[rows][n] when in_format is F32/F64 */
    uint64_t c;        /* float/double[n] (the compute type) */
    uint64_t k;        /* float/double[n-1] */
    uint64_t g;        /* complex output [rows][n] when out_format is C64/C128 */
    uint64_t status;   /* uint32_t[1]: set non-zero when a non-finite G was produced */
    bk_qtensor_t v_q;  /* input codes when in_format is INT8/INT4 */
    bk_qtensor_t g_re; /* output codes when out_format is INT8/INT4 */
    bk_qtensor_t g_im;
    double d_im;       /* -Im z */
    uint32_t rows;
    uint32_t n;
    uint32_t in_format;
    uint32_t out_format;
    uint32_t chunk;    /* positions per thread in the chunked kernels; 0 = kernel's default */
    uint32_t reserved;
} bk_solve_params_t;

BK_STATIC_ASSERT(sizeof(bk_solve_params_t) == 240, "bk_solve_params_t layout changed: update src/layout.rs");
BK_STATIC_ASSERT(offsetof(bk_solve_params_t, v_q) == 40, "bk_solve_params_t.v_q moved");
BK_STATIC_ASSERT(offsetof(bk_solve_params_t, d_im) == 208, "bk_solve_params_t.d_im moved");

/* The scalar rules (identical to src/quant/codec.rs). Division, rint and one multiply: IEEE
 * correctly rounded on CPU and GPU alike, so codes and values agree bit for bit. Build without
 * --use_fast_math. */
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
    return (float)(q - zero) * scale;
}

/* Code at position i of a row of codes. */
BK_HD int32_t bk_code_at(const uint8_t *row, uint32_t format, uint32_t i)
{
    if (format == BK_FMT_INT8) return (int32_t)(int8_t)row[i];
    uint8_t b = row[i >> 1];
    uint8_t nib = (i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0x0f);
    return (int32_t)(int8_t)(uint8_t)(nib << 4) >> 4;
}

#endif /* BK_FORMATS_H */
