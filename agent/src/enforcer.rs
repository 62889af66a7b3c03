//! Loading, pinning, adopting and programming the kernel dataplane.
//!
//! Everything lives under `<bpffs>/<node>/abi-<ABI_VERSION>/`: `maps/` (the
//! maps, adopted as they are by a restarted agent, so tracked connections
//! survive), `programs/` and `links/` (one TCX link per interface and
//! direction). A restarted agent swaps its freshly loaded program into the
//! pinned links atomically (`BPF_LINK_UPDATE`): enforcement never pauses.
//!
//! A policy is programmed as generations (`docs/architecture.md`): the live
//! one and up to [`abi::MAX_SCHEDULED`] scheduled ones, each in its own slot
//! of the tables with the `CLOCK_TAI` instant it takes over, so that policy
//! windows open and close in the kernel on time whether the agent runs or not.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use wardline_ebpf_abi as abi;
use wardline_ebpf_abi::{
    ABI_VERSION, Config, FailsafeData, LocalAddr, MarkKey, PrefixData, PrefixKey, PrefixLens,
    RuleKey, RulePortsKey, RuleValue, ScheduleEntry, SegmentMarks, config_flags, slot_of,
};
use wardline_policy::Dataplane;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow};

/// The kernel programs, built by build.rs for the BPF target.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wardline"));

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the kernel programs: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching to {interface} ({direction}): {message}")]
    Attach {
        interface: String,
        direction: &'static str,
        message: String,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EnforcerError {
    move |source| EnforcerError::Map {
        name,
        source: Box::new(source),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> EnforcerError + '_ {
    move |source| EnforcerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What one [`Enforcer::sweep`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Connections removed, idle past their timeout, as they were.
    pub expired: Vec<(abi::FlowKey, abi::FlowState)>,
    /// Live connections whose counts are due to be reported.
    pub due: Vec<(abi::FlowKey, abi::FlowState)>,
    /// Fragment entries removed.
    pub fragments: usize,
    /// Each tracking table's live entries after the sweep, and its
    /// capacity: `connections`, `unconfirmed`, `denied`, `fragments`.
    pub entries: Vec<(&'static str, usize, u32)>,
}

/// Packet counters summed over CPUs: `[direction][reason]`, plus lost
/// events and failed inserts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [[u64; abi::REASON_COUNT]; 2],
    pub lost_events: u64,
    /// Connections that passed but found the tracking table full.
    pub tracking_full: u64,
    /// First fragments that passed but found the fragment table full.
    pub fragments_full: u64,
}

impl Counters {
    pub fn by_verdict(&self, verdict: abi::Verdict) -> u64 {
        abi::Reason::ALL
            .iter()
            .filter(|r| r.verdict() == verdict)
            .map(|r| self.packets[0][*r as usize] + self.packets[1][*r as usize])
            .sum()
    }
}

/// A generation to program ahead: the compiled policy of a window boundary
/// and the `CLOCK_TAI` instant it takes over.
pub struct Scheduled<'a> {
    pub dataplane: &'a Dataplane,
    pub at_tai_ns: u64,
}

/// The generations one [`Enforcer::apply`] programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The new live generation.
    pub live: u32,
    /// The scheduled ones, in the order given.
    pub scheduled: Vec<u32>,
}

/// How long a packet that read the old generation may still be judged by
/// its tables: a program run takes microseconds and never sleeps.
const GRACE: Duration = Duration::from_millis(2);

pub struct Enforcer {
    dir: PathBuf,
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    schedule: Array<MapData, ScheduleEntry>,
    prefixes: HashMap<MapData, PrefixKey, u32>,
    prefix_lens: Array<MapData, PrefixLens>,
    prefix_trie: LpmTrie<MapData, PrefixData, u32>,
    vlans: HashMap<MapData, u32, u32>,
    marks: HashMap<MapData, MarkKey, SegmentMarks>,
    rules: HashMap<MapData, RuleKey, RuleValue>,
    rule_ports: HashMap<MapData, RulePortsKey, u32>,
    failsafe: LpmTrie<MapData, FailsafeData, u32>,
    local_addrs: HashMap<MapData, LocalAddr, u32>,
    ethertypes: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    conntrack: HashMap<MapData, abi::FlowKey, abi::FlowState>,
    unconfirmed: HashMap<MapData, abi::FlowKey, abi::FlowState>,
    denied: HashMap<MapData, abi::FlowKey, abi::DeniedState>,
    fragments: HashMap<MapData, abi::FragmentKey, abi::FragmentState>,
    events: Option<RingBuf<MapData>>,
    /// Whether maps were found pinned (a restart) rather than created.
    adopted: bool,
}

/// The pin directory of one node.
pub fn node_dir(bpffs: &Path, node: &str) -> PathBuf {
    bpffs.join(node)
}

/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there, then creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<(), EnforcerError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| EnforcerError::Mount {
            path: root.to_owned(),
            source,
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EnforcerError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EnforcerError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        }),
    })?;
    T::try_from(map).map_err(map_err(name))
}

