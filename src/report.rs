//! Per-tensor error statistics and exact stored sizes of a quantized (or fp16/bf16) run, per
//! layer: what `bk-infer infer --stats` and `bk-infer sweep` print.
//!
//! Sizes are exact: codes + scales + zero points. Static parameters belong to the model and are
//! counted in `bytes` (as the library stores them for a call) and reported separately, so that
//! a per-call figure with them amortized over many calls can be given beside it.

use crate::backend::{GOutput, VInput};
use crate::precision::{FloatFormat, Storage};
use half::{bf16, f16};
use crate::error::{BkError, Result};
use crate::plan::QuantPlan;
use crate::problem::Problem;
use crate::quant::{QuantSpec, TensorQuant};
use crate::stats::ErrorStats;
use crate::ptq;
use num_complex::Complex64;

/// One tensor of one layer.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// `v` or `g`.
    pub tensor: &'static str,
    /// Storage format, e.g. `fp32`, `int8`, `int4-g128`, `int4-g32-dyn`.
    pub format: String,
    /// v: its round trip against v. G: the stored G against the f64 oracle.
    pub stats: ErrorStats,
    /// Exact bytes stored for the call: codes + scales + zero points.
    pub bytes: usize,
    /// Bytes of static (per-model) parameters, included in `bytes`.
    pub static_param_bytes: usize,
    /// Bytes of the tensor as f32 (v) or complex64 (G).
    pub float_bytes: usize,
    /// Real values held: rows·N for v, 2·rows·N for G (real and imaginary parts).
    pub values: usize,
}

impl TensorReport {
    /// Float bytes over stored bytes.
    pub fn compression(&self) -> f64 {
        self.float_bytes as f64 / self.bytes as f64
    }
    /// Stored bits per real value, static parameters included.
    pub fn bits_per_value(&self) -> f64 {
        8.0 * self.bytes as f64 / self.values as f64
    }
    /// Stored bits per real value with static parameters amortized over many calls (codes and
    /// per-row dynamic parameters only).
    pub fn bits_per_value_amortized(&self) -> f64 {
        8.0 * (self.bytes - self.static_param_bytes) as f64 / self.values as f64
    }
}

/// Both tensors of one layer, and what its H0 costs the model.
#[derive(Clone, Debug)]
pub struct LayerReport {
    pub layer: usize,
    pub v: TensorReport,
    pub g: TensorReport,
    /// H0's storage (`fp64`, `fp32`, `fp16`, `bf16`, `int8`, …) and its exact bytes: a weight,
    /// stored once in the model, not per call, so not part of [`LayerReport::bytes`].
    pub h0_format: String,
    pub h0_bytes: usize,
}

impl LayerReport {
    /// v and G as stored for the call.
    pub fn bytes(&self) -> usize {
        self.v.bytes + self.g.bytes
    }
    pub fn float_bytes(&self) -> usize {
        self.v.float_bytes + self.g.float_bytes
    }
    pub fn compression(&self) -> f64 {
        self.float_bytes() as f64 / self.bytes() as f64
    }
    /// Stored bits per real value over v, Re G and Im G together.
    pub fn bits_per_value(&self) -> f64 {
        8.0 * self.bytes() as f64 / (self.v.values + self.g.values) as f64
    }
    pub fn bits_per_value_amortized(&self) -> f64 {
        let b = self.bytes() - self.v.static_param_bytes - self.g.static_param_bytes;
        8.0 * b as f64 / (self.v.values + self.g.values) as f64
    }
}

/// Reports layer `layer` of a run: `v` is the input before any quantization or rounding (f32
/// or f64), `plan` and `storage` how the layer stores v and G, `g` what the backend stored,
/// `reference` the f64 oracle on `v`.
pub fn layer_report(
    layer: usize,
    p: &Problem,
    plan: &QuantPlan,
    storage: &Storage,
    v: VInput<'_>,
    g: &GOutput,
    reference: &[Complex64],
) -> Result<LayerReport> {
    let n = p.n();
    let rows = p.rows_of("v", v.len())?;
    if g.len() != rows * n || reference.len() != rows * n {
        return Err(BkError::shape("g", format!("({rows}, {n}) values"), format!("{} and {} reference values", g.len(), reference.len())));
    }
    let v64: Vec<f64> = match v {
        VInput::F32(x) => x.iter().map(|&a| a as f64).collect(),
        VInput::F64(x) => x.to_vec(),
        VInput::F16(_) | VInput::Bf16(_) | VInput::Quant(_) => {
            return Err(BkError::InvalidArgument("a layer report needs the potentials before quantization or rounding".into()));
        }
    };
    let v32: Vec<f32> = v64.iter().map(|&a| a as f32).collect();
    let float_v = |format: &str, back: Vec<f64>, bytes_per: usize| TensorReport {
        tensor: "v",
        format: format.into(),
        stats: ErrorStats::compare_real(&back, &v64),
        bytes: rows * n * bytes_per,
        static_param_bytes: 0,
        float_bytes: rows * n * 4,
        values: rows * n,
    };
    let v_report = match (&plan.v, storage.v, v) {
        (Some(tq), _, _) => {
            let q = ptq::quantize_v(p, plan, &v32)?.ok_or_else(|| BkError::InvalidArgument("plan without v".into()))?;
            let back: Vec<f64> = q.dequantize().iter().map(|&a| a as f64).collect();
            TensorReport {
                tensor: "v",
                format: tq.spec.label(),
                stats: ErrorStats::compare_real(&back, &v64),
                bytes: q.stored_bytes(),
                static_param_bytes: static_param_bytes(tq, n),
                float_bytes: rows * n * 4,
                values: rows * n,
            }
        }
        (None, FloatFormat::F16, _) => float_v("fp16", v32.iter().map(|&x| f16::from_f32(x).to_f64()).collect(), 2),
        (None, FloatFormat::Bf16, _) => float_v("bf16", v32.iter().map(|&x| bf16::from_f32(x).to_f64()).collect(), 2),
        // Unquantized f64 input stays f64 (the CLI keeps an f64 .npy in f64).
        (None, FloatFormat::F32, VInput::F64(_)) => float_v("fp64", v64.clone(), 8),
        (None, FloatFormat::F32, _) => float_v("fp32", v64.clone(), 4),
    };
    let g_static = plan.g.as_ref().map_or(0, |c| static_param_bytes(&c.re, n) + static_param_bytes(&c.im, n));
    let g_report = TensorReport {
        tensor: "g",
        format: match g {
            GOutput::C64(_) => "fp32".into(),
            GOutput::C128(_) => "fp64".into(),
            GOutput::Cf16(_) => "fp16".into(),
            GOutput::Cbf16(_) => "bf16".into(),
            GOutput::Quant(q) => q.re.spec().label(),
        },
        stats: ErrorStats::compare(&g.to_c128(), reference),
        bytes: g.stored_bytes(),
        static_param_bytes: g_static,
        float_bytes: rows * n * 8,
        values: 2 * rows * n,
    };
    Ok(LayerReport { layer, v: v_report, g: g_report, h0_format: storage.h0.precision().label(), h0_bytes: storage.h0.stored_bytes(n) })
}

