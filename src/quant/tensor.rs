//! Quantized tensors: codes laid out exactly as the kernels read them, plus their parameters.

use super::{codec, dynamic_params_row, AffineParams, Bits, QuantSpec, TensorQuant};
use crate::error::{BkError, Result};
use num_complex::Complex32;

/// A quantized real (rows, n) tensor. Codes are row-major; each row starts on a byte
/// (`spec.bits.row_bytes(n)` bytes per row).
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    spec: QuantSpec,
    rows: usize,
    n: usize,
    codes: Vec<u8>,
    params: AffineParams,
}

impl QTensor {
    /// Assembles a tensor from stored parts, checking every length and parameter.
    pub fn from_parts(
        tensor: &str,
        spec: QuantSpec,
        rows: usize,
        n: usize,
        codes: Vec<u8>,
        params: AffineParams,
    ) -> Result<Self> {
        spec.validate(tensor)?;
        let want = rows * spec.bits.row_bytes(n);
        if codes.len() != want {
            return Err(BkError::shape(
                &format!("{tensor}.codes"),
                format!("{want} bytes for ({rows}, {n}) {}", spec.label()),
                format!("{} bytes", codes.len()),
            ));
        }
        params.validate(tensor, &spec, rows, n)?;
        Ok(QTensor { spec, rows, n, codes, params })
    }

    /// Quantizes a row-major (rows, n) f32 tensor with static parameters or, for a dynamic
    /// spec, with parameters computed from each row.
    pub fn quantize(tensor: &str, q: &TensorQuant, x: &[f32], rows: usize, n: usize) -> Result<Self> {
        q.validate(tensor, n)?;
        if x.len() != rows * n {
            return Err(BkError::shape(tensor, format!("({rows}, {n})"), format!("{} values", x.len())));
        }
        let spec = q.spec;
        let params = match &q.params {
            Some(p) => p.clone(),
            None => {
                let groups = spec.groups(n);
                let mut scale = vec![0f32; rows * groups];
                let mut zero = (!spec.symmetric).then(|| vec![0i16; rows * groups]);
                for r in 0..rows {
                    let zr = zero.as_mut().map(|z| &mut z[r * groups..(r + 1) * groups]);
                    dynamic_params_row(&spec, &x[r * n..(r + 1) * n], &mut scale[r * groups..(r + 1) * groups], zr);
                }
                AffineParams { scale, zero }
            }
        };
        let rb = spec.bits.row_bytes(n);
        let mut codes = vec![0u8; rows * rb];
        for r in 0..rows {
            let (scale, zero) = row_params(&spec, &params, r, n);
            quantize_row(&spec, scale, zero, &x[r * n..(r + 1) * n], &mut codes[r * rb..(r + 1) * rb]);
        }
        Ok(QTensor { spec, rows, n, codes, params })
    }

    /// A tensor of zero codes in format `q` (static parameters copied, dynamic ones zeroed),
    /// to be written by a backend.
    pub fn zeroed(q: &TensorQuant, rows: usize, n: usize) -> Self {
        let spec = q.spec;
        let params = q.params.clone().unwrap_or_else(|| {
            let len = spec.param_count(rows, n);
            AffineParams { scale: vec![1.0; len], zero: (!spec.symmetric).then(|| vec![0; len]) }
        });
        QTensor { spec, rows, n, codes: vec![0; rows * spec.bits.row_bytes(n)], params }
    }

    /// Format and, when static, parameters: what this tensor was quantized with.
    pub fn quant(&self) -> TensorQuant {
        TensorQuant { spec: self.spec, params: (!self.spec.dynamic).then(|| self.params.clone()) }
    }

    /// Codes and parameters for a backend's store path to overwrite.
    pub(crate) fn parts_mut(&mut self) -> (QuantSpec, &mut [u8], &mut AffineParams) {
        (self.spec, &mut self.codes, &mut self.params)
    }

    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    pub fn params(&self) -> &AffineParams {
        &self.params
    }
    pub fn row_codes(&self, r: usize) -> &[u8] {
        let rb = self.spec.bits.row_bytes(self.n);
        &self.codes[r * rb..(r + 1) * rb]
    }

    /// Exact stored bytes: codes + scales + zero points.
    pub fn stored_bytes(&self) -> usize {
        self.spec.stored_bytes(self.rows, self.n)
    }

