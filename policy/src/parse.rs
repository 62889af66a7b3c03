//! From YAML text to a validated [`PolicySet`].
//!
//! A source holds several documents separated by `---`. Each is read on its
//! own, so that a syntax error in one document does not hide the problems of
//! the others, then checked field by field (`docs/verdicts.md`, and
//! `docs/policy-guide.md` for each field's rules), then against the other
//! documents: names unique per kind, no prefix or VLAN claimed by two
//! segments, every segment a policy names defined somewhere in the source.
//! Every problem found is reported, not only the first.
//!
//! YAML is read within [`POLICY_LIMITS`] (see [`crate::yaml`]): a source
//! larger than [`yaml::MAX_POLICY_SOURCE_BYTES`] is refused unread, and a
//! document that nests too deep or whose aliases expand too far is a syntax
//! error of that document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{DocLabel, PolicyError, PolicyErrors};
use crate::model::{
    Action, ChangeControl, CriticalFlow, DocRef, Group, KeepDirection, KeepFlow, KeepProfile, Mode,
    Node, NodeApproval, Peer, Policy, PolicySet, PortRule, Protocol, Quarantine, Role, RoleBinding,
    Segment, Vendor,
};
use crate::name::NameProblem;
use crate::yaml::{self, Mapping, POLICY_LIMITS, Value, YamlError};

/// The only `apiVersion` this version of the language reads.
pub const API_VERSION: &str = "wardline/v1";

/// `kind` of a document that defines a segment.
pub const SEGMENT_KIND: &str = "Segment";

/// `kind` of a document that defines a policy.
pub const POLICY_KIND: &str = "Policy";

/// `kind` of a document that declares a node: its labels and the address
/// ranges it may claim.
pub const NODE_KIND: &str = "Node";

/// `kind` of a document that admits registering nodes by name.
pub const NODE_APPROVAL_KIND: &str = "NodeApproval";

/// `kind` of a document that gives operators a role.
pub const ROLE_BINDING_KIND: &str = "RoleBinding";

/// `kind` of a document that names a set of operators.
pub const GROUP_KIND: &str = "Group";

/// `kind` of the document that says which changes need a second person.
pub const CHANGE_CONTROL_KIND: &str = "ChangeControl";

/// `kind` of a document that names the flows a quarantined device keeps.
pub const KEEP_PROFILE_KIND: &str = "KeepProfile";

/// `kind` of a document that names a vendor and its agreement.
pub const VENDOR_KIND: &str = "Vendor";

/// `kind` of a document that names a flow patient care depends on.
pub const CRITICAL_FLOW_KIND: &str = "CriticalFlow";

/// Every kind of document, in the order the store lists them.
pub const KINDS: [&str; 10] = [
    SEGMENT_KIND,
    POLICY_KIND,
    NODE_KIND,
    NODE_APPROVAL_KIND,
    ROLE_BINDING_KIND,
    GROUP_KIND,
    CHANGE_CONTROL_KIND,
    KEEP_PROFILE_KIND,
    VENDOR_KIND,
    CRITICAL_FLOW_KIND,
];

/// Names no segment may take: a policy's `from` and `to` give them a meaning
/// of their own.
pub const RESERVED_SEGMENT_NAMES: [&str; 2] = ["world", "any"];

const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name", "labels"];
const SEGMENT_FIELDS: &[&str] = &["cidrs", "vlans", "nodeSelector", "mode", "quarantine"];
const QUARANTINE_FIELDS: &[&str] = &["origin"];
const KEEP_PROFILE_FIELDS: &[&str] = &["flows"];
const KEEP_FLOW_FIELDS: &[&str] = &["to", "from", "ports"];
const VENDOR_FIELDS: &[&str] = &["contact", "baaExpires", "segment"];
const CRITICAL_FLOW_FIELDS: &[&str] = &["from", "to", "ports"];
const NODE_SELECTOR_FIELDS: &[&str] = &["matchLabels"];
const POLICY_FIELDS: &[&str] = &["action", "from", "to", "ports", "validFrom", "validUntil"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];
const NODE_FIELDS: &[&str] = &["addresses"];
const NODE_APPROVAL_FIELDS: &[&str] = &["nodes", "addresses", "labels"];
const ROLE_BINDING_FIELDS: &[&str] = &["role", "users", "groups", "segments"];
const GROUP_FIELDS: &[&str] = &["members"];
const CHANGE_CONTROL_FIELDS: &[&str] = &["criticalSegments", "everyChange"];
const PROTOCOLS: &[&str] = &["tcp", "udp", "sctp", "icmp", "icmpv6", "any"];

/// Reads and validates a policy source: one or more YAML documents
/// separated by `---`, each a `Segment` or a `Policy` (see
/// `docs/verdicts.md`). Documents with nothing but comments, such as after a
/// trailing `---`, are skipped.
///
/// Segments and policies keep their document order. On failure, every
/// problem found in every document is returned, in document order. A
/// source over [`yaml::MAX_POLICY_SOURCE_BYTES`] is one error, of document
/// 1, naming its size and the limit.
pub fn parse(source: &str) -> Result<PolicySet, PolicyErrors> {
    if let Err(error) = yaml::check_size(source, &POLICY_LIMITS) {
        let doc = DocRef {
            index: 1,
            ..DocRef::default()
        };
        return Err(PolicyError::in_document(&doc, error.message).into());
    }
    let documents = documents(source);
    validate(&documents.iter().collect::<Vec<_>>())
}

/// Validates documents [`documents`] read, together, as [`parse`] validates
/// a source: each error names its document by the document's `index`, and
/// the set keeps the order given. Nothing is read again: a source cut once
/// can be validated with other documents (the control plane validates an
/// apply with the stored documents it leaves alone).
pub fn validate(documents: &[&SourceDocument]) -> Result<PolicySet, PolicyErrors> {
    let errors = documents
        .iter()
        .filter_map(|d| {
            d.value
                .as_ref()
                .err()
                .map(|e| syntax_error(d.index, e.clone()))
        })
        .collect();
    let mut validator = Validator::new(documents, errors);
    for document in documents {
        if let Ok(value) = &document.value {
            validator.document(document.index, value);
        }
    }
    validator.finish()
}

/// One non-empty document of a source, as written, with its kind and name
/// where they can be read (the control plane stores documents one by one),
/// and its YAML as read, for [`validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct SourceDocument {
    /// 1-based, counting as [`parse`] counts (empty documents skipped).
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The document's text, without its `---` marker.
    pub text: String,
    value: Result<Value, YamlError>,
}

/// Cuts a source into its documents, by the same rules as [`parse`]. A
/// document that cannot be read, or is past a limit, has no kind or name.
pub fn documents(source: &str) -> Vec<SourceDocument> {
    let mut out = Vec::new();
    for chunk in split_documents(source) {
        let value = read(&chunk);
        if let Ok(Value::Null) = value {
            continue;
        }
        let field = |v: &Value, path: &[&str]| {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (kind, name) = match &value {
            Ok(v) => (field(v, &["kind"]), field(v, &["metadata", "name"])),
            Err(_) => (None, None),
        };
        let text = document_text(&chunk.text);
        out.push(SourceDocument {
            index: out.len() + 1,
            kind,
            name,
            text: format!("{text}\n"),
            value,
        });
    }
    out
}

/// A document's text as [`documents`] gives it, which must read as the
/// chunk does: the control plane stores these texts and validates them
/// joined again. The blanked marker's line is dropped when nothing but a
/// comment follows the marker there. When the document starts on that line
/// (`--- apiVersion: …`), the line is kept, blanks and all: the content's
/// column decides how YAML reads the lines below it.
fn document_text(chunk: &str) -> &str {
    let first_line = chunk.split('\n').next().unwrap_or_default().trim();
    if first_line.is_empty() || first_line.starts_with('#') {
        let text = chunk.trim_start_matches([' ', '\t']);
        text.strip_prefix('\n').unwrap_or(text).trim_end()
    } else {
        chunk.trim_end()
    }
}

/// The text of one document of a source.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    /// 0-based line of the source on which the document starts.
    first_line: usize,
    /// The document's lines, its `---` marker blanked out so that columns
    /// stay those of the source.
    text: String,
}

