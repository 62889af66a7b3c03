//! Part 5: memory at scale. What the kernel's maps take (the memlock the
//! kernel charges for every map the agent pins) and what the agent process
//! keeps resident, with 100,000 prefixes and 100,000 rules enforced and the
//! connection-tracking table full.
//!
//! A real `wardline-agent` enforces one interface of a namespace with the
//! generated policy of the per-packet part ([`packet::Scale`]). Once it is
//! ready, the connection-tracking table (`abi::MAP_CONNTRACK`, capacity
//! `abi::MAX_CONNECTIONS`) is filled from user space through its pin with
//! established, allowed TCP connections, fresh, so that the agent's sweep
//! keeps them. The maps are found by walking the node's pin directory; each
//! map's id comes from its pin, and its memlock from the agent's own
//! `/proc/PID/fdinfo` (cross-checked with `bpftool map show -j`). The agent's
//! VmRSS is sampled every second over a window that spans several of its
//! sweeps of the full table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;
use serde_json::Value;
use wardline_agent::enforcer;
use wardline_ebpf_abi as abi;

use crate::agent::{Agent, BPFFS};
use crate::bench::{Budget, Results, Section, Target, packet, procfs, stats, thousands};
use crate::netns::Netns;
use crate::{addr, link_up};

/// The target for the kernel's maps at full scale.
const MAP_TARGET_BYTES: u64 = 128 << 20;
/// The target for the agent's resident memory at full scale.
const RSS_TARGET_BYTES: u64 = 64 << 20;
/// The scale the targets are set at.
const FULL_SCALE: u32 = 100_000;
/// The agent's sweep of idle connections runs this often.
const SWEEP: Duration = Duration::from_secs(5);

const MIB: f64 = 1024.0 * 1024.0;

/// One map of the agent's, as the kernel describes it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MapFigures {
    /// The pin's file name (an `abi::MAP_*` name).
    name: String,
    /// The pin, under the node's directory.
    pin: String,
    id: u32,
    /// `map_type` of fdinfo (the kernel's `enum bpf_map_type`).
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: String,
    /// What the kernel charges for it (fdinfo `memlock`).
    memlock_bytes: u64,
    /// `bytes_memlock` of `bpftool map show -j`, where bpftool is present.
    bpftool_memlock_bytes: Option<u64>,
}

/// A map fd of the agent's: its fdinfo fields.
#[derive(Clone, Debug, Default)]
struct FdInfo {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: String,
    memlock: u64,
}

/// The maps the agent's process holds open, by map id, from
/// `/proc/PID/fdinfo`.
fn agent_maps(pid: u32) -> anyhow::Result<BTreeMap<u32, FdInfo>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            // A file closed since the directory was read.
            continue;
        };
        let mut info = FdInfo::default();
        let mut id = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let num = || value.parse::<u64>().unwrap_or(0);
            match key {
                "map_id" => id = value.parse::<u32>().ok(),
                "map_type" => info.map_type = num() as u32,
                "key_size" => info.key_size = num() as u32,
                "value_size" => info.value_size = num() as u32,
                "max_entries" => info.max_entries = num() as u32,
                "map_flags" => info.map_flags = value.to_owned(),
                "memlock" => info.memlock = num(),
                _ => {}
            }
        }
        if let Some(id) = id {
            out.insert(id, info);
        }
    }
    Ok(out)
}

/// `bytes_memlock` of every map, by id, from `bpftool map show -j`;
/// empty when bpftool is missing or fails.
fn bpftool_memlock() -> BTreeMap<u32, u64> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["map", "show", "-j"])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["id"].as_u64()? as u32, m["bytes_memlock"].as_u64()?)))
        .collect()
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The maps pinned under the node's directory: (name, pin, map id).
/// Programs and links pinned there are skipped: the kernel's fdinfo of an
/// object opened from its pin says what it is, and only a map's has a
/// `map_id`.
pub(crate) fn pinned_maps(node_dir: &Path) -> Vec<(String, PathBuf, u32)> {
    files_under(node_dir)
        .into_iter()
        .filter_map(|pin| {
            let map = MapData::from_pin(&pin).ok()?;
            let fd = map.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))?
                .trim()
                .parse()
                .ok()?;
            let name = pin.file_name()?.to_string_lossy().into_owned();
            Some((name, pin, id))
        })
        .collect()
}

