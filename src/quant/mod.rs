//! Quantization formats: what a quantized tensor is, how its codes and parameters are laid out,
//! and the round trip. Layout constants mirror `kernels/bk_formats.h` (see [`crate::layout`]).
//!
//! One real tensor of shape (rows, N) is quantized along the sequence axis in groups of
//! `group_size` consecutive positions (`group_size = 1` is per-channel, channel = position; the
//! last group may be partial). Each group has a scale and, when asymmetric, a zero point:
//! x ≈ (q − zero) · scale. Static parameters are shared by all rows (one set per group, from
//! calibration); dynamic parameters are computed per row at run time (rows × groups).

pub mod calibrate;
pub mod codec;
pub mod observer;
pub(crate) mod tensor;

pub use tensor::{QComplex, QTensor};

use crate::error::{BkError, Result};
use std::fmt;

/// Integer code width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    Int8,
    Int4,
}

impl Bits {
    pub fn bits(self) -> u32 {
        match self {
            Bits::Int8 => 8,
            Bits::Int4 => 4,
        }
    }
    /// Bytes of codes for one row of `n` values (INT4 packs two per byte; rows start on a byte).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            Bits::Int8 => n,
            Bits::Int4 => n.div_ceil(2),
        }
    }
}

/// How one real tensor is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    pub bits: Bits,
    /// Positions per group along the sequence; 1 means per-channel.
    pub group_size: usize,
    /// Symmetric: zero point fixed at 0 and not stored.
    pub symmetric: bool,
    /// Dynamic: parameters computed per row at run time instead of calibrated.
    pub dynamic: bool,
}

impl QuantSpec {
    /// INT8 per-channel symmetric, static: the seed's format for v.
    pub const fn int8_per_channel() -> Self {
        QuantSpec { bits: Bits::Int8, group_size: 1, symmetric: true, dynamic: false }
    }
    /// INT4 group-wise with a zero point, static.
    pub const fn int4_groups(group_size: usize) -> Self {
        QuantSpec { bits: Bits::Int4, group_size, symmetric: false, dynamic: false }
    }

    /// The default format of the potentials: INT8 symmetric (the seed's), INT4 with a zero point
    /// per group.
    pub const fn for_v(bits: Bits, group_size: usize) -> Self {
        QuantSpec { bits, group_size, symmetric: matches!(bits, Bits::Int8), dynamic: false }
    }
    /// The default format of each part of G: asymmetric, since Im G > 0 for Im z > 0 and a
    /// symmetric range would waste a bit.
    pub const fn for_g(bits: Bits, group_size: usize) -> Self {
        QuantSpec { bits, group_size, symmetric: false, dynamic: false }
    }

    /// Smallest code. Symmetric INT8 drops −128 so that the range is symmetric (the seed's rule);
    /// INT4 keeps all 16 codes.
    pub fn qmin(&self) -> i32 {
        match (self.bits, self.symmetric) {
            (Bits::Int8, true) => -127,
            (Bits::Int8, false) => -128,
            (Bits::Int4, _) => -8,
        }
    }
    pub fn qmax(&self) -> i32 {
        match self.bits {
            Bits::Int8 => 127,
            Bits::Int4 => 7,
        }
    }
    pub fn levels(&self) -> u32 {
        (self.qmax() - self.qmin()) as u32
    }

    pub fn groups(&self, n: usize) -> usize {
        n.div_ceil(self.group_size)
    }

    /// Number of (scale, zero) entries for a (rows, n) tensor.
    pub fn param_count(&self, rows: usize, n: usize) -> usize {
        self.groups(n) * if self.dynamic { rows } else { 1 }
    }

    /// Exact bytes stored: codes + scales (f32) + zero points (i16, asymmetric only).
    pub fn stored_bytes(&self, rows: usize, n: usize) -> usize {
        let per_param = 4 + if self.symmetric { 0 } else { 2 };
        rows * self.bits.row_bytes(n) + self.param_count(rows, n) * per_param
    }

    pub fn validate(&self, tensor: &str) -> Result<()> {
        if self.group_size == 0 {
            return Err(BkError::quant(tensor, "group size must be at least 1"));
        }
        if self.group_size > u32::MAX as usize {
            return Err(BkError::quant(tensor, format!("group size {} is too large", self.group_size)));
        }
        Ok(())
    }

