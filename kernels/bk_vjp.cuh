/*
 * bk_vjp.cuh — the backward pass (vector-Jacobian product) of the BK core on the GPU.
 *
 * Math (src/grad/mod.rs): with lambda_i = conj(gbar_i),
 *   lD_i = -lambda_i G_i^2,
 *   lA_i = lD_i + lA_{i+1} k_i / alpha_i^2       (i = n-1 .. 0, lA_n = 0),
 *   lB_i = lD_i + lB_{i-1} k_{i-1} / beta_i^2    (i = 0 .. n-1, lB_{-1} = 0),
 *   dv_i = Re(lA_i + lB_i - lD_i),  dk_i = -Re(lA_{i+1} / alpha_i + lB_i / beta_{i+1}),
 *   dz = -conj(sum_i (lA_i + lB_i - lD_i)),
 * with the forward pivots alpha and backward pivots beta of the solve. These are the adjoints of
 * the pivot recursions: only ratios of neighbouring pivots appear, so nothing overflows at any n.
 *
 * Parallel form: one thread per row (rows are independent), three sequential sweeps exactly as
 * the CPU backend's (src/backend/cpu/vjp.rs), operation for operation: the same roundings in the
 * same order, with explicitly rounded intrinsics so that nvcc cannot contract differently.
 *   1. forward: d_i (potentials loaded and dequantized once), alpha, keeping 1/alpha_{i-1} at i;
 *   2. backward: beta (kept as 1/beta), G, lD and lA;
 *   3. forward: lB, then dv, dk and the row's sum of lambda for dz.
 * Scratch is position-major ([i][launch row]), so a warp's 32 rows touch 32 consecutive values at
 * every step (coalesced). The per-row gradients go to f64 arrays that bk_vjp_reduce turns into the
 * caller's dL/dv and sums over rows in a fixed order: no atomics, the same bits on every run.
 *
 * The λ recursions are affine in lambda, so a later version can chunk and scan them across the
 * threads of a block like the forward's pivots; rows are the parallelism here, which suits the
 * batches of training (hundreds of rows and more).
 */
#pragma once
#include "bk_recursion.cuh"
#include "bk_vjp.h"

