//! Precision policies: rules that fix the precision of tensors by layer.

use crate::error::{BkError, Result};
use crate::precision::Precision;

/// Which layers a clause applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Selector {
    All,
    First,
    Last,
    Layer(usize),
}

/// Fixed precisions by rule.
///
/// Syntax: clauses separated by `;`, each `[SELECTOR:]TENSOR=PRECISION[,TENSOR=PRECISION…]`
/// with SELECTOR ∈ `all` (the default), `first`, `last` or a layer index, TENSOR ∈ `v`, `h0`,
/// `g`, and PRECISION as in [`Precision::parse`]; later clauses override earlier ones. Tensors
/// no clause names are left to the bit allocation (or stay at full precision without one).
///
/// `seed` is the seed's policy, "INT4 for the MoE, INT8 for the BK core, FP16 for output
/// layers", read for a stack of BK layers: the potentials v are the MoE's output (int4-g128),
/// the BK core's own tensors H0 and G are int8 (H0 in groups of 128: one scale per position
/// would cost more than the codes), and the last layer's G, which feeds the output layers, is
/// fp16: `v=int4-g128,h0=int8-g128,g=int8;last:g=fp16`.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    clauses: Vec<(Selector, Vec<(usize, Precision)>)>,
}

impl Policy {
    pub const SEED: &'static str = "v=int4-g128,h0=int8-g128,g=int8;last:g=fp16";

    pub fn parse(s: &str) -> Result<Self> {
        let text = if s == "seed" { Self::SEED } else { s };
        let bad = |msg: String| BkError::InvalidArgument(format!("policy `{s}`: {msg}"));
        let mut clauses = Vec::new();
        for clause in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (sel, body) = match clause.split_once(':') {
                Some((sel, body)) => (
                    match sel.trim() {
                        "all" => Selector::All,
                        "first" => Selector::First,
                        "last" => Selector::Last,
                        k => Selector::Layer(k.parse().map_err(|_| bad(format!("`{k}` is not all, first, last or a layer index")))?),
                    },
                    body,
                ),
                None => (Selector::All, clause),
            };
            let mut set = Vec::new();
            for item in body.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (t, p) = item.split_once('=').ok_or_else(|| bad(format!("`{item}` is not TENSOR=PRECISION")))?;
                let tensor = match t.trim() {
                    "v" => 0,
                    "h0" => 1,
                    "g" => 2,
                    other => return Err(bad(format!("unknown tensor `{other}` (expected v, h0 or g)"))),
                };
                let prec = Precision::parse(p.trim(), 128)?;
                if tensor != 1 && prec == Precision::Fp64 {
                    return Err(bad("fp64 storage is offered for h0 only".into()));
                }
                set.push((tensor, prec));
            }
            clauses.push((sel, set));
        }
        Ok(Policy { clauses })
    }

    /// The precisions this policy fixes for layer `k` of `layers`, as [v, h0, g].
    pub fn pinned(&self, k: usize, layers: usize) -> [Option<Precision>; 3] {
        let mut out = [None; 3];
        for (sel, set) in &self.clauses {
            let hit = match *sel {
                Selector::All => true,
                Selector::First => k == 0,
                Selector::Last => k + 1 == layers,
                Selector::Layer(j) => j == k,
            };
            if hit {
                for &(t, p) in set {
                    out[t] = Some(p);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_policy_reads_as_documented() {
        let p = Policy::parse("seed").unwrap();
        assert_eq!(p.pinned(0, 3), [Some(Precision::int4(128)), Some(Precision::int8(128)), Some(Precision::int8(1))]);
        assert_eq!(p.pinned(2, 3)[2], Some(Precision::Fp16));
        let q = Policy::parse("g=bf16; 1:v=fp16,h0=fp32").unwrap();
        assert_eq!(q.pinned(1, 3), [Some(Precision::Fp16), Some(Precision::Fp32), Some(Precision::Bf16)]);
        assert_eq!(q.pinned(0, 3), [None, None, Some(Precision::Bf16)]);
        for bad in ["x=int8", "v:int8", "v=int5", "2x:g=fp16", "v=fp64"] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }
}
