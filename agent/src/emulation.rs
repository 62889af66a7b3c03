//! An emulated 802.1Q access switch, for labs and tests on kernels without
//! the 8021q module. Frames a device sends on its access port leave the
//! trunk tagged with the port's VLAN; frames from the trunk reach the device
//! untagged. Not part of enforcement.

use aya::maps::HashMap;
use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use wardline_ebpf_abi::{
    AccessPort, MAP_ACCESS_PORTS, PORT_ACCESS, PORT_TRUNK, PORT_UNTAG, PROG_ACCESS_PORT,
};

static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wardline-access-port"));

/// One device port and the trunk it reaches.
#[derive(Clone, Debug)]
pub struct PortPair {
    pub access: String,
    pub trunk: String,
    /// VLAN id to tag the device's frames with; 0 for none.
    pub vid: u16,
}

/// The switch; dropping it detaches the programs.
pub struct AccessSwitch {
    _ebpf: Ebpf,
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|e| anyhow::anyhow!("interface {name}: {e}"))
}

impl AccessSwitch {
    /// Attaches to the interfaces of `pairs`, which must be in the calling
    /// thread's network namespace. A trunk may serve one device only.
    pub fn attach(pairs: &[PortPair]) -> anyhow::Result<AccessSwitch> {
        Self::attach_with(pairs, &[])
    }

    /// A host's own interface on a trunk: tagged frames arriving there are
    /// untagged in place (the host has no VLAN interface).
    pub fn untag(interface: &str) -> anyhow::Result<AccessSwitch> {
        Self::attach_with(&[], &[interface])
    }

    fn attach_with(pairs: &[PortPair], untag: &[&str]) -> anyhow::Result<AccessSwitch> {
        let mut ebpf = EbpfLoader::new().load(PROGRAM)?;
        let mut ports: HashMap<_, u32, AccessPort> = HashMap::try_from(
            ebpf.map_mut(MAP_ACCESS_PORTS)
                .ok_or_else(|| anyhow::anyhow!("map missing"))?,
        )?;
        let mut ifaces = Vec::new();
        for p in pairs {
            let (a, t) = (ifindex(&p.access)?, ifindex(&p.trunk)?);
            ports.insert(
                a,
                AccessPort {
                    out_ifindex: t,
                    vid: p.vid,
                    mode: PORT_ACCESS,
                },
                0,
            )?;
            ports.insert(
                t,
                AccessPort {
                    out_ifindex: a,
                    vid: 0,
                    mode: PORT_TRUNK,
                },
                0,
            )?;
            ifaces.push(p.access.clone());
            ifaces.push(p.trunk.clone());
        }
        for u in untag {
            ports.insert(
                ifindex(u)?,
                AccessPort {
                    out_ifindex: 0,
                    vid: 0,
                    mode: PORT_UNTAG,
                },
                0,
            )?;
            ifaces.push((*u).to_owned());
        }
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROG_ACCESS_PORT)
            .ok_or_else(|| anyhow::anyhow!("program missing"))?
            .try_into()?;
        program.load()?;
        for iface in ifaces {
            program.attach_with_options(
                &iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
        }
        Ok(AccessSwitch { _ebpf: ebpf })
    }
}
