//! Wiring namespaces together: veth pairs, addresses, routes, bridges.

use std::process::{self, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::command::run;
use crate::netns::Netns;

/// The longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const IFNAMSIZ_MAX: usize = 15;

static IF_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless `name` is a valid interface name: 1 to 15 bytes, no `/`,
/// `:`, whitespace, and not `.` or `..`.
#[track_caller]
pub fn check_ifname(name: &str) {
    assert!(
        !name.is_empty()
            && name.len() <= IFNAMSIZ_MAX
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace()),
        "{name:?} is not a valid interface name (1 to {IFNAMSIZ_MAX} bytes, no `/`, `:` or spaces)"
    );
}

/// An interface name that no other call in this process returns:
/// `prefix`, then this process's PID and a counter (base 36). Interfaces only
/// need unique names within their namespace, and every test has its own;
/// this is for names that meet in a shared one. `prefix` may be up to 5
/// bytes; panics if the result would exceed 15.
#[track_caller]
pub fn unique_ifname(prefix: &str) -> String {
    let n = IF_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{prefix}{}-{}",
        base36(process::id().into()),
        base36(n.into())
    );
    check_ifname(&name);
    name
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A veth pair, `a_if` in `a` and `b_if` in `b`, both up. Created from
/// inside `a` (`ip -n A link add A_IF type veth peer name B_IF netns B`), so
/// the host's namespace never sees either end.
#[track_caller]
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    check_ifname(a_if);
    check_ifname(b_if);
    // `name` spelled out: a bare `a` or `b` would be read as a keyword.
    a.ip([
        "link",
        "add",
        "name",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    link_up(a, a_if);
    link_up(b, b_if);
}

/// Adds an address in CIDR form (`198.18.1.1/24`, `2001:db8:1::1/64`) to
/// `ifname`. IPv6 addresses skip duplicate address detection (`nodad`), so
/// they are usable at once.
#[track_caller]
pub fn addr(ns: &Netns, ifname: &str, cidr: &str) {
    if cidr.contains(':') {
        ns.ip(["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
    } else {
        ns.ip(["addr", "add", cidr, "dev", ifname]);
    }
}

/// Sets `ifname` up.
#[track_caller]
pub fn link_up(ns: &Netns, ifname: &str) {
    ns.ip(["link", "set", "dev", ifname, "up"]);
}

/// Adds a route given as `ip route add` takes it:
/// `"198.18.2.0/24 via 198.18.1.1"`, `"default via 2001:db8:1::1"`,
/// `"198.18.9.0/24 dev eth0"`. IPv6 when any address in it is.
#[track_caller]
pub fn route(ns: &Netns, spec: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns.name()]);
    if spec.contains(':') {
        cmd.arg("-6");
    }
    cmd.args(["route", "add"]).args(spec.split_whitespace());
    run(&mut cmd);
}

/// Turns on IPv4 and IPv6 forwarding in `ns`, making it a router.
#[track_caller]
pub fn enable_forwarding(ns: &Netns) {
    ns.sysctl("net.ipv4.ip_forward", "1");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
}

/// A Linux bridge `name` in `ns` with `ports` (interfaces already in `ns`)
/// enslaved, all up. No VLAN filtering (frames, tagged or not, are forwarded
/// unchanged), no STP and no forwarding delay (ports forward at once), no
/// multicast snooping where the kernel has it (IPv6 neighbour discovery is
/// flooded like any other multicast). The bridge and its ports get no IPv6 of their own, so they
/// send nothing themselves; give the bridge an address with [`addr`] only
/// after re-enabling it if a test needs one.
#[track_caller]
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) {
    check_ifname(name);
    ns.ip([
        "link",
        "add",
        "name",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ]);
    // A kernel built without VLAN filtering or multicast snooping refuses
    // even to turn them off ("Operation not supported"): they are off.
    for (option, value) in [("vlan_filtering", "0"), ("mcast_snooping", "0")] {
        let _ = ns.try_ip(["link", "set", "dev", name, "type", "bridge", option, value]);
    }
    quiet_ipv6(ns, name);
    for port in ports {
        quiet_ipv6(ns, port);
        ns.ip(["link", "set", "dev", port, "master", name]);
        link_up(ns, port);
    }
    link_up(ns, name);
    // Bridged frames must not go through this namespace's iptables when
    // br_netfilter happens to be loaded on the host.
    for key in [
        "net/bridge/bridge-nf-call-iptables",
        "net/bridge/bridge-nf-call-ip6tables",
        "net/bridge/bridge-nf-call-arptables",
    ] {
        if ns.run_in(|| std::path::Path::new("/proc/sys").join(key).exists()) {
            ns.sysctl(key, "0");
        }
    }
}

fn quiet_ipv6(ns: &Netns, ifname: &str) {
    ns.sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_and_differ() {
        let a = unique_ifname("veth");
        let b = unique_ifname("veth");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAMSIZ_MAX, "{a}");
        assert!(a.starts_with("veth"));
    }

    #[test]
    #[should_panic(expected = "not a valid interface name")]
    fn long_names_are_refused() {
        check_ifname("sixteen-bytes-xx");
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304), "2hwcg");
    }
}
