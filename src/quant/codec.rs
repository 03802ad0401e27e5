//! The scalar quantization rules, in one place. The CUDA kernels implement exactly these
//! (`kernels/bk_formats.h`, `bk_quantize`/`bk_dequantize`), so that a CPU and a GPU run on the same
//! codes give the same values bit for bit.

/// Code for `x`: round-half-to-even of x / scale, shifted by the zero point, clamped to
/// [qmin, qmax]. The clamp happens before the shift so that huge |x / scale| cannot overflow.
#[inline(always)]
pub fn quantize(x: f32, scale: f32, zero: i32, qmin: i32, qmax: i32) -> i32 {
    let t = (x / scale).round_ties_even();
    let (lo, hi) = ((qmin - zero) as f32, (qmax - zero) as f32);
    // Compare-and-select, as in the kernel (and without `clamp`'s check of lo ≤ hi, so a
    // row with per-position zero points vectorises). NaN survives the selects and becomes 0,
    // as a cast would make it; inputs are validated before they get here.
    let t = if t < lo { lo } else { t };
    let t = if t > hi { hi } else { t };
    let t = if t.is_nan() { 0.0 } else { t };
    // SAFETY: t is 0 or within [qmin − zero, qmax − zero], integers well inside i32. (A plain
    // `as` saturates, and LLVM turns that into a scalar conversion per value.)
    unsafe { t.to_int_unchecked::<i32>() + zero }
}

/// Value of a code: (q − zero) · scale. The subtraction is exact in integers, so CPU and GPU
/// agree bit for bit (one rounding, in the multiply).
#[inline(always)]
pub fn dequantize(q: i32, scale: f32, zero: i32) -> f32 {
    (q - zero) as f32 * scale
}

/// Signed 4-bit code from its nibble (two's complement).
#[inline(always)]
pub fn nibble_to_i8(nib: u8) -> i8 {
    ((nib << 4) as i8) >> 4
}

/// The code at position `i` of a packed INT4 row: even positions in the low nibble.
#[inline(always)]
pub fn int4_at(row: &[u8], i: usize) -> i8 {
    let b = row[i / 2];
    nibble_to_i8(if i % 2 == 0 { b & 0x0f } else { b >> 4 })
}

/// Packs signed 4-bit codes (each in [−8, 7]) two per byte, low nibble first; an odd tail
/// leaves the high nibble 0.
#[inline(always)]
pub fn pack_int4(codes: &[i8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), codes.len().div_ceil(2));
    let pairs = codes.chunks_exact(2);
    let tail = pairs.remainder();
    for (o, pair) in out.iter_mut().zip(pairs) {
        *o = ((pair[0] as u8) & 0x0f) | (((pair[1] as u8) & 0x0f) << 4);
    }
    if let (Some(&c), Some(o)) = (tail.first(), out.last_mut()) {
        *o = (c as u8) & 0x0f;
    }
}

/// Inverse of [`pack_int4`] for a row of `n` codes.
pub fn unpack_int4(packed: &[u8], n: usize, out: &mut [i8]) {
    debug_assert_eq!(out.len(), n);
    for (i, o) in out.iter_mut().enumerate() {
        *o = int4_at(packed, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(quantize(0.5, 1.0, 0, -127, 127), 0);
        assert_eq!(quantize(1.5, 1.0, 0, -127, 127), 2);
        assert_eq!(quantize(2.5, 1.0, 0, -127, 127), 2);
        assert_eq!(quantize(-2.5, 1.0, 0, -127, 127), -2);
        assert_eq!(quantize(-3.5, 1.0, 0, -127, 127), -4);
    }

    #[test]
    fn clamps_to_code_range_even_for_huge_ratios() {
        assert_eq!(quantize(1e30, 1e-30, 0, -127, 127), 127);
        assert_eq!(quantize(-1e30, 1e-30, 3, -8, 7), -8);
        assert_eq!(quantize(10.0, 1.0, 5, -128, 127), 15);
    }

    #[test]
    fn int4_pack_round_trip_with_odd_length() {
        let codes: Vec<i8> = (-8..=7).chain([3, -1, -8]).collect();
        let mut packed = vec![0u8; codes.len().div_ceil(2)];
        pack_int4(&codes, &mut packed);
        let mut back = vec![0i8; codes.len()];
        unpack_int4(&packed, codes.len(), &mut back);
        assert_eq!(codes, back);
        assert_eq!(packed.last().unwrap() >> 4, 0, "odd tail pads with 0");
    }
}
