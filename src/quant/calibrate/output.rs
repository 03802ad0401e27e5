//! Output-aware calibration: parameters chosen for the error of G itself, the quantity users
//! care about, by re-running the recursion on a reservoir of calibration rows. The error is the
//! seed's metric, Σ |ΔRe G| + |ΔIm G|, against G of the unquantized rows.
//!
//! Each unit's range is `[m − k_lo·(m − Q(p)), m + k_hi·(Q(1 − p) − m)]` around its median m,
//! from quantiles of the values of the units within `w` of it (pooling: neighbouring positions
//! usually share a distribution, and a unit alone may have one sample per calibration row).
//! The estimator family — pooling width w and tail p (the extremes, or quantiles with a few
//! samples beyond them) — and the clip factors k_lo, k_hi shared by all units are chosen by
//! **2-fold cross-validation** over the reservoir rows: statistics from one half, error on the
//! other. Scoring on the rows that produced the statistics would favour ranges that just cover
//! the reservoir's own extremes; held-out scoring measures what unseen data will see.
//!
//! Input (v): candidates are scored through the recursion (G of the dequantized rows, output
//! unquantized). Units with many samples (INT4 groups) are then refined one by one, by
//! coordinate descent in stripes: units `s, s + S, …` move together (G_ii depends on v_j through
//! G_ij², which decays away from j), each scored by the error of G in a window around it; a
//! stripe's moves are kept only if the total error went down.
//!
//! Output (G): with v quantized by the final input plan, Re G and Im G are searched the same
//! way, scored after re-quantization (no solves needed); units with many samples then get their
//! own L1-optimal range. The reference is G of the unquantized rows, so the output ranges may
//! also absorb part of the input's error.

use super::super::{AffineParams, QuantSpec};
use super::kernels;
use crate::backend::{Backend, GOutput, SolveOptions, VInput};
use crate::error::Result;
use crate::problem::Problem;
use num_complex::Complex32;
use rayon::prelude::*;

/// Pooling widths in units (usize::MAX: all units share one set of statistics).
const POOL_WIDTHS: [usize; 4] = [0, 2, 8, usize::MAX];
/// Samples beyond the quantiles of a spread: 0 uses the extremes; otherwise the tail
/// probability is this many samples' worth, but at least SPREAD_P_MIN.
const TAIL_SAMPLES: [f64; 2] = [0.0, 8.0];
const SPREAD_P_MIN: f64 = 0.001;
/// Clip factors: a coarse geometric grid per family, then a fine one around the best.
const COARSE_FIRST: f32 = 0.4;
const COARSE_RATIO: f32 = 1.2;
const COARSE_STEPS: usize = 14;
const FINE_RATIO: f32 = 1.025;
const FINE_STEPS: i32 = 5;
/// A unit is tuned on its own only with at least this many reservoir samples; below it, its
/// extremes are too noisy to fit.
pub(crate) const MIN_UNIT_SAMPLES: usize = 8192;
/// Per-unit input factors relative to the current range, and passes over all units.
const UNIT_FACTORS: [f32; 8] = [0.85, 0.9, 0.94, 0.97, 1.03, 1.06, 1.1, 1.16];
const UNIT_PASSES: usize = 2;
/// Positions a stripe spans: the influence of one v_j on G is well inside this at Im z ~ 1.
const STRIPE_SPAN: usize = 16;
/// Per-unit output clip search: steps per end per round, largest fraction of the span clipped.
const OUT_STEPS: usize = 48;
const OUT_MAX_CLIP: f32 = 0.45;

type Range = (f32, f32);

/// What the searches run on: reservoir rows and G of their unquantized values.
pub(crate) struct Search<'a> {
    backend: &'a dyn Backend,
    problem: &'a Problem,
    opts: SolveOptions,
    rows: &'a [f32],
    gref: Vec<Complex32>,
}

impl<'a> Search<'a> {
    pub fn new(backend: &'a dyn Backend, problem: &'a Problem, rows: &'a [f32]) -> Result<Self> {
        let opts = SolveOptions::default();
        let gref = solve(backend, problem, rows, &opts)?;
        Ok(Search { backend, problem, opts, rows, gref })
    }

