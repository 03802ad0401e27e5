//! A quantization plan: how each tensor of one BK layer is stored.

use crate::error::Result;
use crate::quant::{ComplexQuant, TensorQuant};

/// Formats of the input v and the output G of one layer; `None` is floating point
/// (f32 for v, complex64 for G).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantPlan {
    pub v: Option<TensorQuant>,
    pub g: Option<ComplexQuant>,
}

impl QuantPlan {
    pub fn fp32() -> Self {
        QuantPlan::default()
    }

    pub fn validate(&self, n: usize) -> Result<()> {
        if let Some(v) = &self.v {
            v.validate("v", n)?;
        }
        if let Some(g) = &self.g {
            g.validate("g", n)?;
        }
        Ok(())
    }

    /// e.g. `v=int8 g=int8` or `v=int4-g128 g=fp32`.
    pub fn label(&self) -> String {
        let v = self.v.as_ref().map_or("fp32".to_string(), |t| t.spec.label());
        let g = self.g.as_ref().map_or("fp32".to_string(), |t| t.spec().label());
        format!("v={v} g={g}")
    }

    /// Exact bytes to store v and G for a (rows, n) call in this plan.
    pub fn stored_bytes(&self, rows: usize, n: usize) -> (usize, usize) {
        let v = self.v.as_ref().map_or(rows * n * 4, |t| t.spec.stored_bytes(rows, n));
        let g = self.g.as_ref().map_or(rows * n * 8, |t| t.stored_bytes(rows, n));
        (v, g)
    }
}