/// Cuts a source into its documents at the `---` (and `...`) markers, which
/// YAML recognises only at the start of a line and followed by a blank or
/// the end of the line, wherever they stand.
fn split_documents(source: &str) -> Vec<Chunk> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut chunks = Vec::new();
    let mut current = Chunk {
        first_line: 0,
        text: String::new(),
    };
    let mut has_content = false;
    for (number, line) in source.split_inclusive('\n').enumerate() {
        let marker = ["---", "..."].into_iter().find_map(|marker| {
            line.strip_prefix(marker)
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
        });
        if let Some(rest) = marker {
            let next = Chunk {
                first_line: number,
                text: format!("   {rest}"),
            };
            chunks.push(std::mem::replace(&mut current, next));
            has_content = !rest.trim().is_empty() && !rest.trim_start().starts_with('#');
        } else if line.starts_with('%') && !has_content {
            // A directive (`%YAML 1.2`) before the document: nothing this
            // language uses; kept as a blank line so lines keep their numbers.
            current.text.push('\n');
        } else {
            let trimmed = line.trim();
            has_content |= !trimmed.is_empty() && !trimmed.starts_with('#');
            current.text.push_str(line);
        }
    }
    chunks.push(current);
    chunks
}

/// Reads one document, its location in the source's lines: the chunk
/// starts on line `first_line + 1` of the source, its columns are the
/// source's.
fn read(chunk: &Chunk) -> Result<Value, YamlError> {
    yaml::from_str::<Value>(&chunk.text, &POLICY_LIMITS).map_err(|mut error| {
        if let Some(at) = &mut error.location {
            at.line += chunk.first_line;
        }
        error
    })
}

/// A YAML syntax error (or a limit passed) in the `index`th document.
fn syntax_error(index: usize, error: YamlError) -> PolicyError {
    PolicyError {
        document: index,
        kind: None,
        name: None,
        field: None,
        location: error.location,
        message: format!("invalid YAML: {}", error.message),
    }
}

/// Where something was claimed first: a prefix, a VLAN, a name.
#[derive(Clone, Debug)]
struct Claim {
    doc: DocRef,
    field: String,
}

/// Checks documents one after the other, remembering what earlier documents
/// claimed.
struct Validator {
    errors: Vec<PolicyError>,
    /// The document being checked.
    doc: DocRef,
    /// Name of every Segment document of the source, valid or not, in
    /// document order: what a policy's `from` and `to` may refer to.
    segment_names: Vec<String>,
    /// The same names, to look up.
    segment_name_set: HashSet<String>,
    /// Name of every Group document: what a role binding's `groups` may
    /// refer to.
    group_name_set: std::collections::BTreeSet<String>,
    /// Whether every document could be read. If one could not, a segment a
    /// policy names may be defined there, so unknown names are not reported.
    complete: bool,
    names: HashMap<(&'static str, String), Claim>,
    cidrs: HashMap<IpNet, Claim>,
    vlans: HashMap<u16, Claim>,
    set: PolicySet,
}

impl Validator {
    fn new(documents: &[&SourceDocument], errors: Vec<PolicyError>) -> Self {
        let mut segment_names = Vec::new();
        let mut segment_name_set = HashSet::new();
        let mut group_name_set = std::collections::BTreeSet::new();
        for value in documents.iter().filter_map(|d| d.value.as_ref().ok()) {
            if value.get("kind").and_then(Value::as_str) == Some(GROUP_KIND)
                && let Some(name) = value
                    .get("metadata")
                    .and_then(|metadata| metadata.get("name"))
                    .and_then(Value::as_str)
            {
                group_name_set.insert(name.to_owned());
            }
            if value.get("kind").and_then(Value::as_str) == Some(SEGMENT_KIND)
                && let Some(name) = value
                    .get("metadata")
                    .and_then(|metadata| metadata.get("name"))
                    .and_then(Value::as_str)
                && segment_name_set.insert(name.to_owned())
            {
                segment_names.push(name.to_owned());
            }
        }
        Self {
            errors,
            doc: DocRef::default(),
            segment_names,
            segment_name_set,
            group_name_set,
            complete: documents.iter().all(|d| d.value.is_ok()),
            names: HashMap::new(),
            cidrs: HashMap::new(),
            vlans: HashMap::new(),
            set: PolicySet::default(),
        }
    }

    fn finish(self) -> Result<PolicySet, PolicyErrors> {
        if self.errors.is_empty() {
            Ok(self.set)
        } else {
            let mut errors = self.errors;
            // Syntax errors were found before the checks: put every error in
            // document order, keeping the order within a document.
            errors.sort_by_key(|error| error.document);
            Err(PolicyErrors(errors))
        }
    }

    /// Records a problem with `field` (`""`: the document as a whole) of the
    /// current document.
    fn error(&mut self, field: &str, message: impl Into<String>) {
        let error = if field.is_empty() {
            PolicyError::in_document(&self.doc, message)
        } else {
            PolicyError::at(&self.doc, field, message)
        };
        self.errors.push(error);
    }

