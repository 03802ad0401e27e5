//! bk-infer: the Birman–Schwinger (BK) core of ResNet-BK, exact and quantized.
//!
//! For a batch of real potentials v (B rows × N positions), a tridiagonal H0 shared by all rows
//! and a complex shift z, computes per row G_i = [(H0 + diag(v) − z I)^−1]_ii by the O(N) pivot
//! recursion, with the potentials and G optionally stored in INT8 or INT4.
//!
//! ```
//! use bk_infer::{backend::{Backend, CpuBackend, GFormat, SolveOptions, VInput}, Problem, reference};
//! use num_complex::Complex64;
//!
//! let p = Problem::laplacian(512, Complex64::new(0.0, 1.0))?;
//! let v: Vec<f32> = (0..8 * 512).map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0).collect();
//! let g = CpuBackend::new().solve(&p, VInput::F32(&v), &GFormat::C64, &SolveOptions::default())?;
//! let exact = reference::solve_batch_f32(&p, &v)?;
//! let err = bk_infer::stats::ErrorStats::compare(&g.g.to_c128(), &exact);
//! assert!(err.rel_l2 < 1e-6);
//! # Ok::<(), bk_infer::BkError>(())
//! ```

// Lane loops index several arrays in lockstep (`for l in 0..L { a[l] = b[i][l] … }`): the form
// the vectoriser and the reader both follow best here.
#![allow(clippy::needless_range_loop)]
// `!(x > t)` is meant: it is true for NaN as well, which is what those checks catch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod backend;
pub mod bench;
pub mod error;
pub mod grad;
pub mod io;
pub mod layout;
pub mod mixed;
pub mod model;
pub mod plan;
pub mod precision;
pub mod problem;
pub mod qat;
pub mod ptq;
pub mod quant;
pub mod reference;
pub mod report;
pub mod stats;
pub mod workload;

pub use backend::cpu::CpuBackend;
pub use error::{BkError, Result};
pub use model::{Layer, Model, ModelMeta};
pub use plan::QuantPlan;
pub use problem::{NanPolicy, Problem, H0};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