namespace bkv {

/* The solve kernels' explicitly rounded arithmetic, complex type and load path. */
using bk::add;
using bk::sub;
using bk::mul;
using bk::dvd;
using bk::fma_;
using bk::norm2;
using bk::cmul;
using bk::cadd;
using bk::cscale;
using bk::Cx;
using bk::cx;

/* x^2 as the CPU forms it: (fma(re, re, -im im), (re + re) im). */
template <class T> __device__ __forceinline__ Cx<T> csq(Cx<T> x)
{
    return cx<T>(fma_(x.re, x.re, -mul(x.im, x.im)), mul(add(x.re, x.re), x.im));
}

/* conj(gbar_i) of chunk row `row` in the compute type (f64 -> f32 rounds to nearest). */
template <class T> __device__ __forceinline__ Cx<T> load_lambda(const bk_vjp_params_t &p, size_t row, uint32_t i)
{
    size_t at = row * p.n + i;
    if (p.gbar_format == BK_FMT_C64) {
        const float *g = (const float *)p.g_bar + 2 * at;
        return cx<T>((T)__ldg(g), (T)(-__ldg(g + 1)));
    }
    const double *g = (const double *)p.g_bar + 2 * at;
    return cx<T>((T)__ldg(g), (T)(-__ldg(g + 1)));
}

/* The launch's scratch arrays for compute type T: BK_VJP_SCRATCH_VALUES values per position and
 * launch row, position-major. */
template <class T> struct Scratch {
    T *d;          /* d_i (real part; the imaginary part is d_im for every i) */
    Cx<T> *ia;     /* at i >= 1: 1/alpha_{i-1} */
    Cx<T> *ib;     /* 1/beta_i */
    Cx<T> *ld;     /* lD_i */
    Cx<T> *la;     /* lA_i */
    size_t rows;   /* launch rows: the stride between positions */

    __device__ __forceinline__ Scratch(const bk_vjp_params_t &p)
    {
        size_t len = (size_t)p.n * p.rows;
        Cx<T> *base = (Cx<T> *)p.scratch;
        ia = base;
        ib = base + len;
        ld = base + 2 * len;
        la = base + 3 * len;
        d = (T *)(base + 4 * len);
        rows = p.rows;
    }
};

/* The three sweeps of one row (launch row j, chunk row `row`); returns its status flags. The
 * arithmetic is src/backend/cpu/vjp.rs's `sweeps`, one lane. */
template <class T> __device__ __forceinline__ uint32_t vjp_row(const bk_vjp_params_t &p, const Scratch<T> &s, uint32_t j, size_t row)
{
    const uint32_t n = p.n;
    const T *c = (const T *)p.c, *c_lo = (const T *)p.c_lo, *k = (const T *)p.k;
    const T di = (T)p.d_im;
    const T one = T(1), zero = T(0);
    uint32_t flags = 0;
    auto at = [&](uint32_t i) { return (size_t)i * s.rows + j; };

    /* 1. Forward: d_i, and alpha_{i+1} = d_{i+1} - k_i / alpha_i keeping 1/alpha_i at i + 1. */
    T ar = zero, ai = di;
    for (uint32_t i = 0; i < n; i++) {
        T v = bk::load_potential<T>(p.in_format, p.v, p.v_q, n, row, i);
        if (!isfinite(v)) {
            if (p.nan_policy == BK_NAN_ZERO) v = zero;
            else flags |= BK_STATUS_NONFINITE_V;
        }
        if ((double)fabs(v) > p.v_limit) flags |= BK_STATUS_BIG_V;
        T d = add(add(__ldg(c + i), v), __ldg(c_lo + i));
        s.d[at(i)] = d;
        if (i == 0) {
            ar = d;
        } else {
            T inv = dvd(one, norm2(ar, ai));
            T xr = mul(ar, inv), xi = -mul(ai, inv);
            s.ia[at(i)] = cx<T>(xr, xi);
            T ki = __ldg(k + i - 1);
            ar = sub(d, mul(ki, xr));
            ai = sub(di, mul(ki, xi));
        }
    }

    /* 2. Backward: beta_i = d_i - k_i/beta_{i+1}, G_i = 1/(d_i - k_{i-1}/alpha_{i-1} - k_i/beta_{i+1}),
     * lD_i = -lambda_i G_i^2, lA_i = lD_i + lA_{i+1} k_i (1/alpha_i)^2. */
    Cx<T> nb = cx<T>(zero, zero), pa_next = cx<T>(zero, zero), P = cx<T>(zero, zero);
    for (uint32_t i = n; i-- > 0;) {
        T d = s.d[at(i)];
        T kp = i > 0 ? __ldg(k + i - 1) : zero, kn = i + 1 < n ? __ldg(k + i) : zero;
        Cx<T> pa = i > 0 ? s.ia[at(i)] : cx<T>(zero, zero); /* 1/alpha_{i-1} */
        Cx<T> na = pa_next;                                   /* 1/alpha_i (0 past the end) */
        pa_next = pa;
        Cx<T> l = load_lambda<T>(p, row, i);
        T xr = mul(kn, nb.re), xi = mul(kn, nb.im);
        T yr = mul(kp, pa.re), yi = mul(kp, pa.im);
        T br = sub(d, xr), bi = sub(di, xi);
        T den_r = sub(sub(d, yr), xr), den_i = sub(sub(di, yi), xi);
        T inv = dvd(one, norm2(den_r, den_i));
        Cx<T> g2 = csq(cx<T>(mul(den_r, inv), -mul(den_i, inv)));
        Cx<T> ld = cmul(l, g2);
        ld = cx<T>(-ld.re, -ld.im);
        P = cadd(ld, cmul(P, cscale(csq(na), kn)));
        T inv_b = dvd(one, norm2(br, bi));
        nb = cx<T>(mul(br, inv_b), -mul(bi, inv_b));
        s.ld[at(i)] = ld;
        s.la[at(i)] = P;
        s.ib[at(i)] = nb;
    }

    /* 3. Forward: lB_i = lD_i + lB_{i-1} k_{i-1} (1/beta_i)^2; dk_{i-1} = -Re(lA_i/alpha_{i-1} +
     * lB_{i-1}/beta_i); dv_i = Re(lA_i + lB_i - lD_i); the row's sum of lambda in f64. */
    double *dv_row = (double *)p.dv_row, *dk_row = (double *)p.dk_row;
    Cx<T> Q = cx<T>(zero, zero);
    double zr = 0.0, zi = 0.0;
    bool bad = false;
    for (uint32_t i = 0; i < n; i++) {
        Cx<T> ld = s.ld[at(i)], la = s.la[at(i)];
        if (i > 0) {
            T kp = __ldg(k + i - 1);
            Cx<T> a = s.ia[at(i)], b = s.ib[at(i)];
            T dk = -add(cmul(la, a).re, cmul(Q, b).re);
            dk_row[(size_t)(i - 1) * p.stride + row] = (double)dk;
            Q = cadd(ld, cmul(Q, cscale(csq(b), kp)));
        } else {
            /* k_{-1} = 0: lB_0 = lD_0 (the CPU adds lB_{-1} * 0 = 0, which changes nothing). */
            Q = ld;
        }
        T tr = sub(add(la.re, Q.re), ld.re), ti = sub(add(la.im, Q.im), ld.im);
        dv_row[(size_t)i * p.stride + row] = (double)tr;
        zr += (double)tr;
        zi += (double)ti;
        bad |= !isfinite(tr);
    }
    double2 *dz_row = (double2 *)p.dz_row;
    dz_row[row] = make_double2(zr, zi);
    return flags | (bad ? BK_STATUS_NONFINITE_G : 0u);
}

template <class T> __device__ __forceinline__ void vjp_rows(const bk_vjp_params_t &p)
{
    uint32_t *status = (uint32_t *)p.status;
    const uint32_t *row_index = (const uint32_t *)p.row_index;
    const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x, step = gridDim.x * blockDim.x;
    bool ok = p.compute == bk::ComputeFmt<T>::FMT && p.threads == blockDim.x && p.n > 0 && p.rows <= p.stride
              && (p.gbar_format == BK_FMT_C64 || p.gbar_format == BK_FMT_C128)
              && (p.in_format == BK_FMT_F32 || p.in_format == BK_FMT_F64
                  || ((p.in_format == BK_FMT_INT8 || p.in_format == BK_FMT_INT4) && p.v_q.format == p.in_format))
              && (p.n == 1 || p.k != 0);
    if (!ok) {
        for (uint32_t j = first; j < p.rows; j += step)
            status[row_index ? row_index[j] : j] = BK_STATUS_WRITTEN | BK_STATUS_BAD_LAUNCH;
        return;
    }
    const Scratch<T> s(p);
    for (uint32_t j = first; j < p.rows; j += step) {
        size_t row = row_index ? (size_t)row_index[j] : (size_t)j;
        status[row] = BK_STATUS_WRITTEN | vjp_row<T>(p, s, j, row);
    }
}

/* dL/dv in the caller's format, and per block of rows the sums over rows of dL/dv and dL/dk, in
 * row order (f64). Thread (i, block): position i, rows block * block_rows ... */
__device__ __forceinline__ void reduce(const bk_vjp_reduce_params_t &p)
{
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x, n = p.n;
    if (i >= n || p.block_rows == 0) return;
    const size_t r0 = (size_t)blockIdx.y * p.block_rows;
    const size_t r1 = r0 + p.block_rows < p.stride ? r0 + p.block_rows : p.stride;
    const double *dv_row = (const double *)p.dv_row + (size_t)i * p.stride;
    double sd = 0.0;
    for (size_t r = r0; r < r1; r++) {
        double x = dv_row[r];
        sd += x;
        if (p.dv_format == BK_FMT_F64) ((double *)p.dv)[r * n + i] = x;
        else ((float *)p.dv)[r * n + i] = (float)x;
    }
    double *part = (double *)p.part + (size_t)blockIdx.y * (2 * (size_t)n - 1);
    part[i] = sd;
    if (i + 1 < n) {
        const double *dk_row = (const double *)p.dk_row + (size_t)i * p.stride;
        double sk = 0.0;
        for (size_t r = r0; r < r1; r++) sk += dk_row[r];
        part[n + i] = sk;
    }
}

} /* namespace bkv */

/* Entry points; names built by backend::cuda::vjp_kernel_name. */
#define BK_VJP_KERNEL(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(BK_VJP_THREADS) NAME(const __grid_constant__ bk_vjp_params_t p) \
    {                                                                                               \
        bkv::vjp_rows<T>(p);                                                                        \
    }

#define BK_VJP_REDUCE_KERNEL(NAME)                                                                  \
    extern "C" __global__ void __launch_bounds__(BK_VJP_THREADS) NAME(const __grid_constant__ bk_vjp_reduce_params_t p) \
    {                                                                                               \
        bkv::reduce(p);                                                                             \
    }
