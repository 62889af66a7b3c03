//! The three topologies Wardline is deployed in, built from namespaces:
//! an agent inside a host, a routed gateway between subnets, and a
//! transparent bridge in front of a medical-device VLAN.

use std::collections::BTreeMap;
use std::net::IpAddr;

use wardline_agent::emulation::{AccessSwitch, PortPair};

use crate::link::{addr, bridge, enable_forwarding, link_up, route, veth};
use crate::netns::Netns;
use crate::probe::ServerHandle;

/// Services every host serves and every matrix probes.
pub const TCP_PORTS: [u16; 3] = [443, 8080, 22];
pub const UDP_PORTS: [u16; 2] = [5000, 5011];

/// A test host: a namespace with one interface, `eth0`.
pub struct Host {
    pub label: &'static str,
    pub v4: IpAddr,
    pub v6: IpAddr,
    /// Echo servers on [`TCP_PORTS`] and [`UDP_PORTS`].
    pub server: Option<ServerHandle>,
    pub ns: Netns,
}

impl Host {
    fn new(label: &'static str, v4: &str, v6: &str) -> Host {
        Host {
            label,
            v4: v4.parse().expect("v4"),
            v6: v6.parse().expect("v6"),
            server: None,
            ns: Netns::new(label),
        }
    }

    fn address(&self, v4_len: u8, v6_len: u8) {
        addr(&self.ns, "eth0", &format!("{}/{v4_len}", self.v4));
        addr(&self.ns, "eth0", &format!("{}/{v6_len}", self.v6));
        link_up(&self.ns, "eth0");
    }

    /// Routes every test range on-link (one L2 domain).
    fn on_link(&self) {
        for r in ["198.18.0.0/15", "198.51.100.0/24", "2001:db8::/32"] {
            self.ns.ip(["route", "replace", r, "dev", "eth0"]);
        }
    }

    fn serve(&mut self) {
        self.server = Some(self.ns.serve(&TCP_PORTS, &UDP_PORTS));
    }
}

/// The hosts of a topology by label, and where the agent runs.
pub struct Topology {
    pub hosts: Vec<Host>,
    /// The namespace the agent runs in, when it is not one of the hosts'.
    gateway: Option<Netns>,
    /// The host the agent runs in, for an agent inside a host.
    agent_host: Option<&'static str>,
    /// The interfaces the agent enforces.
    pub agent_interfaces: Vec<String>,
    /// Namespaces that only carry traffic (a LAN switch, an access switch).
    pub infrastructure: Vec<Netns>,
    /// Keeps the emulated 802.1Q switch ports attached.
    pub switches: Vec<AccessSwitch>,
}

impl Topology {
    /// Where the agent runs.
    pub fn agent_ns(&self) -> &Netns {
        match (&self.gateway, self.agent_host) {
            (Some(gw), _) => gw,
            (None, Some(label)) => &self.host(label).ns,
            (None, None) => unreachable!("every topology has an agent"),
        }
    }

    pub fn host(&self, label: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.label == label)
            .unwrap_or_else(|| panic!("no host {label}"))
    }

    pub fn labels(&self) -> Vec<&'static str> {
        self.hosts.iter().map(|h| h.label).collect()
    }

    pub fn interfaces(&self) -> Vec<&str> {
        self.agent_interfaces.iter().map(String::as_str).collect()
    }

    /// Every host's address by label, to fill templates.
    pub fn addresses(&self) -> BTreeMap<&'static str, (IpAddr, IpAddr)> {
        self.hosts.iter().map(|h| (h.label, (h.v4, h.v6))).collect()
    }
}

/// An EHR server whose own agent enforces on its one NIC; a workstation, a
/// pump and an outside host share its LAN (a bridge the agent does not see).
/// Only traffic to or from `ehr` crosses enforcement.
pub fn host_agent() -> Topology {
    let lan = Netns::new("lan");
    let mut hosts = vec![
        Host::new("ws", "198.18.20.10", "2001:db8:20::10"),
        Host::new("pump", "198.18.30.10", "2001:db8:30::10"),
        Host::new("ext", "198.51.100.10", "2001:db8:99::10"),
    ];
    let ehr = Netns::new("ehr");
    let mut ports = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let port = format!("p{i}");
        veth(&lan, &port, &h.ns, "eth0");
        ports.push(port);
    }
    veth(&lan, "pehr", &ehr, "eth0");
    ports.push("pehr".to_owned());
    let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
    bridge(&lan, "br0", &refs);
    let mut ehr_host = Host {
        label: "ehr",
        v4: "198.18.41.10".parse().unwrap(),
        v6: "2001:db8:41::10".parse().unwrap(),
        server: None,
        ns: ehr,
    };
    for h in hosts.iter_mut().chain(std::iter::once(&mut ehr_host)) {
        h.address(24, 64);
        h.on_link();
        h.serve();
    }
    hosts.push(ehr_host);
    Topology {
        hosts,
        gateway: None,
        agent_host: Some("ehr"),
        agent_interfaces: vec!["eth0".to_owned()],
        infrastructure: vec![lan],
        switches: Vec::new(),
    }
}

