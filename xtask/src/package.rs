//! `cargo xtask package`: the Debian packages, with cargo-deb.
//!
//! Three packages, one per place they run: `wardline-agent` (every
//! enforcing host and gateway), `wardline-control-plane` (the control-plane
//! hosts) and `wardctl` (operators' machines and the offline one that keeps
//! the site CA). Each package's contents are its `[package.metadata.deb]`:
//! the binary, its systemd unit from `packaging/systemd/` (installed,
//! neither enabled nor started), its example configuration under
//! `/etc/wardline` as a conffile, and its documents.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, output, run};
use crate::{setup, workspace_root};

/// The packages, by cargo package name (each also names its .deb).
pub const PACKAGES: &[&str] = &["wardline-agent", "wardline-control-plane", "wardctl"];

/// Where cargo-deb writes the packages, from the workspace root.
pub const DEB_DIR: &str = "target/debian";

/// Sets up (cargo-deb among the rest), builds the three binaries in one
/// release build (the agent's embeds the kernel programs, built with
/// nightly and bpf-linker), then packs each without building again.
/// Returns the .deb files written.
pub fn package() -> Result<Vec<PathBuf>> {
    setup::setup()?;
    let root = workspace_root();
    let mut build = cargo();
    build
        .current_dir(&root)
        .args(["build", "--release", "--locked"]);
    for name in PACKAGES {
        build.args(["-p", name]);
    }
    run(&mut build)?;
    let dir = root.join(DEB_DIR);
    let mut debs = Vec::new();
    for name in PACKAGES {
        run(cargo()
            .current_dir(&root)
            .args(["deb", "-p", name, "--no-build"]))?;
        let deb = find_deb(&dir, name)?
            .with_context(|| format!("cargo deb -p {name} wrote no .deb in {}", dir.display()))?;
        println!("package: {}", deb.display());
        debs.push(deb);
    }
    inspect(&root)?;
    Ok(debs)
}

/// The newest .deb of `name` in `dir`, if any.
pub fn find_deb(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if !(file.starts_with(&format!("{name}_")) && file.ends_with(".deb")) {
            continue;
        }
        let modified = path.metadata()?.modified()?;
        if found.as_ref().is_none_or(|(newest, _)| modified > *newest) {
            found = Some((modified, path));
        }
    }
    Ok(found.map(|(_, path)| path))
}

/// What each package must hold: paths in its data archive and, for the
/// ones with a unit, its conffile.
const CONTENTS: &[(&str, &[&str], &[&str])] = &[
    (
        "wardline-agent",
        &[
            "./usr/bin/wardline-agent",
            "./usr/lib/systemd/system/wardline-agent.service",
            "./etc/wardline/agent.yaml",
        ],
        &["/etc/wardline/agent.yaml"],
    ),
    (
        "wardline-control-plane",
        &[
            "./usr/bin/wardline-control-plane",
            "./usr/lib/systemd/system/wardline-control-plane.service",
            "./etc/wardline/control-plane.env",
        ],
        &["/etc/wardline/control-plane.env"],
    ),
    ("wardctl", &["./usr/bin/wardctl"], &[]),
];

/// Checks the packages in [`DEB_DIR`] with `dpkg-deb`: each holds its
/// binary, unit and configuration, marks the configuration as a conffile,
/// and the unit in it is the one in `packaging/systemd/`. Packages not
/// built are reported and skipped (`cargo xtask package` builds them).
pub fn inspect(root: &Path) -> Result<()> {
    let dir = root.join(DEB_DIR);
    for (name, paths, conffiles) in CONTENTS {
        let Some(deb) = find_deb(&dir, name)? else {
            println!(
                "package: no {name} .deb in {}: run `cargo xtask package`; skipped",
                dir.display()
            );
            continue;
        };
        let listing = output(Command::new("dpkg-deb").arg("-c").arg(&deb))
            .with_context(|| format!("dpkg-deb -c {}", deb.display()))?;
        for path in *paths {
            if !listing
                .lines()
                .any(|line| line.split_whitespace().last() == Some(*path))
            {
                bail!("{}: holds no {path}:\n{listing}", deb.display());
            }
        }
        let listed = output(
            Command::new("dpkg-deb")
                .arg("-I")
                .arg(&deb)
                .arg("conffiles"),
        )
        .unwrap_or_default();
        for conffile in *conffiles {
            if !listed.lines().any(|line| line.trim() == *conffile) {
                bail!(
                    "{}: {conffile} is not a conffile (conffiles: {listed:?})",
                    deb.display()
                );
            }
        }
        if let Some(unit) = paths.iter().find(|p| p.ends_with(".service")) {
            let unit_name = unit.rsplit('/').next().unwrap_or(unit);
            let shipped = unpack_one(&deb, unit)?;
            let source =
                std::fs::read_to_string(root.join(crate::units::UNIT_DIR).join(unit_name))?;
            if shipped != source {
                bail!(
                    "{}: {unit} differs from packaging/systemd/{unit_name}: rebuild it with `cargo xtask package`",
                    deb.display()
                );
            }
        }
        println!("package: {} holds what it should", deb.display());
    }
    Ok(())
}

/// The text of one file of a package's data archive.
fn unpack_one(deb: &Path, path: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\"")
        .arg("sh")
        .arg(deb)
        .arg(path)
        .output()
        .with_context(|| format!("unpacking {path} from {}", deb.display()))?;
    if !out.status.success() {
        bail!(
            "unpacking {path} from {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
