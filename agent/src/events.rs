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
use wardline_proto::convert::mac_text;

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
    /// What passed since the connection's previous record (`new`: nothing
    /// yet; `drop`: the packet dropped).
    pub packets: u64,
    pub bytes: u64,
    /// The initiator's and the responder's Ethernet addresses as the frame
    /// that caused the record carried them (the next hop's when routed);
    /// none in records the agent writes itself.
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
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
            src_mac: self.src_mac.as_deref().map(mac_bytes).unwrap_or_default(),
            dst_mac: self.dst_mac.as_deref().map(mac_bytes).unwrap_or_default(),
        }
    }
}

/// Counts of events seen, for /metrics.
#[derive(Clone, Debug, Default)]
pub struct EventStats {
    pub by_kind_verdict: BTreeMap<(&'static str, &'static str), u64>,
    /// Long connections whose reported counts the agent remembers.
    pub long_connections: usize,
    /// Agent-written records lost because the event reader lagged.
    pub sweep_records_lost: u64,
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
        abi::EVENT_UPDATE => "update",
        abi::EVENT_EXPIRED => "expired",
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

/// The six bytes of an address [`mac`] wrote.
fn mac_bytes(text: &str) -> Vec<u8> {
    text.split(':')
        .filter_map(|x| u8::from_str_radix(x, 16).ok())
        .collect()
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
        let (wire_dst, wire_src) = e.eth.split_at(6);
        let (src_mac, dst_mac) = if e.flags & abi::EVENT_ETH_REPLY != 0 {
            (mac_text(wire_dst), mac_text(wire_src))
        } else {
            (mac_text(wire_src), mac_text(wire_dst))
        };
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
            src_mac,
            dst_mac,
            proto: e.proto,
            revision: names.map_or(0, |n| n.revision),
        }
    }
}

/// What a long connection's records have reported so far.
#[derive(Clone, Copy, Debug)]
struct Reported {
    packets: u64,
    bytes: u64,
    /// When a sweep last saw the connection alive.
    seen_ns: u64,
}

/// Turns the totals the kernel keeps per connection into what passed since
/// the connection's previous record, so that a connection's records add up
/// to its totals: `new` records count nothing (the counts come later),
/// `update` records what passed since the one before, `close`, `revoked`
/// and `expired` the rest. Only connections that had an `update` are
/// remembered (long ones), each until its last record, or until sweeps no
/// longer see it (its end was lost with a full ring buffer: counted there).
#[derive(Debug)]
pub struct Counts {
    reported: HashMap<abi::FlowKey, Reported>,
    /// A sweep reports every live long connection at least this often.
    interval_ns: u64,
}

impl Counts {
    /// At most this many long connections are remembered (the tracking
    /// table's size): past it, a connection's next record counts from its
    /// start again rather than the agent growing without bound.
    const MAX: usize = 262_144;

    pub fn new(interval_ns: u64) -> Counts {
        Counts {
            reported: HashMap::new(),
            interval_ns,
        }
    }

    /// Rewrites `e`'s counts as described above; false when it has nothing
    /// to report (an update of a connection idle since the last one).
    pub fn account(&mut self, e: &mut abi::FlowEvent) -> bool {
        let key = abi::FlowKey {
            src: e.src,
            dst: e.dst,
            sport: e.sport,
            dport: e.dport,
            proto: e.proto,
            _pad: [0; 3],
        };
        let since = |r: Option<Reported>, e: &abi::FlowEvent| {
            let (p, b) = r.map_or((0, 0), |r| (r.packets, r.bytes));
            (e.packets.saturating_sub(p), e.bytes.saturating_sub(b))
        };
        match e.kind {
            abi::EVENT_NEW => {
                (e.packets, e.bytes) = (0, 0);
                true
            }
            abi::EVENT_UPDATE => {
                let before = self.reported.get(&key).copied();
                let (packets, bytes) = since(before, e);
                if before.is_some() || self.reported.len() < Self::MAX {
                    self.reported.insert(
                        key,
                        Reported {
                            packets: e.packets,
                            bytes: e.bytes,
                            seen_ns: e.time_ns,
                        },
                    );
                }
                (e.packets, e.bytes) = (packets, bytes);
                packets > 0
            }
            abi::EVENT_CLOSE | abi::EVENT_REVOKED | abi::EVENT_EXPIRED => {
                (e.packets, e.bytes) = since(self.reported.remove(&key), e);
                true
            }
            _ => true,
        }
    }

    /// Forgets connections no sweep has seen for three intervals, as of
    /// `now` (their last record was lost).
    pub fn forget_unseen(&mut self, now: u64) {
        let horizon = self.interval_ns.saturating_mul(3);
        self.reported
            .retain(|_, r| now.saturating_sub(r.seen_ns) < horizon);
    }