const PROGRAMS_BY_DIRECTION: [(&str, TcAttachType, &str); 2] = [
    (abi::PROG_INGRESS, TcAttachType::Ingress, "ingress"),
    (abi::PROG_EGRESS, TcAttachType::Egress, "egress"),
];

/// An address and prefix length as the LPM form: (family, 16-byte data,
/// address bits).
fn lpm_addr(addr: IpAddr, prefix: u8) -> (u8, [u8; 16], u32) {
    let (family, data) = match addr {
        IpAddr::V4(v4) => (abi::FAMILY_V4, v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => (abi::FAMILY_V6, v6.octets()),
    };
    (family, data, abi::address_bits(family, prefix))
}

/// The 16-byte form of an address (IPv4-mapped for IPv4).
fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Now on `CLOCK_TAI`, the clock of scheduled generations, in ns.
pub fn tai_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_TAI)
}

fn clock_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Enforcer {
    /// Loads the programs against the node's pinned maps (creating and
    /// pinning them the first time) and pins the programs.
    pub fn open(bpffs: &Path, node: &str) -> Result<Enforcer, EnforcerError> {
        let dir = node_dir(bpffs, node).join(format!("abi-{ABI_VERSION}"));
        ensure_bpffs(&dir)?;
        for sub in ["maps", "programs", "links"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let adopted = dir.join("maps").join(abi::MAP_CONFIG).exists();
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = abi::ALL_MAPS
            .iter()
            .map(|m| (*m, dir.join("maps").join(m)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(PROGRAMS)
            .map_err(|e| EnforcerError::Load(Box::new(e)))?;
        for (name, _, _) in PROGRAMS_BY_DIRECTION {
            let prog_err = |source: aya::programs::ProgramError| EnforcerError::Program {
                name: if name == abi::PROG_INGRESS {
                    abi::PROG_INGRESS
                } else {
                    abi::PROG_EGRESS
                },
                source: Box::new(source),
            };
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| prog_err(aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(prog_err)?;
            program.load().map_err(prog_err)?;
            let pin = dir.join("programs").join(name);
            // Replace the pin of an earlier run's program with this one.
            let _ = std::fs::remove_file(&pin);
            program.pin(&pin).map_err(|e| EnforcerError::Io {
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let config = take(&mut ebpf, abi::MAP_CONFIG)?;
        let schedule = take(&mut ebpf, abi::MAP_SCHEDULE)?;
        let prefixes = take(&mut ebpf, abi::MAP_PREFIXES)?;
        let prefix_lens = take(&mut ebpf, abi::MAP_PREFIX_LENS)?;
        let prefix_trie = take(&mut ebpf, abi::MAP_PREFIX_TRIE)?;
        let vlans = take(&mut ebpf, abi::MAP_VLANS)?;
        let marks = take(&mut ebpf, abi::MAP_MARKS)?;
        let rules = take(&mut ebpf, abi::MAP_RULES)?;
        let rule_ports = take(&mut ebpf, abi::MAP_RULE_PORTS)?;
        let failsafe = take(&mut ebpf, abi::MAP_FAILSAFE)?;
        let local_addrs = take(&mut ebpf, abi::MAP_LOCAL_ADDRS)?;
        let ethertypes = take(&mut ebpf, abi::MAP_ETHERTYPES)?;
        let counters = take(&mut ebpf, abi::MAP_COUNTERS)?;
        let conntrack = take(&mut ebpf, abi::MAP_CONNTRACK)?;
        let unconfirmed = take(&mut ebpf, abi::MAP_UNCONFIRMED)?;
        let denied = take(&mut ebpf, abi::MAP_DENIED)?;
        let fragments = take(&mut ebpf, abi::MAP_FRAGMENTS)?;
        let events = Some(take(&mut ebpf, abi::MAP_EVENTS)?);
        // Pins of another ABI version are replaced once this one is attached.
        Ok(Enforcer {
            dir,
            ebpf,
            config,
            schedule,
            prefixes,
            prefix_lens,
            prefix_trie,
            vlans,
            marks,
            rules,
            rule_ports,
            failsafe,
            local_addrs,
            ethertypes,
            counters,
            conntrack,
            unconfirmed,
            denied,
            fragments,
            events,
            adopted,
        })
    }

    /// Whether the maps were adopted from an earlier run.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// The generation packets are judged by now (0 before any policy): the
    /// live one, or a scheduled one whose instant has come.
    pub fn generation(&self) -> Result<u32, EnforcerError> {
        Ok(self.in_force()?.generation)
    }

    fn live(&self) -> Result<Config, EnforcerError> {
        self.config.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))
    }

    fn set_live(&mut self, config: Config) -> Result<(), EnforcerError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(abi::MAP_CONFIG))
    }

    fn scheduled(&self) -> Result<Vec<ScheduleEntry>, EnforcerError> {
        (0..abi::MAX_SCHEDULED)
            .map(|i| self.schedule.get(&i, 0).map_err(map_err(abi::MAP_SCHEDULE)))
            .collect()
    }

    /// What the kernel computes per packet (`generation.rs`), computed here.
    fn in_force(&self) -> Result<Config, EnforcerError> {
        let live = self.live()?;
        if live.flags & config_flags::HAS_SCHEDULE == 0 {
            return Ok(live);
        }
        let now = tai_ns();
        let mut best = live;
        for e in self.scheduled()? {
            let ahead = (e.generation.wrapping_sub(best.generation) as i32) > 0;
            if e.is_valid() && now >= e.at_tai_ns && ahead {
                best = Config {
                    generation: e.generation,
                    flags: (live.flags & !config_flags::POLICY_FLAGS)
                        | (e.flags & config_flags::POLICY_FLAGS),
                };
            }
        }
        Ok(best)
    }

    /// The ring buffer of flow events, taken once by the event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// A program, loaded, for tests that run it through `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.ebpf.program_mut(name)?.try_into().ok()
    }

    /// Attaches both directions to `interface`, or swaps this run's program
    /// into the links an earlier run pinned. Idempotent.
    pub fn attach(&mut self, interface: &str) -> Result<(), EnforcerError> {
        for (name, attach_type, direction) in PROGRAMS_BY_DIRECTION {
            let failed = |message: String| EnforcerError::Attach {
                interface: interface.to_owned(),
                direction,
                message,
            };
            let pin = self
                .dir
                .join("links")
                .join(format!("{interface}-{direction}"));
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| failed("program missing".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| failed(e.to_string()))?;
            let our_id = program.info().map_err(|e| failed(e.to_string()))?.id();
            if pin.exists() {
                let attached = SchedClassifier::query_tcx(interface, attach_type)
                    .map(|(_, progs)| !progs.is_empty())
                    .unwrap_or(false);
                if attached {
                    let pinned = PinnedLink::from_pin(&pin).map_err(|e| failed(e.to_string()))?;
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|e| failed(e.to_string()))?;
                    let id = program
                        .attach_to_link(link)
                        .map_err(|e| failed(format!("replacing the pinned link: {e}")))?;
                    // The pin keeps the link; our handle may go.
                    drop(program.take_link(id));
                    continue;
                }
                // The interface was recreated: its old link is defunct.
                let _ = std::fs::remove_file(&pin);
            }
            let id = program
                // First in the chain: no program attached earlier can pass a
                // packet around the verdict; passed packets go on (TCX_NEXT).
                .attach_with_options(
                    interface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|e| failed(e.to_string()))?;
            let link = program.take_link(id).map_err(|e| failed(e.to_string()))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| failed(e.to_string()))?;
            fd.pin(&pin)
                .map_err(|e| failed(format!("pinning {}: {e}", pin.display())))?;
            tracing::debug!(interface, direction, program = our_id, "attached");
        }
        Ok(())
    }

    /// Whether this node's programs are attached in both directions of `interface`.
    pub fn is_attached(&self, interface: &str) -> bool {
        PROGRAMS_BY_DIRECTION
            .iter()
            .all(|(_, attach_type, direction)| {
                let pin = self
                    .dir
                    .join("links")
                    .join(format!("{interface}-{direction}"));
                pin.exists()
                    && SchedClassifier::query_tcx(interface, *attach_type).is_ok_and(
                        |(_, progs)| {
                            progs.iter().any(|p| {
                                p.name_as_str().is_some_and(|n| {
                                    abi::PROG_INGRESS.starts_with(n)
                                        || abi::PROG_EGRESS.starts_with(n)
                                })
                            })
                        },
                    )
            })
    }

    /// Sets the failsafe flows and passed ethertypes (the agent's config, not
    /// policy: they hold across generations).
    pub fn set_local_rules(
        &mut self,
        failsafe: &[FailsafeFlow],
        ethertypes: &[u16],
    ) -> Result<(), EnforcerError> {
        let mut wanted = Vec::new();
        for f in failsafe {
            let kind = match f.direction {
                FailsafeDirection::Ingress => abi::FAILSAFE_REMOTE_INITIATES,
                FailsafeDirection::Egress => abi::FAILSAFE_LOCAL_INITIATES,
            };
            for c in &f.cidrs {
                let (family, addr, bits) = lpm_addr(c.network(), c.prefix_len());
                wanted.push(Key::new(
                    abi::FAILSAFE_KEY_FIXED_BITS + bits,
                    FailsafeData {
                        kind,
                        proto: f.protocol,
                        port: f.port.to_be_bytes(),
                        family,
                        _pad: [0; 3],
                        addr,
                    },
                ));
            }
        }
        for k in &wanted {
            self.failsafe
                .insert(k, 1, 0)
                .map_err(map_err(abi::MAP_FAILSAFE))?;
        }
        let stale: Vec<Key<FailsafeData>> = self
            .failsafe
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for k in stale {
            self.failsafe
                .remove(&k)
                .map_err(map_err(abi::MAP_FAILSAFE))?;
        }
        for t in ethertypes {
            self.ethertypes
                .insert(*t as u32, 1, 0)
                .map_err(map_err(abi::MAP_ETHERTYPES))?;
        }
        let stale: Vec<u32> = self
            .ethertypes
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !ethertypes.iter().any(|w| *w as u32 == *t))
            .collect();
        for t in stale {
            self.ethertypes
                .remove(&t)
                .map_err(map_err(abi::MAP_ETHERTYPES))?;
        }
        let mut config = self.config.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
        if failsafe.is_empty() {
            config.flags &= !config_flags::HAS_FAILSAFE;
        } else {
            config.flags |= config_flags::HAS_FAILSAFE;
        }
        self.config
            .set(0, config, 0)
            .map_err(map_err(abi::MAP_CONFIG))
    }

    /// Makes the node's own addresses the failsafe flows' local ends.
    /// Returns whether the set changed.
    pub fn set_local_addresses(&mut self, addrs: &[IpAddr]) -> Result<bool, EnforcerError> {
        let wanted: BTreeSet<[u8; 16]> = addrs.iter().map(|a| addr16(*a)).collect();
        let present: BTreeSet<[u8; 16]> = self
            .local_addrs
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.addr)
            .collect();
        if wanted == present {
            return Ok(false);
        }
        for addr in wanted.difference(&present) {
            self.local_addrs
                .insert(LocalAddr { addr: *addr }, 1, 0)
                .map_err(map_err(abi::MAP_LOCAL_ADDRS))?;
        }
        for addr in present.difference(&wanted) {
            self.local_addrs
                .remove(&LocalAddr { addr: *addr })
                .map_err(map_err(abi::MAP_LOCAL_ADDRS))?;
        }
        Ok(true)
    }

    /// Programs `now` as the new live generation and `ahead` (window
    /// boundaries in time order, at most [`abi::MAX_SCHEDULED`]; more are
    /// left out) as scheduled ones.
    ///
    /// Packets go on being judged by the generation in force until the one
    /// write that switches them to the new tables; every generation number
    /// is new, so no tracked connection's stamp can name tables that were
    /// rewritten under it.
    pub fn apply(
        &mut self,
        now: &Dataplane,
        ahead: &[Scheduled<'_>],
    ) -> Result<Applied, EnforcerError> {
        // Freeze on what packets use now: no schedule, nothing else live.
        let current = self.in_force()?;
        // Every generation number is new: above the live one and above any
        // scheduled one (in force already or not).
        let highest = self
            .scheduled()?
            .iter()
            .filter(|e| e.is_valid())
            .map(|e| e.generation)
            .chain([self.live()?.generation, current.generation])
            .max()
            .unwrap_or(0);
        let local = current.flags & !config_flags::POLICY_FLAGS & !config_flags::HAS_SCHEDULE;
        self.set_live(Config {
            generation: current.generation,
            flags: current.flags & !config_flags::HAS_SCHEDULE,
        })?;
        for i in 0..abi::MAX_SCHEDULED {
            self.schedule
                .set(i, ScheduleEntry::default(), 0)
                .map_err(map_err(abi::MAP_SCHEDULE))?;
        }
        std::thread::sleep(GRACE);
        let current_slot = slot_of(current.generation);
        // Leftovers: scheduled generations, an interrupted run's tables.
        let first = current.generation == 0;
        self.clear_where(|slot| first || slot != current_slot)?;

        // The new live generation, in a slot of its own.
        let mut live = highest.wrapping_add(1).max(1);
        if current.generation != 0 && slot_of(live) == current_slot {
            live = live.wrapping_add(1).max(1);
        }
        self.program_slot(slot_of(live), now)?;
        self.set_live(Config {
            generation: live,
            flags: local | now.flags,
        })?;
        std::thread::sleep(GRACE);
        if current.generation != 0 && slot_of(live) != current_slot {
            self.clear_slot(current_slot)?;
        }

        // The window boundaries ahead, each in the next slot.
        let mut scheduled = Vec::new();
        for (i, step) in ahead.iter().take(abi::MAX_SCHEDULED as usize).enumerate() {
            let generation = live.wrapping_add(1 + i as u32).max(1);
            self.program_slot(slot_of(generation), step.dataplane)?;
            let entry = ScheduleEntry::new(step.at_tai_ns, generation, step.dataplane.flags);
            self.schedule
                .set(i as u32, entry, 0)
                .map_err(map_err(abi::MAP_SCHEDULE))?;
            scheduled.push(generation);
        }
        if !scheduled.is_empty() {
            self.set_live(Config {
                generation: live,
                flags: local | now.flags | config_flags::HAS_SCHEDULE,
            })?;
        }
        Ok(Applied { live, scheduled })
    }

    /// Writes one generation's tables into `slot` (which packets do not use).
    fn program_slot(&mut self, slot: u8, dp: &Dataplane) -> Result<(), EnforcerError> {
        // Per family, the prefix lengths in use, longest first: the
        // longest `PREFIX_PROBES` are probed in the hash, the prefixes of
        // any others go to the trie.
        let mut used: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let entries: Vec<(u8, [u8; 16], u8, u32)> = dp
            .prefixes
            .iter()
            .map(|(net, id)| {
                let (family, addr, bits) = lpm_addr(net.network(), net.prefix_len());
                (family, addr, bits as u8, *id)
            })
            .collect();
        for (family, _, bits, _) in &entries {
            used[usize::from(*family == abi::FAMILY_V6)].push(*bits);
        }
        for u in &mut used {
            u.sort_unstable_by(|a, b| b.cmp(a));
            u.dedup();
        }
        for (family, addr, bits, id) in &entries {
            let probed = &used[usize::from(*family == abi::FAMILY_V6)];
            if probed.iter().take(abi::PREFIX_PROBES).any(|b| b == bits) {
                let key = PrefixKey {
                    slot,
                    family: *family,
                    bits: *bits,
                    _pad: 0,
                    addr: abi::mask_address(*addr, *bits),
                };
                self.prefixes
                    .insert(key, id, 0)
                    .map_err(map_err(abi::MAP_PREFIXES))?;
            } else {
                let key = Key::new(
                    abi::PREFIX_KEY_FIXED_BITS + u32::from(*bits),
                    PrefixData {
                        slot,
                        family: *family,
                        _pad: [0; 2],
                        addr: *addr,
                    },
                );
                self.prefix_trie
                    .insert(&key, id, 0)
                    .map_err(map_err(abi::MAP_PREFIX_TRIE))?;
            }
        }
        for (family, u) in [abi::FAMILY_V4, abi::FAMILY_V6].into_iter().zip(&used) {
            let probed = u.len().min(abi::PREFIX_PROBES);
            let mut entry = PrefixLens {
                count: probed as u8,
                trie: u8::from(u.len() > probed),
                ..PrefixLens::default()
            };
            entry.bits[..probed].copy_from_slice(&u[..probed]);
            self.prefix_lens
                .set(abi::prefix_lens_index(slot, family), entry, 0)
                .map_err(map_err(abi::MAP_PREFIX_LENS))?;
        }
        for (vid, id) in &dp.vlans {
            self.vlans
                .insert(abi::vlan_key(slot, *vid), id, 0)
                .map_err(map_err(abi::MAP_VLANS))?;
        }
        for (id, marks) in &dp.marks {
            let key = MarkKey {
                slot: slot as u32,
                segment: *id,
            };
            self.marks
                .insert(key, marks, 0)
                .map_err(map_err(abi::MAP_MARKS))?;
        }
        let mut ports: std::collections::BTreeMap<RulePortsKey, u32> = Default::default();
        for r in &dp.rules {
            let key = RuleKey {
                slot,
                proto: r.proto,
                port_bits: r.port_bits,
                _pad: 0,
                src: r.src,
                dst: r.dst,
                port: abi::mask_port(r.port, r.port_bits),
                _pad2: 0,
            };
            self.rules
                .insert(key, r.value, 0)
                .map_err(map_err(abi::MAP_RULES))?;
            if r.port_bits < 16 {
                let triple = RulePortsKey {
                    slot,
                    proto: r.proto,
                    _pad: [0; 2],
                    src: r.src,
                    dst: r.dst,
                };
                *ports.entry(triple).or_default() |= 1 << r.port_bits;
            }
        }
        for (triple, lens) in ports {
            self.rule_ports
                .insert(triple, lens, 0)
                .map_err(map_err(abi::MAP_RULE_PORTS))?;
        }
        Ok(())
    }

    fn clear_slot(&mut self, slot: u8) -> Result<(), EnforcerError> {
        self.clear_where(|s| s == slot)
    }

    /// Removes every policy-table entry whose slot `drop` says to, in one
    /// pass over each table.
    fn clear_where(&mut self, drop: impl Fn(u8) -> bool) -> Result<(), EnforcerError> {
        let keys: Vec<_> = self
            .prefixes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k.slot))
            .collect();
        for k in keys {
            self.prefixes
                .remove(&k)
                .map_err(map_err(abi::MAP_PREFIXES))?;
        }
        let keys: Vec<_> = self
            .prefix_trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k.data().slot))
            .collect();
        for k in keys {
            self.prefix_trie
                .remove(&k)
                .map_err(map_err(abi::MAP_PREFIX_TRIE))?;
        }
        let keys: Vec<_> = self
            .rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k.slot))
            .collect();
        for k in keys {
            self.rules.remove(&k).map_err(map_err(abi::MAP_RULES))?;
        }
        let keys: Vec<_> = self
            .rule_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k.slot))
            .collect();
        for k in keys {
            self.rule_ports
                .remove(&k)
                .map_err(map_err(abi::MAP_RULE_PORTS))?;
        }
        for slot in 0..abi::SLOTS as u8 {
            if drop(slot) {
                for family in [abi::FAMILY_V4, abi::FAMILY_V6] {
                    self.prefix_lens
                        .set(
                            abi::prefix_lens_index(slot, family),
                            PrefixLens::default(),
                            0,
                        )
                        .map_err(map_err(abi::MAP_PREFIX_LENS))?;
                }
            }
        }
        let keys: Vec<_> = self
            .vlans
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop((k >> 16) as u8))
            .collect();
        for k in keys {
            self.vlans.remove(&k).map_err(map_err(abi::MAP_VLANS))?;
        }
        let keys: Vec<_> = self
            .marks
            .keys()
            .filter_map(Result::ok)
            .filter(|k| drop(k.slot as u8))
            .collect();
        for k in keys {
            self.marks.remove(&k).map_err(map_err(abi::MAP_MARKS))?;
        }
        Ok(())
    }

    /// Forgets every tracked connection, remembered drop and fragment: each
    /// next packet is judged as a new connection.
    pub fn flush_tracking(&mut self) -> Result<usize, EnforcerError> {
        let mut n = 0;
        for table in [&mut self.conntrack, &mut self.unconfirmed] {
            let keys: Vec<_> = table.keys().filter_map(Result::ok).collect();
            n += keys.len();
            for k in keys {
                let _ = table.remove(&k);
            }
        }
        let keys: Vec<_> = self.denied.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.denied.remove(&k);
        }
        let keys: Vec<_> = self.fragments.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.fragments.remove(&k);
        }
        Ok(n)
    }

    /// Removes tracked connections and fragments idle for longer than their
    /// timeout, as of `now` (`CLOCK_BOOTTIME` nanoseconds, the kernel's
    /// clock), and finds the long connections whose counts are due to be
    /// reported: those that crossed a multiple of `interval` nanoseconds of
    /// age since `previous` (the last sweep; `None`: none yet). The kernel keeps confirmed connections in a plain
    /// hash map, which never evicts a live connection (an LRU map evicts
    /// entries long before it is full when CPUs contend); this sweep is
    /// what frees them. One pass over each table.
    pub fn sweep(&mut self, now: u64, previous: Option<u64>, interval: u64) -> Sweep {
        let mut out = Sweep::default();
        let due = |s: &abi::FlowState| {
            let age = |at: u64| at.saturating_sub(s.created_ns) / interval.max(1);
            previous.is_some_and(|p| age(now) > age(p.max(s.created_ns)))
        };
        for (name, capacity, table) in [
            ("connections", abi::MAX_CONNECTIONS, &mut self.conntrack),
            ("unconfirmed", abi::MAX_UNCONFIRMED, &mut self.unconfirmed),
        ] {
            let mut idle = Vec::new();
            let mut live = 0;
            for (k, s) in table.iter().filter_map(Result::ok) {
                if now.saturating_sub(s.last_seen_ns) >= abi::flow_timeout(k.proto, s.status, s.tcp)
                {
                    idle.push((k, s));
                } else {
                    live += 1;
                    if due(&s) {
                        out.due.push((k, s));
                    }
                }
            }
            let removed: Vec<_> = idle
                .into_iter()
                .filter(|(k, _)| table.remove(k).is_ok())
                .collect();
            out.entries.push((name, live, capacity));
            out.expired.extend(removed);
        }
        // Remembered drops are evicted when their table is full; forgetting
        // old ones keeps it small.
        let (forgotten, kept): (Vec<_>, Vec<_>) = self
            .denied
            .iter()
            .filter_map(Result::ok)
            .partition(|(_, d)| now.saturating_sub(d.created_ns) >= abi::TIMEOUT_DENIED);
        for (k, _) in &forgotten {
            let _ = self.denied.remove(k);
        }
        out.entries.push(("denied", kept.len(), abi::MAX_DENIED));
        let (old, kept): (Vec<_>, Vec<_>) = self
            .fragments
            .iter()
            .filter_map(Result::ok)
            .partition(|(_, f)| now.saturating_sub(f.seen_ns) >= abi::TIMEOUT_FRAGMENT);
        out.fragments = old
            .iter()
            .filter(|(k, _)| self.fragments.remove(k).is_ok())
            .count();
        out.entries
            .push(("fragments", kept.len(), abi::MAX_FRAGMENTS));
        out
    }

    /// The tracked connections, confirmed or not, for inspection.
    pub fn connections(&self) -> Vec<(abi::FlowKey, abi::FlowState)> {
        self.conntrack
            .iter()
            .chain(self.unconfirmed.iter())
            .filter_map(Result::ok)
            .collect()
    }

    /// Switches flow events off or on (counters always count).
    pub fn set_events(&mut self, on: bool) -> Result<(), EnforcerError> {
        let mut config = self.config.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
        if on {
            config.flags &= !config_flags::NO_EVENTS;
        } else {
            config.flags |= config_flags::NO_EVENTS;
        }
        self.config
            .set(0, config, 0)
            .map_err(map_err(abi::MAP_CONFIG))
    }

    pub fn counters(&self) -> Result<Counters, EnforcerError> {
        let mut c = Counters::default();
        for direction in 0..2u8 {
            for reason in 0..abi::REASON_COUNT as u8 {
                let values = self
                    .counters
                    .get(&abi::counter_index(direction, reason), 0)
                    .map_err(map_err(abi::MAP_COUNTERS))?;
                c.packets[direction as usize][reason as usize] = values.iter().sum();
            }
        }
        let sum = |index: u32| -> Result<u64, EnforcerError> {
            Ok(self
                .counters
                .get(&index, 0)
                .map_err(map_err(abi::MAP_COUNTERS))?
                .iter()
                .sum())
        };
        c.lost_events = sum(abi::COUNTER_LOST_EVENTS)?;
        c.tracking_full = sum(abi::COUNTER_TRACKING_FULL)?;
        c.fragments_full = sum(abi::COUNTER_FRAGMENTS_FULL)?;
        Ok(c)
    }

    /// The raw fd of the events ring buffer, for readiness polling.
    pub fn events_fd(ring: &RingBuf<MapData>) -> i32 {
        ring.as_raw_fd()
    }
}

/// Now on the kernel's event and tracking clock (`CLOCK_BOOTTIME`), in ns.
pub fn boot_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_BOOTTIME)
}

/// Removes every pin of `node` under `bpffs`: links (so the programs
/// detach), programs and maps, of every ABI version.
pub fn uninstall(bpffs: &Path, node: &str) -> Result<bool, EnforcerError> {
    let dir = node_dir(bpffs, node);
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    // The bpffs directory itself goes too once no node is left in it.
    let _ = std::fs::remove_dir(bpffs);
    Ok(true)
}

/// Removes pins this ABI version does not use (an upgrade), after the new
/// programs are attached.
pub fn remove_other_abi_versions(bpffs: &Path, node: &str) -> Result<(), EnforcerError> {
    let dir = node_dir(bpffs, node);
    let current = format!("abi-{ABI_VERSION}");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy() != current {
            let p = e.path();
            tracing::info!(path = %p.display(), "removing pins of another ABI version");
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}
