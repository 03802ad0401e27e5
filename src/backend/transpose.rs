//! AVX2 transposes between row-major batches and lane-major tiles, for the f32 hot path.
//! Scalar strided copies cost more than the recursion itself (two scattered 4-byte accesses per
//! element); in registers, 8 rows × 8 positions load with 8 loads, 24 shuffles and 8 stores, and
//! 8 rows × 4 complex positions store with 8 loads, 24 shuffles and 8 stores.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the AVX2 transposes can run here.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks for the cache lines of `x` (a prefetch: never faults, changes nothing).
#[inline(always)]
pub(crate) fn prefetch<E>(x: &[E]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..std::mem::size_of_val(x)).step_by(64) {
        // SAFETY: SSE is part of x86-64; the address lies inside `x`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x.as_ptr() as *const i8).add(off)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Prefetch distance of the transposed load, in f32 values (8 cache lines: the block after
/// next, so that a block's lines arrive while two blocks of recursion run; one block ahead
/// measured slower on a 2-core EPYC VM with the input in DRAM).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 128;

/// v[ii][l] = rows[l][i0 + ii] for ii < v.len() (a multiple of 8) and l < L (a multiple of 8).
/// Eight rows at a time, each read front to back, so the hardware sees eight long streams.
///
/// # Safety
/// AVX2 must be available; every `rows[l]` must hold positions i0..i0 + v.len().
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn load_block_f32<const L: usize>(rows: &[&[f32]; L], i0: usize, v: &mut [[f32; L]]) {
    debug_assert!(L % 8 == 0 && v.len() % 8 == 0);
    for q in 0..L / 8 {
        let src: [*const f32; 8] = std::array::from_fn(|j| rows[q * 8 + j].as_ptr().add(i0));
        for sb in (0..v.len()).step_by(8) {
            // Rows are short streams (N·4 bytes), too short for the hardware prefetcher to
            // lock on to: ask for the lines a few blocks ahead. A prefetch never faults.
            if sb % 16 == 0 {
                for p in src {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(sb + PREFETCH_AHEAD) as *const i8);
                }
            }
            // SAFETY (caller): each row holds positions i0..i0 + v.len().
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src[j].add(sb)));
            for (ii, x) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(v[sb + ii].as_mut_ptr().add(q * 8), x);
            }
        }
    }
}

/// out[j·stride + i] = g[i][8q + j] for i < g.len() (a multiple of 8) and j < 8: eight lanes
/// back to eight rows, 8 × 8 at a time.
///
/// # Safety
/// AVX2 must be available; L must be a multiple of 8 with 8q + 8 ≤ L; `out` must hold 8 rows of
/// `stride` ≥ g.len() values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn rows_from_lanes_f32<const L: usize>(g: &[[f32; L]], q: usize, out: &mut [f32], stride: usize) {
    debug_assert!(L % 8 == 0 && q * 8 + 8 <= L && g.len() % 8 == 0 && g.len() <= stride && out.len() >= 7 * stride + g.len());
    let dst = out.as_mut_ptr();
    for sb in (0..g.len()).step_by(8) {
        // SAFETY (caller): positions sb..sb + 8 exist with lanes 8q..8q + 8; row j of `out`
        // holds positions sb..sb + 8.
        let r: [__m256; 8] = std::array::from_fn(|ii| _mm256_loadu_ps(g[sb + ii].as_ptr().add(q * 8)));
        for (j, x) in transpose8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * stride + sb), x);
        }
    }
}

/// Four positions of eight lanes, re and im, to one register of four complex values per lane
/// (in lane order): the (re, im) pairs form first (`unpack*_ps` gives lanes 0, 1, 4, 5 and
/// 2, 3, 6, 7), then two 4 × 4 transposes of 64-bit pairs. 24 shuffles per 32 complex values,
/// against 40 for two 8 × 8 transposes followed by interleaving, and few enough registers
/// that nothing spills.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn complex4x8(re: [__m256; 4], im: [__m256; 4]) -> [__m256; 8] {
    #[inline(always)]
    unsafe fn t4(x: [__m256d; 4]) -> [__m256d; 4] {
        let t0 = _mm256_unpacklo_pd(x[0], x[1]);
        let t1 = _mm256_unpackhi_pd(x[0], x[1]);
        let t2 = _mm256_unpacklo_pd(x[2], x[3]);
        let t3 = _mm256_unpackhi_pd(x[2], x[3]);
        [
            _mm256_permute2f128_pd::<0x20>(t0, t2),
            _mm256_permute2f128_pd::<0x20>(t1, t3),
            _mm256_permute2f128_pd::<0x31>(t0, t2),
            _mm256_permute2f128_pd::<0x31>(t1, t3),
        ]
    }
    let a = t4([
        _mm256_castps_pd(_mm256_unpacklo_ps(re[0], im[0])),
        _mm256_castps_pd(_mm256_unpacklo_ps(re[1], im[1])),
        _mm256_castps_pd(_mm256_unpacklo_ps(re[2], im[2])),
        _mm256_castps_pd(_mm256_unpacklo_ps(re[3], im[3])),
    ]);
    let b = t4([
        _mm256_castps_pd(_mm256_unpackhi_ps(re[0], im[0])),
        _mm256_castps_pd(_mm256_unpackhi_ps(re[1], im[1])),
        _mm256_castps_pd(_mm256_unpackhi_ps(re[2], im[2])),
        _mm256_castps_pd(_mm256_unpackhi_ps(re[3], im[3])),
    ]);
    // Written out: a closure here may stay out of line, and its intrinsics become calls.
    [
        _mm256_castpd_ps(a[0]),
        _mm256_castpd_ps(a[1]),
        _mm256_castpd_ps(b[0]),
        _mm256_castpd_ps(b[1]),
        _mm256_castpd_ps(a[2]),
        _mm256_castpd_ps(a[3]),
        _mm256_castpd_ps(b[2]),
        _mm256_castpd_ps(b[3]),
    ]
}

