//! Flow events: read from the kernel's ring buffer, named (segments,
//! policies, interfaces) and written as JSON lines.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::unix::AsyncFd;
use wardline_ebpf_abi as abi;
use wardline_policy::Dataplane;
use wardline_policy::reference::to_ip;

/// What the ids of one generation name: segment and policy names, by id.
/// Kept instead of the whole compiled policy, whose prefix and rule tables
/// naming never reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Names {
    segments: Vec<String>,
    policies: Vec<String>,
    /// The control plane's revision the generation enforces (0: none).
    revision: u64,
}

impl Names {
    pub fn of(dp: &Dataplane, revision: u64) -> Names {
        Names {
            segments: dp.segments.iter().map(|s| s.name.clone()).collect(),
            policies: dp.policies.iter().map(|p| p.name.clone()).collect(),
            revision,
        }
    }

    fn segment(&self, id: u32) -> &str {
        match id {
            abi::SEGMENT_WORLD => "world",
            abi::SEGMENT_ANY => "any",
            id => self
                .segments
                .get(id as usize - 1)
                .map_or("unknown", String::as_str),
        }
    }

    fn policy(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return None;
        }
        self.policies.get(id as usize - 1).map(String::as_str)
    }
}

/// The names of recent generations, to name what an event's ids meant
/// when the kernel wrote it. Generations that name alike (a window that
/// opens changes rules, not names) share one copy.
#[derive(Default)]
pub struct Generations {
    by_generation: BTreeMap<u32, Arc<Names>>,
}

impl Generations {
    const KEPT: usize = 8;

    pub fn insert(&mut self, generation: u32, dp: &Dataplane, revision: u64) {
        let names = Names::of(dp, revision);
        let shared = self
            .by_generation
            .values()
            .find(|n| ***n == names)
            .cloned()
            .unwrap_or_else(|| Arc::new(names));
        self.by_generation.insert(generation, shared);
        while self.by_generation.len() > Self::KEPT {
            self.by_generation.pop_first();
        }
    }

    fn get(&self, generation: u32) -> Option<&Names> {
        self.by_generation.get(&generation).map(|d| d.as_ref())
    }
}

/// One flow event as operators read it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    pub time: String,
    pub node: String,
    pub kind: &'static str,
    pub interface: String,
    pub direction: &'static str,
    pub family: u8,
    pub protocol: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub src_segment: String,
    pub dst_segment: String,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub policy: Option<String>,
    pub generation: u32,
    pub packets: u64,
    pub bytes: u64,
    /// The IANA protocol number (`protocol` names it).
    #[serde(skip)]
    pub proto: u8,
    /// The control plane's revision the generation enforced (0: none).
    #[serde(skip)]
    pub revision: u64,
}

impl FlowRecord {
    /// The record as the control plane stores it (numbered by the spool).
    pub fn to_wire(&self) -> wardline_proto::v1::Flow {
        let bytes = |a: Option<IpAddr>| {
            a.map(wardline_proto::convert::ip_to_bytes)
                .unwrap_or_default()
        };
        wardline_proto::v1::Flow {
            time: self.time.clone(),
            node: self.node.clone(),
            kind: self.kind.to_owned(),
            interface: self.interface.clone(),
            direction: self.direction.to_owned(),
            src: bytes(self.src),
            dst: bytes(self.dst),
            sport: u32::from(self.sport),
            dport: u32::from(self.dport),
            protocol: u32::from(self.proto),
            vlan: u32::from(self.vlan),
            src_segment: self.src_segment.clone(),
            dst_segment: self.dst_segment.clone(),
            verdict: self.verdict.to_owned(),
            reason: self.reason.to_owned(),
            policy: self.policy.clone().unwrap_or_default(),
            generation: self.generation,
            revision: self.revision,
            packets: self.packets,
            bytes: self.bytes,
            sequence: 0,
        }
    }
}

/// Counts of events seen, for /metrics.
#[derive(Clone, Debug, Default)]
pub struct EventStats {
    pub by_kind_verdict: BTreeMap<(&'static str, &'static str), u64>,
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        1 => "allowed",
        2 => "audited",
        _ => "dropped",
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        abi::EVENT_NEW => "new",
        abi::EVENT_DROP => "drop",
        abi::EVENT_CLOSE => "close",
        abi::EVENT_REVOKED => "revoked",
        _ => "unknown",
    }
}

