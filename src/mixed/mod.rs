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

/// A batch of potentials as a layer stores them: quantized with its plan, rounded to its float
/// format, or as given. Owned, so that the [`VInput`] handed to a backend can borrow it.
pub enum StoredV<'a> {
    Quant(crate::quant::QTensor),
    F32(&'a [f32]),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl<'a> StoredV<'a> {
    pub fn new(layer: &Layer, v: &'a [f32]) -> Result<Self> {
        Ok(match (ptq::quantize_v(&layer.problem, &layer.plan, v)?, layer.storage.v) {
            (Some(q), _) => StoredV::Quant(q),
            (None, FloatFormat::F32) => StoredV::F32(v),
            (None, FloatFormat::F16) => StoredV::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            (None, FloatFormat::Bf16) => StoredV::Bf16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        })
    }

    pub fn input(&self) -> VInput<'_> {
        match self {
            StoredV::Quant(q) => VInput::Quant(q),
            StoredV::F32(v) => VInput::F32(v),
            StoredV::F16(v) => VInput::F16(v),
            StoredV::Bf16(v) => VInput::Bf16(v),
        }
    }
}

/// The format a layer stores G in.
pub fn g_format(layer: &Layer) -> GFormat {
    match (&layer.plan.g, layer.storage.g) {
        (Some(g), _) => GFormat::Quant(g.clone()),
        (None, FloatFormat::F32) => GFormat::C64,
        (None, FloatFormat::F16) => GFormat::Cf16,
        (None, FloatFormat::Bf16) => GFormat::Cbf16,
    }
}

/// Runs a layer on f32 potentials as its model stores it: v quantized or rounded to its float
/// format, G stored in its format. H0 is what the layer's problem holds (its decoded values).
pub fn run_layer(backend: &dyn Backend, layer: &Layer, v: &[f32], opts: &SolveOptions) -> Result<PtqRun> {
    let p = &layer.problem;
    layer.plan.validate(p.n())?;
    let stored = StoredV::new(layer, v)?;
    let input = stored.input();
    let fmt = g_format(layer);
    let v_bytes = input.stored_bytes();
    let s = backend.solve(p, input, &fmt, opts)?;
    let g_bytes = s.g.stored_bytes();
    Ok(PtqRun { g: s.g, info: SolveInfo { rows: s.rows, rows_f64: s.rows_f64, ..Default::default() }, v_bytes, g_bytes })
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
