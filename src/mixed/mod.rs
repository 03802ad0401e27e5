//! Mixed precision: models of L layers, each with its own H0, z and a precision per tensor
//! (v, H0, G ∈ fp32 / fp16 / bf16 / int8 / int4-gN, H0 also fp64); running a layer as it is
//! stored; policies that fix precisions by rule; and automatic bit allocation under a budget of
//! average bits per element.
//!
//! # Bits per element
//!
//! For a layer of sequence length N and a reference batch of B rows, the elements are the B·N
//! potentials, the 2·B·N real parts of G and the 3N − 2 entries of H0; the bits are everything
//! stored for them: codes, scales and zero points (static parameters once, as in a model file)
//! and floating-point values, exactly as [`crate::quant::QuantSpec::stored_bytes`] counts. The
//! average over a model is total bits / total elements.
//!
//! # Allocation
//!
//! For every layer and tensor, each candidate precision is measured alone (the other tensors at
//! full precision: v fp32, H0 fp64, G complex64): calibrated on the first part of the
//! calibration rows, its error of G measured on the rest against the f64 oracle, as relative
//! mean squared error e = Σ|ΔG|² / Σ|G|². Errors of different tensors are close to independent,
//! so their squared errors add; the allocation minimises Σ e over all (layer, tensor) choices
//! subject to the bit budget: a multiple-choice knapsack, solved exactly by dynamic programming
//! over stored bytes. The chosen model is then measured as a whole (all tensors quantized
//! together), which checks the additive prediction.

mod alloc;
mod policy;

pub use alloc::{allocate, measure_candidates, AllocConfig, Allocation, Candidate, Candidates, LayerReport};
pub use policy::Policy;

use crate::backend::{Backend, GFormat, SolveOptions, VInput};
use crate::error::Result;
use crate::model::Layer;
use crate::precision::FloatFormat;
use crate::ptq::{self, PtqRun};
use crate::backend::SolveInfo;
use half::{bf16, f16};

/// Runs a layer on f32 potentials as its model stores it: v quantized or rounded to its float
/// format, G stored in its format. H0 is what the layer's problem holds (its decoded values).
pub fn run_layer(backend: &dyn Backend, layer: &Layer, v: &[f32], opts: &SolveOptions) -> Result<PtqRun> {
    let (p, plan, st) = (&layer.problem, &layer.plan, &layer.storage);
    plan.validate(p.n())?;
    let q = ptq::quantize_v(p, plan, v)?;
    let h16: Vec<f16>;
    let hb16: Vec<bf16>;
    let input = match (&q, st.v) {
        (Some(q), _) => VInput::Quant(q),
        (None, FloatFormat::F32) => VInput::F32(v),
        (None, FloatFormat::F16) => {
            h16 = v.iter().map(|&x| f16::from_f32(x)).collect();
            VInput::F16(&h16)
        }
        (None, FloatFormat::Bf16) => {
            hb16 = v.iter().map(|&x| bf16::from_f32(x)).collect();
            VInput::Bf16(&hb16)
        }
    };
    let fmt = match (&plan.g, st.g) {
        (Some(g), _) => GFormat::Quant(g.clone()),
        (None, FloatFormat::F32) => GFormat::C64,
        (None, FloatFormat::F16) => GFormat::Cf16,
        (None, FloatFormat::Bf16) => GFormat::Cbf16,
    };
    let v_bytes = input.stored_bytes();
    let s = backend.solve(p, input, &fmt, opts)?;
    let g_bytes = s.g.stored_bytes();
    Ok(PtqRun { g: s.g, info: SolveInfo { rows: s.rows, rows_f64: s.rows_f64 }, v_bytes, g_bytes })
}

/// Stored bytes of a layer's v, H0 and G for a batch of `rows` rows, and its element count
/// (see the module docs).
pub fn layer_bytes(layer: &Layer, rows: usize) -> ([usize; 3], usize) {
    let n = layer.problem.n();
    let (plan, st) = (&layer.plan, &layer.storage);
    let v = plan.v.as_ref().map_or(rows * n * st.v.bytes(), |t| t.spec.stored_bytes(rows, n));
    let g = plan.g.as_ref().map_or(rows * n * 2 * st.g.bytes(), |g| g.stored_bytes(rows, n));
    let h0 = st.h0.stored_bytes(n);
    ([v, h0, g], 3 * rows * n + 3 * n - 2)
}
