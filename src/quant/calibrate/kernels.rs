//! The inner loops of the searches: static round trips and errors over many values, with the
//! scalar rule of [`crate::quant::codec`] (bit for bit), compiled for AVX2 where the CPU has it so that
//! rounding is one instruction instead of a libm call.


/// deq(q(v)) of [`crate::quant::codec`] without the integer detour: for finite v the clamped,
/// rounded ratio is an integer that both casts keep exactly, so this is the same value bit for
/// bit (the test below checks it), and it vectorises. Adding 0 turns a −0 (from a small negative
/// v) into the +0 the integer path gives.
#[inline(always)]
fn rt(v: f32, scale: f32, lo: f32, hi: f32) -> f32 {
    (v / scale).round_ties_even().clamp(lo, hi) * scale + 0.0
}

/// The clamp bounds of [`rt`] for a zero point and code range.
#[inline(always)]
fn bounds(zero: i32, qmin: i32, qmax: i32) -> (f32, f32) {
    ((qmin - zero) as f32, (qmax - zero) as f32)
}

/// out[i] = deq(q(x[i])) with (scale, zero) over the code range [qmin, qmax].
#[inline(always)]
fn round_trip_body(x: &[f32], out: &mut [f32], scale: f32, zero: i32, qmin: i32, qmax: i32) {
    let (lo, hi) = bounds(zero, qmin, qmax);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = rt(v, scale, lo, hi);
    }
}

/// One row's round trip with per-group parameters (`zero` absent: symmetric).
#[inline(always)]
fn round_trip_row_body(x: &[f32], out: &mut [f32], gs: usize, scale: &[f32], zero: Option<&[i16]>, qmin: i32, qmax: i32) {
    let zero_at = |j: usize| zero.map_or(0, |z| z[j] as i32);
    if gs == 1 {
        // Per position: one parameter per value, a straight vectorisable loop.
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            let (lo, hi) = bounds(zero_at(i), qmin, qmax);
            *o = rt(v, scale[i], lo, hi);
        }
    } else {
        for (j, (o, xs)) in out.chunks_mut(gs).zip(x.chunks(gs)).enumerate() {
            round_trip_body(xs, o, scale[j], zero_at(j), qmin, qmax);
        }
    }
}

/// Σ |deq(q(x[i])) − y[i]|.
#[inline(always)]
fn l1_body(x: &[f32], y: &[f32], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    const LANES: usize = 8;
    let (lo, hi) = bounds(zero, qmin, qmax);
    let err = |v: f32, r: f32| (rt(v, scale, lo, hi) - r).abs();
    // Eight running sums, so that the loop vectorises (a single float sum cannot be reordered);
    // flushed to f64 every few hundred values, far below the differences the searches compare.
    let mut total = 0f64;
    for (xs, ys) in x.chunks(512).zip(y.chunks(512)) {
        let mut acc = [0f32; LANES];
        let (xv, yv) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
        let (xt, yt) = (xv.remainder(), yv.remainder());
        for (a, b) in xv.zip(yv) {
            for l in 0..LANES {
                acc[l] += err(a[l], b[l]);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
        total += xt.iter().zip(yt).map(|(&a, &b)| err(a, b) as f64).sum::<f64>();
    }
    total
}

/// Σ c · (deq(q(x)) − x)² over (x, c) pairs (a histogram's centres and counts).
#[inline(always)]
fn weighted_sq_body(bins: &[(f32, f64)], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    let (lo, hi) = bounds(zero, qmin, qmax);
    bins.iter()
        .map(|&(x, c)| {
            let e = (rt(x, scale, lo, hi) - x) as f64;
            c * e * e
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sq_avx2(bins: &[(f32, f64)], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    weighted_sq_body(bins, scale, zero, qmin, qmax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_trip_avx2(x: &[f32], out: &mut [f32], scale: f32, zero: i32, qmin: i32, qmax: i32) {
    round_trip_body(x, out, scale, zero, qmin, qmax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_trip_row_avx2(x: &[f32], out: &mut [f32], gs: usize, scale: &[f32], zero: Option<&[i16]>, qmin: i32, qmax: i32) {
    round_trip_row_body(x, out, gs, scale, zero, qmin, qmax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn l1_avx2(x: &[f32], y: &[f32], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    l1_body(x, y, scale, zero, qmin, qmax)
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn round_trip(x: &[f32], out: &mut [f32], scale: f32, zero: i32, qmin: i32, qmax: i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `round_trip_avx2`.
        return unsafe { round_trip_avx2(x, out, scale, zero, qmin, qmax) };
    }
    round_trip_body(x, out, scale, zero, qmin, qmax)
}

/// Round trip of one row whose groups of `gs` positions have parameters `scale[j]`, `zero[j]`.
pub(crate) fn round_trip_row(x: &[f32], out: &mut [f32], gs: usize, scale: &[f32], zero: Option<&[i16]>, qmin: i32, qmax: i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { round_trip_row_avx2(x, out, gs, scale, zero, qmin, qmax) };
    }
    round_trip_row_body(x, out, gs, scale, zero, qmin, qmax)
}

pub(crate) fn weighted_sq(bins: &[(f32, f64)], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { weighted_sq_avx2(bins, scale, zero, qmin, qmax) };
    }
    weighted_sq_body(bins, scale, zero, qmin, qmax)
}

pub(crate) fn l1(x: &[f32], y: &[f32], scale: f32, zero: i32, qmin: i32, qmax: i32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { l1_avx2(x, y, scale, zero, qmin, qmax) };
    }
    l1_body(x, y, scale, zero, qmin, qmax)
}

#[cfg(test)]
mod tests {
    use super::super::super::codec;
    use super::*;

    #[test]
    fn fast_paths_match_the_scalar_rule_bit_for_bit() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v * 0.999).collect();
        let (s, z, qmin, qmax) = (0.0731f32, 3, -8, 7);
        let mut out = vec![0f32; x.len()];
        round_trip(&x, &mut out, s, z, qmin, qmax);
        for (o, &v) in out.iter().zip(&x) {
            assert_eq!(o.to_bits(), codec::dequantize(codec::quantize(v, s, z, qmin, qmax), s, z).to_bits());
        }
        let mut row = vec![0f32; x.len()];
        let scales: Vec<f32> = (0..x.len()).map(|i| 0.01 + (i % 13) as f32 * 0.02).collect();
        let zeros: Vec<i16> = (0..x.len()).map(|i| (i % 5) as i16 - 2).collect();
        for gs in [1, 7] {
            let g = x.len().div_ceil(gs);
            round_trip_row(&x, &mut row, gs, &scales[..g], Some(&zeros[..g]), qmin, qmax);
            for (i, (o, &v)) in row.iter().zip(&x).enumerate() {
                let (s, z) = (scales[i / gs], zeros[i / gs] as i32);
                assert_eq!(o.to_bits(), codec::dequantize(codec::quantize(v, s, z, qmin, qmax), s, z).to_bits());
            }
        }
        let exact: f64 = out.iter().zip(&y).map(|(a, b)| (a - b).abs() as f64).sum();
        assert!((l1(&x, &y, s, z, qmin, qmax) - exact).abs() <= 1e-5 * exact);
    }
}