    /// Short name, e.g. `int8`, `int4-g128`, `int4-g32-dyn`.
    pub fn label(&self) -> String {
        let mut s = match self.bits {
            Bits::Int8 => "int8".to_string(),
            Bits::Int4 => "int4".to_string(),
        };
        if self.group_size > 1 {
            s += &format!("-g{}", self.group_size);
        }
        if self.dynamic {
            s += "-dyn";
        }
        s
    }
}

impl fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Scales and zero points of one tensor, in group order (row-major (rows, groups) when dynamic).
#[derive(Clone, Debug, PartialEq)]
pub struct AffineParams {
    pub scale: Vec<f32>,
    /// `None` for symmetric tensors.
    pub zero: Option<Vec<i16>>,
}

impl AffineParams {
    /// Parameters covering [lo, hi] with `spec`'s code range. Symmetric specs use max(|lo|, |hi|).
    /// A degenerate range still gives a positive, finite scale.
    pub fn from_range(spec: &QuantSpec, lo: f32, hi: f32) -> (f32, i16) {
        let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
        if spec.symmetric {
            let amax = lo.abs().max(hi.abs());
            (safe_scale(amax / qmax, amax), 0)
        } else {
            let (lo, hi) = (lo.min(hi), hi.max(lo));
            let scale = safe_scale((hi - lo) / (qmax - qmin), lo.abs().max(hi.abs()));
            (scale, zero_point(qmin - lo / scale))
        }
    }

    /// Checks lengths, positivity and finiteness against a spec and tensor shape.
    pub fn validate(&self, tensor: &str, spec: &QuantSpec, rows: usize, n: usize) -> Result<()> {
        let want = spec.param_count(rows, n);
        if self.scale.len() != want {
            return Err(BkError::shape(
                &format!("{tensor}.scale"),
                format!("{want} scales ({} groups of {} over N = {n})", spec.groups(n), spec.group_size),
                format!("{}", self.scale.len()),
            ));
        }
        if let Some(i) = self.scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(BkError::quant(
                tensor,
                format!("scale[{i}] = {} must be finite and > 0", self.scale[i]),
            ));
        }
        match (&self.zero, spec.symmetric) {
            (Some(_), true) => Err(BkError::quant(tensor, "symmetric tensor must not carry zero points")),
            (None, false) => Err(BkError::quant(tensor, "asymmetric tensor needs zero points")),
            (Some(z), false) if z.len() != want => Err(BkError::shape(
                &format!("{tensor}.zero"),
                format!("{want} zero points"),
                format!("{}", z.len()),
            )),
            _ => Ok(()),
        }
    }

    /// (scale, zero) of entry `idx`.
    #[inline(always)]
    pub fn get(&self, idx: usize) -> (f32, i32) {
        (self.scale[idx], self.zero.as_ref().map_or(0, |z| z[idx] as i32))
    }
}

/// A scale that is positive and finite even for an all-zero or constant range.
fn safe_scale(s: f32, magnitude: f32) -> f32 {
    if s.is_finite() && s > f32::MIN_POSITIVE * 1e6 {
        s
    } else if magnitude.is_finite() && magnitude > 0.0 {
        // Constant group: any scale that represents the value; codes then sit near the zero point.
        magnitude
    } else {
        1.0
    }
}

fn zero_point(z: f32) -> i16 {
    z.round_ties_even().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// A quantized real tensor's format and, when static, its calibrated parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorQuant {
    pub spec: QuantSpec,
    /// Present exactly when `spec.dynamic` is false.
    pub params: Option<AffineParams>,
}

impl TensorQuant {
    pub fn new_static(spec: QuantSpec, params: AffineParams) -> Self {
        TensorQuant { spec: QuantSpec { dynamic: false, ..spec }, params: Some(params) }
    }
    pub fn dynamic(spec: QuantSpec) -> Self {
        TensorQuant { spec: QuantSpec { dynamic: true, ..spec }, params: None }
    }

    pub fn validate(&self, tensor: &str, n: usize) -> Result<()> {
        self.spec.validate(tensor)?;
        match (&self.params, self.spec.dynamic) {
            (Some(p), false) => p.validate(tensor, &self.spec, 1, n),
            (None, true) => Ok(()),
            (Some(_), true) => Err(BkError::quant(tensor, "dynamic quantization carries no static scales")),
            (None, false) => Err(BkError::quant(tensor, "static quantization needs calibrated scales")),
        }
    }
}