    /// Checks the `index`th document of the source.
    fn document(&mut self, index: usize, value: &Value) {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .and_then(|k| KINDS.into_iter().find(|known| *known == k));
        let name = value
            .get("metadata")
            .and_then(|metadata| metadata.get("name"))
            .and_then(Value::as_str);
        self.doc = DocRef {
            index,
            kind: kind.unwrap_or_default().to_owned(),
            name: name.unwrap_or_default().to_owned(),
        };
        let errors_before = self.errors.len();

        let Some(top) = self.mapping(
            "",
            value,
            DOCUMENT_FIELDS,
            "a document with apiVersion, kind, metadata and spec",
        ) else {
            return;
        };

        match self.required_string(top, "apiVersion") {
            Some(API_VERSION) | None => {}
            Some(other) => self.error(
                "apiVersion",
                format!("{other:?} is not supported (expected {API_VERSION})"),
            ),
        }

        if let Some(text) = self.required_string(top, "kind")
            && kind.is_none()
        {
            let hint = hint(text, KINDS);
            self.error(
                "kind",
                format!(
                    "{text:?} is not a kind of document (expected Segment, Policy, Node, NodeApproval, RoleBinding, Group, ChangeControl, KeepProfile, Vendor or CriticalFlow{hint})"
                ),
            );
        }

        let labels = match self.required(top, "metadata") {
            Some(metadata) => self.metadata(metadata, kind),
            None => BTreeMap::new(),
        };

        let Some(spec) = self.required(top, "spec") else {
            return;
        };
        match kind {
            Some(SEGMENT_KIND) => {
                let segment = self.segment_spec(spec, labels);
                if self.errors.len() == errors_before {
                    self.set.segments.push(segment);
                }
            }
            Some(POLICY_KIND) => {
                let policy = self.policy_spec(spec, labels);
                if self.errors.len() == errors_before {
                    self.set.policies.push(policy);
                }
            }
            Some(NODE_KIND) => {
                let node = self.node_spec(spec, labels);
                if self.errors.len() == errors_before {
                    self.set.nodes.push(node);
                }
            }
            Some(ROLE_BINDING_KIND) => {
                let binding = self.role_binding_spec(spec);
                if self.errors.len() == errors_before {
                    self.set.role_bindings.push(binding);
                }
            }
            Some(GROUP_KIND) => {
                let group = self.group_spec(spec);
                if self.errors.len() == errors_before {
                    self.set.groups.push(group);
                }
            }
            Some(CHANGE_CONTROL_KIND) => {
                let control = self.change_control_spec(spec);
                if let Some(first) = self.set.change_controls.first() {
                    let first = first.name.clone();
                    self.error(
                        "",
                        format!(
                            "a site has one ChangeControl document, and {first:?} is already it"
                        ),
                    );
                } else if self.errors.len() == errors_before {
                    self.set.change_controls.push(control);
                }
            }
            Some(VENDOR_KIND) => {
                let vendor = self.vendor_spec(spec);
                if self.errors.len() == errors_before
                    && let Some(vendor) = vendor
                {
                    self.set.vendors.push(vendor);
                }
            }
            Some(CRITICAL_FLOW_KIND) => {
                let flow = self.critical_flow_spec(spec);
                if self.errors.len() == errors_before {
                    self.set.critical_flows.push(flow);
                }
            }
            Some(KEEP_PROFILE_KIND) => {
                let profile = self.keep_profile_spec(spec);
                if self.errors.len() == errors_before {
                    self.set.keep_profiles.push(profile);
                }
            }
            Some(_) => {
                let approval = self.approval_spec(spec);
                if self.errors.len() == errors_before {
                    self.set.approvals.push(approval);
                }
            }
            // Without a kind there is no knowing which fields spec may have.
            None => {}
        }
    }

    /// `metadata`: checks the name and returns the labels.
    fn metadata(&mut self, value: &Value, kind: Option<&'static str>) -> BTreeMap<String, String> {
        let Some(metadata) = self.mapping(
            "metadata",
            value,
            METADATA_FIELDS,
            "a mapping with name and labels",
        ) else {
            return BTreeMap::new();
        };
        if let Some(name) = self.required_string_at("metadata", metadata, "name") {
            self.name(name, kind);
        }
        match present(metadata, "labels") {
            Some(labels) => self.labels("metadata.labels", labels),
            None => BTreeMap::new(),
        }
    }

    /// `metadata.name`: a DNS label, not reserved, unique among the
    /// documents of its kind.
    fn name(&mut self, name: &str, kind: Option<&'static str>) {
        const FIELD: &str = "metadata.name";
        if let Some(problem) = NameProblem::of(name) {
            self.error(FIELD, format!("{name:?} is not a valid name ({problem})"));
        }
        if kind == Some(SEGMENT_KIND) {
            match name {
                "world" => self.error(
                    FIELD,
                    "\"world\" is reserved: in a policy it means the addresses no segment claims",
                ),
                "any" => self.error(
                    FIELD,
                    "\"any\" is reserved: in a policy it means every segment, world included",
                ),
                _ => {}
            }
        }
        let Some(kind) = kind else {
            return;
        };
        let claim = Claim {
            doc: self.doc.clone(),
            field: FIELD.to_owned(),
        };
        if let Some(first) = self.names.get(&(kind, name.to_owned())) {
            let message = format!(
                "{name:?} is already the name of {}",
                DocLabel::of(&first.doc)
            );
            self.error(FIELD, message);
        } else {
            self.names.insert((kind, name.to_owned()), claim);
        }
    }

    /// A map of Kubernetes-style labels (`metadata.labels`,
    /// `nodeSelector.matchLabels`).
    fn labels(&mut self, field: &str, value: &Value) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let Some(mapping) = self.mapping_of(field, value, "a mapping of label names to values")
        else {
            return labels;
        };
        for (key, value) in mapping {
            let Some(key) = self.key(field, key) else {
                continue;
            };
            if let Some(problem) = label_key_problem(key) {
                self.error(
                    field,
                    format!("{key:?} is not a valid label name ({problem})"),
                );
                continue;
            }
            let value_field = format!("{field}.{key}");
            let Some(text) = self.label_value(&value_field, value) else {
                continue;
            };
            if let Some(problem) = label_value_problem(&text) {
                self.error(
                    &value_field,
                    format!("{text:?} is not a valid label value ({problem})"),
                );
                continue;
            }
            labels.insert(key.to_owned(), text);
        }
        labels
    }