    fn n(&self) -> usize {
        self.problem.n()
    }

    fn row_count(&self) -> usize {
        self.rows.len() / self.n()
    }

    /// Σ over rows of |ΔRe G| + |ΔIm G| at each position, G solved from `v`.
    fn position_errors(&self, v: &[f32]) -> Result<Vec<f64>> {
        let g = solve(self.backend, self.problem, v, &self.opts)?;
        let n = self.n();
        Ok(g.par_chunks(n)
            .zip(self.gref.par_chunks(n))
            .fold(
                || vec![0f64; n],
                |mut acc, (a, b)| {
                    for ((e, x), y) in acc.iter_mut().zip(a).zip(b) {
                        *e += ((x.re - y.re).abs() + (x.im - y.im).abs()) as f64;
                    }
                    acc
                },
            )
            .reduce(|| vec![0f64; n], add))
    }

    /// Input parameters for `spec` minimising the error of G.
    pub fn input(&self, spec: &QuantSpec) -> Result<AffineParams> {
        let n = self.n();
        let values = FoldValues::new(spec, n, self.rows.chunks(n));
        // Fold f's rows are quantized with the ranges of the other fold's statistics.
        let cv_error = |ranges: &[Vec<Range>; 2]| -> Result<f64> {
            let params = [params_of(spec, &ranges[1]), params_of(spec, &ranges[0])];
            let mut v = vec![0f32; self.rows.len()];
            v.par_chunks_mut(n).zip(self.rows.par_chunks(n)).enumerate().for_each(|(r, (o, x))| {
                round_trip_row(spec, &params[r % 2], x, o);
            });
            Ok(self.position_errors(&v)?.iter().sum())
        };
        let (family, kl, kh) = select(spec.symmetric, &values, cv_error)?;
        let mut ranges = family.ranges(&values.all, kl, kh);
        let units = ranges.len();
        if self.row_count() * spec.group_size >= MIN_UNIT_SAMPLES && units > 1 {
            ranges = self.refine_units(spec, ranges)?;
        }
        Ok(params_of(spec, &ranges))
    }

    /// Total error of G with v quantized to `ranges`.
    fn total_error(&self, spec: &QuantSpec, ranges: &[Range]) -> Result<f64> {
        Ok(self.position_errors(&round_trip(spec, &params_of(spec, ranges), self.rows, self.n()))?.iter().sum())
    }

    /// Coordinate descent over units in stripes (see the module docs).
    fn refine_units(&self, spec: &QuantSpec, mut ranges: Vec<Range>) -> Result<Vec<Range>> {
        let (n, gs) = (self.n(), spec.group_size);
        let units = ranges.len();
        let stride = STRIPE_SPAN.div_ceil(gs).clamp(2, units);
        let half = stride * gs / 2;
        let window = |j: usize| (j * gs).saturating_sub(half)..((j + 1) * gs + half).min(n);
        let mut total = self.total_error(spec, &ranges)?;
        for _pass in 0..UNIT_PASSES {
            for s in 0..stride {
                let members: Vec<usize> = (s..units).step_by(stride).collect();
                let base = round_trip(spec, &params_of(spec, &ranges), self.rows, n);
                let cur = self.position_errors(&base)?;
                let mut chosen: Vec<(f64, f32)> = members.iter().map(|&j| (cur[window(j)].iter().sum(), 1.0)).collect();
                for &f in &UNIT_FACTORS {
                    let mut trial = ranges.clone();
                    for &j in &members {
                        trial[j] = scale_about_zero(ranges[j], f);
                    }
                    let params = params_of(spec, &trial);
                    let mut v = base.clone();
                    v.par_chunks_mut(n).zip(self.rows.par_chunks(n)).for_each(|(o, x)| {
                        for &j in &members {
                            round_trip_unit(spec, &params, j, x, o);
                        }
                    });
                    let e = self.position_errors(&v)?;
                    for (c, &j) in chosen.iter_mut().zip(&members) {
                        let w: f64 = e[window(j)].iter().sum();
                        if w < c.0 {
                            *c = (w, f);
                        }
                    }
                }
                let mut next = ranges.clone();
                for (&j, &(_, f)) in members.iter().zip(&chosen) {
                    next[j] = scale_about_zero(ranges[j], f);
                }
                let t = self.total_error(spec, &next)?;
                if t < total {
                    (total, ranges) = (t, next);
                }
            }
        }
        Ok(ranges)
    }

