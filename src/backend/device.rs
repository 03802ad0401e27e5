//! Host-side pieces shared by every path that runs the kernels of `kernels/` (the CUDA solve in
//! `cuda/run.rs`, the backward pass in `grad::gpu`): the compute mode, the potentials as the host
//! holds them, the kernel-side descriptions of quantized tensors, per-row status words, and the
//! CPU backend's errors recovered from them. Compiled with or without CUDA, so that the emulated
//! kernels of the tests run through the same code.

use super::{auto_wants_f64, Compute, VInput};
use crate::error::{BkError, Result};
use crate::layout::*;
use crate::problem::{apply_nan_policy, NanPolicy, Problem};
use crate::quant::{QTensor, QuantSpec};
use crate::reference;
use num_complex::Complex64;
use std::borrow::Cow;

/// Free memory left unused for the driver, other kernels and fragmentation.
pub(crate) const MEMORY_MARGIN: usize = 64 << 20;
/// Fraction of free device memory one call may use.
pub(crate) const MEMORY_FRACTION: f64 = 0.8;

/// Arithmetic of a call's main pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    F32,
    F64,
    /// f32, redoing in f64 the rows with huge potentials or a non-finite result (`Compute::Auto`).
    F32Fallback,
}

impl Mode {
    pub(crate) fn of(p: &Problem, compute: Compute) -> Mode {
        match compute {
            Compute::F32 => Mode::F32,
            Compute::F64 => Mode::F64,
            Compute::Auto if auto_wants_f64(p) => Mode::F64,
            Compute::Auto => Mode::F32Fallback,
        }
    }
}

/// Below this |Im z| the f32 kernels run their chunk scan in f64 ([`Arith::F32Scan64`]).
pub const SCAN64_BELOW_IM_Z: f64 = 0.1;

/// Arithmetic of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    F32,
    /// f32 reruns (and stores) with the chunk matrices, scan and carries in f64: the f32 kernels'
    /// form near the real axis, where a pivot carried through a product of f32 matrices loses
    /// more than the CPU's sequential f32 recursion does.
    F32Scan64,
    F64,
}

impl Arith {
    /// The kernel arithmetic for problem `p` in compute type f64 or f32 (a function of the
    /// problem alone, so a row's result never depends on the batch it came in).
    pub fn for_problem(p: &Problem, f64: bool) -> Arith {
        if f64 {
            Arith::F64
        } else if p.z().im.abs() < SCAN64_BELOW_IM_Z {
            Arith::F32Scan64
        } else {
            Arith::F32
        }
    }
}

/// The potentials as the host holds them after the NaN policy.
pub(crate) enum HostV<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    Quant(&'a QTensor),
}

impl<'a> HostV<'a> {
    /// Applies the NaN policy to float inputs (the kernels apply it to what they dequantize) and
    /// validates quantized ones. Half-precision storage must have been widened by the caller.
    pub(crate) fn new(v: VInput<'a>, n: usize, policy: NanPolicy, backend: &str) -> Result<Self> {
        Ok(match v {
            VInput::F32(x) => HostV::F32(apply_nan_policy("v", x, n, policy)?),
            VInput::F64(x) => HostV::F64(apply_nan_policy("v", x, n, policy)?),
            VInput::Quant(q) => {
                q.spec().validate("v")?;
                HostV::Quant(q)
            }
            VInput::F16(_) | VInput::Bf16(_) => {
                return Err(BkError::Backend {
                    backend: backend.into(),
                    msg: "half-precision storage must be widened before the kernels run".into(),
                })
            }
        })
    }

    /// The kernels' input format and the bytes one row takes on the device.
    pub(crate) fn format(&self, n: usize) -> (u32, usize) {
        match self {
            HostV::F32(_) => (FMT_F32, n * 4),
            HostV::F64(_) => (FMT_F64, n * 8),
            HostV::Quant(q) => (BkQTensor::describe(q.spec(), n, 0, 0, 0).format, q_row_bytes(q.spec(), n)),
        }
    }

    /// A row's potentials as the kernel of that compute type saw them.
    pub(crate) fn row_values(&self, row: usize, n: usize, f64: bool, policy: NanPolicy) -> Vec<f64> {
        match self {
            HostV::F32(x) => x[row * n..(row + 1) * n].iter().map(|&a| a as f64).collect(),
            HostV::F64(x) => x[row * n..(row + 1) * n].iter().map(|&a| if f64 { a } else { a as f32 as f64 }).collect(),
            HostV::Quant(q) => {
                let mut x = vec![0f32; n];
                q.dequantize_row(row, &mut x);
                x.iter().map(|&a| if policy == NanPolicy::Zero && !a.is_finite() { 0.0 } else { a as f64 }).collect()
            }
        }
    }
}