    /// A label's value: a string. A number or boolean is refused with the
    /// quoted form to write, as Kubernetes does.
    fn label_value(&mut self, field: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Integer(_) | Value::Float(_) | Value::Bool(_) => {
                let text = scalar_text(value);
                self.error(
                    field,
                    format!(
                        "expected a string, found {}; quote it: \"{text}\"",
                        describe(value)
                    ),
                );
                None
            }
            other => {
                self.error(
                    field,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn segment_spec(&mut self, value: &Value, labels: BTreeMap<String, String>) -> Segment {
        let mut segment = Segment {
            name: self.doc.name.clone(),
            labels,
            cidrs: Vec::new(),
            vlans: Vec::new(),
            node_selector: None,
            mode: Mode::default(),
            quarantine: None,
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            SEGMENT_FIELDS,
            "a mapping with cidrs, vlans, nodeSelector, mode and quarantine",
        ) else {
            return segment;
        };

        let cidrs = present(spec, "cidrs");
        let vlans = present(spec, "vlans");
        let node_selector = present(spec, "nodeSelector");
        if let Some(cidrs) = cidrs {
            segment.cidrs = self.cidrs(cidrs);
        }
        if let Some(vlans) = vlans {
            segment.vlans = self.vlans(vlans);
        }
        if let Some(selector) = node_selector {
            segment.node_selector = self.node_selector(selector);
        }
        if let Some(mode) = present(spec, "mode") {
            segment.mode = self.mode(mode);
        }

        let empty = |value: Option<&Value>| match value {
            None => true,
            Some(Value::Sequence(items)) => items.is_empty(),
            Some(_) => false,
        };
        if empty(cidrs) && empty(vlans) && node_selector.is_none() {
            self.error(
                "spec",
                "a segment needs at least one of cidrs, vlans or nodeSelector, or it has no members",
            );
        }
        if let Some(quarantine) = present(spec, "quarantine") {
            segment.quarantine = self.quarantine(quarantine);
            if !empty(vlans) || node_selector.is_some() {
                self.error(
                    "spec.quarantine",
                    "a quarantine holds addresses only (cidrs): its devices keep their VLAN through origin",
                );
            }
            if segment.mode == Mode::Monitor {
                self.error(
                    "spec.mode",
                    "a quarantine is never in monitor mode: it drops what its policies do not allow",
                );
            }
        }
        segment
    }

    /// `spec.quarantine`: `{}` or `{origin: SEGMENT}`.
    fn quarantine(&mut self, value: &Value) -> Option<Quarantine> {
        const FIELD: &str = "spec.quarantine";
        let spec = self.mapping(FIELD, value, QUARANTINE_FIELDS, "a mapping with origin")?;
        let mut quarantine = Quarantine { origin: None };
        if let Some(origin) = present(spec, "origin") {
            let field = join(FIELD, "origin");
            let name = self.string(&field, origin, "a segment name")?;
            if name == self.doc.name {
                self.error(&field, "names the quarantine itself");
            } else if self.segment_name_set.contains(name) || !self.complete {
                quarantine.origin = Some(name.to_owned());
            } else {
                self.error(&field, format!("{name:?} is not a segment"));
            }
        }
        Some(quarantine)
    }

    /// A `Vendor`'s spec: whom to call, when its agreement ends, and the
    /// segment its connections come from.
    fn vendor_spec(&mut self, value: &Value) -> Option<Vendor> {
        let spec = self.mapping(
            "spec",
            value,
            VENDOR_FIELDS,
            "a mapping with contact, baaExpires and segment",
        )?;
        let contact = self.required_string_at("spec", spec, "contact");
        if contact.is_some_and(|c| c.trim().is_empty()) {
            self.error(
                "spec.contact",
                "names nobody: whom to call about this vendor",
            );
        }
        if present(spec, "baaExpires").is_none() {
            self.error(
                "spec.baaExpires",
                "required field is missing: when the business associate agreement on file ends",
            );
        }
        let baa = self.timestamp(spec, "baaExpires");
        let segment = self.required_string_at("spec", spec, "segment");
        if let Some(name) = segment
            && !self.segment_name_set.contains(name)
            && self.complete
        {
            self.error(
                "spec.segment",
                format!("{name:?} is not a segment (the one the vendor's connections come from)"),
            );
        }
        Some(Vendor {
            name: self.doc.name.clone(),
            contact: contact?.to_owned(),
            baa_expires: baa?.0,
            segment: segment?.to_owned(),
            doc: self.doc.clone(),
        })
    }

    /// A `CriticalFlow`'s spec: from, to and (optionally) ports, as a
    /// policy writes them.
    fn critical_flow_spec(&mut self, value: &Value) -> CriticalFlow {
        let mut flow = CriticalFlow {
            name: self.doc.name.clone(),
            from: Vec::new(),
            to: Vec::new(),
            ports: Vec::new(),
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            CRITICAL_FLOW_FIELDS,
            "a mapping with from, to and ports",
        ) else {
            return flow;
        };
        flow.from = self.peers(spec, "from");
        flow.to = self.peers(spec, "to");
        if let Some(ports) = present(spec, "ports") {
            flow.ports = self.ports(ports);
        }
        flow
    }

    /// A `KeepProfile`'s spec: the flows a quarantined device keeps, each
    /// with `to` (the device opens) or `from` (opened to it), and ports.
    fn keep_profile_spec(&mut self, value: &Value) -> KeepProfile {
        let mut profile = KeepProfile {
            name: self.doc.name.clone(),
            flows: Vec::new(),
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping("spec", value, KEEP_PROFILE_FIELDS, "a mapping with flows")
        else {
            return profile;
        };
        let Some(flows) = self.required_at("spec", spec, "flows") else {
            return profile;
        };
        let Some(items) = self.sequence(
            "spec.flows",
            flows,
            "a list of flows such as {to: [central-station], ports: [{protocol: udp, port: 5000}]}",
        ) else {
            return profile;
        };
        if items.is_empty() {
            self.error("spec.flows", "must name at least one flow the device keeps");
        }
        for (i, item) in items.iter().enumerate() {
            let field = format!("spec.flows[{i}]");
            let Some(flow) = self.mapping(
                &field,
                item,
                KEEP_FLOW_FIELDS,
                "a flow with to or from, and ports",
            ) else {
                continue;
            };
            let direction = match (present(flow, "to"), present(flow, "from")) {
                (Some(_), None) => KeepDirection::Opens,
                (None, Some(_)) => KeepDirection::Accepts,
                _ => {
                    self.error(
                        &field,
                        "needs exactly one of to (the device opens the connection) or from (opened to the device)",
                    );
                    continue;
                }
            };
            let key = match direction {
                KeepDirection::Opens => "to",
                KeepDirection::Accepts => "from",
            };
            let peers = self.peers_at(&field, flow, key);
            let ports = match present(flow, "ports") {
                Some(ports) => self.ports_at(&join(&field, "ports"), ports),
                None => Vec::new(),
            };
            if ports.is_empty() {
                self.error(
                    &join(&field, "ports"),
                    "a kept flow names its service: at least one port entry",
                );
            }
            profile.flows.push(KeepFlow {
                direction,
                peers,
                ports,
            });
        }
        profile
    }

    /// A `Node`'s spec: the address ranges it may claim.
    fn node_spec(&mut self, value: &Value, labels: BTreeMap<String, String>) -> Node {
        let mut node = Node {
            name: self.doc.name.clone(),
            labels,
            addresses: Vec::new(),
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping("spec", value, NODE_FIELDS, "a mapping with addresses")
        else {
            return node;
        };
        match self.required_at("spec", spec, "addresses") {
            Some(addresses) => node.addresses = self.ranges("spec.addresses", addresses),
            None => return node,
        }
        node
    }

    /// A `NodeApproval`'s spec: which node names it admits, the ranges they
    /// may claim and the labels they are given.
    fn approval_spec(&mut self, value: &Value) -> NodeApproval {
        let mut approval = NodeApproval {
            name: self.doc.name.clone(),
            nodes: Vec::new(),
            addresses: Vec::new(),
            node_labels: BTreeMap::new(),
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            NODE_APPROVAL_FIELDS,
            "a mapping with nodes, addresses and labels",
        ) else {
            return approval;
        };
        if let Some(nodes) = self.required_at("spec", spec, "nodes") {
            approval.nodes = self.node_patterns(nodes);
        }
        if let Some(addresses) = self.required_at("spec", spec, "addresses") {
            approval.addresses = self.ranges("spec.addresses", addresses);
        }
        if let Some(labels) = present(spec, "labels") {
            approval.node_labels = self.labels("spec.labels", labels);
        }
        approval
    }

    /// A `RoleBinding`'s spec: the role, whom it is given to, and the
    /// segments its changes may reach.
    fn role_binding_spec(&mut self, value: &Value) -> RoleBinding {
        let mut binding = RoleBinding {
            name: self.doc.name.clone(),
            role: Role::Viewer,
            users: Vec::new(),
            groups: Vec::new(),
            segments: None,
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            ROLE_BINDING_FIELDS,
            "a mapping with role, users, groups and segments",
        ) else {
            return binding;
        };
        if let Some(text) = self.required_string_at("spec", spec, "role") {
            match Role::ALL.into_iter().find(|r| r.as_str() == text) {
                Some(role) => binding.role = role,
                None => {
                    let hint = hint(text, Role::ALL.map(Role::as_str));
                    self.error(
                        "spec.role",
                        format!(
                            "{text:?} is not a role (expected viewer, auditor, operator, approver, admin or break-glass{hint})"
                        ),
                    );
                }
            }
        }
        if let Some(users) = present(spec, "users") {
            binding.users = self.operator_names("spec.users", users);
        }
        if let Some(groups) = present(spec, "groups") {
            binding.groups = self.group_names("spec.groups", groups);
        }
        if binding.users.is_empty()
            && binding.groups.is_empty()
            && present(spec, "users").is_none()
            && present(spec, "groups").is_none()
        {
            self.error(
                "spec",
                "a role binding needs users or groups, or it gives its role to no one",
            );
        }
        if let Some(segments) = present(spec, "segments") {
            binding.segments = self.selector("spec.segments", segments, "segment");
            if !matches!(binding.role, Role::Operator | Role::Approver) {
                self.error(
                    "spec.segments",
                    format!(
                        "only an operator or approver binding may reach some segments only; the {} \
                         role is for the whole site",
                        binding.role
                    ),
                );
            }
        }
        binding
    }

    /// A `Group`'s spec: its members.
    fn group_spec(&mut self, value: &Value) -> Group {
        let mut group = Group {
            name: self.doc.name.clone(),
            members: Vec::new(),
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping("spec", value, GROUP_FIELDS, "a mapping with members") else {
            return group;
        };
        if let Some(members) = self.required_at("spec", spec, "members") {
            group.members = self.operator_names("spec.members", members);
        }
        group
    }

    /// A `ChangeControl`'s spec: which segments are critical, and whether
    /// every change needs a second person.
    fn change_control_spec(&mut self, value: &Value) -> ChangeControl {
        let mut control = ChangeControl {
            name: self.doc.name.clone(),
            critical_segments: None,
            every_change: false,
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            CHANGE_CONTROL_FIELDS,
            "a mapping with criticalSegments or everyChange",
        ) else {
            return control;
        };
        if let Some(selector) = present(spec, "criticalSegments") {
            control.critical_segments = self.selector("spec.criticalSegments", selector, "segment");
        }
        if let Some(every) = present(spec, "everyChange") {
            match every {
                Value::Bool(b) => control.every_change = *b,
                other => self.error(
                    "spec.everyChange",
                    format!("expected true or false, found {}", describe(other)),
                ),
            }
        }
        control
    }

    /// A list of operator certificate names (DNS names, as the site PKI
    /// issues them).
    fn operator_names(&mut self, field: &str, value: &Value) -> Vec<String> {
        let mut names = Vec::new();
        let Some(items) = self.sequence(field, value, "a list of operator names") else {
            return names;
        };
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let Some(text) = self.string(&item_field, item, "an operator name") else {
                continue;
            };
            let problem = if text.is_empty() || text.len() > 253 {
                Some("a name is 1 to 253 characters".to_owned())
            } else {
                text.split('.')
                    .find_map(NameProblem::of)
                    .map(|p| p.to_string())
            };
            match problem {
                Some(problem) => self.error(
                    &item_field,
                    format!(
                        "{text:?} is not an operator name (the name in its certificate: {problem})"
                    ),
                ),
                None if names.contains(&text.to_owned()) => {
                    self.error(&item_field, format!("{text:?} is named twice"));
                }
                None => names.push(text.to_owned()),
            }
        }
        names
    }

    /// `spec.groups` of a role binding: names of `Group` documents.
    fn group_names(&mut self, field: &str, value: &Value) -> Vec<String> {
        let mut names = Vec::new();
        let Some(items) = self.sequence(field, value, "a list of group names") else {
            return names;
        };
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let Some(text) = self.string(&item_field, item, "a group name") else {
                continue;
            };
            if self.complete && !self.group_name_set.contains(text) {
                let hint = hint(text, self.group_name_set.iter().map(String::as_str));
                self.error(
                    &item_field,
                    format!("{text:?} is not a group (no Group document has that name{hint})"),
                );
                continue;
            }
            names.push(text.to_owned());
        }
        names
    }

    /// `spec.nodes` of an approval: node names, or a prefix ending in `*`.
    fn node_patterns(&mut self, value: &Value) -> Vec<String> {
        const WHAT: &str = "a list of node names, such as [\"gw-1\", \"ward-*\"]";
        let mut patterns = Vec::new();
        let Some(items) = self.sequence("spec.nodes", value, WHAT) else {
            return patterns;
        };
        if items.is_empty() {
            self.error(
                "spec.nodes",
                "an approval needs at least one node name or pattern",
            );
        }
        for (i, item) in items.iter().enumerate() {
            let field = format!("spec.nodes[{i}]");
            let Some(text) = self.string(&field, item, "a node name or a prefix ending in *")
            else {
                continue;
            };
            let name = text.strip_suffix('*').unwrap_or(text);
            let problem = if name.is_empty() {
                Some("a pattern of * alone would admit every node; name them".to_owned())
            } else if name.contains('*') {
                Some("only a trailing * is a pattern".to_owned())
            } else if text.ends_with('*') {
                // A prefix: a DNS label may end in a hyphen only when more follows.
                NameProblem::of(name.trim_end_matches('-')).map(|p| p.to_string())
            } else {
                NameProblem::of(name).map(|p| p.to_string())
            };
            match problem {
                Some(problem) => self.error(
                    &field,
                    format!("{text:?} is not a node name or pattern ({problem})"),
                ),
                None => patterns.push(text.to_owned()),
            }
        }
        patterns
    }

    /// A list of address ranges (a `Node`'s or an approval's
    /// `spec.addresses`): CIDRs with no host bits, at least one.
    fn ranges(&mut self, field: &str, value: &Value) -> Vec<IpNet> {
        const WHAT: &str = "a list of CIDRs, such as [\"198.18.30.5/32\"]";
        let mut ranges = Vec::new();
        let Some(items) = self.sequence(field, value, WHAT) else {
            return ranges;
        };
        if items.is_empty() {
            self.error(
                field,
                "at least one address range is needed: a node claims no address outside them",
            );
        }
        for (i, item) in items.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let Some(text) = self.string(&at, item, "a CIDR such as \"198.18.30.5/32\"") else {
                continue;
            };
            match parse_cidr(text) {
                Ok(net) => ranges.push(net),
                Err(message) => self.error(&at, message),
            }
        }
        ranges
    }

    /// `spec.cidrs`: prefixes, each with no host bits, none claimed twice.
    fn cidrs(&mut self, value: &Value) -> Vec<IpNet> {
        const WHAT: &str = "a list of CIDRs, such as [\"198.18.30.0/24\"]";
        let mut cidrs = Vec::new();
        let Some(items) = self.sequence("spec.cidrs", value, WHAT) else {
            return cidrs;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("spec.cidrs[{i}]");
            let Some(text) = self.string(&field, item, "a CIDR such as \"198.18.30.0/24\"") else {
                continue;
            };
            let net = match parse_cidr(text) {
                Ok(net) => net,
                Err(message) => {
                    self.error(&field, message);
                    continue;
                }
            };
            if let Some(first) = self.cidrs.get(&net) {
                let message = if first.doc.index == self.doc.index {
                    format!("{text:?} is listed twice (also {})", first.field)
                } else {
                    format!(
                        "{text:?} is already claimed by {}",
                        DocLabel::of(&first.doc)
                    )
                };
                self.error(&field, message);
                continue;
            }
            let claim = Claim {
                doc: self.doc.clone(),
                field,
            };
            self.cidrs.insert(net, claim);
            cidrs.push(net);
        }
        cidrs
    }

    /// `spec.vlans`: 802.1Q VLAN IDs 1..=4094, none claimed twice.
    fn vlans(&mut self, value: &Value) -> Vec<u16> {
        let mut vlans = Vec::new();
        let Some(items) = self.sequence("spec.vlans", value, "a list of VLAN IDs, such as [30]")
        else {
            return vlans;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("spec.vlans[{i}]");
            let Some(number) = self.integer(&field, item, "a VLAN ID (1..=4094)") else {
                continue;
            };
            let vlan = match u16::try_from(number) {
                Ok(vlan @ 1..=4094) => vlan,
                _ => {
                    let why = match number {
                        0 => "VLAN 0 only carries a priority, it is not a VLAN; ",
                        4095 => "4095 is reserved; ",
                        _ => "",
                    };
                    self.error(
                        &field,
                        format!("{number} is not a valid VLAN ID ({why}must be 1..=4094)"),
                    );
                    continue;
                }
            };
            if let Some(first) = self.vlans.get(&vlan) {
                let message = if first.doc.index == self.doc.index {
                    format!("VLAN {vlan} is listed twice (also {})", first.field)
                } else {
                    format!(
                        "VLAN {vlan} is already claimed by {}",
                        DocLabel::of(&first.doc)
                    )
                };
                self.error(&field, message);
                continue;
            }
            let claim = Claim {
                doc: self.doc.clone(),
                field,
            };
            self.vlans.insert(vlan, claim);
            vlans.push(vlan);
        }
        vlans
    }

    /// `spec.nodeSelector`: `{matchLabels: {...}}`, at least one label.
    fn node_selector(&mut self, value: &Value) -> Option<BTreeMap<String, String>> {
        self.selector("spec.nodeSelector", value, "node")
    }

    /// A label selector at `field`: `{matchLabels: {...}}`, at least one
    /// label (an empty one would match every `what`).
    fn selector(
        &mut self,
        field: &str,
        value: &Value,
        what: &str,
    ) -> Option<BTreeMap<String, String>> {
        let selector = self.mapping(
            field,
            value,
            NODE_SELECTOR_FIELDS,
            "a mapping with matchLabels",
        )?;
        let Some(labels) = present(selector, "matchLabels") else {
            self.error(
                &format!("{field}.matchLabels"),
                format!("required field is missing (an empty selector would match every {what})"),
            );
            return None;
        };
        let field = format!("{field}.matchLabels");
        let errors_before = self.errors.len();
        let labels = self.labels(&field, labels);
        if labels.is_empty() && self.errors.len() == errors_before {
            self.error(
                &field,
                format!(
                    "must name at least one label (an empty selector would match every {what})"
                ),
            );
        }
        Some(labels)
    }

    /// `spec.mode`: enforce or monitor.
    fn mode(&mut self, value: &Value) -> Mode {
        const FIELD: &str = "spec.mode";
        match self.string(FIELD, value, "enforce or monitor") {
            Some("enforce") => Mode::Enforce,
            Some("monitor") => Mode::Monitor,
            Some(other) => {
                let hint = hint(other, ["enforce", "monitor"]);
                self.error(
                    FIELD,
                    format!("{other:?} is not a mode (expected enforce or monitor{hint})"),
                );
                Mode::default()
            }
            None => Mode::default(),
        }
    }

    fn policy_spec(&mut self, value: &Value, labels: BTreeMap<String, String>) -> Policy {
        let mut policy = Policy {
            name: self.doc.name.clone(),
            labels,
            action: Action::Deny,
            from: Vec::new(),
            to: Vec::new(),
            ports: Vec::new(),
            valid_from: None,
            valid_until: None,
            doc: self.doc.clone(),
        };
        let Some(spec) = self.mapping(
            "spec",
            value,
            POLICY_FIELDS,
            "a mapping with action, from, to, ports, validFrom and validUntil",
        ) else {
            return policy;
        };

        match self.required_string_at("spec", spec, "action") {
            Some("allow") => policy.action = Action::Allow,
            Some("deny") => policy.action = Action::Deny,
            Some(other) => {
                let hint = hint(other, ["allow", "deny"]);
                self.error(
                    "spec.action",
                    format!("{other:?} is not an action (expected allow or deny{hint})"),
                );
            }
            None => {}
        }
        policy.from = self.peers(spec, "from");
        policy.to = self.peers(spec, "to");

        match spec.get("ports") {
            None => {}
            Some(Value::Null) => self.error(
                "spec.ports",
                "has no value: omit ports, or write ports: [], to mean every protocol and port",
            ),
            Some(ports) => policy.ports = self.ports(ports),
        }

        let valid_from = self.timestamp(spec, "validFrom");
        let valid_until = self.timestamp(spec, "validUntil");
        if let (Some((from, from_text)), Some((until, until_text))) = (valid_from, valid_until)
            && from >= until
        {
            self.error(
                "spec.validFrom",
                format!("{from_text} is not before validUntil {until_text}"),
            );
        }
        policy.valid_from = valid_from.map(|(at, _)| at);
        policy.valid_until = valid_until.map(|(at, _)| at);
        policy
    }

    /// `spec.from` or `spec.to`: at least one segment name, `world` or `any`.
    fn peers(&mut self, spec: &Mapping, key: &str) -> Vec<Peer> {
        self.peers_at("spec", spec, key)
    }

    /// `from` or `to` of the mapping at `parent`.
    fn peers_at(&mut self, parent: &str, spec: &Mapping, key: &str) -> Vec<Peer> {
        let field = join(parent, key);
        let mut peers = Vec::new();
        let Some(value) = self.required_at(parent, spec, key) else {
            return peers;
        };
        if let Value::String(name) = value {
            self.error(
                &field,
                format!(
                    "expected a list of segment names, found a string ({name:?}); write [{name}]"
                ),
            );
            return peers;
        }
        let Some(items) = self.sequence(&field, value, "a list of segment names, world or any")
        else {
            return peers;
        };
        if items.is_empty() {
            self.error(&field, "must name at least one segment, world or any");
        }
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let Some(name) = self.string(&item_field, item, "a segment name, world or any") else {
                continue;
            };
            let peer = match name {
                "any" => Peer::Any,
                "world" => Peer::World,
                _ if self.segment_name_set.contains(name) || !self.complete => {
                    Peer::Segment(name.to_owned())
                }
                _ => {
                    let names = self.segment_names.iter().map(String::as_str);
                    let hint = match suggestion(name, names.chain(["world", "any"])) {
                        Some(close) => format!("did you mean {close:?}?"),
                        None => "no Segment document has this name".to_owned(),
                    };
                    self.error(&item_field, format!("{name:?} is not a segment ({hint})"));
                    continue;
                }
            };
            peers.push(peer);
        }
        peers
    }

    /// `spec.ports`: `{protocol, port?, endPort?}` entries.
    fn ports(&mut self, value: &Value) -> Vec<PortRule> {
        self.ports_at("spec.ports", value)
    }

    /// Port entries at `field`.
    fn ports_at(&mut self, field: &str, value: &Value) -> Vec<PortRule> {
        let mut rules = Vec::new();
        let Some(items) = self.sequence(
            field,
            value,
            "a list of port entries, such as [{protocol: tcp, port: 443}]",
        ) else {
            return rules;
        };
        for (i, item) in items.iter().enumerate() {
            if let Some(rule) = self.port_rule(&format!("{field}[{i}]"), item) {
                rules.push(rule);
            }
        }
        rules
    }

    fn port_rule(&mut self, field: &str, value: &Value) -> Option<PortRule> {
        let entry = self.mapping(
            field,
            value,
            PORT_FIELDS,
            "a port entry such as {protocol: tcp, port: 443}",
        )?;
        let errors_before = self.errors.len();

        let protocol = match self.required_string_at(field, entry, "protocol") {
            Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            Some("sctp") => Some(Protocol::Sctp),
            Some("icmp") => Some(Protocol::Icmp),
            Some("icmpv6") => Some(Protocol::Icmpv6),
            Some("any") => Some(Protocol::Any),
            Some(other) => {
                let hint = hint(other, PROTOCOLS.iter().copied());
                self.error(
                    &format!("{field}.protocol"),
                    format!(
                        "{other:?} is not a protocol (expected tcp, udp, sctp, icmp, icmpv6 or any{hint})"
                    ),
                );
                None
            }
            None => None,
        };

        let port_field = format!("{field}.port");
        let end_field = format!("{field}.endPort");
        let port_value = present(entry, "port");
        let end_value = present(entry, "endPort");
        if let Some(protocol @ (Protocol::Icmp | Protocol::Icmpv6)) = protocol {
            let name = if protocol == Protocol::Icmp {
                "icmp"
            } else {
                "icmpv6"
            };
            for (key_field, key, value) in [
                (&port_field, "port", port_value),
                (&end_field, "endPort", end_value),
            ] {
                if value.is_some() {
                    self.error(key_field, format!("{name} has no ports; remove {key}"));
                }
            }
            return (self.errors.len() == errors_before).then_some(PortRule {
                protocol,
                port: None,
                end_port: None,
            });
        }

        let port = port_value.and_then(|value| self.port_number(&port_field, value));
        let end_port = end_value.and_then(|value| self.port_number(&end_field, value));
        match (port_value, port, end_port) {
            (None, _, Some(_)) => self.error(
                &end_field,
                "endPort needs port, the first port of the range",
            ),
            (_, Some(port), Some(end)) if end < port => self.error(
                &end_field,
                format!("{end} is less than port {port} (a range runs from port up to endPort)"),
            ),
            _ => {}
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(PortRule {
            protocol: protocol?,
            port,
            // A range of one port is that port.
            end_port: end_port.filter(|&end| Some(end) != port),
        })
    }

    /// A TCP, UDP or SCTP port: 1..=65535.
    fn port_number(&mut self, field: &str, value: &Value) -> Option<u16> {
        if let Value::String(text) = value
            && text.contains('-')
        {
            self.error(
                field,
                format!("expected a port number, found a string ({text:?}); write a range as port and endPort"),
            );
            return None;
        }
        let number = self.integer(field, value, "a port number (1..=65535)")?;
        match u16::try_from(number) {
            Ok(port @ 1..=u16::MAX) => Some(port),
            _ => {
                self.error(
                    field,
                    format!("{number} is not a valid port (must be 1..=65535)"),
                );
                None
            }
        }
    }

    /// `spec.validFrom` or `spec.validUntil`: an RFC 3339 date and time.
    /// Returns it with its text, for messages.
    fn timestamp<'v>(&mut self, spec: &'v Mapping, key: &str) -> Option<(OffsetDateTime, &'v str)> {
        let field = format!("spec.{key}");
        let value = present(spec, key)?;
        let text = self.string(
            &field,
            value,
            "an RFC 3339 date and time such as 2026-01-01T08:00:00Z",
        )?;
        match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(at) => Some((at, text)),
            Err(error) => {
                self.error(
                    &field,
                    format!(
                        "{text:?} is not an RFC 3339 date and time such as 2026-01-01T08:00:00Z ({error})"
                    ),
                );
                None
            }
        }
    }

    // The shapes of YAML values. Each reports a value of the wrong shape,
    // describing what was expected and what was found.

    /// A mapping whose keys are all among `fields`; an unknown key is
    /// reported (with the known field it may be a typo of) and skipped.
    fn mapping<'v>(
        &mut self,
        field: &str,
        value: &'v Value,
        fields: &[&str],
        what: &str,
    ) -> Option<&'v Mapping> {
        let mapping = self.mapping_of(field, value, what)?;
        for key in mapping.keys() {
            let Some(key) = self.key(field, key) else {
                continue;
            };
            if !fields.contains(&key) {
                let hint = match suggestion(key, fields.iter().copied()) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("expected one of: {}", fields.join(", ")),
                };
                self.error(&join(field, key), format!("unknown field ({hint})"));
            }
        }
        Some(mapping)
    }

    /// A mapping, any keys.
    fn mapping_of<'v>(&mut self, field: &str, value: &'v Value, what: &str) -> Option<&'v Mapping> {
        match value {
            Value::Mapping(mapping) => Some(mapping),
            other => {
                self.error(field, format!("expected {what}, found {}", describe(other)));
                None
            }
        }
    }

    /// A mapping's key, which must be a string.
    fn key<'v>(&mut self, field: &str, key: &'v Value) -> Option<&'v str> {
        match key {
            Value::String(key) => Some(key),
            other => {
                self.error(
                    field,
                    format!("field names are strings, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn sequence<'v>(&mut self, field: &str, value: &'v Value, what: &str) -> Option<&'v [Value]> {
        match value {
            Value::Sequence(items) => Some(items),
            other => {
                self.error(field, format!("expected {what}, found {}", describe(other)));
                None
            }
        }
    }

    fn string<'v>(&mut self, field: &str, value: &'v Value, what: &str) -> Option<&'v str> {
        match value {
            Value::String(text) => Some(text),
            other => {
                self.error(field, format!("expected {what}, found {}", describe(other)));
                None
            }
        }
    }

    /// A whole number, of any size.
    fn integer(&mut self, field: &str, value: &Value, what: &str) -> Option<i128> {
        let number = match value {
            Value::Integer(number) => Some(*number),
            _ => None,
        };
        if number.is_none() {
            self.error(field, format!("expected {what}, found {}", describe(value)));
        }
        number
    }

    /// A field of the document's top level that must be there.
    fn required<'v>(&mut self, mapping: &'v Mapping, key: &str) -> Option<&'v Value> {
        self.required_at("", mapping, key)
    }

    /// A field of the mapping at `parent` that must be there (and not null).
    fn required_at<'v>(
        &mut self,
        parent: &str,
        mapping: &'v Mapping,
        key: &str,
    ) -> Option<&'v Value> {
        let value = present(mapping, key);
        if value.is_none() {
            self.error(&join(parent, key), "required field is missing");
        }
        value
    }

    /// A string field of the document's top level that must be there.
    fn required_string<'v>(&mut self, mapping: &'v Mapping, key: &str) -> Option<&'v str> {
        self.required_string_at("", mapping, key)
    }

    /// A string field of the mapping at `parent` that must be there.
    fn required_string_at<'v>(
        &mut self,
        parent: &str,
        mapping: &'v Mapping,
        key: &str,
    ) -> Option<&'v str> {
        let value = self.required_at(parent, mapping, key)?;
        self.string(&join(parent, key), value, "a string")
    }
}