/// The quantization of the output G: real and imaginary parts quantized separately.
#[derive(Clone, Debug, PartialEq)]
pub struct ComplexQuant {
    pub re: TensorQuant,
    pub im: TensorQuant,
}

impl ComplexQuant {
    pub fn validate(&self, tensor: &str, n: usize) -> Result<()> {
        self.re.validate(&format!("{tensor}.re"), n)?;
        self.im.validate(&format!("{tensor}.im"), n)?;
        if self.re.spec.bits != self.im.spec.bits || self.re.spec.group_size != self.im.spec.group_size {
            return Err(BkError::quant(tensor, "real and imaginary parts must share bits and group size"));
        }
        Ok(())
    }
    pub fn spec(&self) -> QuantSpec {
        self.re.spec
    }
    pub fn stored_bytes(&self, rows: usize, n: usize) -> usize {
        self.re.spec.stored_bytes(rows, n) + self.im.spec.stored_bytes(rows, n)
    }
}

/// Computes dynamic (per-row, per-group) parameters of one row from its min and max.
pub fn dynamic_params_row(spec: &QuantSpec, x: &[f32], scale: &mut [f32], zero: Option<&mut [i16]>) {
    let g = spec.group_size;
    let mut zero = zero;
    for (j, chunk) in x.chunks(g).enumerate() {
        let (lo, hi) = min_max(chunk);
        let (s, z) = AffineParams::from_range(spec, lo, hi);
        scale[j] = s;
        if let Some(zs) = zero.as_deref_mut() {
            zs[j] = z;
        }
    }
}

/// (min, max) of `x`, NaN ignored (±∞ when there is nothing else), over eight running minima
/// and maxima so that the loop vectorises. The order cannot change the result beyond the sign
/// of a zero, which `from_range` does not see.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let mut blocks = x.chunks_exact(8);
    for b in &mut blocks {
        for k in 0..8 {
            lo[k] = lo[k].min(b[k]);
            hi[k] = hi[k].max(b[k]);
        }
    }
    let rest = blocks.remainder().iter().chain(&lo).fold(f32::INFINITY, |m, &v| m.min(v));
    let top = blocks.remainder().iter().chain(&hi).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (rest, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_is_the_sequential_fold() {
        for n in [0, 1, 7, 8, 9, 130] {
            for nan_at in [None, Some(0), Some(n / 2)] {
                let mut x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3).collect();
                if let Some(k) = nan_at.filter(|&k| k < n) {
                    x[k] = f32::NAN;
                }
                let want = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                assert_eq!(min_max(&x), want, "n {n} nan at {nan_at:?}");
            }
        }
    }

    #[test]
    fn stored_bytes_counts_codes_scales_and_zeros() {
        // INT4 g128, static, N = 300 (3 groups, last partial), 10 rows: 10·150 + 3·(4+2).
        assert_eq!(QuantSpec::int4_groups(128).stored_bytes(10, 300), 1500 + 18);
        // INT8 per-channel symmetric: codes + 4 B per position.
        assert_eq!(QuantSpec::int8_per_channel().stored_bytes(8, 512), 8 * 512 + 512 * 4);
    }

    #[test]
    fn asymmetric_range_maps_ends_to_code_ends() {
        let spec = QuantSpec { bits: Bits::Int8, group_size: 1, symmetric: false, dynamic: false };
        let (s, z) = AffineParams::from_range(&spec, 0.1, 0.9);
        let q_lo = codec::quantize(0.1, s, z as i32, spec.qmin(), spec.qmax());
        let q_hi = codec::quantize(0.9, s, z as i32, spec.qmin(), spec.qmax());
        assert!((q_lo - -128).abs() <= 1 && (q_hi - 127).abs() <= 1, "{q_lo} {q_hi}");
    }

    #[test]
    fn degenerate_ranges_give_usable_scales() {
        for spec in [QuantSpec::int8_per_channel(), QuantSpec::int4_groups(4)] {
            for (lo, hi) in [(0.0, 0.0), (2.5, 2.5), (-1e-40, 1e-40)] {
                let (s, z) = AffineParams::from_range(&spec, lo, hi);
                assert!(s.is_finite() && s > 0.0);
                let q = codec::quantize(hi, s, z as i32, spec.qmin(), spec.qmax());
                let back = codec::dequantize(q, s, z as i32);
                assert!((back - hi).abs() <= s, "{lo} {hi} {s} {z} {back}");
            }
        }
    }
}
