//! `cargo xtask bench`: Wardline and its peers measured side by side in one
//! run on this machine. Each part returns a [`Section`]; the runner writes
//! `docs/benchmarks.md` (machine, kernel, command, tables, how to read them)
//! and the raw results (`docs/benchmarks.json`).

use serde_json::Value;

/// One part of the report.
pub struct Section {
    pub title: String,
    /// What the numbers mean and how to read them (Markdown).
    pub how_to_read: String,
    /// Markdown table(s).
    pub table: String,
    /// Targets and whether this run met them, one line each.
    pub targets: Vec<(String, bool)>,
    /// Raw results.
    pub raw: Value,
}

/// How long and how much each part may run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// A short smoke of the harness (CI), not figures to quote.
    pub quick: bool,
}