/// The value of `key`, unless absent or null (`key:` with nothing after it).
fn present<'v>(mapping: &'v Mapping, key: &str) -> Option<&'v Value> {
    mapping.get(key).filter(|value| !value.is_null())
}

/// `parent.key`, or `key` at the top level.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// What a value is, for "expected …, found …": `a string ("198.18.30.0/24")`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(_) => format!("a boolean ({})", scalar_text(value)),
        Value::Integer(_) | Value::Float(_) => format!("a number ({})", scalar_text(value)),
        Value::String(text) => format!("a string ({text:?})"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
    }
}

/// A boolean's or number's text.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Float(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Parses a CIDR, refusing host bits. The error is the whole message.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let invalid = |why: &str| format!("{text:?} is not a valid CIDR ({why})");
    let Some((address, length)) = text.split_once('/') else {
        return Err(match text.parse::<IpAddr>() {
            Ok(address) => {
                let full = if address.is_ipv4() { 32 } else { 128 };
                invalid(&format!(
                    "no prefix length; for this one address write \"{address}/{full}\""
                ))
            }
            Err(_) => invalid("expected an address and a prefix length, such as 198.18.30.0/24"),
        });
    };
    let address: IpAddr = address.parse().map_err(|_| invalid("invalid address"))?;
    let length: u8 =
        if !length.is_empty() && length.len() <= 3 && length.bytes().all(|b| b.is_ascii_digit()) {
            length
                .parse()
                .map_err(|_| invalid("invalid prefix length"))?
        } else {
            return Err(invalid("invalid prefix length"));
        };
    let net = IpNet::new(address, length).map_err(|_| invalid("invalid prefix length"))?;
    if net.network() != address {
        return Err(format!(
            "{text:?} has host bits set (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    if let IpAddr::V6(v6) = address
        && let Some(v4) = v6.to_ipv4_mapped()
        && length >= 96
    {
        return Err(format!(
            "{text:?} is an IPv4-mapped IPv6 prefix, which no packet carries; write \"{v4}/{}\"",
            length - 96
        ));
    }
    Ok(net)
}

/// Why `key` is not a Kubernetes label name (`[prefix/]name`), if it is not.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix
                .split('.')
                .all(|label| NameProblem::of(label).is_none());
        if !valid {
            return Some(format!(
                "the prefix {prefix:?} is not a DNS subdomain such as example.org"
            ));
        }
    }
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    qualified_name_problem(name)
}