/// Converts `CLOCK_BOOTTIME` nanoseconds (the kernel's event clock) to wall time.
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Clock {
        use nix::time::{ClockId, clock_gettime};
        let ns = |c: ClockId| {
            clock_gettime(c)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .unwrap_or(0)
        };
        Clock {
            offset_ns: ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_BOOTTIME),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.offset_ns + boot_ns as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn interface_name(cache: &mut HashMap<u32, String>, ifindex: u32) -> String {
    cache
        .entry(ifindex)
        .or_insert_with(|| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
            let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
            if p.is_null() {
                format!("if{ifindex}")
            } else {
                // SAFETY: on success the buffer holds a NUL-terminated name.
                unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
        .clone()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Option<abi::FlowEvent> {
    if bytes.len() < size_of::<abi::FlowEvent>() {
        return None;
    }
    // SAFETY: the length is checked; FlowEvent is plain data with every bit
    // pattern valid; read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<abi::FlowEvent>()) })
}

pub struct Namer {
    pub node: String,
    pub clock: Clock,
    interfaces: HashMap<u32, String>,
}

impl Namer {
    pub fn new(node: String) -> Namer {
        Namer {
            node,
            clock: Clock::new(),
            interfaces: HashMap::new(),
        }
    }

    pub fn record(&mut self, e: &abi::FlowEvent, generations: &Generations) -> FlowRecord {
        let names = generations.get(e.generation);
        let segment = |id: u32| match names {
            Some(n) => n.segment(id).to_owned(),
            None if id == abi::SEGMENT_WORLD => "world".to_owned(),
            None => format!("#{id}"),
        };
        let policy = match (e.policy, names) {
            (0, _) => None,
            (id, Some(n)) => n.policy(id).map(str::to_owned),
            (id, None) => Some(format!("#{id}")),
        };
        let reason = abi::Reason::from_u8(e.reason).map_or("unknown", abi::Reason::name);
        let addr = |a: &[u8; 16]| (e.family != 0).then(|| to_ip(a));
        FlowRecord {
            time: self
                .clock
                .wall(e.time_ns)
                .format(&Rfc3339)
                .unwrap_or_default(),
            node: self.node.clone(),
            kind: kind_name(e.kind),
            interface: interface_name(&mut self.interfaces, e.ifindex),
            direction: if e.direction == abi::DIR_INGRESS {
                "ingress"
            } else {
                "egress"
            },
            family: e.family,
            protocol: wardline_proto::convert::protocol_name(u32::from(e.proto)),
            src: addr(&e.src),
            dst: addr(&e.dst),
            sport: e.sport,
            dport: e.dport,
            vlan: e.vlan,
            src_segment: segment(e.src_segment),
            dst_segment: segment(e.dst_segment),
            verdict: verdict_name(e.verdict),
            reason,
            policy,
            generation: e.generation,
            packets: e.packets,
            bytes: e.bytes,
            proto: e.proto,
            revision: names.map_or(0, |n| n.revision),
        }
    }
}

/// Where flow records go: the flow log (JSON lines), the spool for the
/// control plane (managed mode), or both.
pub struct Sinks {
    pub log: Option<Box<dyn Write + Send>>,
    pub spool: Option<Arc<Mutex<crate::spool::Spool>>>,
}

/// Reads events until the task is dropped, writing each to `sinks`.
pub async fn run(
    ring: RingBuf<MapData>,
    mut namer: Namer,
    generations: Arc<Mutex<Generations>>,
    stats: Arc<Mutex<EventStats>>,
    mut sinks: Sinks,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer,
    // so the fd stays open, unshared, for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode(&item) {
                let record = {
                    let generations = generations.lock().unwrap_or_else(|p| p.into_inner());
                    namer.record(&e, &generations)
                };
                {
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    *s.by_kind_verdict
                        .entry((record.kind, record.verdict))
                        .or_default() += 1;
                }
                records.push(record);
            }
        }
        guard.clear_ready();
        if let Some(log) = sinks.log.as_mut() {
            for record in &records {
                if let Ok(line) = serde_json::to_string(record) {
                    writeln!(log, "{line}")?;
                }
            }
            log.flush()?;
        }
        if let Some(spool) = &sinks.spool {
            let mut spool = spool.lock().unwrap_or_else(|p| p.into_inner());
            for record in &records {
                if let Err(e) = spool.push(record.to_wire()) {
                    tracing::warn!("keeping a flow record for the control plane: {e}");
                }
            }
            if let Err(e) = spool.flush() {
                tracing::warn!("keeping flow records for the control plane: {e}");
            }
        }
    }
}
