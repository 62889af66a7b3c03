//! The systemd units in `packaging/systemd/`, checked as `cargo xtask test`
//! runs: `systemd-analyze verify` (the units load, every directive is
//! known, the programs they start exist) and `systemd-analyze security
//! --offline` against an exposure ceiling per unit, so that a change that
//! loosens a unit's sandbox fails the test run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::run;

/// Each unit, the binary its `ExecStart` names under `/usr/bin`, and the
/// highest exposure `systemd-analyze security` may give it, in tenths (its
/// `--threshold` unit: 19 is "1.9"). The ceilings are the levels measured
/// when the units were written (docs/deployment.md); lower them when a unit
/// is tightened, never raise them to let a looser unit through.
pub const UNITS: &[(&str, &str, u32)] = &[
    ("wardline-agent.service", "wardline-agent", 19),
    (
        "wardline-control-plane.service",
        "wardline-control-plane",
        11,
    ),
];

/// Where the units are kept, from the workspace root.
pub const UNIT_DIR: &str = "packaging/systemd";

/// Checks every unit of [`UNITS`]. `bin_dir` holds the built binaries:
/// `verify` wants the programs `ExecStart` names to exist, so the units
/// are checked as copies in a scratch folder under `target/` with
/// `/usr/bin/<binary>` pointed at them; nothing else is changed.
pub fn check(root: &Path, bin_dir: &Path) -> Result<()> {
    let scratch = root.join("target/units-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut copies: Vec<PathBuf> = Vec::new();
    for (unit, binary, _) in UNITS {
        let source = root.join(UNIT_DIR).join(unit);
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {}", source.display()))?;
        let built = bin_dir.join(binary);
        let copy = scratch.join(unit);
        std::fs::write(
            &copy,
            text.replace(&format!("/usr/bin/{binary}"), &built.display().to_string()),
        )
        .with_context(|| format!("writing {}", copy.display()))?;
        copies.push(copy);
    }
    run(Command::new("systemd-analyze").arg("verify").args(&copies))?;
    for ((unit, _, ceiling), copy) in UNITS.iter().zip(&copies) {
        run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={ceiling}"))
            .arg(copy))
        .with_context(|| {
            format!(
                "{unit}: exposure above {}.{} (see docs/deployment.md)",
                ceiling / 10,
                ceiling % 10
            )
        })?;
    }
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    println!("test: systemd units verified, exposure within the ceilings");
    Ok(())
}
