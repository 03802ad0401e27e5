/*
 * bk_recursion.cuh — the BK pivot recursion on the GPU, one block per row.
 *
 * Math (DESIGN.md): d_i = c_i + v_i + c_lo_i - i Im z, k_i = h0_super_i h0_sub_i;
 * a_i = k_{i-1} / alpha_{i-1}, alpha_i = d_i - a_i;  b_i = k_i / beta_{i+1}, beta_i = d_i - b_i;
 * G_i = 1 / (d_i - a_i - b_i).
 *
 * Parallel form. alpha_i = p_i / q_i with (p_i, q_i) = M_i (p_{i-1}, q_{i-1}),
 * M_i = [[d_i, -k_{i-1}], [1, 0]], starting from (1, 0) ("alpha_{-1} = infinity"); the backward
 * pivots likewise with N_i = [[d_i, -k_i], [1, 0]] from the right. A row is cut into chunks of
 * CHUNK consecutive positions, one per thread; a tile is one chunk per thread. Per tile:
 *   1. each thread multiplies the 2x2 complex transfer matrix of its chunk (renormalised by a power
 *      of two after every product: only ratios matter, and power-of-two scaling is exact);
 *   2. a block scan (warp shuffles, then one warp over the warp totals) gives every chunk the
 *      product of all chunks before it (after it, for beta), applied to the carry from earlier tiles;
 *   3. each thread reruns its chunk sequentially from that true starting pivot, forward into
 *      registers, then backward producing G, exactly the CPU's arithmetic per step.
 * A row of one tile reads its potentials once. Longer rows take a forward sweep over tiles
 * 0..S-2 (keeping only each chunk's entering coupling a_in, in global scratch) and a backward
 * sweep S-1..0 that reads the potentials again.
 *
 * Near the real axis (|Im z| < 0.1) the f32 kernels come in a second form, `_s64`: chunk matrices,
 * scan and carries in f64, reruns in f32. Each chunk then starts from its pivot rounded once to
 * f32 instead of one carried through a product of f32 matrices, which is what made the plain f32
 * form up to ~2x less accurate than the CPU's sequential f32 there (tests/gpu.rs, near the axis).
 *
 * Exactness: every operation of the recursion uses explicitly rounded intrinsics (__fadd_rn, ...),
 * so nvcc cannot contract differently in different instantiations: the same row gives the same
 * bits whatever the output format, block position or batch split. No atomics; every output
 * element is written exactly once, by one thread.
 */
#pragma once
#include "bk_formats.h"

/* The block's dynamic shared memory. A macro so that tests/emu can run this file on the CPU. */
#ifndef BK_DYNAMIC_SHARED
#define BK_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace bk {

/* ---- explicitly rounded scalar arithmetic --------------------------------------------------- */