/// A gateway routing between four subnets: workstations, pumps, the EHR and
/// an outside network; the agent enforces on all four of its interfaces.
pub fn routed_gateway() -> Topology {
    let gw = Netns::new("gw");
    enable_forwarding(&gw);
    let subnets = [
        ("ws", "198.18.20", "2001:db8:20"),
        ("pump", "198.18.30", "2001:db8:30"),
        ("ehr", "198.18.41", "2001:db8:41"),
        ("ext", "198.51.100", "2001:db8:99"),
    ];
    let mut hosts = Vec::new();
    let mut interfaces = Vec::new();
    for (label, v4, v6) in subnets {
        let mut h = Host::new(label, &format!("{v4}.10"), &format!("{v6}::10"));
        let gif = format!("gw-{label}");
        veth(&gw, &gif, &h.ns, "eth0");
        addr(&gw, &gif, &format!("{v4}.1/24"));
        addr(&gw, &gif, &format!("{v6}::1/64"));
        link_up(&gw, &gif);
        h.address(24, 64);
        route(&h.ns, &format!("default via {v4}.1"));
        route(&h.ns, &format!("default via {v6}::1"));
        h.serve();
        interfaces.push(gif);
        hosts.push(h);
    }
    Topology {
        hosts,
        gateway: Some(gw),
        agent_host: None,
        agent_interfaces: interfaces,
        infrastructure: Vec::new(),
        switches: Vec::new(),
    }
}

/// A transparent bridge gateway in front of the infusion-pump VLAN (30).
/// Devices reach it through an emulated access switch that tags their
/// frames; servers sit on untagged ports. The agent enforces on every
/// bridge port.
///
/// Hosts: `pump` (a pump's address, on VLAN 30), `vlan-only` (an address in
/// no segment, on VLAN 30), `rogue` (on VLAN 30 with an EHR address),
/// `pump-server` and `ehr` (untagged, on the core side).
pub fn vlan_bridge() -> Topology {
    bridged_vlans(vlan30_hosts(), core_hosts())
}

/// The VLAN-30 access hosts of [`vlan_bridge`].
fn vlan30_hosts() -> Vec<(Host, u16)> {
    vec![
        (Host::new("pump", "198.18.30.10", "2001:db8:30::10"), 30),
        (
            Host::new("vlan-only", "198.18.99.30", "2001:db8:99::30"),
            30,
        ),
        (Host::new("rogue", "198.18.41.66", "2001:db8:41::66"), 30),
    ]
}

/// The untagged core-side hosts of [`vlan_bridge`].
fn core_hosts() -> Vec<Host> {
    vec![
        Host::new("pump-server", "198.18.42.10", "2001:db8:42::10"),
        Host::new("ehr", "198.18.41.10", "2001:db8:41::10"),
    ]
}

/// [`vlan_bridge`] with a second access VLAN: `vlan40` (198.18.40.10, an
/// address of its own) sits on an access port of VLAN 40. Its frames reach
/// the bridge tagged 40 on a trunk of their own, like VLAN 30's.
///
/// Hosts: `pump`, `vlan-only` and `rogue` on VLAN 30, `vlan40` on VLAN 40,
/// `pump-server` and `ehr` untagged on the core side.
pub fn vlan_bridge_with_second_vlan() -> Topology {
    let mut access = vlan30_hosts();
    access.push((Host::new("vlan40", "198.18.40.10", "2001:db8:40::10"), 40));
    bridged_vlans(access, core_hosts())
}

/// A transparent bridge gateway: `access` hosts behind an emulated access
/// switch that tags their frames with their VLAN (switch port `a{i}`, trunk
/// `t{i}` into the bridge), `core` hosts on untagged bridge ports `s{i}`
/// (numbered after the access hosts). The agent enforces on every bridge
/// port.
fn bridged_vlans(access: Vec<(Host, u16)>, core: Vec<Host>) -> Topology {
    let gw = Netns::new("bridge-gw");
    let sw = Netns::new("access-sw");
    let mut ports = Vec::new();
    let mut pairs = Vec::new();
    let mut hosts = Vec::new();
    for (i, (h, vid)) in access.into_iter().enumerate() {
        let (access, trunk) = (format!("a{i}"), format!("t{i}"));
        veth(&sw, &access, &h.ns, "eth0");
        veth(&sw, &trunk, &gw, &trunk);
        link_up(&sw, &access);
        link_up(&sw, &trunk);
        pairs.push(PortPair {
            access,
            trunk: trunk.clone(),
            vid,
        });
        ports.push(trunk);
        hosts.push(h);
    }
    let mut switches = vec![
        sw.run_in(move || AccessSwitch::attach(&pairs))
            .expect("access switch"),
    ];
    for h in core {
        let port = format!("s{}", hosts.len());
        veth(&gw, &port, &h.ns, "eth0");
        ports.push(port);
        switches.push(
            h.ns.run_in(|| AccessSwitch::untag("eth0"))
                .expect("untagging port"),
        );
        hosts.push(h);
    }
    let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
    bridge(&gw, "br0", &refs);
    for h in hosts.iter_mut() {
        h.address(24, 64);
        h.on_link();
        h.serve();
    }
    Topology {
        hosts,
        gateway: Some(gw),
        agent_host: None,
        agent_interfaces: ports,
        infrastructure: vec![sw],
        switches,
    }
}