    /// Dequantizes row `r` into `out` (length n).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (scale, zero) = row_params(&self.spec, &self.params, r, self.n);
        dequantize_row(&self.spec, scale, zero, self.row_codes(r), out);
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.n];
        for (r, o) in out.chunks_mut(self.n).enumerate() {
            self.dequantize_row(r, o);
        }
        out
    }

    /// Rows `start..start + count` as their own tensor (for batch chunking).
    pub fn slice_rows(&self, start: usize, count: usize) -> QTensor {
        let rb = self.spec.bits.row_bytes(self.n);
        let params = if self.spec.dynamic {
            let g = self.spec.groups(self.n);
            AffineParams {
                scale: self.params.scale[start * g..(start + count) * g].to_vec(),
                zero: self.params.zero.as_ref().map(|z| z[start * g..(start + count) * g].to_vec()),
            }
        } else {
            self.params.clone()
        };
        QTensor {
            spec: self.spec,
            rows: count,
            n: self.n,
            codes: self.codes[start * rb..(start + count) * rb].to_vec(),
            params,
        }
    }
}

/// Index of row `r`'s first parameter entry.
#[inline(always)]
pub(crate) fn param_base(spec: &QuantSpec, r: usize, n: usize) -> usize {
    if spec.dynamic {
        r * spec.groups(n)
    } else {
        0
    }
}

/// The (scale, zero) slices of row `r` of a tensor's parameters.
#[inline(always)]
pub(crate) fn row_params<'a>(spec: &QuantSpec, params: &'a AffineParams, r: usize, n: usize) -> (&'a [f32], Option<&'a [i16]>) {
    let base = param_base(spec, r, n);
    let g = spec.groups(n);
    (&params.scale[base..base + g], params.zero.as_ref().map(|z| &z[base..base + g]))
}

/// The groups that positions i0..i1 touch: (group, first position, end), clipped to i0..i1.
#[inline(always)]
fn segments(g: usize, i0: usize, i1: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let first = if i1 > i0 { i0 / g } else { 0 };
    let last = if i1 > i0 { (i1 - 1) / g + 1 } else { 0 };
    (first..last).map(move |j| (j, (j * g).max(i0), ((j + 1) * g).min(i1)))
}

/// Quantizes one row of n values into its codes (n bytes for INT8, ⌈n/2⌉ for INT4), with the
/// row's parameter slices (one entry per group). Group by group with the parameters hoisted,
/// so the loops vectorise (`codec::quantize` per value, so the codes are the same).
#[inline(always)]
pub(crate) fn quantize_row(spec: &QuantSpec, scale: &[f32], zero: Option<&[i16]>, x: &[f32], codes: &mut [u8]) {
    let (qmin, qmax, g, n) = (spec.qmin(), spec.qmax(), spec.group_size, x.len());
    let z = |j: usize| zero.map_or(0, |z| z[j] as i32);
    match spec.bits {
        // Per channel: zipped slices, no per-value lookups, so the loop vectorises.
        Bits::Int8 if g == 1 => match zero {
            Some(zero) => {
                for (((c, &x), &s), &z) in codes[..n].iter_mut().zip(x).zip(&scale[..n]).zip(&zero[..n]) {
                    *c = codec::quantize(x, s, z as i32, qmin, qmax) as i8 as u8;
                }
            }
            None => {
                for ((c, &x), &s) in codes[..n].iter_mut().zip(x).zip(&scale[..n]) {
                    *c = codec::quantize(x, s, 0, qmin, qmax) as i8 as u8;
                }
            }
        },
        Bits::Int8 => {
            for (j, a, b) in segments(g, 0, n) {
                let (s, z) = (scale[j], z(j));
                for (c, &x) in codes[a..b].iter_mut().zip(&x[a..b]) {
                    *c = codec::quantize(x, s, z, qmin, qmax) as i8 as u8;
                }
            }
        }
        Bits::Int4 if g % 2 == 0 => {
            // Even groups: every byte lies in one group. Codes 64 at a time into a buffer (a
            // plain loop that vectorises), then packed.
            for (j, a, b) in segments(g, 0, n) {
                let (s, z) = (scale[j], z(j));
                let mut buf = [0i8; 64];
                for start in (a..b).step_by(64) {
                    let x = &x[start..(start + 64).min(b)];
                    for (c, &x) in buf.iter_mut().zip(x) {
                        *c = codec::quantize(x, s, z, qmin, qmax) as i8;
                    }
                    codec::pack_int4(&buf[..x.len()], &mut codes[start / 2..(start + x.len()).div_ceil(2)]);
                }
            }
        }
        Bits::Int4 => {
            for (i, &x) in x.iter().enumerate() {
                let nib = (codec::quantize(x, scale[i / g], z(i / g), qmin, qmax) as u8) & 0x0f;
                let c = &mut codes[i / 2];
                *c = if i % 2 == 0 { nib } else { (*c & 0x0f) | (nib << 4) };
            }
        }
    }
}

