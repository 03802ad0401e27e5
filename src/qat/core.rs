//! The BK core as a training framework sees it: a forward pass with fake-quantized v and G, and
//! a backward pass that takes the upstream gradient of the output and returns the gradients of
//! the input (straight-through), of H0 and z, and of every learned scale and zero point.

use super::fake::{LearnedQuant, QuantGrad};
use crate::backend::{Backend, GFormat, SolveOptions, VInput};
use crate::error::{BkError, Result};
use crate::grad::{DvFormat, GradG};
use crate::plan::QuantPlan;
use crate::problem::Problem;
use crate::quant::ComplexQuant;
use num_complex::{Complex32, Complex64};

/// One BK layer with learnable static quantization of v and of G (either may be absent:
/// that tensor stays f32 / complex64).
#[derive(Clone, Debug)]
pub struct QatCore {
    pub problem: Problem,
    pub v: Option<LearnedQuant>,
    /// Real and imaginary parts of G.
    pub g: Option<[LearnedQuant; 2]>,
}

/// What the forward pass returns, and keeps for the backward.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The output: G of the fake-quantized v, itself fake-quantized. Equal bit for bit to the
    /// real quantized path's dequantized G (see [`crate::qat::fake`]).
    pub g: Vec<Complex32>,
    pub rows: usize,
    v: Vec<f32>,
    v_hat: Vec<f32>,
    g_re: Vec<f32>,
    g_im: Vec<f32>,
}

impl Forward {
    /// G before the output's fake quantization, (Re, Im): what the core computed.
    pub fn g_raw(&self) -> (&[f32], &[f32]) {
        (&self.g_re, &self.g_im)
    }

    /// The potentials the solve saw (v after fake quantization).
    pub fn v_hat(&self) -> &[f32] {
        &self.v_hat
    }
}

/// Gradients of the backward pass.
#[derive(Clone, Debug)]
pub struct Grads {
    /// ∂L/∂v through the fake quantization of v (straight-through inside the code range).
    pub v: Vec<f32>,
    pub h0_diag: Vec<f64>,
    pub h0_super: Vec<f64>,
    pub h0_sub: Vec<f64>,
    /// ∂L/∂Re z + i ∂L/∂Im z.
    pub z: Complex64,
    pub v_quant: Option<QuantGrad>,
    /// Real and imaginary parts of G.
    pub g_quant: Option<[QuantGrad; 2]>,
}

impl QatCore {
    /// Starts from a calibrated plan: every static tensor of it becomes learnable. Dynamic
    /// tensors are rejected (their parameters come from each row at run time).
    pub fn from_plan(problem: Problem, plan: &QuantPlan) -> Result<Self> {
        let n = problem.n();
        plan.validate(n)?;
        let v = plan.v.as_ref().map(|t| LearnedQuant::from_static("v", t, n)).transpose()?;
        let g = match &plan.g {
            Some(g) => Some([LearnedQuant::from_static("g.re", &g.re, n)?, LearnedQuant::from_static("g.im", &g.im, n)?]),
            None => None,
        };
        Ok(QatCore { problem, v, g })
    }

    /// The plan the real quantized path runs with these parameters.
    pub fn plan(&self) -> QuantPlan {
        QuantPlan {
            v: self.v.as_ref().map(LearnedQuant::tensor_quant),
            g: self.g.as_ref().map(|[re, im]| ComplexQuant { re: re.tensor_quant(), im: im.tensor_quant() }),
        }
    }

    /// Forward pass on a row-major (B, N) batch.
    pub fn forward(&self, backend: &dyn Backend, v: &[f32], opts: &SolveOptions) -> Result<Forward> {
        let n = self.problem.n();
        let rows = self.problem.rows_of("v", v.len())?;
        let v_hat = match &self.v {
            Some(q) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(BkError::NonFinite { tensor: "v".into(), row: i / n, pos: i % n, value: v[i] as f64 });
                }
                let mut out = vec![0f32; v.len()];
                q.forward(v, n, &mut out);
                out
            }
            None => v.to_vec(),
        };
        let solved = backend.solve(&self.problem, VInput::F32(&v_hat), &GFormat::C64, opts)?;
        let g = solved.g.to_c64();
        let g_re: Vec<f32> = g.iter().map(|c| c.re).collect();
        let g_im: Vec<f32> = g.iter().map(|c| c.im).collect();
        let g_out = match &self.g {
            Some([qr, qi]) => {
                let (mut a, mut b) = (vec![0f32; g.len()], vec![0f32; g.len()]);
                qr.forward(&g_re, n, &mut a);
                qi.forward(&g_im, n, &mut b);
                a.into_iter().zip(b).map(|(r, i)| Complex32::new(r, i)).collect()
            }
            None => g,
        };
        Ok(Forward { g: g_out, rows, v: v.to_vec(), v_hat, g_re, g_im })
    }

    /// Backward pass: `g_bar` = ∂L/∂Re G + i ∂L/∂Im G of the forward's output `fwd.g`.
    pub fn backward(&self, backend: &dyn Backend, fwd: &Forward, g_bar: &[Complex32], opts: &SolveOptions) -> Result<Grads> {
        let n = self.problem.n();
        if g_bar.len() != fwd.g.len() {
            return Err(BkError::shape("dL/dG", format!("{} values, like the forward's G", fwd.g.len()), format!("{}", g_bar.len())));
        }
        let (g_bar_raw, g_quant) = match &self.g {
            Some([qr, qi]) => {
                let br: Vec<f32> = g_bar.iter().map(|c| c.re).collect();
                let bi: Vec<f32> = g_bar.iter().map(|c| c.im).collect();
                let (mut dr, mut di) = (vec![0f32; br.len()], vec![0f32; bi.len()]);
                let gr = qr.backward(&fwd.g_re, n, &br, Some(&mut dr));
                let gi = qi.backward(&fwd.g_im, n, &bi, Some(&mut di));
                (dr.into_iter().zip(di).map(|(r, i)| Complex32::new(r, i)).collect::<Vec<_>>(), Some([gr, gi]))
            }
            None => (g_bar.to_vec(), None),
        };
        let vjp = backend.vjp(&self.problem, VInput::F32(&fwd.v_hat), GradG::C64(&g_bar_raw), DvFormat::F32, opts)?;
        let dv_hat = vjp.dv.to_f32();
        let (dv, v_quant) = match &self.v {
            Some(q) => {
                let mut dv = vec![0f32; dv_hat.len()];
                let g = q.backward(&fwd.v, n, &dv_hat, Some(&mut dv));
                (dv, Some(g))
            }
            None => (dv_hat, None),
        };
        Ok(Grads { v: dv, h0_diag: vjp.dh0_diag, h0_super: vjp.dh0_super, h0_sub: vjp.dh0_sub, z: vjp.dz, v_quant, g_quant })
    }
}
