//! AVX2 8×8 transposes between row-major batches and lane-major tiles, for the f32 hot path.
//! Scalar strided copies cost more than the recursion itself (two scattered 4-byte accesses per
//! element); in registers, 8 rows × 8 positions move with 8 loads, 24 shuffles and 8 stores.

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

/// out[l·stride + i0 + ii] = (re[ii][l], im[ii][l]) for ii < re.len() (a multiple of 8) and
/// l < live; eight rows at a time, each written front to back. With `stream`, 32-byte-aligned
/// destinations take non-temporal stores, which skip the read-for-ownership of output lines
/// that will not be read back soon (the caller fences once the tile is done).
///
/// # Safety
/// AVX2 must be available; 1 ≤ live ≤ L; `out` must hold rows 0..live of `stride` complex
/// values with i0 + re.len() ≤ stride; `im.len() ≥ re.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn store_block_c64<const L: usize>(
    re: &[[f32; L]],
    im: &[[f32; L]],
    live: usize,
    out: &mut [num_complex::Complex32],
    stride: usize,
    i0: usize,
    stream: bool,
) {
    let len = re.len();
    debug_assert!(len % 8 == 0 && im.len() >= len && live >= 1 && live <= L && i0 + len <= stride);
    debug_assert!(out.len() >= (live - 1) * stride + i0 + len);
    let base = out.as_mut_ptr() as *mut f32;
    for q in 0..live.div_ceil(8) {
      for sb in (0..len).step_by(8) {
        let r: [__m256; 8] = std::array::from_fn(|ii| _mm256_loadu_ps(re[sb + ii].as_ptr().add(q * 8)));
        let m: [__m256; 8] = std::array::from_fn(|ii| _mm256_loadu_ps(im[sb + ii].as_ptr().add(q * 8)));
        let (r, m) = (transpose8(r), transpose8(m));
        for j in 0..8.min(live - q * 8) {
            let l = q * 8 + j;
            let lo = _mm256_unpacklo_ps(r[j], m[j]);
            let hi = _mm256_unpackhi_ps(r[j], m[j]);
            let a = _mm256_permute2f128_ps::<0x20>(lo, hi);
            let b = _mm256_permute2f128_ps::<0x31>(lo, hi);
            // SAFETY (caller): row l < live holds positions i0..i0 + len.
            let dst = base.add(2 * (l * stride + i0 + sb));
            if stream && (dst as usize) % 32 == 0 {
                _mm256_stream_ps(dst, a);
                _mm256_stream_ps(dst.add(8), b);
            } else {
                _mm256_storeu_ps(dst, a);
                _mm256_storeu_ps(dst.add(8), b);
            }
        }
      }
    }
}

/// Orders this thread's non-temporal stores before whatever it does next (such as handing the
/// output to another thread).
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: SSE is part of x86-64; sfence has no other requirement.
        unsafe { _mm_sfence() };
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
        // left to the caller), in one call and block by block, streamed or not.
        for offset in 0..8 {
            for stride in [24, 27] {
                let len = stride / 8 * 8;
                for live in [1, 9, 16] {
                    for stream in [false, true] {
                        for whole in [false, true] {
                            let sentinel = Complex32::new(f32::NAN, f32::NAN);
                            let mut buf = vec![sentinel; offset + live * stride + 8];
                            let out = &mut buf[offset..offset + live * stride];
                            let blocks: Vec<(usize, usize)> = if whole { vec![(0, len)] } else { (0..len).step_by(8).map(|i| (i, 8)).collect() };
                            for (i0, bl) in blocks {
                                // SAFETY: AVX2 checked; out holds live rows of `stride` values
                                // covering positions i0..i0 + bl; bl is a multiple of 8.
                                unsafe { store_block_c64(&tile[i0..i0 + bl], &im[i0..i0 + bl], live, out, stride, i0, stream) };
                            }
                            store_fence();
                            let ctx = format!("offset {offset} stride {stride} live {live} stream {stream} whole {whole}");
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
    }
}
