//! `bk-infer info`: what this build and this machine can do.

use anyhow::Result;
use bk_infer::backend::{self, Backend, CpuBackend};

#[derive(clap::Args, Debug, Default)]
pub struct Args {}

pub fn main(_: Args) -> Result<()> {
    println!("bk-infer {}", env!("CARGO_PKG_VERSION"));
    println!("model format: {} v{}", bk_infer::model::FORMAT, bk_infer::model::FORMAT_VERSION);
    println!("backends:");
    println!("  cpu:  {}", CpuBackend::new().device());
    match backend::select("cuda") {
        Ok(b) => println!("  cuda: {}", b.device()),
        Err(e) => println!("  cuda: unavailable ({e})"),
    }
    for line in backend::cuda_info() {
        println!("  {line}");
    }
    Ok(())
}