    pub fn remembered(&self) -> usize {
        self.reported.len()
    }
}

/// The event the agent writes for tracked connection `key` (`s` as a sweep
/// read it) with `kind` ([`abi::EVENT_UPDATE`] or [`abi::EVENT_EXPIRED`]),
/// named as its initiator opened it, as the kernel names its own. None for
/// a connection a policy change already cut (its `revoked` record was
/// written).
pub fn connection_event(
    key: &abi::FlowKey,
    s: &abi::FlowState,
    kind: u8,
    now: u64,
) -> Option<abi::FlowEvent> {
    let verdict = match s.status {
        abi::FLOW_ALLOWED | abi::FLOW_FAILSAFE => 1,
        abi::FLOW_AUDITED => 2,
        _ => return None,
    };
    let k = if s.binding & abi::INITIATOR_FIRST != 0 {
        *key
    } else {
        key.reversed()
    };
    let ingress = s.binding & abi::BOUND_ORIG != 0;
    let v4 = k.src[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    Some(abi::FlowEvent {
        time_ns: now,
        packets: s.packets,
        bytes: s.bytes,
        src: k.src,
        dst: k.dst,
        ifindex: if ingress {
            s.orig_ifindex
        } else {
            s.reply_ifindex
        },
        generation: s.generation,
        policy: s.policy,
        src_segment: s.src_segment,
        dst_segment: s.dst_segment,
        sport: k.sport,
        dport: k.dport,
        vlan: if ingress { s.orig_vlan } else { 0 },
        kind,
        verdict,
        reason: s.reason,
        direction: if ingress {
            abi::DIR_INGRESS
        } else {
            abi::DIR_EGRESS
        },
        proto: k.proto,
        family: if v4 { 4 } else { 6 },
        ..abi::FlowEvent::default()
    })
}

/// Where flow records go: the flow log (JSON lines), the spool for the
/// control plane (managed mode), or both.
pub struct Sinks {
    pub log: Option<Box<dyn Write + Send>>,
    pub spool: Option<Arc<Mutex<crate::spool::Spool>>>,
}

/// Reads events until the task is dropped, and the agent's own (from
/// `swept`), writing each to `sinks`.
pub async fn run(
    ring: RingBuf<MapData>,
    mut swept: tokio::sync::mpsc::Receiver<Vec<abi::FlowEvent>>,
    mut namer: Namer,
    generations: Arc<Mutex<Generations>>,
    stats: Arc<Mutex<EventStats>>,
    mut counts: Counts,
    mut sinks: Sinks,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer,
    // so the fd stays open, unshared, for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut sweeps_open = true;
    loop {
        let mut events = Vec::new();
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    events.extend(decode(&item));
                }
                guard.clear_ready();
            }
            batch = swept.recv(), if sweeps_open => match batch {
                Some(batch) => {
                    events = batch;
                    if let Some(now) = events.first().map(|e| e.time_ns) {
                        counts.forget_unseen(now);
                    }
                }
                None => sweeps_open = false,
            },
        }
        let mut records = Vec::with_capacity(events.len());
        for mut e in events {
            if !counts.account(&mut e) {
                continue;
            }
            let record = {
                let generations = generations.lock().unwrap_or_else(|p| p.into_inner());
                namer.record(&e, &generations)
            };
            records.push(record);
        }
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            for record in &records {
                *s.by_kind_verdict
                    .entry((record.kind, record.verdict))
                    .or_default() += 1;
            }
            s.long_connections = counts.remembered();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, packets: u64, bytes: u64, at_s: u64) -> abi::FlowEvent {
        abi::FlowEvent {
            time_ns: at_s * abi::SECOND_NS,
            packets,
            bytes,
            src: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 20, 10],
            dst: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 41, 10],
            sport: 40000,
            dport: 443,
            proto: 6,
            kind,
            ..abi::FlowEvent::default()
        }
    }

    /// Whatever the kernel's totals, a connection's records add up to them:
    /// nothing at `new`, the growth at each `update`, the rest at the end.
    #[test]
    fn a_connections_records_add_up_to_its_totals() {
        let mut counts = Counts::new(60 * abi::SECOND_NS);
        let mut reported = Vec::new();
        for mut e in [
            event(abi::EVENT_NEW, 1, 74, 0),
            event(abi::EVENT_UPDATE, 500, 400_000, 60),
            event(abi::EVENT_UPDATE, 500, 400_000, 120),
            event(abi::EVENT_UPDATE, 900, 700_000, 180),
            event(abi::EVENT_CLOSE, 1_000, 800_000, 200),
        ] {
            if counts.account(&mut e) {
                reported.push((e.kind, e.packets, e.bytes));
            }
        }
        assert_eq!(
            reported,
            [
                (abi::EVENT_NEW, 0, 0),
                (abi::EVENT_UPDATE, 500, 400_000),
                // The idle interval reports nothing.
                (abi::EVENT_UPDATE, 400, 300_000),
                (abi::EVENT_CLOSE, 100, 100_000),
            ]
        );
        let sum: (u64, u64) = reported.iter().fold((0, 0), |(p, b), r| (p + r.1, b + r.2));
        assert_eq!(sum, (1_000, 800_000));
        assert_eq!(counts.remembered(), 0, "forgotten at its end");
        // A short connection: its end carries everything.
        let mut close = event(abi::EVENT_EXPIRED, 3, 200, 30);
        assert!(counts.account(&mut close));
        assert_eq!((close.packets, close.bytes), (3, 200));
    }

    #[test]
    fn a_long_connection_whose_end_was_lost_is_forgotten() {
        let mut counts = Counts::new(60 * abi::SECOND_NS);
        assert!(counts.account(&mut event(abi::EVENT_UPDATE, 10, 1_000, 60)));
        assert_eq!(counts.remembered(), 1);
        counts.forget_unseen(200 * abi::SECOND_NS);
        assert_eq!(counts.remembered(), 1, "within three intervals");
        counts.forget_unseen(241 * abi::SECOND_NS);
        assert_eq!(counts.remembered(), 0);
    }

    /// The agent's own records name a connection as its initiator opened
    /// it, whichever end its key holds first, where it arrived.
    #[test]
    fn a_swept_connection_is_named_as_the_kernel_names_it() {
        let e = event(abi::EVENT_NEW, 0, 0, 0);
        let initiator = abi::FlowKey {
            src: e.src,
            dst: e.dst,
            sport: 40000,
            dport: 443,
            proto: 6,
            _pad: [0; 3],
        };
        let state = abi::FlowState {
            packets: 7,
            bytes: 900,
            orig_ifindex: 4,
            reply_ifindex: 5,
            orig_vlan: 30,
            status: abi::FLOW_AUDITED,
            reason: abi::Reason::Monitor as u8,
            binding: abi::BOUND_ORIG,
            ..abi::FlowState::default()
        };
        // Keyed responder first: named the other way round.
        let keyed = initiator.reversed();
        let got = connection_event(&keyed, &state, abi::EVENT_UPDATE, 9).unwrap();
        assert_eq!((got.src, got.sport, got.dport), (initiator.src, 40000, 443));
        assert_eq!(
            (got.ifindex, got.vlan, got.direction),
            (4, 30, abi::DIR_INGRESS)
        );
        assert_eq!((got.verdict, got.family, got.packets), (2, 4, 7));
        // The node opened it: where it left, egress.
        let egress = abi::FlowState {
            binding: abi::INITIATOR_FIRST,
            ..state
        };
        let got = connection_event(&initiator, &egress, abi::EVENT_EXPIRED, 9).unwrap();
        assert_eq!(
            (got.ifindex, got.vlan, got.direction),
            (5, 0, abi::DIR_EGRESS)
        );
        assert_eq!(got.src, initiator.src);
        // A connection a policy change cut already has its record.
        let cut = abi::FlowState {
            status: abi::FLOW_DENIED,
            ..state
        };
        assert!(connection_event(&keyed, &cut, abi::EVENT_EXPIRED, 9).is_none());
    }

    #[test]
    fn ethernet_addresses_are_named_with_the_connection() {
        let mut e = event(abi::EVENT_NEW, 0, 0, 0);
        // On the wire: destination, then source.
        e.eth = [2, 0, 0, 0, 0x29, 0x0a, 2, 0, 0, 0, 0x14, 0x0a];
        e.family = 4;
        let names = Generations::default();
        let mut namer = Namer::new("gw".into());
        let r = namer.record(&e, &names);
        assert_eq!(r.src_mac.as_deref(), Some("02:00:00:00:14:0a"));
        assert_eq!(r.dst_mac.as_deref(), Some("02:00:00:00:29:0a"));
        // From a reply: its source is the responder.
        e.flags = abi::EVENT_ETH_REPLY;
        let r = namer.record(&e, &names);
        assert_eq!(r.src_mac.as_deref(), Some("02:00:00:00:29:0a"));
        let wire = r.to_wire();
        assert_eq!(wire.src_mac, [2, 0, 0, 0, 0x29, 0x0a]);
        e.eth = [0; 12];
        assert_eq!(namer.record(&e, &names).src_mac, None);
    }
}