__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float dvd(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float fma_(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double dvd(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return __fma_rn(a, b, c); }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(double x) { return __double2float_rn(x); }
/* The scan type's value in the rerun type T (rounded to nearest; exact when S is T). */
template <class T> __device__ __forceinline__ T narrow(float x) { return (T)x; }
template <class T> __device__ __forceinline__ T narrow(double x) { return (T)to_f32(x); }
template <> __device__ __forceinline__ double narrow<double>(double x) { return x; }

template <class T> struct Cx { T re, im; };
/* [[a, b], [c, d]] */
template <class T> struct M2 { Cx<T> a, b, c, d; };
/* A projective pivot (p, q): the pivot is p / q. */
template <class T> struct V2 { Cx<T> p, q; };

template <class T> __device__ __forceinline__ Cx<T> cx(T re, T im) { Cx<T> r; r.re = re; r.im = im; return r; }

template <class T> __device__ __forceinline__ Cx<T> cmul(Cx<T> x, Cx<T> y)
{
    return cx<T>(fma_(x.re, y.re, -mul(x.im, y.im)), fma_(x.re, y.im, mul(x.im, y.re)));
}
template <class T> __device__ __forceinline__ Cx<T> cadd(Cx<T> x, Cx<T> y) { return cx<T>(add(x.re, y.re), add(x.im, y.im)); }
template <class T> __device__ __forceinline__ Cx<T> cscale(Cx<T> x, T s) { return cx<T>(mul(x.re, s), mul(x.im, s)); }

template <class T> __device__ __forceinline__ M2<T> identity()
{
    M2<T> m;
    m.a = cx<T>(T(1), T(0)); m.b = cx<T>(T(0), T(0));
    m.c = cx<T>(T(0), T(0)); m.d = cx<T>(T(1), T(0));
    return m;
}

/* 2^-floor(log2 mx), clamped to the normal range: multiplying by it is exact. */
__device__ __forceinline__ float pow2_inv(float mx)
{
    int e = (__float_as_int(mx) >> 23) & 0xff;
    int s = 254 - e;
    s = s < 1 ? 1 : (s > 254 ? 254 : s);
    return __int_as_float(s << 23);
}
__device__ __forceinline__ double pow2_inv(double mx)
{
    long long e = (__double_as_longlong(mx) >> 52) & 0x7ff;
    long long s = 2046 - e;
    s = s < 1 ? 1 : (s > 2046 ? 2046 : s);
    return __longlong_as_double(s << 52);
}

template <class T> __device__ __forceinline__ T amax2(Cx<T> x) { return fmax(fabs(x.re), fabs(x.im)); }

template <class T> __device__ __forceinline__ void renorm(M2<T> &m)
{
    T mx = fmax(fmax(amax2(m.a), amax2(m.b)), fmax(amax2(m.c), amax2(m.d)));
    T s = pow2_inv(mx);
    m.a = cscale(m.a, s); m.b = cscale(m.b, s); m.c = cscale(m.c, s); m.d = cscale(m.d, s);
}
template <class T> __device__ __forceinline__ void renorm(V2<T> &v)
{
    T s = pow2_inv(fmax(amax2(v.p), amax2(v.q)));
    v.p = cscale(v.p, s); v.q = cscale(v.q, s);
}

/* x · y, renormalised. */
template <class T> __device__ __forceinline__ M2<T> mmul(const M2<T> &x, const M2<T> &y)
{
    M2<T> r;
    r.a = cadd(cmul(x.a, y.a), cmul(x.b, y.c));
    r.b = cadd(cmul(x.a, y.b), cmul(x.b, y.d));
    r.c = cadd(cmul(x.c, y.a), cmul(x.d, y.c));
    r.d = cadd(cmul(x.c, y.b), cmul(x.d, y.d));
    renorm(r);
    return r;
}
template <class T> __device__ __forceinline__ V2<T> mvmul(const M2<T> &x, const V2<T> &v)
{
    V2<T> r;
    r.p = cadd(cmul(x.a, v.p), cmul(x.b, v.q));
    r.q = cadd(cmul(x.c, v.p), cmul(x.d, v.q));
    renorm(r);
    return r;
}

/* F <- [[d, -k], [1, 0]] · F, renormalised. */
template <class T> __device__ __forceinline__ void step(M2<T> &f, Cx<T> d, T k)
{
    M2<T> r;
    r.a = cx<T>(sub(sub(mul(d.re, f.a.re), mul(d.im, f.a.im)), mul(k, f.c.re)),
                sub(add(mul(d.re, f.a.im), mul(d.im, f.a.re)), mul(k, f.c.im)));
    r.b = cx<T>(sub(sub(mul(d.re, f.b.re), mul(d.im, f.b.im)), mul(k, f.d.re)),
                sub(add(mul(d.re, f.b.im), mul(d.im, f.b.re)), mul(k, f.d.im)));
    r.c = f.a;
    r.d = f.b;
    renorm(r);
    f = r;
}

/* |x|^2 as the CPU lanes form it: fma(re, re, im * im). */
template <class T> __device__ __forceinline__ T norm2(T re, T im) { return fma_(re, re, mul(im, im)); }

/* k · q / p: the coupling that a projective pivot (p, q) passes on. */
template <class T> __device__ __forceinline__ Cx<T> coupling(T k, const V2<T> &v)
{
    T s = dvd(k, norm2(v.p.re, v.p.im));
    Cx<T> r = cx<T>(fma_(v.q.re, v.p.re, mul(v.q.im, v.p.im)), sub(mul(v.q.im, v.p.re), mul(v.q.re, v.p.im)));
    return cscale(r, s);
}

/* ---- warp and block scans of transfer matrices ------------------------------------------------ */

template <class T> __device__ __forceinline__ Cx<T> shfl_up(Cx<T> x, unsigned off)
{
    return cx<T>(__shfl_up_sync(0xffffffffu, x.re, off), __shfl_up_sync(0xffffffffu, x.im, off));
}
template <class T> __device__ __forceinline__ Cx<T> shfl_down(Cx<T> x, unsigned off)
{
    return cx<T>(__shfl_down_sync(0xffffffffu, x.re, off), __shfl_down_sync(0xffffffffu, x.im, off));
}
template <bool UP, class T> __device__ __forceinline__ M2<T> shfl(const M2<T> &m, unsigned off)
{
    M2<T> r;
    if (UP) {
        r.a = shfl_up(m.a, off); r.b = shfl_up(m.b, off); r.c = shfl_up(m.c, off); r.d = shfl_up(m.d, off);
    } else {
        r.a = shfl_down(m.a, off); r.b = shfl_down(m.b, off); r.c = shfl_down(m.c, off); r.d = shfl_down(m.d, off);
    }
    return r;
}

/* Inclusive scan inside a warp. FWD (left to right): lane l ends with X_l · ... · X_0. Backward
 * (right to left): lane l ends with X_l · ... · X_31. Either way the lane's own matrix stays on the
 * left: it acts last. */
template <bool FWD, class T> __device__ __forceinline__ M2<T> warp_scan(M2<T> m, unsigned lane)
{
#pragma unroll
    for (unsigned off = 1; off < 32; off <<= 1) {
        M2<T> o = shfl<FWD>(m, off);
        bool take = FWD ? lane >= off : lane + off < 32;
        if (take) m = mmul(m, o);
    }
    return m;
}

template <class T> struct ScanSmem {
    M2<T> tot[BK_MAX_THREADS / 32]; /* each warp's inclusive product */
    M2<T> pre[BK_MAX_THREADS / 32]; /* product of the warps before (FWD) / after (backward) */
    M2<T> all;                      /* the whole tile */
};

/* One block-wide exclusive scan of the chunk matrices `x`, applied to `carry` (the pivot state
 * entering the tile from earlier tiles). Returns the state entering this thread's chunk and
 * advances `carry` past the whole tile. Every thread of the block must call it (two barriers). */
template <bool FWD, class T>
__device__ __forceinline__ V2<T> block_scan(const M2<T> &x, V2<T> &carry, ScanSmem<T> &sm)
{
    const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5, nw = blockDim.x >> 5;
    M2<T> incl = warp_scan<FWD>(x, lane);
    M2<T> ex = shfl<FWD>(incl, 1);
    if (FWD ? lane == 0 : lane == 31) ex = identity<T>();
    if (FWD ? lane == 31 : lane == 0) sm.tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        M2<T> w = lane < nw ? sm.tot[lane] : identity<T>();
        M2<T> wi = warp_scan<FWD>(w, lane);
        M2<T> we = shfl<FWD>(wi, 1);
        if (FWD ? lane == 0 : lane == 31) we = identity<T>();
        if (lane < nw) sm.pre[lane] = we;
        if (FWD ? lane == 31 : lane == 0) sm.all = wi;
    }
    __syncthreads();
    V2<T> s = mvmul(ex, mvmul(sm.pre[warp], carry));
    carry = mvmul(sm.all, carry);
    return s;
}

/* ---- load policies: potentials of one row, dequantized in the load path ---------------------- */

/* Potential i of row `row` in the compute type, stored as `fmt` (F32/F64: `v`, n per row;
 * INT8/INT4: the codes and static or dynamic parameters of `q`). The one load path of the solve
 * and backward kernels: dequantization is bk_dequantize, the CPU codec's rule; f64 -> f32
 * rounds to nearest, as Rust's `as f32`. With `fmt` a compile-time constant the switch folds. */
template <class T>
__device__ __forceinline__ T load_potential(uint32_t fmt, uint64_t v, const bk_qtensor_t &q, uint32_t n, size_t row, uint32_t i)
{
    switch (fmt) {
    case BK_FMT_F32: return (T)__ldg((const float *)v + row * n + i);
    case BK_FMT_F64: return (T)__ldg((const double *)v + row * n + i);
    default: {
        const uint8_t *codes = (const uint8_t *)q.codes + row * q.row_bytes;
        size_t j = (q.dynamic ? row * q.groups : 0) + i / q.group_size;
        float s = __ldg((const float *)q.scale + j);
        int32_t z = q.zero ? (int32_t)__ldg((const int16_t *)q.zero + j) : 0;
        return (T)bk_dequantize(bk_code_at(codes, fmt, i), s, z);
    }
    }
}

/* F32, F64, or INT8/INT4 codes with static (shared by all rows) or dynamic (per row) scale and
 * zero point. */
template <uint32_t F> struct Load {
    static constexpr uint32_t FMT = F;
    template <class T> __device__ static __forceinline__ T at(const bk_solve_params_t &p, size_t row, uint32_t i)
    {
        return load_potential<T>(F, p.v, p.v_q, p.n, row, i);
    }
};
using LoadF32 = Load<BK_FMT_F32>;
using LoadF64 = Load<BK_FMT_F64>;
template <uint32_t F> using LoadQ = Load<F>;

/* ---- store policies ------------------------------------------------------------------------ */

struct StoreC64 {
    static constexpr uint32_t FMT = BK_FMT_C64;
    static constexpr bool QUANT = false;
    template <class T> __device__ static __forceinline__ void put(const bk_solve_params_t &p, size_t row, uint32_t i, Cx<T> g)
    {
        ((float2 *)p.g)[row * p.n + i] = make_float2(to_f32(g.re), to_f32(g.im));
    }
};

struct StoreC128 {
    static constexpr uint32_t FMT = BK_FMT_C128;
    static constexpr bool QUANT = false;
    template <class T> __device__ static __forceinline__ void put(const bk_solve_params_t &p, size_t row, uint32_t i, Cx<T> g)
    {
        ((double2 *)p.g)[row * p.n + i] = make_double2((double)g.re, (double)g.im);
    }
};

/* Re-quantized output, real and imaginary parts separately. Static parameters quantize straight
 * from registers; if either part is dynamic, the row's G is staged (f32) and quantized after the
 * row is complete, with per-(row, group) min/max computed in the kernel. */
template <uint32_t F> struct StoreQ {
    static constexpr uint32_t FMT = F;
    static constexpr bool QUANT = true;
};

__device__ __forceinline__ void static_params(const bk_qtensor_t &q, uint32_t i, float &s, int32_t &z)
{
    size_t j = i / q.group_size;
    s = __ldg((const float *)q.scale + j);
    z = q.zero ? (int32_t)__ldg((const int16_t *)q.zero + j) : 0;
}

__device__ __forceinline__ int32_t static_code(const bk_qtensor_t &q, uint32_t i, float x)
{
    float s;
    int32_t z;
    static_params(q, i, s, z);
    return bk_quantize(x, s, z, q.qmin, q.qmax);
}

/* Min/max of one part of a staged row per group, then (scale, zero) into the part's dynamic
 * parameter arrays. Min and max are exact in any order, so the parallel reduction gives the
 * CPU's parameters bit for bit. */
template <bool IM>
__device__ void dynamic_params(const bk_qtensor_t &q, const float2 *stage, uint32_t n, size_t row)
{
    const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5, nw = blockDim.x >> 5;
    const uint32_t g = q.group_size, groups = q.groups;
    float *scale = (float *)q.scale + row * groups;
    int16_t *zero = q.zero ? (int16_t *)q.zero + row * groups : nullptr;
    if (g >= 32) {
        for (uint32_t j = warp; j < groups; j += nw) {
            float lo = INFINITY, hi = -INFINITY;
            uint32_t end = (size_t)(j + 1) * g < (size_t)n ? (j + 1) * g : n;
            for (uint32_t i = j * g + lane; i < end; i += 32) {
                float x = IM ? stage[i].y : stage[i].x;
                lo = bk_minf(lo, x);
                hi = bk_maxf(hi, x);
            }
#pragma unroll
            for (unsigned off = 16; off > 0; off >>= 1) {
                lo = bk_minf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
                hi = bk_maxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
            }
            if (lane == 0) {
                float s;
                int16_t z;
                bk_params_from_range(lo, hi, q.zero == 0, q.qmin, q.qmax, &s, &z);
                scale[j] = s;
                if (zero) zero[j] = z;
            }
        }
    } else {
        for (uint32_t j = tid; j < groups; j += blockDim.x) {
            float lo = INFINITY, hi = -INFINITY;
            uint32_t end = (j + 1) * g < n ? (j + 1) * g : n;
            for (uint32_t i = j * g; i < end; i++) {
                float x = IM ? stage[i].y : stage[i].x;
                lo = bk_minf(lo, x);
                hi = bk_maxf(hi, x);
            }
            float s;
            int16_t z;
            bk_params_from_range(lo, hi, q.zero == 0, q.qmin, q.qmax, &s, &z);
            scale[j] = s;
            if (zero) zero[j] = z;
        }
    }
}

/* Codes of one part of a staged row. Parameters come from the static arrays or from the dynamic
 * ones this block has just written (plain loads: __ldg must not see data written in this kernel). */
template <uint32_t F, bool IM>
__device__ void quantize_staged(const bk_qtensor_t &q, const float2 *stage, uint32_t n, size_t row)
{
    const size_t base = q.dynamic ? row * q.groups : 0;
    const float *scale = (const float *)q.scale + base;
    const int16_t *zero = q.zero ? (const int16_t *)q.zero + base : nullptr;
    uint8_t *codes = (uint8_t *)q.codes + row * q.row_bytes;
    auto code = [&](uint32_t i) {
        uint32_t j = i / q.group_size;
        float x = IM ? stage[i].y : stage[i].x;
        return bk_quantize(x, scale[j], zero ? (int32_t)zero[j] : 0, q.qmin, q.qmax);
    };
    if (F == BK_FMT_INT8) {
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) codes[i] = (uint8_t)(int8_t)code(i);
    } else {
        uint32_t bytes = (n + 1) / 2;
        for (uint32_t b = threadIdx.x; b < bytes; b += blockDim.x) {
            uint32_t lo = (uint32_t)code(2 * b) & 0xfu;
            uint32_t hi = 2 * b + 1 < n ? (uint32_t)code(2 * b + 1) & 0xfu : 0u;
            codes[b] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* ---- the kernel body ------------------------------------------------------------------------- */

template <class T> struct ComputeFmt;
template <> struct ComputeFmt<float> { static constexpr uint32_t FMT = BK_FMT_F32; };
template <> struct ComputeFmt<double> { static constexpr uint32_t FMT = BK_FMT_F64; };

template <class T, int CHUNK> struct Row {
    const bk_solve_params_t &p;
    size_t row;
    uint32_t n;
    const T *c, *c_lo, *k;
    T d_im;
    uint32_t flags;

    __device__ __forceinline__ T kk(uint32_t i) const { return i + 1 < n ? __ldg(k + i) : T(0); }

    /* d_re of the chunk starting at i0 (positions >= n left 0), flagging the potentials. */
    template <class Load> __device__ __forceinline__ void load(uint32_t i0, T (&d)[CHUNK])
    {
#pragma unroll
        for (int m = 0; m < CHUNK; m++) {
            uint32_t i = i0 + (uint32_t)m;
            d[m] = T(0);
            if (i < n) {
                T v = Load::template at<T>(p, row, i);
                if (!isfinite(v)) {
                    if (p.nan_policy == BK_NAN_ZERO) v = T(0);
                    else flags |= BK_STATUS_NONFINITE_V;
                }
                if ((double)fabs(v) > p.v_limit) flags |= BK_STATUS_BIG_V;
                d[m] = add(add(__ldg(c + i), v), __ldg(c_lo + i));
            }
        }
    }

    /* The chunk's transfer matrices in the scan type S (T values widen exactly). */
    template <class S> __device__ __forceinline__ M2<S> fwd_matrix(uint32_t i0, const T (&d)[CHUNK]) const
    {
        M2<S> f = identity<S>();
#pragma unroll
        for (int m = 0; m < CHUNK; m++) {
            uint32_t i = i0 + (uint32_t)m;
            if (i < n) step(f, cx<S>((S)d[m], (S)d_im), (S)(i > 0 ? __ldg(k + i - 1) : T(0)));
        }
        return f;
    }

    template <class S> __device__ __forceinline__ M2<S> bwd_matrix(uint32_t i0, const T (&d)[CHUNK]) const
    {
        M2<S> b = identity<S>();
#pragma unroll
        for (int m = CHUNK - 1; m >= 0; m--) {
            uint32_t i = i0 + (uint32_t)m;
            if (i < n) step(b, cx<S>((S)d[m], (S)d_im), (S)kk(i));
        }
        return b;
    }

    /* The coupling k * q / p passed on by projective pivot `s`, in the rerun type. */
    template <class S> __device__ __forceinline__ Cx<T> enter(uint32_t kidx, const V2<S> &s) const
    {
        Cx<S> c = coupling((S)__ldg(k + kidx), s);
        return cx<T>(narrow<T>(c.re), narrow<T>(c.im));
    }
};

/* T: arithmetic of the reruns (and of the G written); S: of the chunk matrices, scans and carries
 * (T, or double for the _s64 kernels). */
template <class T, class S, class Load, class Store, int CHUNK>
__device__ __forceinline__ void solve_rows(const bk_solve_params_t &p)
{
    __shared__ ScanSmem<S> sm;
    BK_DYNAMIC_SHARED(float2, stage_smem);

    const unsigned tid = threadIdx.x, nt = blockDim.x;
    const uint32_t n = p.n;
    uint32_t *status = (uint32_t *)p.status;
    const uint32_t *row_index = (const uint32_t *)p.row_index;

    bool ok = nt == p.threads && nt % 32 == 0 && nt <= BK_MAX_THREADS && p.chunk == (uint32_t)CHUNK
              && p.in_format == Load::FMT && p.out_format == Store::FMT && p.compute == ComputeFmt<T>::FMT
              && p.scan64 == (uint32_t)(sizeof(S) > sizeof(T))
              && n > 0 && (!p.stage_in_shared || n <= BK_STAGE_SHARED_MAX_N);
    if (!ok) {
        for (uint32_t j = blockIdx.x; j < p.rows; j += gridDim.x)
            if (tid == 0) status[row_index ? row_index[j] : j] = BK_STATUS_WRITTEN | BK_STATUS_BAD_LAUNCH;
        return;
    }

    const uint32_t tile = nt * (uint32_t)CHUNK;
    const uint32_t tiles = (n + tile - 1) / tile;
    const bool dyn_out = Store::QUANT && (p.g_re.dynamic || p.g_im.dynamic);
    float2 *stage = p.stage_in_shared ? stage_smem : (float2 *)p.stage + (size_t)blockIdx.x * n;
    Cx<T> *ain = tiles > 1 ? (Cx<T> *)p.ain + (size_t)blockIdx.x * tiles * nt : nullptr;

    for (uint32_t j = blockIdx.x; j < p.rows; j += gridDim.x) {
        Row<T, CHUNK> r{p, row_index ? (size_t)row_index[j] : (size_t)j, n, (const T *)p.c, (const T *)p.c_lo,
                        (const T *)p.k, (T)p.d_im, 0u};
        V2<S> carry_f, carry_b;
        carry_f.p = cx<S>(S(1), S(0));
        carry_f.q = cx<S>(S(0), S(0));
        carry_b = carry_f;

        /* Forward sweep over all tiles but the last: only each chunk's entering coupling is kept. */
        for (uint32_t t = 0; t + 1 < tiles; t++) {
            uint32_t i0 = t * tile + tid * (uint32_t)CHUNK;
            T d[CHUNK];
            r.template load<Load>(i0, d);
            V2<S> s = block_scan<true>(r.template fwd_matrix<S>(i0, d), carry_f, sm);
            ain[t * nt + tid] = i0 > 0 && i0 < n ? r.enter(i0 - 1, s) : cx<T>(T(0), T(0));
        }

        /* Backward sweep; the last tile also finishes the forward scan. */
        for (uint32_t t = tiles; t-- > 0;) {
            uint32_t i0 = t * tile + tid * (uint32_t)CHUNK;
            T d[CHUNK];
            r.template load<Load>(i0, d);
            Cx<T> a_in;
            if (t + 1 == tiles) {
                V2<S> s = block_scan<true>(r.template fwd_matrix<S>(i0, d), carry_f, sm);
                a_in = i0 > 0 && i0 < n ? r.enter(i0 - 1, s) : cx<T>(T(0), T(0));
            } else {
                a_in = ain[t * nt + tid];
            }
            V2<S> sb = block_scan<false>(r.template bwd_matrix<S>(i0, d), carry_b, sm);
            uint32_t i1 = i0 + (uint32_t)CHUNK; /* first position after the chunk */
            Cx<T> b = i1 < n ? r.enter(i1 - 1, sb) : cx<T>(T(0), T(0));
            if (i0 >= n) continue; /* no positions here; the scans above needed this thread */

            /* Forward rerun: a[m] = a_{i0+m}. */
            T ar[CHUNK], ai[CHUNK];
            Cx<T> x = a_in;
#pragma unroll
            for (int m = 0; m < CHUNK; m++) {
                uint32_t i = i0 + (uint32_t)m;
                ar[m] = x.re;
                ai[m] = x.im;
                if (i + 1 < n && m + 1 < CHUNK) {
                    T alr = sub(d[m], x.re), ali = sub(r.d_im, x.im);
                    T s = dvd(__ldg(r.k + i), norm2(alr, ali));
                    x = cx<T>(mul(s, alr), sub(T(0), mul(s, ali)));
                }
            }

            /* Backward rerun, producing G. b = b_i on entry to each step. */
            uint32_t pend_re = 0, pend_im = 0; /* INT4 static: code of position i + 1 */
#pragma unroll
            for (int m = CHUNK - 1; m >= 0; m--) {
                uint32_t i = i0 + (uint32_t)m;
                if (i >= n) continue;
                T dr = d[m];
                T den_r = sub(sub(dr, ar[m]), b.re);
                T den_i = sub(sub(r.d_im, ai[m]), b.im);
                T inv = dvd(T(1), norm2(den_r, den_i));
                Cx<T> g = cx<T>(mul(den_r, inv), sub(T(0), mul(den_i, inv)));
                if (!isfinite(g.re) || !isfinite(g.im)) r.flags |= BK_STATUS_NONFINITE_G;
                if (m > 0) {
                    T br = sub(dr, b.re), bi = sub(r.d_im, b.im);
                    T s = dvd(__ldg(r.k + i - 1), norm2(br, bi));
                    b = cx<T>(mul(s, br), sub(T(0), mul(s, bi)));
                }
                if constexpr (!Store::QUANT) {
                    Store::put(p, r.row, i, g);
                } else if (dyn_out) {
                    stage[i] = make_float2(to_f32(g.re), to_f32(g.im));
                } else {
                    int32_t cre = static_code(p.g_re, i, to_f32(g.re));
                    int32_t cim = static_code(p.g_im, i, to_f32(g.im));
                    uint8_t *ore = (uint8_t *)p.g_re.codes + r.row * p.g_re.row_bytes;
                    uint8_t *oim = (uint8_t *)p.g_im.codes + r.row * p.g_im.row_bytes;
                    if (Store::FMT == BK_FMT_INT8) {
                        ore[i] = (uint8_t)(int8_t)cre;
                        oim[i] = (uint8_t)(int8_t)cim;
                    } else if (i & 1u) {
                        pend_re = (uint32_t)cre & 0xfu;
                        pend_im = (uint32_t)cim & 0xfu;
                    } else {
                        /* i even: the chunk starts on an even position, so i + 1 (if < n) was just done. */
                        uint32_t hre = i + 1 < n ? pend_re : 0u, him = i + 1 < n ? pend_im : 0u;
                        ore[i >> 1] = (uint8_t)(((uint32_t)cre & 0xfu) | (hre << 4));
                        oim[i >> 1] = (uint8_t)(((uint32_t)cim & 0xfu) | (him << 4));
                    }
                }
            }
        }

        if constexpr (Store::QUANT) {
            if (dyn_out) {
                __syncthreads(); /* the staged row is complete */
                if (p.g_re.dynamic) dynamic_params<false>(p.g_re, stage, n, r.row);
                if (p.g_im.dynamic) dynamic_params<true>(p.g_im, stage, n, r.row);
                __syncthreads(); /* dynamic parameters visible to the whole block */
                quantize_staged<Store::FMT, false>(p.g_re, stage, n, r.row);
                quantize_staged<Store::FMT, true>(p.g_im, stage, n, r.row);
            }
        }

        /* Also the barrier that keeps the next row's stage writes behind this row's reads. */
        uint32_t f = 0;
        if (__syncthreads_or(r.flags & BK_STATUS_NONFINITE_G)) f |= BK_STATUS_NONFINITE_G;
        if (__syncthreads_or(r.flags & BK_STATUS_NONFINITE_V)) f |= BK_STATUS_NONFINITE_V;
        if (__syncthreads_or(r.flags & BK_STATUS_BIG_V)) f |= BK_STATUS_BIG_V;
        if (tid == 0) status[r.row] = BK_STATUS_WRITTEN | f;
    }
}

} /* namespace bk */

/* One extern "C" entry point per (input, output, arithmetic). Names: bk_solve_{in}_{out}[_f64|_s64];
 * the Rust side builds them with backend::cuda::kernel_name. */
#define BK_SOLVE_KERNEL(NAME, T, S, LOAD, STORE, CHUNK)                                            \
    extern "C" __global__ void __launch_bounds__(BK_MAX_THREADS) NAME(const __grid_constant__ bk_solve_params_t p) \
    {                                                                                               \
        bk::solve_rows<T, S, LOAD, STORE, CHUNK>(p);                                                \
    }

#define BK_SOLVE_KERNELS_FOR_OUTPUT(IN, LOAD, OUT, STORE)                                          \
    BK_SOLVE_KERNEL(bk_solve_##IN##_##OUT, float, float, LOAD, STORE, BK_CHUNK_F32)                 \
    BK_SOLVE_KERNEL(bk_solve_##IN##_##OUT##_s64, float, double, LOAD, STORE, BK_CHUNK_F32)          \
    BK_SOLVE_KERNEL(bk_solve_##IN##_##OUT##_f64, double, double, LOAD, STORE, BK_CHUNK_F64)

#define BK_SOLVE_KERNELS_FOR_INPUT(IN, LOAD)                                                        \
    BK_SOLVE_KERNELS_FOR_OUTPUT(IN, LOAD, c64, bk::StoreC64)                                        \
    BK_SOLVE_KERNELS_FOR_OUTPUT(IN, LOAD, c128, bk::StoreC128)                                      \
    BK_SOLVE_KERNELS_FOR_OUTPUT(IN, LOAD, int8, bk::StoreQ<BK_FMT_INT8>)                            \
    BK_SOLVE_KERNELS_FOR_OUTPUT(IN, LOAD, int4, bk::StoreQ<BK_FMT_INT4>)