/// The tracking table through its pin.
pub(crate) fn conntrack(
    pin: &Path,
) -> anyhow::Result<HashMap<MapData, abi::FlowKey, abi::FlowState>> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let map = Map::from_map_data(data).context("the tracking table's type")?;
    HashMap::try_from(map).context("the tracking table as a hash map of flows")
}

/// IPv4-mapped, as flow keys hold addresses.
pub(crate) fn mapped(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

/// The server end of the fill's connections.
const FILL_SERVER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// Connection `k` of the fill: from 198.18.0.0/16 (source port 1024 and
/// up) to 198.19.0.10:443, established and allowed. The initiator is the
/// lower end, so its tuple is the table's key for either orientation.
fn filler(k: u32, now: u64) -> (abi::FlowKey, abi::FlowState) {
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (k & 0xffff));
    let key = abi::FlowKey {
        src: mapped(src),
        dst: mapped(FILL_SERVER),
        sport: 1024 + (k >> 16) as u16,
        dport: 443,
        proto: abi::PROTO_TCP,
        ..abi::FlowKey::default()
    };
    let state = abi::FlowState {
        created_ns: now,
        last_seen_ns: now,
        packets: 2,
        bytes: 120,
        status: abi::FLOW_ALLOWED,
        tcp: abi::TCP_SEEN_REPLY,
        binding: abi::INITIATOR_FIRST,
        ..abi::FlowState::default()
    };
    (key, state)
}

/// How the fill went.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Fill {
    capacity: u32,
    /// Entries there before the fill.
    before: u64,
    inserted: u64,
    /// Entries counted after the fill.
    after: u64,
    /// Whether one more insert was refused: the table is full.
    refused_beyond_capacity: bool,
    seconds: f64,
}

