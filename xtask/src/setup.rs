//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to
//! build and test Wardline. Idempotent: every step checks first and says
//! whether it is skipped.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, output, run, succeeds};
use crate::is_root;

/// Debian packages: LLVM 22 for bpf-linker, the network tools the tests and
/// benchmarks drive, etcd for the control plane's real-component tests,
/// protoc for etcd's client, systemd for `systemd-analyze`, which checks
/// the units (Debian 12 has it; a container may not), Prometheus, which
/// the observability test runs for real, and rsyslog with its TLS driver
/// and openssl, which the SIEM export's test runs as its collector,
/// Chromium, in which the dashboard's test reads the rendered pages, and
/// PostgreSQL (15 on Debian 12), which the shared flow store's tests start,
/// and curl, with which the roles test asks the dashboard as an operator
/// whose role is taken away.
pub const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "iperf3",
    "bpftool",
    "nftables",
    "iptables",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    "systemd",
    "prometheus",
    "rsyslog",
    "rsyslog-gnutls",
    "openssl",
    "chromium",
    "postgresql",
    "curl",
];

/// The bpf-linker release that links against LLVM 22 (its default feature
/// wants LLVM 23, which Debian lacks).
const BPF_LINKER: &str = "bpf-linker@0.13.0";
const BPF_LINKER_VERSION: &str = "bpf-linker 0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Pinned: the newest release known to build with this workspace's Rust
/// (1.95); an unpinned install takes whatever is newest.
const NEXTEST: &str = "cargo-nextest@0.9.143";

/// Pinned like nextest: `cargo xtask package` builds the .deb files with it.
const CARGO_DEB: &str = "cargo-deb@3.8.0";
/// Pinned likewise; `cargo xtask fuzz` runs it with nightly.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

const BPFFS: &str = "/sys/fs/bpf";

/// Runs every step.
pub fn setup() -> Result<()> {
    let root = is_root();
    packages(root)?;
    nightly()?;
    bpf_linker()?;
    nextest()?;
    cargo_deb()?;
    cargo_fuzz()?;
    bpffs(root)?;
    println!("setup: done");
    Ok(())
}

fn skip(what: &str) {
    println!("setup: {what}: present, skipped");
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", package]))
        .is_some_and(|status| status.starts_with("ii"))
}

fn packages(root: bool) -> Result<()> {
    if !succeeds(Command::new("dpkg-query").arg("--version")) {
        println!(
            "setup: no dpkg here (not Debian): install by hand: {}",
            PACKAGES.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        skip(&format!("Debian packages ({})", PACKAGES.join(" ")));
        return Ok(());
    }
    if !root {
        println!(
            "setup: missing Debian packages {}: run as root to install them, skipped",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&missing))?;
    Ok(())
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs) to install the nightly toolchain")?;
    if toolchains.lines().any(|line| line.starts_with("nightly")) {
        skip("nightly toolchain");
    } else {
        println!("setup: installing the nightly toolchain (the kernel programs need it)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|line| line.starts_with("rust-src")) {
        skip("rust-src for nightly");
    } else {
        println!("setup: adding rust-src to nightly (core for the BPF target)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        skip(BPF_LINKER_VERSION);
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("{LLVM_PREFIX} has no LLVM 22: install llvm-22-dev (as root: cargo xtask setup)");
    }
    println!(
        "setup: installing {BPF_LINKER} against LLVM 22 (found {:?})",
        version.trim()
    );
    run(cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        BPF_LINKER,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--locked",
    ]))
}

fn nextest() -> Result<()> {
    if succeeds(cargo().args(["nextest", "--version"])) {
        skip("cargo-nextest");
        return Ok(());
    }
    println!("setup: installing cargo-nextest");
    run(cargo().args(["install", NEXTEST, "--locked"]))
}

fn cargo_deb() -> Result<()> {
    if succeeds(cargo().args(["deb", "--version"])) {
        skip("cargo-deb");
        return Ok(());
    }
    println!("setup: installing cargo-deb (cargo xtask package)");
    run(cargo().args(["install", CARGO_DEB, "--locked"]))
}

fn cargo_fuzz() -> Result<()> {
    if succeeds(cargo().args(["fuzz", "--version"])) {
        skip("cargo-fuzz");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (cargo xtask fuzz)");
    run(cargo().args(["install", CARGO_FUZZ, "--locked"]))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    }))
}

fn bpffs(root: bool) -> Result<()> {
    if bpffs_mounted()? {
        skip(&format!("bpffs at {BPFFS}"));
        return Ok(());
    }
    if !root {
        println!("setup: bpffs is not mounted at {BPFFS}: run as root to mount it, skipped");
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS} (pinned links and maps live there)");
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
