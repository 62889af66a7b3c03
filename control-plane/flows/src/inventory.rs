//! The device inventory: every endpoint the stored records name, with its
//! Ethernet address and VLAN where an agent saw them, its segment, when it
//! was first and last seen, its peers and ports, and whether it is a new
//! device: an address in no segment, or an Ethernet address not seen
//! before for that address on a tagged VLAN (a device plugged into a
//! medical-device VLAN, or one taking over a pump's address).
//!
//! Kept up to date at ingest, in the same transaction as the records (one
//! entry per address, sealed with the store key), so that the inventory is
//! read without reading records. Bounded: past its limit new addresses are
//! counted and not added, so a flood of forged sources cannot push the
//! devices already known out.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use prost::Message as _;
use redb::{ReadableTable, Table, TableDefinition};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_proto::convert::mac_text;
use wardline_proto::v1;
use wardline_store::encrypted::StoreKey;

use crate::filter::{QueryError, instant, label};
use crate::record::{FIRST_KINDS, address, time_of};

/// Address (16 bytes, IPv4 mapped) to its sealed [`Stored`] entry.
pub(crate) const DEVICES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("devices");

/// Peers and ports kept per device (more are flagged, not kept).
const MAX_PEERS: usize = 32;
const MAX_PORTS: usize = 32;
/// Ethernet addresses remembered per device, newest last.
const MAX_MACS: usize = 8;

/// A device as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct Stored {
    #[prost(bytes = "vec", tag = "1")]
    mac: Vec<u8>,
    #[prost(uint32, tag = "2")]
    vlan: u32,
    #[prost(string, tag = "3")]
    segment: String,
    #[prost(string, tag = "4")]
    node: String,
    #[prost(int64, tag = "5")]
    first_ns: i64,
    #[prost(int64, tag = "6")]
    last_ns: i64,
    #[prost(uint64, tag = "7")]
    connections: u64,
    #[prost(uint64, tag = "8")]
    dropped: u64,
    #[prost(bytes = "vec", repeated, tag = "9")]
    peers: Vec<Vec<u8>>,
    #[prost(bool, tag = "10")]
    more_peers: bool,
    #[prost(message, repeated, tag = "11")]
    ports: Vec<v1::DevicePort>,
    #[prost(bool, tag = "12")]
    more_ports: bool,
    /// Every Ethernet address seen on a tagged VLAN, newest last.
    #[prost(bytes = "vec", repeated, tag = "13")]
    macs: Vec<Vec<u8>>,
    #[prost(string, tag = "14")]
    new_reason: String,
    #[prost(int64, tag = "15")]
    new_ns: i64,
}

/// One end of one record, as the inventory takes it.
struct Sighting<'a> {
    at_ns: i64,
    node: &'a str,
    segment: &'a str,
    mac: &'a [u8],
    /// Only where the end's own packet arrived (the initiator, at ingress).
    vlan: Option<u32>,
    /// The record is a connection's first (new or drop).
    first: bool,
    dropped: bool,
    peer: [u8; 16],
    port: Option<v1::DevicePort>,
}

