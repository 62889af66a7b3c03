//! `cargo xtask fuzz`: builds the fuzz targets (`fuzz/`, cargo-fuzz with
//! nightly) and runs each for a bounded time, one after the other.
//!
//! Each target starts from its corpus, `fuzz/corpus/<target>/` (kept
//! between runs, not committed), seeded anew every run: the policy target
//! with `examples/*.yaml` and the YAML snippets of the docs, the agent
//! configuration target with the docs' `AgentConfig` snippets, the wire
//! target with `fuzz/seeds/wire/` (committed, checked by a test in the
//! proto crate). A crash is saved by libFuzzer under
//! `fuzz/artifacts/<target>/`; the task prints where and how to replay it,
//! and fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd::{display, run, succeeds};
use crate::workspace_root;

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &["policy", "agent_config", "wire"];

/// Seconds each target runs by default: a smoke.
pub const DEFAULT_SECONDS: u64 = 20;

/// Seconds each target runs in `cargo xtask test`: enough to replay the
/// seeds and mutate them a little, so a crash on a plain input fails CI.
pub const TEST_SECONDS: u64 = 5;

/// Longest one input may take before libFuzzer reports it as a crash (a
/// policy or a config that takes seconds to read is a denial of service).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// `cargo fuzz …` on nightly, from `fuzz/`, without the variables `cargo
/// run` set for this task: some build scripts (ring's) rebuild when
/// `CARGO_MANIFEST_DIR` changes, so the build would not be the one a
/// `cargo +nightly fuzz run` by hand reuses, nor the other way round.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("fuzz"))
        .args(["run", "nightly", "cargo", "fuzz"]);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_run = key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&key.as_ref());
        if set_by_cargo_run {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Builds the targets and runs `targets` (every one when empty) for
/// `seconds` each. Fails when a target crashed, after running the others.
pub fn fuzz(seconds: u64, targets: &[String]) -> Result<ExitCode> {
    let root = workspace_root();
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!(
                    "no fuzz target {target:?} (there are {})",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    if !succeeds(cargo_fuzz(&root).arg("--version")) {
        bail!("cargo-fuzz or the nightly toolchain is missing: run `cargo xtask setup`");
    }
    run(cargo_fuzz(&root).arg("build"))?;

    let mut crashed = Vec::new();
    for target in targets {
        let corpus = seed(&root, target)?;
        if let Some(artifacts) = run_target(&root, target, &corpus, seconds)? {
            crashed.push((target, artifacts));
        }
    }
    if crashed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (target, artifacts) in &crashed {
        for artifact in artifacts {
            println!(
                "fuzz: {target}: crashing input saved in {}; replay: cd fuzz && cargo +nightly fuzz run {target} {}",
                artifact.display(),
                artifact
                    .strip_prefix(root.join("fuzz"))
                    .unwrap_or(artifact)
                    .display()
            );
        }
    }
    Ok(ExitCode::FAILURE)
}

/// Runs one target for `seconds`; returns the inputs it saved if it
/// crashed (empty if libFuzzer failed without saving one).
fn run_target(
    root: &Path,
    target: &str,
    corpus: &[PathBuf],
    seconds: u64,
) -> Result<Option<Vec<PathBuf>>> {
    let log_path = root.join(format!("fuzz/target/{target}.log"));
    let log = File::create(&log_path).with_context(|| format!("{}", log_path.display()))?;
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", target])
        .args(corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // libFuzzer reports every new input it finds: the log keeps them, the
    // task says how the run ended.
    println!("$ {} > {}", display(&cmd), log_path.display());
    let status = cmd
        .status()
        .with_context(|| format!("`{}` could not be started", display(&cmd)))?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let last = |prefix: &str| log.lines().rev().find(|line| line.starts_with(prefix));
    if status.success() {
        println!(
            "fuzz: {target}: no crash in {seconds} s ({})",
            last("Done ").unwrap_or("no final stats")
        );
        return Ok(None);
    }
    // What failed, from the log: the panic or the sanitizer's report,
    // else the end. Lines are cut short (libFuzzer prints whole inputs).
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.contains("panicked at") || line.contains("ERROR: "))
        .unwrap_or(lines.len().saturating_sub(15));
    for line in lines.iter().skip(start).take(15) {
        let cut: String = line.chars().take(240).collect();
        println!("  {cut}");
    }
    println!(
        "fuzz: {target}: failed ({status}), log in {}",
        log_path.display()
    );
    // libFuzzer: "Test unit written to ./artifacts/…" (relative to fuzz/,
    // cargo-fuzz's artifact prefix), or "artifact_prefix=…; Test unit
    // written to …".
    let artifacts = log
        .lines()
        .filter_map(|line| line.split("Test unit written to ").nth(1))
        .map(|path| {
            let path = Path::new(path.trim());
            if path.is_absolute() {
                path.to_path_buf()
            } else {
                root.join("fuzz").join(path)
            }
        })
        .collect();
    Ok(Some(artifacts))
}

/// Lays out `target`'s corpus and returns the directories to pass to it,
/// the one new inputs are written to first.
fn seed(root: &Path, target: &str) -> Result<Vec<PathBuf>> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("{}", corpus.display()))?;
    let mut dirs = vec![corpus.clone()];
    let write = |name: String, text: &str| {
        let path = corpus.join(name);
        std::fs::write(&path, text).with_context(|| format!("{}", path.display()))
    };
    match target {
        "policy" => {
            for path in files(&root.join("examples"), "yaml")? {
                let text = std::fs::read_to_string(&path)?;
                write(format!("seed-{}", file_name(&path)), &text)?;
            }
            for (name, snippet) in snippets(root)? {
                if !snippet.contains("kind: AgentConfig") {
                    write(name, &snippet)?;
                }
            }
        }
        "agent_config" => {
            for (name, snippet) in snippets(root)? {
                if snippet.contains("kind: AgentConfig") {
                    write(name, &snippet)?;
                }
            }
        }
        _ => dirs.push(root.join("fuzz/seeds").join(target)),
    }
    Ok(dirs)
}

/// Every ```` ```yaml ```` block of `README.md` and `docs/*.md`, named by
/// its file and position: `seed-policy-guide.md-3.yaml`.
fn snippets(root: &Path) -> Result<Vec<(String, String)>> {
    let mut docs = vec![root.join("README.md")];
    docs.extend(files(&root.join("docs"), "md")?);
    let mut out = Vec::new();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).with_context(|| format!("{}", doc.display()))?;
        let mut block: Option<String> = None;
        for line in text.lines() {
            match &mut block {
                None if line.trim_start().starts_with("```yaml") => block = Some(String::new()),
                Some(_) if line.trim_start().starts_with("```") => {
                    let snippet = block.take().unwrap_or_default();
                    out.push((
                        format!("seed-{}-{}.yaml", file_name(&doc), out.len()),
                        snippet,
                    ));
                }
                Some(snippet) => {
                    snippet.push_str(line);
                    snippet.push('\n');
                }
                None => {}
            }
        }
    }
    Ok(out)
}

/// The files of `dir` ending in `.extension`, sorted.
fn files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_have_seeds_for_both_yaml_targets() {
        let snippets = snippets(&workspace_root()).unwrap();
        let configs = snippets
            .iter()
            .filter(|(_, s)| s.contains("kind: AgentConfig"))
            .count();
        assert!(configs >= 1, "no AgentConfig snippet in the docs");
        assert!(snippets.len() > configs, "no policy snippet in the docs");
        assert!(snippets.iter().all(|(name, _)| name.ends_with(".yaml")));
    }
}
