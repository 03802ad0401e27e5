fn main() {
    println!("cargo::rustc-check-cfg=cfg(bk_cuda)");
    println!("cargo::rerun-if-changed=build.rs");
}