    /// Parameters of Re G and Im G for `spec`, with v quantized as `v` says (or not at all).
    pub fn output(&self, spec: &QuantSpec, v: Option<(&QuantSpec, &AffineParams)>) -> Result<(AffineParams, AffineParams)> {
        let n = self.n();
        let vq = v.map(|(vs, vp)| round_trip(vs, vp, self.rows, n));
        let g = solve(self.backend, self.problem, vq.as_deref().unwrap_or(self.rows), &self.opts)?;
        let per_unit = self.row_count() * spec.group_size >= MIN_UNIT_SAMPLES;
        let part = |im: bool| -> Result<AffineParams> {
            let pick = move |c: &Complex32| if im { c.im } else { c.re };
            let x: Vec<f32> = g.iter().map(pick).collect();
            let y: Vec<f32> = self.gref.iter().map(pick).collect();
            let values = FoldValues::new(spec, n, x.chunks(n));
            let refs = FoldValues::new(spec, n, y.chunks(n));
            let cv_error = |ranges: &[Vec<Range>; 2]| -> Result<f64> {
                // Fold f's values are scored with the other fold's ranges.
                Ok((0..2)
                    .map(|f| {
                        let params = params_of(spec, &ranges[1 - f]);
                        values.folds[f].par_iter().zip(&refs.folds[f]).enumerate().map(|(j, (xs, ys))| {
                            let (s, z) = params.get(j);
                            l1(spec, xs, ys, s, z as i16)
                        }).sum::<f64>()
                    })
                    .sum())
            };
            let (family, kl, kh) = select(spec.symmetric, &values, cv_error)?;
            let mut ranges = family.ranges(&values.all, kl, kh);
            if per_unit {
                ranges = ranges
                    .par_iter()
                    .enumerate()
                    .map(|(j, &r)| l1_clip(spec, &values.all[j], &refs.all[j], r))
                    .collect();
            }
            Ok(params_of(spec, &ranges))
        };
        Ok((part(false)?, part(true)?))
    }
}

/// Values of each unit: for the two folds (even and odd rows) and for all rows.
struct FoldValues {
    folds: [Vec<Vec<f32>>; 2],
    all: Vec<Vec<f32>>,
}

impl FoldValues {
    fn new<'r>(spec: &QuantSpec, n: usize, rows: impl Iterator<Item = &'r [f32]> + Clone) -> Self {
        let gs = spec.group_size;
        let units = spec.groups(n);
        let collect = |parity: Option<usize>| -> Vec<Vec<f32>> {
            (0..units)
                .map(|j| {
                    let cols = j * gs..((j + 1) * gs).min(n);
                    rows.clone()
                        .enumerate()
                        .filter(|(r, _)| parity.map_or(true, |p| r % 2 == p))
                        .flat_map(|(_, row)| row[cols.clone()].iter().copied())
                        .collect()
                })
                .collect()
        };
        if rows.clone().nth(1).is_none() {
            // One row cannot be split: score in sample.
            let all = collect(None);
            return FoldValues { folds: [all.clone(), all.clone()], all };
        }
        FoldValues { folds: [collect(Some(0)), collect(Some(1))], all: collect(None) }
    }
}

/// How a unit's range is estimated: pooling width and samples beyond the quantiles.
#[derive(Clone, Copy, Debug)]
struct Family {
    width: usize,
    tail: f64,
}