/// out[l·stride + i] = (re[i][l], im[i][l]) for i < re.len() (a multiple of 4) and l < live:
/// four positions of eight rows at a time, the eight rows written front to back.
///
/// # Safety
/// AVX2 must be available; 1 ≤ live ≤ L; `im.len() ≥ re.len()`; `out` must hold rows 0..live
/// of `stride` ≥ re.len() complex values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn store_block_c64<const L: usize>(re: &[[f32; L]], im: &[[f32; L]], live: usize, out: &mut [num_complex::Complex32], stride: usize) {
    let len = re.len();
    debug_assert!(L % 8 == 0 && len % 4 == 0 && im.len() >= len && (1..=L).contains(&live) && len <= stride);
    debug_assert!(out.len() >= (live - 1) * stride + len);
    let (re, im) = (re.as_ptr() as *const f32, im.as_ptr() as *const f32);
    for q in 0..live.div_ceil(8) {
        let lanes = (live - q * 8).min(8);
        let dst = (out.as_mut_ptr() as *mut f32).add(2 * q * 8 * stride);
        for p0 in (0..len).step_by(4) {
            // SAFETY (caller): positions p0..p0 + 4 ≤ len exist in re and im (L values each);
            // rows 8q + j < live of `out` hold positions 0..len.
            let (r, m) = (re.add(p0 * L + q * 8), im.add(p0 * L + q * 8));
            let x = [_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(L)), _mm256_loadu_ps(r.add(2 * L)), _mm256_loadu_ps(r.add(3 * L))];
            let y = [_mm256_loadu_ps(m), _mm256_loadu_ps(m.add(L)), _mm256_loadu_ps(m.add(2 * L)), _mm256_loadu_ps(m.add(3 * L))];
            for (j, c) in complex4x8(x, y).into_iter().enumerate().take(lanes) {
                _mm256_storeu_ps(dst.add(2 * (j * stride + p0)), c);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use num_complex::Complex32;

    #[test]
    fn block_transposes_match_scalar() {
        if !available() {
            eprintln!("skipped: no AVX2");
            return;
        }
        const L: usize = 16;
        let n = 24;
        let data: Vec<Vec<f32>> = (0..L).map(|l| (0..n).map(|i| (l * 1000 + i) as f32).collect()).collect();
        let rows: [&[f32]; L] = std::array::from_fn(|l| data[l].as_slice());
        let mut tile = vec![[0f32; L]; n];
        for i0 in (0..n).step_by(8) {
            // SAFETY: AVX2 checked; rows hold n ≥ i0 + 8 values; the block has 8 positions.
            unsafe { load_block_f32(&rows, i0, &mut tile[i0..i0 + 8]) };
        }
        for i in 0..n {
            for l in 0..L {
                assert_eq!(tile[i][l], data[l][i]);
            }
        }
        let im: Vec<[f32; L]> = tile.iter().map(|x| x.map(|v| -v)).collect();
        // Every row alignment (offsets of 8 bytes), rows of 24 and 27 positions (the last three
        // left to the caller), all lanes or some.
        for offset in 0..8 {
            for stride in [24, 27] {
                let len = stride / 4 * 4;
                for live in [1, 9, 16] {
                    let sentinel = Complex32::new(f32::NAN, f32::NAN);
                    let mut buf = vec![sentinel; offset + live * stride + 8];
                    let out = &mut buf[offset..offset + live * stride];
                    // SAFETY: AVX2 checked; re/im hold len (a multiple of 4) positions; out
                    // holds live rows of stride ≥ len values.
                    unsafe { store_block_c64(&tile[..len], &im[..len], live, out, stride) };
                    let ctx = format!("offset {offset} stride {stride} live {live}");
                    for l in 0..live {
                        for i in 0..stride {
                            let want = if i < len { Complex32::new(data[l][i], -data[l][i]) } else { sentinel };
                            let got = out[l * stride + i];
                            assert!(got == want || (i >= len && got.re.is_nan()), "{ctx}: l{l} i{i} {got} vs {want}");
                        }
                    }
                    assert!(buf[offset + live * stride..].iter().all(|x| x.re.is_nan()), "{ctx}: wrote past the end");
                }
            }
        }
    }
}
