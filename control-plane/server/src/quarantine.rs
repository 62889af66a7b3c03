//! Quarantine (`docs/clinical-operations.md`): a device isolated at once,
//! keeping only the flows its keep-profile names, and released again.
//!
//! A quarantine is a revision of its own: a Segment that holds the
//! device's addresses (host prefixes, so that they leave whatever segment
//! held them), marked `quarantine` so that `any` does not take it in and
//! monitor mode never lets its connections through, and one allow policy
//! per flow of the keep-profile. The kernel judges the device's tracked
//! connections again as soon as the generation changes: what the
//! keep-profile does not allow is cut. Release removes those documents in
//! another revision. Both need the operator role and a second factor, and
//! no approval beforehand: isolating a device cannot wait for a change
//! board. Both go to the SIEM as alerts.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_policy::{KeepDirection, Peer, PolicySet, PortRule, Protocol};
use wardline_proto::convert::format_time;
use wardline_proto::v1;
use wardline_roles::Verb;

use crate::registry::{
    ChangeAction, ChangeRecord, DocumentKind, Plan, RevisionAction, RevisionRecord, source_of,
};
use crate::server::{
    ControlPlane, change_author, known_names, or_logged, registry_status, store_unavailable,
};

/// Each quarantine: `/wardline/quarantines/<id>`.
pub const QUARANTINES_PREFIX: &str = "/wardline/quarantines/";
/// The label that marks a quarantine's documents.
pub const LABEL: &str = "wardline.io/quarantine";
/// Addresses one Ethernet address may stand for: more is a router's
/// (every routed device carries it), and the target must be an address.
const MAX_ADDRESSES_PER_MAC: usize = 4;
/// Attempts to write the quarantine when other changes land meanwhile.
const ATTEMPTS: usize = 5;

/// A quarantine as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub id: String,
    pub target: String,
    pub addresses: Vec<String>,
    pub origin: String,
    pub keep: String,
    pub reason: String,
    pub by: String,
    pub at: String,
    pub segment: String,
    pub keep_policies: Vec<String>,
    pub revision: u64,
    #[serde(default)]
    pub released_by: String,
    #[serde(default)]
    pub released_at: String,
    #[serde(default)]
    pub release_reason: String,
    #[serde(default)]
    pub released_revision: u64,
}

impl QuarantineRecord {
    fn active(&self) -> bool {
        self.released_by.is_empty()
    }

    pub(crate) fn wire(&self) -> v1::QuarantineRecord {
        v1::QuarantineRecord {
            id: self.id.clone(),
            target: self.target.clone(),
            addresses: self.addresses.clone(),
            origin: self.origin.clone(),
            keep: self.keep.clone(),
            reason: self.reason.clone(),
            by: self.by.clone(),
            at: self.at.clone(),
            segment: self.segment.clone(),
            revision: self.revision,
            state: if self.active() {
                "quarantined"
            } else {
                "released"
            }
            .to_owned(),
            released_by: self.released_by.clone(),
            released_at: self.released_at.clone(),
            release_reason: self.release_reason.clone(),
            released_revision: self.released_revision,
            keep_policies: self.keep_policies.clone(),
        }
    }
}

/// What a target names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Address(IpAddr),
    Mac([u8; 6]),
}

fn read_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if let Ok(a) = text.parse::<IpAddr>() {
        return Ok(Target::Address(a));
    }
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() == 6 {
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(&parts) {
            match u8::from_str_radix(part, 16) {
                Ok(b) if part.len() == 2 => *byte = b,
                _ => {
                    return Err(format!(
                        "target {text:?}: {part:?} is no hex byte of an Ethernet address"
                    ));
                }
            }
        }
        return Ok(Target::Mac(mac));
    }
    Err(format!(
        "target {text:?} is neither an IP address nor an Ethernet address (aa:bb:cc:dd:ee:ff)"
    ))
}