impl Family {
    fn spreads(&self, values: &[Vec<f32>]) -> Vec<Spread> {
        let units = values.len();
        if self.width >= units {
            let all: Vec<f32> = values.iter().flatten().copied().collect();
            return vec![Spread::of(all, self.tail); units];
        }
        (0..units)
            .into_par_iter()
            .map(|j| {
                let (a, b) = (j.saturating_sub(self.width), (j + self.width + 1).min(units));
                Spread::of(values[a..b].iter().flatten().copied().collect(), self.tail)
            })
            .collect()
    }

    fn ranges(&self, values: &[Vec<f32>], kl: f32, kh: f32) -> Vec<Range> {
        self.spreads(values).iter().map(|s| s.range(kl, kh)).collect()
    }
}

/// The family and clip factors with the least cross-validated error. `cv_error` scores a pair
/// of per-unit ranges, one from each fold's statistics.
fn select(symmetric: bool, values: &FoldValues, mut cv_error: impl FnMut(&[Vec<Range>; 2]) -> Result<f64>) -> Result<(Family, f32, f32)> {
    let mut best = (f64::INFINITY, Family { width: 0, tail: 0.0 }, 1f32, 1f32);
    let mut fold_spreads = Vec::new();
    for &width in &POOL_WIDTHS {
        for &tail in &TAIL_SAMPLES {
            let fam = Family { width, tail };
            let sp = [fam.spreads(&values.folds[0]), fam.spreads(&values.folds[1])];
            for k in geometric(COARSE_FIRST, COARSE_RATIO, COARSE_STEPS) {
                let e = cv_error(&ranges_of(&sp, k, k))?;
                if e < best.0 {
                    best = (e, fam, k, k);
                }
            }
            fold_spreads.push((width, tail, sp));
        }
    }
    let (_, fam, k0, _) = best;
    let sp = &fold_spreads.iter().find(|(w, t, _)| *w == fam.width && *t == fam.tail).expect("family was scored").2;
    let fine = |centre: f32| (-FINE_STEPS..=FINE_STEPS).map(move |i| centre * FINE_RATIO.powi(i));
    let mut line = |kl_of: &dyn Fn(f32) -> (f32, f32), centre: f32, best: &mut (f64, f32, f32)| -> Result<()> {
        for k in fine(centre) {
            let (kl, kh) = kl_of(k);
            let e = cv_error(&ranges_of(sp, kl, kh))?;
            if e < best.0 {
                *best = (e, kl, kh);
            }
        }
        Ok(())
    };
    let mut fine_best = (best.0, k0, k0);
    line(&|k| (k, k), k0, &mut fine_best)?;
    if !symmetric {
        let kh = fine_best.2;
        line(&|k| (k, kh), fine_best.1, &mut fine_best)?;
        let kl = fine_best.1;
        line(&|k| (kl, k), fine_best.2, &mut fine_best)?;
    }
    Ok((fam, fine_best.1, fine_best.2))
}

fn ranges_of(sp: &[Vec<Spread>; 2], kl: f32, kh: f32) -> [Vec<Range>; 2] {
    [sp[0].iter().map(|s| s.range(kl, kh)).collect(), sp[1].iter().map(|s| s.range(kl, kh)).collect()]
}

/// A unit's median and the distances from it down to its p quantile and up to its 1 − p one.
#[derive(Clone, Copy, Debug)]
struct Spread {
    m: f32,
    lo: f32,
    hi: f32,
}

impl Spread {
    /// Statistics of `xs`, with `tail` samples' worth of probability beyond the quantiles.
    fn of(mut xs: Vec<f32>, tail: f64) -> Spread {
        let len = xs.len();
        if len == 0 {
            return Spread { m: 0.0, lo: 0.0, hi: 0.0 };
        }
        let p = if tail == 0.0 { 0.0 } else { SPREAD_P_MIN.max(tail / len as f64).min(0.25) };
        let index = |q: f64| ((len - 1) as f64 * q).round() as usize;
        let (i_lo, mid, i_hi) = (index(p), index(0.5), index(1.0 - p));
        // The median splits the values; each tail quantile is then found in its own half.
        let (below, &mut m, above) = xs.select_nth_unstable_by(mid, f32::total_cmp);
        let lo = if i_lo < mid { *below.select_nth_unstable_by(i_lo, f32::total_cmp).1 } else { m };
        let hi = if i_hi > mid { *above.select_nth_unstable_by(i_hi - mid - 1, f32::total_cmp).1 } else { m };
        Spread { m, lo: m - lo, hi: hi - m }
    }