/// Bytes of a tensor's static parameters (0 when dynamic).
fn static_param_bytes(tq: &TensorQuant, n: usize) -> usize {
    let s: &QuantSpec = &tq.spec;
    if s.dynamic {
        0
    } else {
        s.stored_bytes(1, n) - s.bits.row_bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, CpuBackend, GFormat, SolveOptions};
    use crate::quant::{AffineParams, Bits, ComplexQuant};
    use crate::reference;

    #[test]
    fn sizes_and_bits_are_exact() {
        let (rows, n) = (4, 300);
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let v: Vec<f32> = (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let vs = QuantSpec::for_v(Bits::Int4, 128);
        let vq = TensorQuant::new_static(vs, AffineParams { scale: vec![0.3; 3], zero: Some(vec![0; 3]) });
        let gq = TensorQuant::dynamic(QuantSpec::for_g(Bits::Int8, 32));
        let plan = QuantPlan { v: Some(vq), g: Some(ComplexQuant { re: gq.clone(), im: gq }) };
        let run = ptq::run(&CpuBackend::new(), &p, &plan, &v, &SolveOptions::default()).unwrap();
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let r = layer_report(0, &p, &plan, &Storage::default(), VInput::F32(&v), &run.g, &exact).unwrap();
        // v: 150 B of codes per row + 3 groups × (4 + 2) B of static parameters.
        assert_eq!((r.v.bytes, r.v.static_param_bytes), (rows * 150 + 18, 18));
        assert!((r.v.bits_per_value_amortized() - 4.0).abs() < 1e-12);
        // G: per part, 300 B of codes per row + 10 groups × 6 B per row.
        assert_eq!(r.g.bytes, 2 * rows * (300 + 60));
        assert!((r.g.bits_per_value() - 8.0 * 360.0 / 300.0).abs() < 1e-12);
        assert_eq!(r.bytes(), r.v.bytes + r.g.bytes);
        assert!(r.v.stats.rel_pct > 0.0 && r.g.stats.rel_pct > 0.0);
    }

    #[test]
    fn half_precision_storage_reports_its_rounding_and_two_bytes_per_value() {
        let p = Problem::laplacian(64, Complex64::new(0.0, 1.0)).unwrap();
        let v: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        for (fmt, name) in [(FloatFormat::F16, "fp16"), (FloatFormat::Bf16, "bf16")] {
            let storage = Storage { v: fmt, g: fmt, ..Storage::default() };
            let layer = crate::model::Layer { problem: p.clone(), plan: QuantPlan::fp32(), storage: storage.clone() };
            let run = crate::mixed::run_layer(&CpuBackend::new(), &layer, &v, &SolveOptions::default()).unwrap();
            let r = layer_report(0, &p, &QuantPlan::fp32(), &storage, VInput::F32(&v), &run.g, &exact).unwrap();
            assert_eq!((r.v.format.as_str(), r.g.format.as_str()), (name, name));
            assert_eq!((r.v.bytes, r.g.bytes), (128 * 2, 128 * 4));
            assert!((r.bits_per_value() - 16.0).abs() < 1e-12);
            assert!(r.v.stats.rel_pct > 0.0 && r.g.stats.rel_pct > 0.0, "{name}");
        }
    }

    #[test]
    fn unquantized_tensors_report_no_error_and_float_sizes() {
        let p = Problem::laplacian(64, Complex64::new(0.0, 1.0)).unwrap();
        let v = vec![0.25f32; 128];
        let g = CpuBackend::new().solve(&p, VInput::F32(&v), &GFormat::C64, &SolveOptions::default()).unwrap().g;
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let r = layer_report(0, &p, &QuantPlan::fp32(), &Storage::default(), VInput::F32(&v), &g, &exact).unwrap();
        assert_eq!(r.v.stats.rel_pct, 0.0);
        assert_eq!((r.bytes(), r.compression()), (128 * 12, 1.0));
        assert!(r.g.stats.rel_l2 < 1e-6);
        assert_eq!((r.h0_format.as_str(), r.h0_bytes), ("fp64", (3 * 64 - 2) * 8));
    }
}