/// YAML for a list of peers.
fn peers_yaml(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| match p {
            Peer::Any => "any".to_owned(),
            Peer::World => "world".to_owned(),
            Peer::Segment(name) => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// YAML for a list of port entries.
pub(crate) fn ports_yaml(ports: &[PortRule]) -> String {
    ports
        .iter()
        .map(|r| {
            let protocol = match r.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
                Protocol::Icmp => "icmp",
                Protocol::Icmpv6 => "icmpv6",
                Protocol::Any => "any",
            };
            match (r.port, r.end_port) {
                (None, _) => format!("{{protocol: {protocol}}}"),
                (Some(p), None) => format!("{{protocol: {protocol}, port: {p}}}"),
                (Some(p), Some(e)) => {
                    format!("{{protocol: {protocol}, port: {p}, endPort: {e}}}")
                }
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The quarantine's documents: its segment and one allow per kept flow.
fn documents(
    id: &str,
    segment: &str,
    addresses: &[IpAddr],
    origin: Option<&str>,
    set: &PolicySet,
    keep: &str,
) -> (String, Vec<String>) {
    let cidrs = addresses
        .iter()
        .map(|a| match a {
            IpAddr::V4(_) => format!("\"{a}/32\""),
            IpAddr::V6(_) => format!("\"{a}/128\""),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let origin = origin.map_or(String::new(), |o| format!("origin: {o}"));
    let mut source = format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata:\n  name: {segment}\n  labels: {{{LABEL}: {id}}}\nspec:\n  cidrs: [{cidrs}]\n  quarantine: {{{origin}}}\n"
    );
    let mut names = Vec::new();
    if let Some(profile) = set.keep_profiles.iter().find(|p| p.name == keep) {
        for (i, flow) in profile.flows.iter().enumerate() {
            let name = format!("{segment}-keep-{i}");
            let (from, to) = match flow.direction {
                KeepDirection::Opens => (segment.to_owned(), peers_yaml(&flow.peers)),
                KeepDirection::Accepts => (peers_yaml(&flow.peers), segment.to_owned()),
            };
            source.push_str(&format!(
                "---\napiVersion: wardline/v1\nkind: Policy\nmetadata:\n  name: {name}\n  labels: {{{LABEL}: {id}, wardline.io/keep-profile: {keep}}}\nspec:\n  action: allow\n  from: [{from}]\n  to: [{to}]\n  ports: [{}]\n",
                ports_yaml(&flow.ports)
            ));
            names.push(name);
        }
    }
    (source, names)
}

impl ControlPlane {
    async fn quarantines_stored(&self) -> Result<Vec<(QuarantineRecord, u64)>, Status> {
        let mut out: Vec<(QuarantineRecord, u64)> =
            self.stored_json(QUARANTINES_PREFIX, "quarantine").await?;
        out.sort_by(|a, b| a.0.at.cmp(&b.0.at));
        Ok(out)
    }

    /// Devices in quarantine now, as status shows them.
    pub(crate) async fn active_quarantines(&self) -> Vec<v1::QuarantineRecord> {
        or_logged(self.quarantines_stored().await, "quarantines")
            .into_iter()
            .filter(|(q, _)| q.active())
            .map(|(q, _)| q.wire())
            .collect()
    }

    /// The addresses `target` stands for, and the segment they belong to
    /// now (by prefix, else as the inventory recorded them: VLAN or node
    /// membership). Refused when it matches nothing.
    async fn resolve(
        &self,
        target: &Target,
        text: &str,
        set: &PolicySet,
    ) -> Result<(Vec<IpAddr>, Option<String>), Status> {
        // An address is looked up alone; an Ethernet address among every
        // device the inventory knows.
        let query = match target {
            Target::Address(a) => v1::InventoryRequest {
                address: a.to_string(),
                ..Default::default()
            },
            Target::Mac(_) => v1::InventoryRequest::default(),
        };
        let inventory = match self.inventory_of(&query).await {
            Ok(i) => i.devices,
            Err(e) if matches!(target, Target::Mac(_)) => {
                return Err(Status::failed_precondition(format!(
                    "target {text:?}: an Ethernet address is found in the device inventory, which cannot be read: {}",
                    e.message()
                )));
            }
            Err(_) => Vec::new(),
        };
        let addresses: Vec<IpAddr> = match target {
            Target::Address(a) => vec![*a],
            Target::Mac(mac) => {
                let found: BTreeSet<IpAddr> = inventory
                    .iter()
                    .filter(|d| d.mac == mac)
                    .filter_map(|d| wardline_proto::convert::ip_from_wire(&d.address))
                    .collect();
                if found.len() > MAX_ADDRESSES_PER_MAC {
                    return Err(Status::failed_precondition(format!(
                        "target {text:?} is the Ethernet address of {} addresses (a router's, which every routed device carries): name the device's address",
                        found.len()
                    )));
                }
                found.into_iter().collect()
            }
        };
        let judge =
            wardline_policy::reference::Reference::new(set, OffsetDateTime::now_utc(), &[], &[]);
        let name_of = |id: u32| {
            set.segments
                .iter()
                .find(|s| judge.segment_named(&s.name) == id)
                .map(|s| s.name.clone())
        };
        let mut origins = BTreeSet::new();
        for a in &addresses {
            let by_prefix = name_of(judge.segment_of(*a));
            let recorded = inventory
                .iter()
                .find(|d| wardline_proto::convert::ip_from_wire(&d.address) == Some(*a))
                .map(|d| d.segment.clone())
                .filter(|s| set.segments.iter().any(|seg| seg.name == *s));
            if let Some(q) = by_prefix
                .as_ref()
                .and_then(|n| set.segments.iter().find(|s| s.name == *n))
                .filter(|s| s.quarantine.is_some())
            {
                return Err(Status::failed_precondition(format!(
                    "{a} is in quarantine already (segment {:?}); release it first",
                    q.name
                )));
            }
            match by_prefix.or(recorded) {
                Some(o) => {
                    origins.insert(o);
                }
                None if inventory
                    .iter()
                    .any(|d| wardline_proto::convert::ip_from_wire(&d.address) == Some(*a)) => {}
                None => {
                    return Err(Status::not_found(format!(
                        "target {text:?} matches nothing: no segment holds {a} and no agent has seen it"
                    )));
                }
            }
        }
        if addresses.is_empty() {
            return Err(Status::not_found(format!(
                "target {text:?} matches nothing: no agent has seen this Ethernet address"
            )));
        }
        // Addresses of several segments keep no VLAN: their tagged frames
        // are spoofed, whichever VLAN they carry.
        let origin = (origins.len() == 1)
            .then(|| origins.into_iter().next())
            .flatten();
        Ok((addresses, origin))
    }

    pub(crate) async fn quarantine_call(
        &self,
        req: Request<v1::QuarantineRequest>,
    ) -> Result<Response<v1::QuarantineRecord>, Status> {
        let id = self.allowed(&req, Verb::ChangePolicy)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("reason", &r.reason)?;
        crate::limits::message("target", &r.target)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a quarantine needs a reason (--reason): what the device did, for the incident record",
            ));
        }
        let target = read_target(&r.target).map_err(Status::invalid_argument)?;
        let who = change_author(&req, &id);
        let qid = format!("q-{}", hex::encode(rand::random::<[u8; 4]>()));
        let segment = format!("quarantine-{}", &qid[2..]);
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let (current, _) = self.registry().current().await.map_err(registry_status)?;
            let set = self.policy_of(&current)?;
            if !r.keep.is_empty() && !set.keep_profiles.iter().any(|p| p.name == r.keep) {
                return Err(Status::not_found(format!(
                    "--keep {:?}: no KeepProfile has this name ({})",
                    r.keep,
                    known_names(set.keep_profiles.iter().map(|p| p.name.as_str()))
                )));
            }
            let (addresses, origin) = self.resolve(&target, &r.target, &set).await?;
            if let Some(o) = &origin {
                self.within_reach(&id.name, &current, o)?;
            }
            let (source, keep_policies) =
                documents(&qid, &segment, &addresses, origin.as_deref(), &set, &r.keep);
            let (base, _, plan, _) = self
                .registry()
                .plan_source(&source, false)
                .await
                .map_err(registry_status)?;
            match self
                .write_operation(
                    base.revision,
                    plan,
                    RevisionAction::Apply,
                    &who,
                    &format!("quarantine {qid} of {}: {}", r.target, r.reason),
                    format!("quarantine {qid}"),
                )
                .await
            {
                Ok(record) => {
                    let q = QuarantineRecord {
                        id: qid.clone(),
                        target: r.target.trim().to_owned(),
                        addresses: addresses.iter().map(ToString::to_string).collect(),
                        origin: origin.unwrap_or_default(),
                        keep: r.keep.clone(),
                        reason: r.reason.clone(),
                        by: id.name.clone(),
                        at: format_time(OffsetDateTime::now_utc()),
                        segment: segment.clone(),
                        keep_policies,
                        revision: record.revision,
                        released_by: String::new(),
                        released_at: String::new(),
                        release_reason: String::new(),
                        released_revision: 0,
                    };
                    let value =
                        serde_json::to_vec(&q).map_err(|e| Status::internal(e.to_string()))?;
                    self.store()
                        .put(&format!("{QUARANTINES_PREFIX}{qid}"), value)
                        .await
                        .map_err(store_unavailable)?;
                    tracing::warn!(quarantine = %qid, target = %q.target, by = %id.name,
                        revision = record.revision, "device quarantined");
                    return Ok(Response::new(q.wire()));
                }
                Err(crate::registry::RegistryError::Stale { .. }) => {
                    last = Some("the policy changed meanwhile");
                    continue;
                }
                Err(e) => return Err(registry_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "quarantine not written: {} {ATTEMPTS} times; try again",
            last.unwrap_or("")
        )))
    }

    pub(crate) async fn release_call(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::QuarantineRecord>, Status> {
        let id = self.allowed(&req, Verb::ChangePolicy)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("reason", &r.reason)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a release needs a reason (--reason): why the device is trusted again",
            ));
        }
        let wanted = r.id.trim();
        let (mut q, mod_revision) = self
            .quarantines_stored()
            .await?
            .into_iter()
            .find(|(q, _)| {
                q.active()
                    && (q.id == wanted
                        || q.target == wanted
                        || q.addresses.iter().any(|a| a == wanted))
            })
            .ok_or_else(|| {
                Status::not_found(format!("no device is in quarantine as {wanted:?}"))
            })?;
        let who = change_author(&req, &id);
        if !q.origin.is_empty() {
            let (current, _) = self.registry().current().await.map_err(registry_status)?;
            if current
                .documents
                .iter()
                .any(|d| d.kind == DocumentKind::Segment && d.name == q.origin)
            {
                self.within_reach(&id.name, &current, &q.origin)?;
            }
        }
        let mut released = None;
        for _ in 0..ATTEMPTS {
            let (current, _) = self.registry().current().await.map_err(registry_status)?;
            let ours = |kind: DocumentKind, name: &str| {
                (kind == DocumentKind::Segment && name == q.segment)
                    || (kind == DocumentKind::Policy && q.keep_policies.iter().any(|p| p == name))
            };
            let documents: Vec<_> = current
                .documents
                .iter()
                .filter(|d| !ours(d.kind, &d.name))
                .cloned()
                .collect();
            let changes: Vec<ChangeRecord> = current
                .documents
                .iter()
                .filter(|d| ours(d.kind, &d.name))
                .map(|d| ChangeRecord {
                    kind: d.kind,
                    name: d.name.clone(),
                    action: ChangeAction::Deleted,
                })
                .collect();
            if changes.is_empty() {
                // Its documents were deleted by hand: nothing to write.
                released = Some(current.revision);
                break;
            }
            wardline_policy::parse(&source_of(&documents)).map_err(|e| {
                Status::failed_precondition(format!(
                    "releasing {} would leave a policy that does not stand (another document names {:?}): {e}",
                    q.id, q.segment
                ))
            })?;
            match self
                .write_operation(
                    current.revision,
                    Plan { documents, changes },
                    RevisionAction::Delete,
                    &who,
                    &format!("release {} of {}: {}", q.id, q.target, r.reason),
                    format!("release {}", q.id),
                )
                .await
            {
                Ok(record) => {
                    released = Some(record.revision);
                    break;
                }
                Err(crate::registry::RegistryError::Stale { .. }) => continue,
                Err(e) => return Err(registry_status(e)),
            }
        }
        let revision = released.ok_or_else(|| {
            Status::aborted("release not written: the policy kept changing; try again")
        })?;
        q.released_by = id.name.clone();
        q.released_at = format_time(OffsetDateTime::now_utc());
        q.release_reason = r.reason.clone();
        q.released_revision = revision;
        let key = format!("{QUARANTINES_PREFIX}{}", q.id);
        if !self.put_if_unchanged(&key, &q, mod_revision).await? {
            return Err(Status::aborted("the quarantine was released meanwhile"));
        }
        tracing::warn!(quarantine = %q.id, by = %id.name, revision, "device released");
        Ok(Response::new(q.wire()))
    }

    pub(crate) async fn list_quarantines_call(
        &self,
        req: Request<v1::ListQuarantinesRequest>,
    ) -> Result<Response<v1::ListQuarantinesResponse>, Status> {
        self.allowed(&req, Verb::ReadStatus)?;
        Ok(Response::new(v1::ListQuarantinesResponse {
            quarantines: self
                .quarantines_stored()
                .await?
                .into_iter()
                .map(|(q, _)| q.wire())
                .collect(),
        }))
    }

    /// Refuses `operator` a clinical operation on `segment` unless its
    /// bindings reach that segment (a scoped operator acts only on the
    /// segments its bindings name by label, as its changes do).
    pub(crate) fn within_reach(
        &self,
        operator: &str,
        current: &RevisionRecord,
        segment: &str,
    ) -> Result<(), Status> {
        let touched = [ChangeRecord {
            kind: DocumentKind::Segment,
            name: segment.to_owned(),
            action: ChangeAction::Updated,
        }];
        crate::registry::allow_roles(operator, &current.documents, &current.documents, &touched)
            .map_err(registry_status)
    }

    /// The policy set of a revision: as the registry validated it when
    /// it is the one it holds, else read again from its documents.
    pub(crate) fn policy_of(&self, record: &RevisionRecord) -> Result<PolicySet, Status> {
        if let Some(v) = self.registry().validated(record) {
            return Ok(v.set.clone());
        }
        wardline_policy::parse(&source_of(&record.documents))
            .map_err(|e| Status::internal(format!("the policy in force does not read: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_or_named_wrong() {
        assert_eq!(
            read_target("198.18.30.7").unwrap(),
            Target::Address("198.18.30.7".parse().unwrap())
        );
        assert_eq!(
            read_target("02:00:00:00:1e:07").unwrap(),
            Target::Mac([2, 0, 0, 0, 0x1e, 7])
        );
        for bad in [
            "pump-7",
            "02:00:00:00:1e",
            "02:00:00:00:1e:zz",
            "02:00:00:00:1e:777",
        ] {
            assert!(read_target(bad).is_err(), "{bad}");
        }
    }

    const SITE: &str = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pumps}\nspec: {cidrs: [198.18.30.0/24], vlans: [30]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: central}\nspec: {cidrs: [198.18.31.0/24]}\n";

    #[test]
    fn a_quarantine_is_a_segment_of_host_prefixes_and_one_allow_per_kept_flow() {
        let set = wardline_policy::parse(&format!(
            "{SITE}---\napiVersion: wardline/v1\nkind: KeepProfile\nmetadata: {{name: pump}}\nspec:\n  flows:\n    - {{to: [central], ports: [{{protocol: udp, port: 5000}}]}}\n    - {{from: [central], ports: [{{protocol: tcp, port: 8443}}]}}\n"
        ))
        .unwrap();
        let addresses: Vec<IpAddr> = vec![
            "198.18.30.7".parse().unwrap(),
            "2001:db8:30::7".parse().unwrap(),
        ];
        let (source, names) = documents(
            "q-1",
            "quarantine-1",
            &addresses,
            Some("pumps"),
            &set,
            "pump",
        );
        assert_eq!(names, ["quarantine-1-keep-0", "quarantine-1-keep-1"]);
        let with = wardline_policy::parse(&format!("{SITE}---\n{source}")).unwrap();
        let q = with
            .segments
            .iter()
            .find(|s| s.name == "quarantine-1")
            .unwrap();
        assert_eq!(
            q.quarantine.as_ref().unwrap().origin.as_deref(),
            Some("pumps")
        );
        assert_eq!(q.cidrs.len(), 2);
        assert!(q.cidrs.iter().all(|c| c.prefix_len() == c.max_prefix_len()));
        let keep = &with.policies;
        assert_eq!(keep[0].from, [Peer::Segment("quarantine-1".into())]);
        assert_eq!(keep[0].to, [Peer::Segment("central".into())]);
        assert_eq!(keep[1].from, [Peer::Segment("central".into())]);
        assert_eq!(keep[1].to, [Peer::Segment("quarantine-1".into())]);
    }
}