    fn range(&self, kl: f32, kh: f32) -> Range {
        (self.m - kl * self.lo, self.m + kh * self.hi)
    }
}

fn geometric(first: f32, ratio: f32, steps: usize) -> impl Iterator<Item = f32> {
    (0..steps).map(move |i| first * ratio.powi(i as i32))
}

fn add(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// G of `v` as complex64.
fn solve(backend: &dyn Backend, p: &Problem, v: &[f32], opts: &SolveOptions) -> Result<Vec<Complex32>> {
    let mut out = GOutput::C64(vec![Complex32::default(); v.len()]);
    backend.solve_into(p, VInput::F32(v), &mut out, opts)?;
    Ok(match out {
        GOutput::C64(g) => g,
        other => other.to_c64(),
    })
}

/// Σ |deq(q(x)) − y| over a unit's values.
fn l1(spec: &QuantSpec, xs: &[f32], ys: &[f32], scale: f32, zero: i16) -> f64 {
    kernels::l1(xs, ys, scale, zero as i32, spec.qmin(), spec.qmax())
}

/// The clip range of one output unit with the least L1 error: coordinate search on each end
/// of the observed range, kept only if it beats `start`.
fn l1_clip(spec: &QuantSpec, xs: &[f32], ys: &[f32], start: Range) -> Range {
    let (lo0, hi0) = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if xs.is_empty() {
        return start;
    }
    let eval = |(lo, hi): Range| {
        let (s, z) = AffineParams::from_range(spec, lo, hi);
        l1(spec, xs, ys, s, z)
    };
    let mut best = (eval(start), start);
    let span = hi0 - lo0;
    let (mut a, mut b) = (0f32, 0f32);
    for _round in 0..2 {
        for side in 0..2 {
            for j in 0..OUT_STEPS {
                let f = OUT_MAX_CLIP * j as f32 / OUT_STEPS as f32;
                let (ta, tb) = if side == 0 { (f, b) } else { (a, f) };
                let r = (lo0 + ta * span, hi0 - tb * span);
                let e = eval(r);
                if e < best.0 {
                    best = (e, r);
                    (a, b) = (ta, tb);
                }
            }
        }
    }
    best.1
}

/// [lo, hi] scaled by `f` about 0 (or about the end nearest 0 when the range excludes it).
fn scale_about_zero((lo, hi): Range, f: f32) -> Range {
    let anchor = 0f32.clamp(lo, hi);
    (anchor + f * (lo - anchor), anchor + f * (hi - anchor))
}

fn params_of(spec: &QuantSpec, ranges: &[Range]) -> AffineParams {
    let pz: Vec<(f32, i16)> = ranges.iter().map(|&(lo, hi)| AffineParams::from_range(spec, lo, hi)).collect();
    AffineParams { scale: pz.iter().map(|p| p.0).collect(), zero: (!spec.symmetric).then(|| pz.iter().map(|p| p.1).collect()) }
}

/// v after a static round trip with `params` (what the load path sees).
fn round_trip(spec: &QuantSpec, params: &AffineParams, v: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(n).zip(v.par_chunks(n)).for_each(|(o, x)| round_trip_row(spec, params, x, o));
    out
}

fn round_trip_row(spec: &QuantSpec, params: &AffineParams, x: &[f32], out: &mut [f32]) {
    kernels::round_trip_row(x, out, spec.group_size, &params.scale, params.zero.as_deref(), spec.qmin(), spec.qmax());
}

fn round_trip_unit(spec: &QuantSpec, params: &AffineParams, j: usize, x: &[f32], out: &mut [f32]) {
    let gs = spec.group_size;
    let (s, z) = params.get(j);
    let cols = j * gs..((j + 1) * gs).min(x.len());
    kernels::round_trip(&x[cols.clone()], &mut out[cols], s, z, spec.qmin(), spec.qmax());
}