/// Dequantizes positions i0..i0 + out.len() of one row of codes (the whole row's codes) with
/// the row's parameter slices; group by group, so the loops vectorise.
#[inline(always)]
pub(crate) fn dequantize_span(spec: &QuantSpec, scale: &[f32], zero: Option<&[i16]>, codes: &[u8], i0: usize, out: &mut [f32]) {
    let (g, i1) = (spec.group_size, i0 + out.len());
    let z = |j: usize| zero.map_or(0, |z| z[j] as i32);
    match spec.bits {
        Bits::Int8 if g == 1 => match zero {
            Some(zero) => {
                for (((o, &c), &s), &z) in out.iter_mut().zip(&codes[i0..i1]).zip(&scale[i0..i1]).zip(&zero[i0..i1]) {
                    *o = codec::dequantize(c as i8 as i32, s, z as i32);
                }
            }
            None => {
                for ((o, &c), &s) in out.iter_mut().zip(&codes[i0..i1]).zip(&scale[i0..i1]) {
                    *o = codec::dequantize(c as i8 as i32, s, 0);
                }
            }
        },
        Bits::Int8 => {
            for (j, a, b) in segments(g, i0, i1) {
                let (s, z) = (scale[j], z(j));
                for (o, &c) in out[a - i0..b - i0].iter_mut().zip(&codes[a..b]) {
                    *o = codec::dequantize(c as i8 as i32, s, z);
                }
            }
        }
        Bits::Int4 => {
            for (j, a, b) in segments(g, i0, i1) {
                let (s, z) = (scale[j], z(j));
                let at = |i: usize| codec::dequantize(codec::int4_at(codes, i) as i32, s, z);
                // Whole bytes in the middle, odd ends alone.
                let (pa, pb) = (a.next_multiple_of(2).min(b), b - (b - a.next_multiple_of(2).min(b)) % 2);
                for i in (a..pa).chain(pb..b) {
                    out[i - i0] = at(i);
                }
                for (o, &c) in out[pa - i0..pb - i0].chunks_exact_mut(2).zip(&codes[pa / 2..pb / 2]) {
                    o[0] = codec::dequantize(codec::nibble_to_i8(c & 0x0f) as i32, s, z);
                    o[1] = codec::dequantize(codec::nibble_to_i8(c >> 4) as i32, s, z);
                }
            }
        }
    }
}

/// Dequantizes one row of codes with the row's parameter slices.
#[inline]
pub(crate) fn dequantize_row(spec: &QuantSpec, scale: &[f32], zero: Option<&[i16]>, codes: &[u8], out: &mut [f32]) {
    dequantize_span(spec, scale, zero, codes, 0, out);
}

/// A quantized complex tensor: real and imaginary parts quantized separately.
#[derive(Clone, Debug, PartialEq)]
pub struct QComplex {
    pub re: QTensor,
    pub im: QTensor,
}