/// Half-precision storage widened exactly to f32 (the kernels read f32, f64 and codes only);
/// other inputs pass through. `buf` holds the widened values.
pub(crate) fn widen_half<'a>(v: VInput<'a>, buf: &'a mut Vec<f32>) -> VInput<'a> {
    match v {
        VInput::F16(x) => {
            *buf = x.iter().map(|h| h.to_f32()).collect();
            VInput::F32(buf)
        }
        VInput::Bf16(x) => {
            *buf = x.iter().map(|h| h.to_f32()).collect();
            VInput::F32(buf)
        }
        other => other,
    }
}

pub(crate) fn nan_code(p: NanPolicy) -> u32 {
    match p {
        NanPolicy::Error => NAN_ERROR,
        NanPolicy::Zero => NAN_ZERO,
        NanPolicy::Propagate => NAN_PROPAGATE,
    }
}

/// Bytes of one row of a quantized tensor's per-row data: codes plus dynamic parameters.
pub(crate) fn q_row_bytes(spec: &QuantSpec, n: usize) -> usize {
    let params = if spec.dynamic { spec.groups(n) * (4 + if spec.symmetric { 0 } else { 2 }) } else { 0 };
    spec.bits.row_bytes(n) + params
}

/// The first status word of a launch that says the kernel did not process its row or rejected
/// the launch, as an error message (`what` names the kernel).
pub(crate) fn status_problem(s: &[u32], what: &str) -> Option<String> {
    let known = STATUS_WRITTEN | STATUS_NONFINITE_G | STATUS_NONFINITE_V | STATUS_BIG_V;
    let (r, &w) = s.iter().enumerate().find(|(_, &w)| w & STATUS_WRITTEN == 0 || w & !known != 0)?;
    let why = if w & STATUS_BAD_LAUNCH != 0 { "rejected its launch parameters" } else { "did not process" };
    Some(format!("{what} {why} row {r} of the launch (status {w:#x})"))
}

/// Rows of a status array that an f32 pass must redo in f64: huge potentials always, a
/// non-finite result in `Mode::F32Fallback`.
pub(crate) fn redo_rows(status: &[u32], mode: Mode) -> Vec<u32> {
    (0..status.len() as u32)
        .filter(|&r| {
            let s = status[r as usize];
            s & STATUS_BIG_V != 0 || (mode == Mode::F32Fallback && s & STATUS_NONFINITE_G != 0)
        })
        .collect()
}

/// The CPU backend's errors, from the final status of rows r0.. of a chunk: a non-finite
/// potential under `NanPolicy::Error` (only dequantized inputs can get here), then a singular
/// matrix (a row with finite potentials and a non-finite result; a NaN-propagate row's NaN result
/// is what was asked for). `fallback_pos` gives the position to report when the f64 oracle solves
/// a flagged row after all.
pub(crate) fn check_rows(
    p: &Problem,
    hv: &HostV<'_>,
    policy: NanPolicy,
    r0: usize,
    status: &[u32],
    ran_f64: &[bool],
    fallback_pos: impl Fn(usize) -> Option<usize>,
) -> Result<()> {
    let n = p.n();
    if policy == NanPolicy::Error {
        if let (Some(r), HostV::Quant(q)) = (status.iter().position(|s| s & STATUS_NONFINITE_V != 0), hv) {
            let row = r0 + r;
            let mut x = vec![0f32; n];
            q.dequantize_row(row, &mut x);
            let pos = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(BkError::NonFinite { tensor: "v".into(), row, pos, value: x[pos] as f64 });
        }
    }
    for (r, &s) in status.iter().enumerate() {
        if s & STATUS_NONFINITE_G == 0 || s & STATUS_NONFINITE_V != 0 {
            continue;
        }
        let row = r0 + r;
        let vals = hv.row_values(row, n, ran_f64[r], policy);
        let mut g = vec![Complex64::default(); n];
        let pos = match reference::solve_row(p, &vals, &mut g) {
            Err(pos) => pos,
            Ok(()) => fallback_pos(row).unwrap_or(0),
        };
        return Err(BkError::SingularPivot { row, pos, im_z: p.z().im });
    }
    Ok(())
}
