//! The harness tests itself: namespaces, veth pairs, routing, bridging, the
//! probe's checks, and cleanup. Needs root: `cargo xtask test`.

use std::process::Command;

use wardline_tests::{
    Netns, addr, bridge, enable_forwarding, netns_exists, require_root, route, unique_ifname, veth,
};

const TCP: u16 = 7000;
const UDP: u16 = 7001;
const CLOSED: u16 = 7009;

fn listed(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

/// Every cell of a small matrix: TCP, UDP and ping to `dst` succeed from
/// `src`; TCP and UDP to a port nobody serves fail.
fn assert_reachable(src: &Netns, dst: &str) {
    assert!(src.tcp_ok(dst, TCP), "tcp {} -> {dst}:{TCP}", src.name());
    assert!(src.udp_ok(dst, UDP), "udp {} -> {dst}:{UDP}", src.name());
    assert!(src.ping_ok(dst), "ping {} -> {dst}", src.name());
    assert!(
        !src.tcp_ok(dst, CLOSED),
        "tcp {} -> {dst}:{CLOSED}",
        src.name()
    );
    assert!(
        !src.udp_ok(dst, CLOSED),
        "udp {} -> {dst}:{CLOSED}",
        src.name()
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn netns_veth_pair_carries_tcp_udp_and_ping_over_both_families() {
    require_root();
    let a = Netns::new("veth-a");
    let b = Netns::new("veth-b");
    veth(&a, "eth0", &b, "eth0");
    addr(&a, "eth0", "198.18.0.1/24");
    addr(&b, "eth0", "198.18.0.2/24");
    addr(&a, "eth0", "2001:db8:0:1::1/64");
    addr(&b, "eth0", "2001:db8:0:1::2/64");
    let server = b.serve(&[TCP], &[UDP]);

    assert_reachable(&a, "198.18.0.2");
    assert_reachable(&a, "2001:db8:0:1::2");
    // Both ends echo, ping answers from either side.
    assert!(b.ping_ok("198.18.0.1"));
    assert!(b.ping_ok("2001:db8:0:1::1"));
    // An address nobody has: no reply, and the probe gives up in time.
    assert!(!a.ping_ok("198.18.0.99"));
    assert!(!a.tcp_ok("198.18.0.99", TCP));

    // A stream keeps going for its whole duration.
    let stream = a.probe([
        "stream",
        "198.18.0.2",
        "7000",
        "--seconds",
        "1",
        "--report-ms",
        "300",
    ]);
    let report = String::from_utf8_lossy(&stream.stdout);
    assert!(stream.status.success(), "stream: {report}");
    assert!(report.lines().count() >= 3, "running counts: {report}");
    // Fresh connections every 100 ms all succeed.
    let retry = a.retry_tcp("2001:db8:0:1::2", TCP, 1);
    assert!(retry.attempted >= 8, "{retry:?}");
    assert_eq!(retry.succeeded, retry.attempted, "{retry:?}");

    assert!(
        server.stderr().contains("tcp listening on [::]:7000"),
        "{}",
        server.stderr()
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn netns_stream_breaks_when_the_server_goes() {
    require_root();
    let a = Netns::new("brk-a");
    let b = Netns::new("brk-b");
    veth(&a, "eth0", &b, "eth0");
    addr(&a, "eth0", "198.18.0.1/24");
    addr(&b, "eth0", "198.18.0.2/24");
    let server = b.serve(&[TCP], &[]);
    let stream = a.spawn_probe(["stream", "198.18.0.2", "7000", "--seconds", "5"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.stop();
    let started = std::time::Instant::now();
    let out = stream.wait_with_output().expect("stream probe");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("broken"), "{report}");
    assert!(started.elapsed().as_secs() < 3, "{report}");
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn netns_routed_client_router_server() {
    require_root();
    let client = Netns::new("client");
    let router = Netns::new("router");
    let server = Netns::new("server");
    veth(&client, "eth0", &router, "to-client");
    veth(&router, "to-server", &server, "eth0");
    enable_forwarding(&router);
    assert_eq!(router.read_sysctl("net.ipv4.ip_forward"), "1");

    addr(&client, "eth0", "198.18.1.2/24");
    addr(&router, "to-client", "198.18.1.1/24");
    addr(&router, "to-server", "198.18.2.1/24");
    addr(&server, "eth0", "198.18.2.2/24");
    addr(&client, "eth0", "2001:db8:1::2/64");
    addr(&router, "to-client", "2001:db8:1::1/64");
    addr(&router, "to-server", "2001:db8:2::1/64");
    addr(&server, "eth0", "2001:db8:2::2/64");
    route(&client, "198.18.2.0/24 via 198.18.1.1");
    route(&server, "198.18.1.0/24 via 198.18.2.1");
    route(&client, "default via 2001:db8:1::1");
    route(&server, "2001:db8:1::/64 via 2001:db8:2::1");

    let _echo = server.serve(&[TCP], &[UDP]);
    assert_reachable(&client, "198.18.2.2");
    assert_reachable(&client, "2001:db8:2::2");
    assert!(server.ping_ok("198.18.1.2"));
    assert!(server.ping_ok("2001:db8:1::2"));
    // The router answers for an unrouted destination with an ICMP error,
    // which the probe reports at once as unreachable.
    let out = client.probe(["ping", "2001:db8:9::1", "--timeout-ms", "700"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("unreachable"),
        "{said}"
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn netns_bridge_forwards_between_two_hosts() {
    require_root();
    let switch = Netns::new("switch");
    let h1 = Netns::new("h1");
    let h2 = Netns::new("h2");
    let (p1, p2) = (unique_ifname("p"), unique_ifname("p"));
    veth(&h1, "eth0", &switch, &p1);
    veth(&h2, "eth0", &switch, &p2);
    bridge(&switch, "br0", &[&p1, &p2]);
    addr(&h1, "eth0", "198.18.3.1/24");
    addr(&h2, "eth0", "198.18.3.2/24");
    addr(&h1, "eth0", "2001:db8:3::1/64");
    addr(&h2, "eth0", "2001:db8:3::2/64");

    let _echo = h2.serve(&[TCP], &[UDP]);
    assert_reachable(&h1, "198.18.3.2");
    assert_reachable(&h1, "2001:db8:3::2");
    let links =
        String::from_utf8_lossy(&switch.ip(["-br", "link", "show", "master", "br0"]).stdout)
            .into_owned();
    assert!(links.contains(&p1) && links.contains(&p2), "{links}");
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn netns_guards_clean_up_even_on_panic() {
    require_root();
    let (name, sleeper) = {
        let ns = Netns::new("gone");
        let child = ns.spawn(["sleep", "30"]);
        assert!(listed(ns.name()));
        assert!(netns_exists(ns.name()));
        assert_eq!(
            ns.path(),
            std::path::Path::new("/run/netns").join(ns.name())
        );
        (ns.name().to_string(), child)
    };
    assert!(!listed(&name), "{name} still listed");
    let mut sleeper = sleeper;
    let status = sleeper.wait().expect("wait");
    assert!(!status.success(), "the sleeper was killed: {status:?}");

    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("panics");
        let name = ns.name().to_string();
        let _echo = ns.serve(&[TCP], &[]);
        std::panic::panic_any(name);
    });
    let payload = result.expect_err("the closure panics");
    let name = payload.downcast_ref::<String>().expect("the name");
    assert!(!listed(name), "{name} still listed after a panic");

    // A failing command names itself.
    let ns = Netns::new("fails");
    let err = ns.try_exec(["false"]).expect_err("false fails");
    assert!(err.to_string().contains("false"), "{err}");
}