fn wide(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn narrow(key: &[u8]) -> Option<IpAddr> {
    let bytes = <[u8; 16]>::try_from(key).ok()?;
    let v6 = std::net::Ipv6Addr::from(bytes);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

fn name_of(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("devices/{hex}")
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn rfc3339(ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Both ends of each record of `flows`, by address.
fn sightings(flows: &[v1::Flow]) -> HashMap<[u8; 16], Vec<Sighting<'_>>> {
    let mut by: HashMap<[u8; 16], Vec<Sighting<'_>>> = HashMap::new();
    for f in flows {
        let (Some(src), Some(dst), Some(at)) = (address(&f.src), address(&f.dst), time_of(f))
        else {
            continue;
        };
        let (src, dst, at_ns) = (wide(src), wide(dst), nanos(at));
        let first = FIRST_KINDS.contains(&f.kind.as_str());
        let dropped = f.verdict == "dropped";
        let port = |serves| {
            first.then_some(v1::DevicePort {
                protocol: f.protocol,
                port: f.dport,
                serves,
            })
        };
        by.entry(src).or_default().push(Sighting {
            at_ns,
            node: &f.node,
            segment: &f.src_segment,
            mac: &f.src_mac,
            // The frame of a first record (new, drop) is the initiator's
            // own first packet: arriving, its tag is the initiator's VLAN.
            // Later records (update, close) come from either side's frames.
            vlan: (first && f.direction == "ingress").then_some(f.vlan),
            first,
            dropped,
            peer: dst,
            port: port(false),
        });
        by.entry(dst).or_default().push(Sighting {
            at_ns,
            node: &f.node,
            segment: &f.dst_segment,
            mac: &f.dst_mac,
            vlan: None,
            first,
            dropped,
            peer: src,
            port: port(true),
        });
    }
    by
}

impl Stored {
    fn take(&mut self, s: &Sighting<'_>) {
        if s.at_ns >= self.last_ns {
            self.last_ns = s.at_ns;
            self.node = s.node.to_owned();
            self.segment = s.segment.to_owned();
        }
        self.first_ns = self.first_ns.min(s.at_ns);
        if let Some(vlan) = s.vlan {
            self.vlan = vlan;
        }
        if s.mac.len() == 6 {
            self.mac = s.mac.to_vec();
            let vlan = s.vlan.unwrap_or(self.vlan);
            if vlan != 0 && !self.macs.iter().any(|m| m == s.mac) {
                if self.macs.len() == MAX_MACS {
                    self.macs.remove(0);
                }
                self.macs.push(s.mac.to_vec());
                self.new_reason = format!(
                    "new MAC {} on VLAN {vlan}",
                    mac_text(s.mac).unwrap_or_default()
                );
                self.new_ns = s.at_ns;
            }
        }
        if !s.first {
            return;
        }
        self.connections += 1;
        self.dropped += u64::from(s.dropped);
        if !self.peers.iter().any(|p| p.as_slice() == s.peer) {
            if self.peers.len() < MAX_PEERS {
                self.peers.push(s.peer.to_vec());
            } else {
                self.more_peers = true;
            }
        }
        if let Some(port) = &s.port
            && !self.ports.contains(port)
        {
            if self.ports.len() < MAX_PORTS {
                self.ports.push(*port);
            } else {
                self.more_ports = true;
            }
        }
    }
}

/// What the inventory's upkeep counts.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// Addresses added.
    pub added: u64,
    /// Addresses not added: the inventory was full.
    pub refused_full: u64,
}

/// Takes the stored records `flows` (their node set) into the inventory,
/// which holds `known` devices and may hold `limit`.
pub(crate) fn take(
    table: &mut Table<'_, &[u8], &[u8]>,
    key: &StoreKey,
    flows: &[v1::Flow],
    known: u64,
    limit: u64,
) -> Result<Upkeep, String> {
    let mut put = Vec::new();
    let upkeep = take_with(
        key,
        flows,
        known,
        limit,
        |addr| {
            Ok(table
                .get(addr.as_slice())
                .map_err(|e| e.to_string())?
                .map(|v| v.value().to_vec()))
        },
        |addr, sealed| {
            put.push((addr, sealed));
            Ok(())
        },
    )?;
    for (addr, sealed) in put {
        table
            .insert(addr.as_slice(), sealed.as_slice())
            .map_err(|e| e.to_string())?;
    }
    Ok(upkeep)
}

/// The addresses (16 bytes, IPv4 mapped) the records `flows` name.
pub fn addresses_of(flows: &[v1::Flow]) -> Vec<[u8; 16]> {
    sightings(flows).into_keys().collect()
}

/// [`take`] for any store: `get` gives an address's sealed entry, if
/// any, and `put` takes its new one.
pub fn take_with(
    key: &StoreKey,
    flows: &[v1::Flow],
    known: u64,
    limit: u64,
    mut get: impl FnMut(&[u8; 16]) -> Result<Option<Vec<u8>>, String>,
    mut put: impl FnMut([u8; 16], Vec<u8>) -> Result<(), String>,
) -> Result<Upkeep, String> {
    let mut upkeep = Upkeep::default();
    let mut by: Vec<_> = sightings(flows).into_iter().collect();
    // In address order, so that which addresses a full inventory refuses
    // does not depend on a hash.
    by.sort_by_key(|(a, _)| *a);
    for (addr, seen) in by {
        let name = name_of(&addr);
        let existing = match get(&addr)? {
            Some(v) => {
                let opened = key.open(&name, &v).map_err(|e| e.to_string())?;
                Some(Stored::decode(opened.as_slice()).map_err(|e| format!("{name}: {e}"))?)
            }
            None => None,
        };
        let mut device = match existing {
            Some(d) => d,
            None if known + upkeep.added >= limit => {
                upkeep.refused_full += 1;
                continue;
            }
            None => {
                upkeep.added += 1;
                let first = seen.iter().map(|s| s.at_ns).min().unwrap_or_default();
                let mut d = Stored {
                    first_ns: first,
                    last_ns: i64::MIN,
                    ..Default::default()
                };
                if seen.iter().any(|s| s.segment == "world") {
                    d.new_reason = "in no segment".to_owned();
                    d.new_ns = first;
                }
                d
            }
        };
        for s in &seen {
            device.take(s);
        }
        let sealed = key
            .seal(&name, &device.encode_to_vec())
            .map_err(|e| e.to_string())?;
        put(addr, sealed)?;
    }
    Ok(upkeep)
}

/// When the device at `addr`, sealed as `sealed`, was last seen.
pub fn last_seen(key: &StoreKey, addr: &[u8], sealed: &[u8]) -> Result<OffsetDateTime, String> {
    let name = name_of(addr);
    let opened = key.open(&name, sealed).map_err(|e| e.to_string())?;
    let device = Stored::decode(opened.as_slice()).map_err(|e| format!("{name}: {e}"))?;
    Ok(
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(device.last_ns))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

/// Removes devices last seen before `cutoff`; returns how many.
pub(crate) fn prune(
    table: &mut Table<'_, &[u8], &[u8]>,
    key: &StoreKey,
    cutoff: OffsetDateTime,
) -> Result<u64, String> {
    let cutoff = nanos(cutoff);
    let mut old = Vec::new();
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        if nanos(last_seen(key, k.value(), v.value())?) < cutoff {
            old.push(k.value().to_vec());
        }
    }
    for k in &old {
        table.remove(k.as_slice()).map_err(|e| e.to_string())?;
    }
    Ok(old.len() as u64)
}

/// A parsed [`v1::InventoryRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryQuery {
    pub addresses: Option<IpNet>,
    pub segment: Option<String>,
    pub new_only: bool,
    pub since: Option<OffsetDateTime>,
}

impl InventoryQuery {
    pub fn parse(
        req: &v1::InventoryRequest,
        now: OffsetDateTime,
    ) -> Result<InventoryQuery, QueryError> {
        let addresses = if req.address.is_empty() {
            None
        } else if let Ok(a) = req.address.parse::<IpAddr>() {
            Some(IpNet::from(a))
        } else {
            Some(
                req.address
                    .parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| QueryError {
                        field: "address",
                        message: format!("{:?} is neither an address nor a CIDR", req.address),
                    })?,
            )
        };
        Ok(InventoryQuery {
            addresses,
            segment: label("segment", &req.segment)?,
            new_only: req.new_only,
            since: instant("since", &req.since, now)?,
        })
    }
}

