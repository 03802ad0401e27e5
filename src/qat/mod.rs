//! Quantization-aware training through the BK core: fake quantization that matches the real
//! quantized path bit for bit, learned (LSQ) scales and zero points for v and G, and the
//! calibration that trains them ([`train`]).
//!
//! A training framework calls [`QatCore::forward`], computes its loss on the output, then
//! [`QatCore::backward`] with the upstream gradient ∂L/∂Re G + i ∂L/∂Im G (the convention of
//! [`crate::grad`]); it gets ∂L/∂v (straight-through the fake quantization of v), ∂L/∂H0, ∂L/∂z
//! and the gradient of every scale and zero point, and after its own update step reads the plan
//! the real quantized path runs with from [`QatCore::plan`].
//!
//! ```
//! use bk_infer::backend::{CpuBackend, SolveOptions};
//! use bk_infer::qat::QatCore;
//! use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
//! use bk_infer::quant::Bits;
//! use bk_infer::workload::{Potential, Rng};
//! use bk_infer::Problem;
//! use num_complex::{Complex32, Complex64};
//!
//! let (rows, n) = (4, 256);
//! let p = Problem::laplacian(n, Complex64::new(0.0, 1.0))?;
//! let cpu = CpuBackend::new();
//! let v = Potential::SEED.sample(&mut Rng::new(1), rows, n);
//!
//! // A calibrated INT8 plan (v and G), made learnable.
//! let mut cal = Calibrator::new(p.clone(), CalibrationConfig::both(Bits::Int8, 1, Method::Mse))?;
//! cal.collect(&cpu, &v)?;
//! let mut core = QatCore::from_plan(p.clone(), &cal.end()?.plan)?;
//!
//! // Forward, a loss on G (here L = Σ Im G), backward with its gradient.
//! let opts = SolveOptions::default();
//! let fwd = core.forward(&cpu, &v, &opts)?;
//! let g_bar = vec![Complex32::new(0.0, 1.0); fwd.g.len()]; // ∂L/∂Re G + i ∂L/∂Im G
//! let grads = core.backward(&cpu, &fwd, &g_bar, &opts)?;
//! assert_eq!(grads.v.len(), rows * n);
//! assert_eq!(grads.h0_diag.len(), n);
//! let dscale = &grads.g_quant.as_ref().unwrap()[1].scale; // ∂L/∂s of each Im G scale
//! assert_eq!(dscale.len(), n);
//!
//! // An SGD step on the log-scales of Im G, then the plan for the real INT8 path.
//! let im = &mut core.g.as_mut().unwrap()[1];
//! for (theta, ds) in im.log_scale.iter_mut().zip(dscale) {
//!     *theta -= 1e-3 * theta.exp() * ds;
//! }
//! let plan = core.plan();
//! assert!(plan.g.is_some());
//! # Ok::<(), bk_infer::BkError>(())
//! ```

pub mod core;
pub mod fake;
pub mod train;

pub use self::core::{Forward, Grads, QatCore};
pub use fake::{fake_quantize, fake_quantize_complex, LearnedQuant, QuantGrad};
pub use train::{train, QatConfig, QatResult};
