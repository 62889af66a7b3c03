//! Link options for the BPF target only (host builds of this crate are the
//! empty stub in `main.rs`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        // bpf-linker's default, `--bpf-expand-memcpy-in-order`, leaves every
        // memset to a library call, which links in a one-byte-per-iteration
        // loop: zeroing a 16-byte address cost a loop of 16 stores on every
        // packet. LLVM's own expansion turns constant-size memset and memcpy
        // into a few word-sized stores.
        println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    }
}
