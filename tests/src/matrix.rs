//! Full reachability matrices: every source × destination × service ×
//! address family is probed, and every cell must be as expected.

use std::fmt;
use std::process::Stdio;

use crate::topology::Topology;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Tcp(p) => write!(f, "tcp/{p}"),
            Service::Udp(p) => write!(f, "udp/{p}"),
            Service::Icmp => write!(f, "icmp"),
        }
    }
}

/// What every matrix probes (the hosts serve all of these).
pub const SERVICES: [Service; 6] = [
    Service::Tcp(443),
    Service::Tcp(8080),
    Service::Tcp(22),
    Service::Udp(5000),
    Service::Udp(5011),
    Service::Icmp,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    pub from: &'static str,
    pub to: &'static str,
    pub service: Service,
    pub family: Family,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {} {:?}",
            self.from, self.to, self.service, self.family
        )
    }
}

/// Probes with this timeout; a dropped packet shows as a timeout.
const TIMEOUT_MS: &str = "800";
/// Probes in flight at once.
const PARALLEL: usize = 24;

/// Probes every cell among `hosts` (all hosts when empty) and panics,
/// printing the whole matrix, if any cell differs from `expected`.
pub fn check_matrix(
    topo: &Topology,
    scenario: &str,
    expected: impl Fn(&Cell) -> bool,
) -> Vec<(Cell, bool)> {
    let mut cells = Vec::new();
    for from in topo.labels() {
        for to in topo.labels() {
            if from == to {
                continue;
            }
            for service in SERVICES {
                for family in [Family::V4, Family::V6] {
                    cells.push(Cell {
                        from,
                        to,
                        service,
                        family,
                    });
                }
            }
        }
    }
    let results = probe_cells(topo, &cells);
    let mut wrong = Vec::new();
    let mut table = String::new();
    for (cell, got) in &results {
        let want = expected(cell);
        let mark = if want == *got { " " } else { "✗" };
        table.push_str(&format!(
            "{mark} {cell:<40} expected {:<7} got {}\n",
            if want { "open" } else { "blocked" },
            if *got { "open" } else { "blocked" }
        ));
        if want != *got {
            wrong.push(*cell);
        }
    }
    eprintln!("{scenario}: {} cells\n{table}", results.len());
    assert!(
        wrong.is_empty(),
        "{scenario}: {} of {} cells differ:\n{}",
        wrong.len(),
        results.len(),
        wrong.iter().map(|c| format!("  {c}\n")).collect::<String>()
    );
    results
}

/// Whether each cell's probe got through, probing `PARALLEL` at a time.
pub fn probe_cells(topo: &Topology, cells: &[Cell]) -> Vec<(Cell, bool)> {
    let mut out = Vec::with_capacity(cells.len());
    for chunk in cells.chunks(PARALLEL) {
        let children: Vec<_> = chunk
            .iter()
            .map(|cell| {
                let from = topo.host(cell.from);
                let to = topo.host(cell.to);
                let addr = match cell.family {
                    Family::V4 => to.v4,
                    Family::V6 => to.v6,
                }
                .to_string();
                let args: Vec<String> = match cell.service {
                    Service::Tcp(p) => vec!["tcp".into(), addr, p.to_string()],
                    Service::Udp(p) => vec!["udp".into(), addr, p.to_string()],
                    Service::Icmp => vec!["ping".into(), addr],
                };
                let mut cmd = from.ns.probe_command(
                    args.into_iter()
                        .chain(["--timeout-ms".to_string(), TIMEOUT_MS.to_string()]),
                );
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                (*cell, cmd.spawn().expect("probe starts"))
            })
            .collect();
        for (cell, mut child) in children {
            let ok = child.wait().map(|s| s.success()).unwrap_or(false);
            out.push((cell, ok));
        }
    }
    out
}