impl QComplex {
    pub fn rows(&self) -> usize {
        self.re.rows
    }
    pub fn n(&self) -> usize {
        self.re.n
    }
    pub fn stored_bytes(&self) -> usize {
        self.re.stored_bytes() + self.im.stored_bytes()
    }
    pub fn dequantize(&self) -> Vec<Complex32> {
        self.re
            .dequantize()
            .into_iter()
            .zip(self.im.dequantize())
            .map(|(r, i)| Complex32::new(r, i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, n: usize) -> Vec<f32> {
        (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect()
    }

    /// The group-wise row codec gives exactly the per-value rules of `codec` (and the packing
    /// of `pack_int4`), for per-channel, odd, even and partial groups, any span of a row.
    #[test]
    fn row_codec_matches_the_scalar_rules() {
        for bits in [Bits::Int8, Bits::Int4] {
            for g in [1, 2, 3, 5, 128] {
                for symmetric in [true, false] {
                    for n in [1, 2, 7, 128, 130, 257] {
                        let spec = QuantSpec { bits, group_size: g, symmetric, dynamic: false };
                        let groups = spec.groups(n);
                        let scale: Vec<f32> = (0..groups).map(|j| 0.05 + 0.01 * (j % 7) as f32).collect();
                        let zero: Option<Vec<i16>> = (!symmetric).then(|| (0..groups).map(|j| (j % 5) as i16 - 2).collect());
                        // Values beyond the code range too, and exact ties.
                        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03 + if i % 9 == 0 { 0.025 } else { 0.0 }).collect();
                        let (qmin, qmax, zr) = (spec.qmin(), spec.qmax(), zero.as_deref());
                        let want: Vec<i8> = (0..n).map(|i| codec::quantize(x[i], scale[i / g], zr.map_or(0, |z| z[i / g] as i32), qmin, qmax) as i8).collect();
                        let mut codes = vec![0xAAu8; bits.row_bytes(n)];
                        quantize_row(&spec, &scale, zr, &x, &mut codes);
                        let ctx = format!("{bits:?} g{g} sym {symmetric} n{n}");
                        match bits {
                            Bits::Int8 => assert_eq!(codes, want.iter().map(|&c| c as u8).collect::<Vec<_>>(), "{ctx}"),
                            Bits::Int4 => {
                                let mut packed = vec![0u8; n.div_ceil(2)];
                                codec::pack_int4(&want, &mut packed);
                                assert_eq!(codes, packed, "{ctx}");
                            }
                        }
                        for (i0, len) in [(0, n), (1, n - 1), (n / 2, n - n / 2), (n / 3, n / 3), (n - 1, 1)] {
                            let mut out = vec![f32::NAN; len];
                            dequantize_span(&spec, &scale, zr, &codes, i0, &mut out);
                            for (k, &o) in out.iter().enumerate() {
                                let i = i0 + k;
                                let w = codec::dequantize(want[i] as i32, scale[i / g], zr.map_or(0, |z| z[i / g] as i32));
                                assert_eq!(o.to_bits(), w.to_bits(), "{ctx} span {i0}+{len} at {i}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step_inside_the_range() {
        let (rows, n) = (3, 301);
        let x = ramp(rows, n);
        for spec in [
            QuantSpec::int8_per_channel(),
            QuantSpec::int4_groups(128),
            QuantSpec { dynamic: true, ..QuantSpec::int4_groups(32) },
            QuantSpec { dynamic: true, symmetric: false, ..QuantSpec::int8_per_channel() },
        ] {
            let tq = if spec.dynamic {
                TensorQuant::dynamic(spec)
            } else {
                let groups = spec.groups(n);
                let mut scale = vec![0f32; groups];
                let mut zero = vec![0i16; groups];
                for j in 0..groups {
                    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                    for r in 0..rows {
                        for i in j * spec.group_size..((j + 1) * spec.group_size).min(n) {
                            lo = lo.min(x[r * n + i]);
                            hi = hi.max(x[r * n + i]);
                        }
                    }
                    let (s, z) = AffineParams::from_range(&spec, lo, hi);
                    scale[j] = s;
                    zero[j] = z;
                }
                TensorQuant::new_static(spec, AffineParams { scale, zero: (!spec.symmetric).then_some(zero) })
            };
            let q = QTensor::quantize("x", &tq, &x, rows, n).unwrap();
            let back = q.dequantize();
            for r in 0..rows {
                for i in 0..n {
                    let (s, _) = q.params().get(param_base(&spec, r, n) + i / spec.group_size);
                    let err = (back[r * n + i] - x[r * n + i]).abs();
                    assert!(err <= 0.5 * s * (1.0 + 1e-5), "{spec}: r{r} i{i} err {err} step {s}");
                }
            }
            // Re-quantizing the dequantized values with the same static parameters is a fixed point.
            if !spec.dynamic {
                let again = QTensor::quantize("x", &tq, &back, rows, n).unwrap();
                assert_eq!(again.codes(), q.codes(), "{spec}");
            }
        }
    }

    #[test]
    fn from_parts_rejects_wrong_lengths() {
        let spec = QuantSpec::int4_groups(128);
        let p = AffineParams { scale: vec![1.0; 2], zero: Some(vec![0; 2]) };
        assert!(QTensor::from_parts("v", spec, 2, 200, vec![0; 200], p.clone()).is_ok());
        let e = QTensor::from_parts("v", spec, 2, 200, vec![0; 199], p.clone()).unwrap_err();
        assert!(e.to_string().contains("v.codes"), "{e}");
        let e = QTensor::from_parts("v", spec, 2, 300, vec![0; 300], p).unwrap_err();
        assert!(e.to_string().contains("v.scale"), "{e}");
    }
}