/// Fills the table to its capacity; counts what is in it after.
fn fill_conntrack(pin: &Path) -> anyhow::Result<Fill> {
    let started = Instant::now();
    let mut table = conntrack(pin)?;
    let before = table.keys().filter(Result::is_ok).count() as u64;
    let capacity = abi::MAX_CONNECTIONS;
    let now = enforcer::boot_ns();
    let mut inserted = 0;
    let mut k = 0u32;
    // Distinct keys until the table holds its capacity; keys already there
    // (none, unless they collide with a real connection) only overwrite.
    while before + inserted < u64::from(capacity) {
        ensure!(
            k < 4 * capacity,
            "{inserted} inserted after {k} tries: the table does not fill"
        );
        let (key, state) = filler(k, now);
        k += 1;
        match table.insert(key, state, 0) {
            Ok(()) => inserted += 1,
            Err(e) => bail!(
                "inserting connection {} of {capacity}: {e}",
                before + inserted + 1
            ),
        }
    }
    let (key, state) = filler(4 * capacity, now);
    let refused_beyond_capacity = table.insert(key, state, 0).is_err();
    let after = table.keys().filter(Result::is_ok).count() as u64;
    Ok(Fill {
        capacity,
        before,
        inserted,
        after,
        refused_beyond_capacity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The memlock of the pinned maps, as the agent's fdinfo says it.
fn map_figures(pid: u32, pins: &[(String, PathBuf, u32)]) -> anyhow::Result<Vec<MapFigures>> {
    let held = agent_maps(pid)?;
    let bpftool = bpftool_memlock();
    pins.iter()
        .map(|(name, pin, id)| {
            let info = held
                .get(id)
                .with_context(|| format!("the agent holds no fd of {name} (map id {id})"))?;
            Ok(MapFigures {
                name: name.clone(),
                pin: pin.display().to_string(),
                id: *id,
                map_type: info.map_type,
                key_size: info.key_size,
                value_size: info.value_size,
                max_entries: info.max_entries,
                map_flags: info.map_flags.clone(),
                memlock_bytes: info.memlock,
                bpftool_memlock_bytes: bpftool.get(id).copied(),
            })
        })
        .collect()
}

/// What part 5 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemoryResults {
    quick: bool,
    prefixes: usize,
    rules: usize,
    /// The scale the targets are set at.
    target_scale: u32,
    map_target_bytes: u64,
    rss_target_bytes: u64,
    /// Every pinned map after the fill.
    maps: Vec<MapFigures>,
    /// Their memlock before the fill.
    pinned_memlock_before_fill_bytes: u64,
    /// The sum over the pinned maps after the fill: the target's figure.
    pinned_memlock_bytes: u64,
    /// Every map the agent's process holds (pinned or not, the programs'
    /// own data sections included).
    agent_held_maps: usize,
    agent_held_memlock_bytes: u64,
    fill: Fill,
    /// VmRSS once the agent was ready, before the fill.
    rss_ready_bytes: u64,
    /// VmRSS every second over the steady window after the fill.
    rss_samples_bytes: Vec<u64>,
    rss_steady_median_bytes: u64,
    /// The largest steady sample: the target's figure.
    rss_steady_max_bytes: u64,
    /// VmHWM: the peak since the agent started (parsing and compiling the
    /// policy included).
    rss_peak_bytes: u64,
    agent_start_seconds: f64,
    steady_window_seconds: f64,
    seconds: f64,
}

/// Part 5 of the benchmarks.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the memory benchmark needs root (namespaces, BPF)"
    );
    let started = Instant::now();
    let (n, window) = if budget.quick {
        (1_000, SWEEP + Duration::from_secs(1))
    } else {
        (FULL_SCALE, 3 * SWEEP + Duration::from_secs(1))
    };
    let scale = packet::Scale::new(n);
    let policy = scale.yaml();

    let ns = Netns::new("bench-memory");
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    link_up(&ns, "eth0");
    link_up(&ns, "eth1");
    addr(&ns, "eth0", "198.18.70.1/24");
    eprintln!(
        "memory: starting an agent with {0} prefixes x {0} rules...",
        thousands(n.into())
    );
    let t = Instant::now();
    let agent = Agent::start(&ns, &["eth0"], &policy);
    let agent_start_seconds = t.elapsed().as_secs_f64();
    drop(policy);
    let pid = agent.pid().context("the agent has no process")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim().starts_with("wardline-agent"),
        "process {pid} is {:?}, not the agent",
        comm.trim()
    );
    let status = agent.status_json(&ns);
    let (prefixes, rules) = (scale.n as usize, scale.n as usize);
    ensure!(status["ready"] == true, "the agent is not ready: {status}");
    let rss_ready = procfs::vm_rss(pid)?;

    let node_dir = enforcer::node_dir(Path::new(BPFFS), &agent.node);
    let pins = pinned_maps(&node_dir);
    let missing: Vec<&str> = abi::ALL_MAPS
        .iter()
        .copied()
        .filter(|m| !pins.iter().any(|(name, _, _)| name == m))
        .collect();
    ensure!(
        missing.is_empty(),
        "maps not pinned under {}: {missing:?}",
        node_dir.display()
    );
    let before: u64 = map_figures(pid, &pins)?
        .iter()
        .map(|m| m.memlock_bytes)
        .sum();
    let conntrack_pin = pins
        .iter()
        .find(|(name, _, _)| name == abi::MAP_CONNTRACK)
        .map(|(_, pin, _)| pin.clone())
        .context("no tracking table pinned")?;
    eprintln!(
        "memory: filling the tracking table ({} entries)...",
        thousands(abi::MAX_CONNECTIONS.into())
    );
    let fill = fill_conntrack(&conntrack_pin)?;

    // Steady state: the agent idle with the table full, sweeping it.
    let t = Instant::now();
    let mut samples = Vec::new();
    while t.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(procfs::vm_rss(pid)?);
    }
    let steady_window_seconds = t.elapsed().as_secs_f64();
    let maps = map_figures(pid, &pins)?;
    let held = agent_maps(pid)?;
    let after = conntrack(&conntrack_pin)?
        .keys()
        .filter(Result::is_ok)
        .count() as u64;
    ensure!(
        after == fill.after,
        "the tracking table went from {} to {after} entries while the agent idled",
        fill.after
    );
    let rss_peak = procfs::status_bytes(pid, "VmHWM")?;
    drop(agent);
    drop(ns);

    Section::of(&MemoryResults {
        quick: budget.quick,
        prefixes,
        rules,
        target_scale: FULL_SCALE,
        map_target_bytes: MAP_TARGET_BYTES,
        rss_target_bytes: RSS_TARGET_BYTES,
        pinned_memlock_before_fill_bytes: before,
        pinned_memlock_bytes: maps.iter().map(|m| m.memlock_bytes).sum(),
        maps,
        agent_held_maps: held.len(),
        agent_held_memlock_bytes: held.values().map(|i| i.memlock).sum(),
        fill,
        rss_ready_bytes: rss_ready,
        rss_steady_median_bytes: stats::median(&samples).unwrap_or(0),
        rss_steady_max_bytes: stats::max(&samples).unwrap_or(0),
        rss_samples_bytes: samples,
        rss_peak_bytes: rss_peak,
        agent_start_seconds,
        steady_window_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// MiB from 1 MiB up, KiB below.
fn size(bytes: u64) -> String {
    if bytes as f64 >= MIB {
        mib(bytes)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The kernel's name of a map type (`enum bpf_map_type`, uapi numbers).
fn map_type_name(t: u32) -> String {
    let name = match t {
        1 => "hash",
        2 => "array",
        5 => "per-CPU hash",
        6 => "per-CPU array",
        9 => "LRU hash",
        10 => "per-CPU LRU hash",
        11 => "LPM trie",
        27 => "ring buffer",
        _ => return format!("type {t}"),
    };
    name.to_owned()
}

impl MemoryResults {
    fn scale(&self) -> String {
        format!(
            "{} prefixes × {} rules",
            thousands(self.prefixes as u64),
            thousands(self.rules as u64)
        )
    }

    fn at_target_scale(&self) -> bool {
        self.prefixes >= self.target_scale as usize && self.rules >= self.target_scale as usize
    }

    fn table_full(&self) -> bool {
        self.fill.after >= u64::from(self.fill.capacity)
    }
}

impl Results for MemoryResults {
    fn tables(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Kernel maps the agent pins, with {} enforced and the tracking table full (memlock from the agent's `/proc/PID/fdinfo`)\n",
            self.scale()
        );
        let _ = writeln!(
            t,
            "| map | map type | key + value bytes | max entries | memlock |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|");
        let mut maps: Vec<&MapFigures> = self.maps.iter().collect();
        maps.sort_by_key(|m| std::cmp::Reverse(m.memlock_bytes));
        for m in maps {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} + {} | {} | {} |",
                m.name,
                map_type_name(m.map_type),
                m.key_size,
                m.value_size,
                thousands(m.max_entries.into()),
                size(m.memlock_bytes)
            );
        }
        let _ = writeln!(
            t,
            "| **every pinned map** | | | | **{}** |",
            mib(self.pinned_memlock_bytes)
        );
        let _ = writeln!(t, "\n| figure | value |\n|---|---:|");
        let _ = writeln!(
            t,
            "| pinned maps, before the tracking table was filled | {} |",
            mib(self.pinned_memlock_before_fill_bytes)
        );
        let _ = writeln!(
            t,
            "| **pinned maps, tracking table full** | **{}** |",
            mib(self.pinned_memlock_bytes)
        );
        let _ = writeln!(
            t,
            "| every map the agent holds ({}, the unpinned ones included) | {} |",
            self.agent_held_maps,
            mib(self.agent_held_memlock_bytes)
        );
        let _ = writeln!(
            t,
            "| tracking table | {} of {} entries ({} inserted in {:.1} s; one more {}) |",
            thousands(self.fill.after),
            thousands(self.fill.capacity.into()),
            thousands(self.fill.inserted),
            self.fill.seconds,
            if self.fill.refused_beyond_capacity {
                "refused: full"
            } else {
                "**accepted**"
            }
        );
        let _ = writeln!(
            t,
            "| agent VmRSS when ready, before the fill | {} |",
            mib(self.rss_ready_bytes)
        );
        let _ = writeln!(
            t,
            "| **agent VmRSS, steady, table full** (largest of {} samples over {:.0} s; median {}) | **{}** |",
            self.rss_samples_bytes.len(),
            self.steady_window_seconds,
            mib(self.rss_steady_median_bytes),
            mib(self.rss_steady_max_bytes)
        );
        let _ = writeln!(
            t,
            "| agent VmHWM: the peak since it started (parsing and compiling included) | {} |",
            mib(self.rss_peak_bytes)
        );
        let _ = writeln!(
            t,
            "| agent start to ready (parse, compile, program, attach) | {:.1} s |",
            self.agent_start_seconds
        );
        t
    }

    fn targets(&self) -> Vec<Target> {
        let quick = if self.at_target_scale() {
            String::new()
        } else {
            format!(
                "; quick mode: {}, the target is set at {} × {}",
                self.scale(),
                thousands(self.target_scale.into()),
                thousands(self.target_scale.into())
            )
        };
        vec![
            Target::new(
                format!(
                    "kernel map memory at most {} at 100,000 prefixes × 100,000 rules with the tracking table full: {}{}{quick}",
                    mib(self.map_target_bytes),
                    mib(self.pinned_memlock_bytes),
                    if self.table_full() {
                        ""
                    } else {
                        " (the table did not fill)"
                    }
                ),
                self.pinned_memlock_bytes <= self.map_target_bytes && self.table_full(),
            ),
            Target::new(
                format!(
                    "agent resident memory at most {} in steady state at that scale: {}{quick}",
                    mib(self.rss_target_bytes),
                    mib(self.rss_steady_max_bytes)
                ),
                self.rss_steady_max_bytes <= self.rss_target_bytes,
            ),
        ]
    }

    fn how_to_read(&self) -> String {
        let mut how = format!(
            "A real standalone `wardline-agent` enforces one interface of a namespace with the \
             per-packet part's generated policy at {scale} (min(N, 1,000) segments of host /32s, \
             N single-port allow policies). Once it is ready, the connection-tracking table is \
             filled through its pin, from this process, with {cap} established, allowed TCP \
             connections (its capacity, `MAX_CONNECTIONS`; keyed as the kernel keys them, \
             fresh, so that the agent's sweep keeps them), and one more insert is tried to \
             show it is full.\n\n\
             - **Kernel map memory**: every map pinned under the agent's node directory (found \
             by walking it; programs and links skipped), each map's id read from its pin and \
             its `memlock` from the agent's own `/proc/PID/fdinfo` (which also proves the agent \
             holds it; `bpftool map show -j` agrees, in the raw results). This is what the \
             kernel charges: preallocated hash maps cost their capacity whether full or not, \
             LPM tries and unpreallocated maps what they hold. The maps the agent holds but \
             does not pin (per-CPU scratch, the programs' data sections) are shown apart.\n\
             - **Agent resident memory**: VmRSS from `/proc/PID/status`, sampled every second \
             for {window:.0} s after the fill while the agent idles (its sweep of idle \
             connections walks the full table every {sweep} s); the target is judged on the \
             largest sample. VmHWM is the peak since the agent started, parsing and \
             compiling the policy included.\n\n\
             This part took {secs:.0} s.",
            scale = self.scale(),
            cap = thousands(self.fill.capacity.into()),
            window = self.steady_window_seconds,
            sweep = SWEEP.as_secs(),
            secs = self.seconds,
        );
        if self.quick {
            how.push_str(
                "\n\n**Quick run**: 1,000 prefixes and rules, one sweep: a smoke of the \
                 harness; the targets are set at 100,000 × 100,000.",
            );
        }
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keys_are_distinct() {
        let keys: std::collections::HashSet<_> = (0..abi::MAX_CONNECTIONS)
            .map(|k| {
                let (key, _) = filler(k, 1);
                (key.src, key.sport)
            })
            .collect();
        assert_eq!(keys.len(), abi::MAX_CONNECTIONS as usize);
        // The lower end first, as the kernel keys a connection.
        let (key, _) = filler(abi::MAX_CONNECTIONS - 1, 1);
        assert!((key.src, key.sport) < (key.dst, key.dport));
        let (key, state) = filler(4 * abi::MAX_CONNECTIONS, 1);
        assert!(
            !keys.contains(&(key.src, key.sport)),
            "the extra key is new"
        );
        assert_eq!(
            abi::flow_timeout(key.proto, state.status, state.tcp),
            abi::TIMEOUT_TCP_ESTABLISHED
        );
    }
}
