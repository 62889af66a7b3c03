//! Builds the kernel programs (`ebpf/programs`) for the BPF target with
//! nightly and bpf-linker, into OUT_DIR, where `src/loader.rs` embeds them.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs");
    println!("cargo:rerun-if-changed={root}/src");
    println!(
        "cargo:rerun-if-changed={}/../ebpf/abi/src",
        env!("CARGO_MANIFEST_DIR")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "wardline-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the kernel programs (run `cargo xtask setup` if nightly, rust-src or bpf-linker is missing)")
}