/// The range of addresses (16 bytes, IPv4 mapped; both ends included)
/// `q` wants.
pub fn range_of(q: &InventoryQuery) -> ([u8; 16], [u8; 16]) {
    match &q.addresses {
        Some(net) => (wide(net.network()), wide(net.broadcast())),
        None => ([0; 16], [0xff; 16]),
    }
}

/// The devices `q` wants, by address, from `table`.
pub(crate) fn list(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &StoreKey,
    q: &InventoryQuery,
) -> Result<Vec<v1::Device>, String> {
    let (low, high) = range_of(q);
    let mut out = Vec::new();
    for entry in table
        .range(low.as_slice()..=high.as_slice())
        .map_err(|e| e.to_string())?
    {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        out.extend(device(key, k.value(), v.value(), q)?);
    }
    Ok(out)
}

/// The device at `addr`, sealed as `sealed`, if `q` wants it.
pub fn device(
    key: &StoreKey,
    addr: &[u8],
    sealed: &[u8],
    q: &InventoryQuery,
) -> Result<Option<v1::Device>, String> {
    let since = q.since.map(nanos);
    let name = name_of(addr);
    let opened = key.open(&name, sealed).map_err(|e| e.to_string())?;
    let d = Stored::decode(opened.as_slice()).map_err(|e| format!("{name}: {e}"))?;
    let wanted = q.segment.as_ref().is_none_or(|s| *s == d.segment)
        && (!q.new_only || !d.new_reason.is_empty())
        && since.is_none_or(|s| d.last_ns >= s);
    if !wanted {
        return Ok(None);
    }
    let address = narrow(addr).map(wardline_proto::convert::ip_to_bytes);
    let peers = d
        .peers
        .iter()
        .filter_map(|p| narrow(p))
        .map(wardline_proto::convert::ip_to_bytes)
        .collect();
    Ok(Some(v1::Device {
        address: address.unwrap_or_default(),
        mac: d.mac,
        vlan: d.vlan,
        segment: d.segment,
        node: d.node,
        first_seen: rfc3339(d.first_ns),
        last_seen: rfc3339(d.last_ns),
        connections: d.connections,
        dropped: d.dropped,
        peers,
        more_peers: d.more_peers,
        ports: d.ports,
        more_ports: d.more_ports,
        new_at: if d.new_reason.is_empty() {
            String::new()
        } else {
            rfc3339(d.new_ns)
        },
        new_reason: d.new_reason,
    }))
}
