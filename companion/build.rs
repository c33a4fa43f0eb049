//! Records the target triple, which names this build's binaries in a release manifest.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo:rustc-env=GATELET_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