/// Why `value` is not a Kubernetes label value, if it is not.
fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        qualified_name_problem(value)
    }
}

/// At most 63 letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit: a label's name and value.
fn qualified_name_problem(text: &str) -> Option<String> {
    if let Some(c) = text
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{c:?} is not allowed; use letters, digits, '-', '_' and '.'"
        ));
    }
    if text.len() > 63 {
        return Some(format!("{} characters; at most 63", text.len()));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alphanumeric(text.chars().next()) || !alphanumeric(text.chars().last()) {
        return Some("must start and end with a letter or digit".to_owned());
    }
    None
}

/// `; did you mean "x"?` when one of `candidates` is close to `word`.
fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggestion(word, candidates)
        .map(|close| format!("; did you mean {close:?}?"))
        .unwrap_or_default()
}

/// The candidate closest to `word`, ignoring case, if close enough to be a
/// likely typo: at most one edit per three characters (at least one), or
/// `word` is the candidate with something added (`monitoring`, `monitor`).
fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), candidate))
        .filter(|&(distance, candidate)| {
            distance <= (candidate.chars().count() / 3).max(1)
                || (candidate.len() >= 3 && word.starts_with(&candidate.to_lowercase()))
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Edits (insertion, deletion, substitution, swap of neighbours) between
/// `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod documents_tests {
    use super::*;

    #[test]
    fn documents_are_cut_as_parse_counts_them() {
        let src = "# header\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: a}\nspec: {vlans: [3]}\n---\n# nothing\n---\nkind: Policy\nmetadata:\n  name: b\n";
        let docs = documents(src);
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (
                docs[0].index,
                docs[0].kind.as_deref(),
                docs[0].name.as_deref()
            ),
            (1, Some("Segment"), Some("a"))
        );
        assert_eq!(
            (
                docs[1].index,
                docs[1].kind.as_deref(),
                docs[1].name.as_deref()
            ),
            (2, Some("Policy"), Some("b"))
        );
        assert!(docs[0].text.starts_with("apiVersion"), "{:?}", docs[0].text);
        let again: String = docs.iter().map(|d| format!("---\n{}", d.text)).collect();
        assert_eq!(
            parse(&again).unwrap_err().len(),
            parse(src).unwrap_err().len()
        );
    }

    /// Found by fuzzing: a document starting on its marker's line was cut
    /// out without the marker's columns, and the text read differently.
    #[test]
    fn a_document_on_its_marker_line_reads_as_in_the_source() {
        let segment = "kind: Segment\nmetadata: {name: b}\nspec: {vlans: [4]}\n";
        // YAML reads `kind` at column 1 as a sibling of nothing: refused.
        for marker in ["--- ", "---\t"] {
            let src = format!("{marker}apiVersion: wardline/v1\n{segment}");
            let docs = documents(&src);
            let again: String = docs.iter().map(|d| format!("---\n{}", d.text)).collect();
            assert!(parse(&src).is_err(), "{src:?}");
            assert!(parse(&again).is_err(), "{again:?}");
        }
        // A flow mapping on the marker's line reads the same either way.
        let src = "--- {apiVersion: wardline/v1, kind: Segment, metadata: {name: b}, spec: {vlans: [4]}}\n";
        let again: String = documents(src)
            .iter()
            .map(|d| format!("---\n{}", d.text))
            .collect();
        assert!(parse(src).is_ok() && parse(&again).is_ok(), "{again:?}");
        // A comment after the marker is dropped with it, as before.
        assert_eq!(documents("--- # two\nb: 2\n")[0].text, "# two\nb: 2\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_cut_at_markers_keeping_lines() {
        let chunks = split_documents("# header\n---\na: 1\n--- # two\nb: 2\n...\n---\n");
        let texts: Vec<_> = chunks
            .iter()
            .map(|c| (c.first_line, c.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                (0, "# header\n"),
                (1, "   \na: 1\n"),
                (3, "    # two\nb: 2\n"),
                (5, "   \n"),
                (6, "   \n"),
            ]
        );
    }

    #[test]
    fn a_marker_needs_a_blank_after_it() {
        let chunks = split_documents("a: |\n  x\n----\n");
        assert_eq!(chunks.len(), 1, "---- is not a marker: {chunks:?}");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("198.18.30.0/24"),
            Ok("198.18.30.0/24".parse().expect("CIDR"))
        );
        assert_eq!(
            parse_cidr("2001:db8:30::/64"),
            Ok("2001:db8:30::/64".parse().expect("CIDR"))
        );
        assert_eq!(
            parse_cidr("198.18.30.0/33"),
            Err("\"198.18.30.0/33\" is not a valid CIDR (invalid prefix length)".to_owned())
        );
        assert_eq!(
            parse_cidr("198.18.30.0/+8"),
            Err("\"198.18.30.0/+8\" is not a valid CIDR (invalid prefix length)".to_owned())
        );
        assert_eq!(
            parse_cidr("2001:db8:30::1/64"),
            Err(
                "\"2001:db8:30::1/64\" has host bits set (did you mean \"2001:db8:30::/64\"?)"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_cidr("198.18.30.7"),
            Err("\"198.18.30.7\" is not a valid CIDR (no prefix length; for this one address write \"198.18.30.7/32\")".to_owned())
        );
        assert_eq!(
            parse_cidr("::ffff:198.18.30.0/120"),
            Err("\"::ffff:198.18.30.0/120\" is an IPv4-mapped IPv6 prefix, which no packet carries; write \"198.18.30.0/24\"".to_owned())
        );
    }

    #[test]
    fn label_names_and_values() {
        assert_eq!(label_key_problem("zone"), None);
        assert_eq!(label_key_problem("wardline.example/device-class"), None);
        assert_eq!(label_key_problem("Device_Class.v2"), None);
        assert!(label_key_problem("device class").is_some());
        assert!(label_key_problem("/zone").is_some());
        assert!(label_key_problem("Example.org/zone").is_some());
        assert_eq!(label_value_problem(""), None);
        assert!(label_value_problem("-clinical").is_some());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggestion("form", ["from", "to"]), Some("from"));
        assert_eq!(suggestion("TCP", PROTOCOLS.iter().copied()), Some("tcp"));
        assert_eq!(
            suggestion("pumps-server", ["pump-server", "pacs"]),
            Some("pump-server")
        );
        assert_eq!(suggestion("radiology", ["pump-server", "pacs"]), None);
        assert_eq!(
            suggestion("monitoring", ["enforce", "monitor"]),
            Some("monitor")
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abcd", "abdc"), 1);
    }
}
