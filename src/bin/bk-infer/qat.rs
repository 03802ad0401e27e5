//! `bk-infer calibrate --method qat`: PTQ with the best static method, then quantization-aware
//! training of every scale and zero point, with a progress bar.

use anyhow::Result;
use bk_infer::backend::Backend;
use bk_infer::plan::QuantPlan;
use bk_infer::qat::{train, QatConfig, QatResult};
use bk_infer::Problem;
use indicatif::{ProgressBar, ProgressStyle};

/// Options of the QAT stage.
#[derive(clap::Args, Clone, Debug)]
pub struct QatArgs {
    /// Most Adam steps of `--method qat` (each over the training rows: every 4th calibration row
    /// validates, and training stops after 100 steps without a better validation error).
    #[arg(long, default_value_t = QatConfig::default().steps)]
    pub qat_steps: usize,
    /// Learning rate of `--method qat` for log-scales (relative change per step).
    #[arg(long, default_value_t = QatConfig::default().lr_scale)]
    pub qat_lr: f64,
}

impl QatArgs {
    pub fn config(&self) -> QatConfig {
        QatConfig { steps: self.qat_steps, lr_scale: self.qat_lr, ..QatConfig::default() }
    }
}

/// Whether a `--method` value asks for QAT (`qat`), handled before the static methods are parsed.
pub fn is_qat(method: Option<&str>) -> bool {
    method == Some("qat")
}

/// Trains `init` on the calibration rows `cal`, showing progress on stderr.
pub fn run(backend: &dyn Backend, p: &Problem, init: &QuantPlan, cal: &[f32], cfg: &QatConfig, label: &str) -> Result<QatResult> {
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps, {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("QAT {label}"));
    let r = train(backend, p, init, cal, cfg, &mut |step, loss| {
        bar.set_position(step as u64);
        bar.set_message(format!("calibration error {loss:.4} %"));
    });
    bar.finish_and_clear();
    let r = r?;
    println!(
        "QAT {label}: calibration-set error {:.4} % -> {:.4} % on {} training rows, {:.4} % -> {:.4} % on {} validation rows (best at step {} of {})",
        r.initial_loss,
        r.best_loss,
        r.train_rows,
        r.initial_val_loss,
        r.best_val_loss,
        r.val_rows,
        r.best_step,
        r.losses.len() - 1
    );
    Ok(r)
}
