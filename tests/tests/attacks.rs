//! The penetration tester's tests: each one performs an attack on the
//! dataplane from inside the topology's namespaces, with forged frames
//! (`wardline-forge`) and real sockets, and asserts that it fails. Each
//! states the attack and the expected outcome, as docs/verdicts.md gives
//! the verdicts. Every forged packet carries a marker of its own, and only
//! frames with that marker are counted where they should not arrive.
//!
//! The gateways' reverse-path filter is turned off where sources are
//! forged, so that what stops a forgery is Wardline, not the routing code.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use wardline_tests::agent::Agent;
use wardline_tests::docs::{WS_PUMP_EHR, policy, with};
use wardline_tests::forge::{
    Forged, QuotedTuple, SNIFF_WINDOW, SniffFilter, echo, mac_of, no_reverse_path_filter, tcp_from,
    udp_echo, udp_from,
};
use wardline_tests::scenarios::VLAN_SEGMENTS;
use wardline_tests::topology::{self, Host, Topology};
use wardline_tests::{Netns, addr, require_root};

/// How long a real connection attempt or echo gets.
const WAIT: Duration = Duration::from_millis(700);
/// How long an allowed UDP exchange gets, resends included.
const UDP_WAIT: Duration = Duration::from_millis(1500);

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A host's address of the family of `v4`.
fn ip(h: &Host, v4: bool) -> IpAddr {
    if v4 { h.v4 } else { h.v6 }
}

/// Both address families (`true` for IPv4), IPv4 first.
fn families() -> [bool; 2] {
    [true, false]
}

/// The agent config lines of one failsafe entry.
fn failsafe(direction: &str, port: u16, cidrs: &[&str]) -> String {
    let cidrs: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "  failsafe:\n    - {{direction: {direction}, protocol: tcp, port: {port}, cidrs: [{}]}}\n",
        cidrs.join(", ")
    )
}

/// The routed gateway's agent with the routed segments, `policies` and
/// `extra_spec` (failsafe lines).
fn routed_agent(topo: &Topology, policies: &[String], extra_spec: &str) -> Agent {
    Agent::start_with(
        topo.agent_ns(),
        &topo.interfaces(),
        &with(WS_PUMP_EHR, policies),
        extra_spec,
    )
}

/// The routed gateway's agent with one policy: ws may reach ehr's tcp/443.
fn ws_ehr_web_agent(topo: &Topology) -> Agent {
    routed_agent(
        topo,
        &[policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]",
        )],
        "",
    )
}

/// The gateway's MAC on the interface facing `label`: where a host of that
/// subnet sends its frames.
fn gateway_mac(topo: &Topology, label: &str) -> String {
    mac_of(topo.agent_ns(), &format!("gw-{label}"))
}

/// The gateway's own address on the subnet of `label`.
fn gateway_ip(topo: &Topology, label: &str, v4: bool) -> IpAddr {
    let h = topo.host(label);
    match ip(h, v4) {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::V4([o[0], o[1], o[2], 1].into())
        }
        IpAddr::V6(a) => {
            let mut s = a.segments();
            s[4..].copy_from_slice(&[0, 0, 0, 1]);
            IpAddr::V6(s.into())
        }
    }
}

/// Checks that the failsafe lets host `label` reach the gateway's own SSH
/// (port 22) at its address on `label`'s subnet.
#[track_caller]
fn assert_reaches_own_ssh(topo: &Topology, agent: &Agent, label: &str, v4: bool) {
    let ssh = gateway_ip(topo, label, v4);
    assert!(
        topo.host(label).ns.tcp_ok(ssh, 22),
        "the failsafe lets {label} reach the gateway's own SSH at {ssh}; log:\n{}",
        agent.log()
    );
}

/// The agent's packet counters by reason, both directions summed, when it
/// started, to say in a message what passed an attack's packets.
struct Watch<'a> {
    agent: &'a Agent,
    ns: &'a Netns,
    before: BTreeMap<String, u64>,
}

impl<'a> Watch<'a> {
    fn start(agent: &'a Agent, ns: &'a Netns) -> Watch<'a> {
        Watch {
            agent,
            ns,
            before: by_reason(agent, ns),
        }
    }

    /// The reasons counted since the start: `failsafe +6, established +2`.
    fn counted(&self) -> String {
        let now = by_reason(self.agent, self.ns);
        let counted: Vec<String> = now
            .iter()
            .filter_map(|(reason, n)| {
                let d = n.saturating_sub(self.before.get(reason).copied().unwrap_or(0));
                (d > 0).then(|| format!("{reason} +{d}"))
            })
            .collect();
        format!("counted meanwhile: {}", counted.join(", "))
    }
}

fn by_reason(agent: &Agent, ns: &Netns) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some((_, metrics)) = agent.get(ns, "/metrics") else {
        return out;
    };
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("wardline_packets_total{") else {
            continue;
        };
        let reason = labels
            .split_once("reason=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(r, _)| r.to_string());
        let n = line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok());
        if let (Some(reason), Some(n)) = (reason, n) {
            *out.entry(reason).or_insert(0) += n;
        }
    }
    out
}

/// What the agent reported about packets from `src` to port `dport`
/// (interface, direction, verdict, reason), for messages. The flow log is
/// written a moment after the packets: this waits a little for it.
fn reported(agent: &Agent, src: IpAddr, dport: u16) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(300));
    agent
        .flows()
        .iter()
        .filter(|f| f["src"] == src.to_string() && f["dport"] == dport)
        .map(|f| {
            format!(
                "{} {} {} {}",
                f["interface"].as_str().unwrap_or("?"),
                f["direction"].as_str().unwrap_or("?"),
                f["verdict"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// The holes an attack test finds, all reported at the end
/// ([`Holes::none`]), each told with what the agent counted while it was
/// made.
struct Holes<'a> {
    agent: &'a Agent,
    ns: &'a Netns,
    found: Vec<String>,
}

impl<'a> Holes<'a> {
    /// Holes in the dataplane of `agent`, running in `ns`.
    fn new(agent: &'a Agent, ns: &'a Netns) -> Holes<'a> {
        Holes {
            agent,
            ns,
            found: Vec::new(),
        }
    }

    /// Runs `attack` with the agent's counters watched: when it tells what
    /// got through, that is a hole, recorded with what was counted
    /// meanwhile.
    fn watch(&mut self, attack: impl FnOnce() -> Option<String>) {
        let watch = Watch::start(self.agent, self.ns);
        if let Some(hole) = attack() {
            self.found.push(format!("{hole}; {}", watch.counted()));
        }
    }

    /// A hole told as it is.
    fn push(&mut self, hole: String) {
        self.found.push(hole);
    }

    /// A hole unless `conn`, the genuine connection `what`, still echoes a
    /// line (`tag`).
    fn still_echoes(&mut self, conn: &TcpStream, tag: &str, what: &str) {
        if let Err(e) = echo(conn, tag, WAIT) {
            self.push(format!("{what} broke: {e}"));
        }
    }

    /// Panics with every hole found, once all of them were tried.
    #[track_caller]
    fn none(self) {
        assert!(
            self.found.is_empty(),
            "{} hole(s):\n{}",
            self.found.len(),
            self.found
                .iter()
                .map(|h| format!("  - {h}\n"))
                .collect::<String>()
        );
    }
}

/// How many copies of `packet`, forged out of `sender`'s eth0 in frames for
/// `mac`, arrived on `receiver`'s eth0.
#[track_caller]
fn arrivals(sender: &Netns, mac: &str, packet: &Forged, receiver: &Netns) -> u64 {
    sender.forge_and_count("eth0", mac, packet, receiver, "eth0", None)
}

/// Whether a copy of `packet`, forged as for [`arrivals`], arrived.
#[track_caller]
fn arrives(sender: &Netns, mac: &str, packet: &Forged, receiver: &Netns) -> bool {
    sender.forge_and_count("eth0", mac, packet, receiver, "eth0", Some(1)) > 0
}

/// [`arrivals`], if any copy arrived.
#[track_caller]
fn leaked(sender: &Netns, mac: &str, packet: &Forged, receiver: &Netns) -> Option<u64> {
    let arrived = arrivals(sender, mac, packet, receiver);
    (arrived > 0).then_some(arrived)
}

/// A TCP connection `client -> server` that `who` opens from `ns`, once its
/// first line (`tag`) was echoed.
#[track_caller]
fn connected(
    ns: &Netns,
    who: &str,
    client: SocketAddr,
    server: SocketAddr,
    tag: &str,
) -> TcpStream {
    let conn = tcp_from(ns, client, server, WAIT)
        .unwrap_or_else(|e| panic!("{who} may connect {client} -> {server}: {e}"));
    echo(&conn, tag, WAIT)
        .unwrap_or_else(|e| panic!("{who}'s connection {client} -> {server} echoes: {e}"));
    conn
}

/// The reverse of `packet`'s filter: the answer `packet` provokes.
fn answer_to(packet: &Forged, icmp_type: u8) -> SniffFilter {
    SniffFilter {
        src: Some(packet.dst),
        dst: Some(packet.src),
        icmp_type: Some(icmp_type),
        ..packet.filter()
    }
}

/// The harness's own check, no agent involved: a forged frame arrives, is
/// counted once per copy, and only by its own marker; a tagged frame and
/// an ICMP error are read too.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn forge_and_sniff_round_trip() {
    require_root();
    let a = Netns::new("forge-a");
    let b = Netns::new("forge-b");
    wardline_tests::veth(&a, "eth0", &b, "eth0");
    addr(&a, "eth0", "198.18.0.1/24");
    addr(&b, "eth0", "198.18.0.2/24");
    let b_mac = mac_of(&b, "eth0");
    let (src, dst): (IpAddr, IpAddr) =
        ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
    let udp = Forged::udp(at(src, 40000), at(dst, 53));
    let other = Forged::udp(at(src, 40000), at(dst, 53));
    let sniff_other = b.sniff("eth0", &other.filter(), SNIFF_WINDOW);
    assert_eq!(arrivals(&a, &b_mac, &udp, &b), 3);
    assert!(arrives(&a, &b_mac, &udp, &b));
    assert_eq!(sniff_other.matched(), 0, "another marker is not counted");
    let tagged = Forged::tcp(at(src, 1), at(dst, 2)).flags("syn").vlan(40);
    assert_eq!(arrivals(&a, &b_mac, &tagged, &b), 3);
    let error = Forged::unreachable(
        src,
        dst,
        QuotedTuple::tcp(at(dst, 40443), at("198.18.1.1".parse().unwrap(), 443)),
    );
    assert_eq!(arrivals(&a, &b_mac, &error, &b), 3);
    let echo6 = Forged::echo_request(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        7,
    );
    assert_eq!(arrivals(&a, &b_mac, &echo6, &b), 3);
}

/// Attack: the gateway's failsafe lets the outside subnet reach its own SSH
/// (`ingress tcp/22` from the outside subnet). A pump, which no policy lets
/// reach the outside, connects FROM source port 22 to ext:443, to be taken
/// for the gateway's SSH answering.
///
/// Expected: the connection fails (a packet's source port never makes a
/// failsafe match, and the flow is forwarded, not the gateway's own: default
/// deny), as it does from any other port. The failsafe itself works: ext
/// reaches the gateway's port 22. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_failsafe_by_source_port() {
    require_root();
    let mut topo = topology::routed_gateway();
    // The pump's echo server holds port 22: the attacker's client needs it.
    if let Some(pump) = topo.hosts.iter_mut().find(|h| h.label == "pump") {
        drop(pump.server.take());
    }
    let _ssh = topo.agent_ns().serve(&[22], &[]);
    let agent = routed_agent(
        &topo,
        &[],
        &failsafe("ingress", 22, &["198.51.100.0/24", "2001:db8:99::/64"]),
    );
    let (pump, ext) = (topo.host("pump"), topo.host("ext"));
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        assert_reaches_own_ssh(&topo, &agent, "ext", v4);
        let to = at(ip(ext, v4), 443);
        let control = at(ip(pump, v4), 40022);
        assert!(
            tcp_from(&pump.ns, control, to, WAIT).is_err(),
            "default deny: {control} -> {to} fails"
        );
        let from = at(ip(pump, v4), 22);
        holes.watch(|| {
            let got =
                tcp_from(&pump.ns, from, to, WAIT).and_then(|s| echo(&s, "from port 22", WAIT));
            got.is_ok().then(|| {
                format!(
                    "{from} -> {to} was echoed: its source port 22 matched the failsafe \
                     `ingress tcp/22` entry (from port 40022 it is dropped)"
                )
            })
        });
    }
    holes.none();
}

/// Attack: the gateway's failsafe lets it reach its control plane
/// (`egress tcp/7443` to 198.51.100.7/32). From the outside subnet, packets
/// are forged with the control plane's address and port as their SOURCE
/// (198.51.100.7:7443) towards a pump's port 443, as if the control plane
/// were answering.
///
/// Expected: the pump receives none of them (not a connection of the
/// gateway's own; default deny). The failsafe itself works: the gateway
/// reaches 198.51.100.7:7443. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_forged_control_plane_address() {
    require_root();
    let topo = topology::routed_gateway();
    let (pump, ext) = (topo.host("pump"), topo.host("ext"));
    let cp_v4: IpAddr = "198.51.100.7".parse().unwrap();
    let cp_v6: IpAddr = "2001:db8:99::7".parse().unwrap();
    // The control plane lives on the outside subnet.
    addr(&ext.ns, "eth0", "198.51.100.7/24");
    addr(&ext.ns, "eth0", "2001:db8:99::7/64");
    let _cp = ext.ns.serve_on(&[cp_v4, cp_v6], &[7443], &[]);
    let agent = routed_agent(
        &topo,
        &[],
        &failsafe("egress", 7443, &["198.51.100.7/32", "2001:db8:99::7/128"]),
    );
    no_reverse_path_filter(topo.agent_ns());
    let gw_mac = gateway_mac(&topo, "ext");
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for (cp, v4) in [(cp_v4, true), (cp_v6, false)] {
        assert!(
            topo.agent_ns().tcp_ok(cp, 7443),
            "the failsafe lets the gateway reach its control plane at {cp}; log:\n{}",
            agent.log()
        );
        let to = at(ip(pump, v4), 443);
        let control = Forged::tcp(at(cp, 40443), to).flags("syn");
        assert_eq!(
            arrivals(&ext.ns, &gw_mac, &control, &pump.ns),
            0,
            "default deny: {} -> {to} is dropped",
            control.src
        );
        let from = at(cp, 7443);
        let forged = Forged::tcp(from, to).flags("syn");
        holes.watch(|| {
            leaked(&ext.ns, &gw_mac, &forged, &pump.ns).map(|arrived| {
                format!(
                    "{arrived} SYNs forged from the control plane's {from} to {to} reached the \
                     pump: the source port 7443 matched the failsafe `egress tcp/7443` entry"
                )
            })
        });
    }
    holes.none();
}

/// Attack: the gateway's failsafe lets the workstations reach its own SSH
/// (`ingress tcp/22` from the workstation subnet). A workstation uses it to
/// reach the EHR's SSH through the gateway.
///
/// Expected: ws -> ehr:22 fails (traffic the gateway forwards never matches
/// a failsafe entry, and no policy allows it), while ws -> the gateway's own
/// address on port 22 succeeds. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_forwarded_traffic_matching_a_failsafe() {
    require_root();
    let topo = topology::routed_gateway();
    let _ssh = topo.agent_ns().serve(&[22], &[]);
    let agent = routed_agent(
        &topo,
        &[],
        &failsafe("ingress", 22, &["198.18.20.0/24", "2001:db8:20::/64"]),
    );
    let (ws, ehr) = (topo.host("ws"), topo.host("ehr"));
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        assert_reaches_own_ssh(&topo, &agent, "ws", v4);
        let target = ip(ehr, v4);
        assert!(
            !ws.ns.tcp_ok(target, 8080),
            "default deny: ws may not reach {target}:8080"
        );
        holes.watch(|| {
            ws.ns.tcp_ok(target, 22).then(|| {
                format!(
                    "ws reached the EHR's SSH at {target}: the gateway's failsafe \
                     `ingress tcp/22` entry matched traffic it forwards"
                )
            })
        });
    }
    holes.none();
}

/// Attack: ws may ping the EHR (policy ws -> ehr icmp). ws pings it with
/// identifier 0x5a01; the EHR then sends ws an echo REQUEST with that same
/// identifier, to have it taken for the reply of ws's ping. The outside
/// host sends ws an unsolicited echo REPLY.
///
/// Expected: neither reaches ws (an echo request is never a reply; an
/// unsolicited reply is a new connection: default deny), while ws's own ping
/// is answered. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_echo_request_taken_as_a_reply() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = routed_agent(
        &topo,
        &[policy(
            "ws-ping-ehr",
            "allow",
            "ws",
            "ehr",
            "[{protocol: icmp}, {protocol: icmpv6}]",
        )],
        "",
    );
    let (ws, ehr, ext) = (topo.host("ws"), topo.host("ehr"), topo.host("ext"));
    let (ws_gw, ehr_gw, ext_gw) = (
        gateway_mac(&topo, "ws"),
        gateway_mac(&topo, "ehr"),
        gateway_mac(&topo, "ext"),
    );
    let id = 0x5a01;
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (ws_ip, ehr_ip) = (ip(ws, v4), ip(ehr, v4));
        let ping = Forged::echo_request(ws_ip, ehr_ip, id);
        let reply_type = if v4 { 0 } else { 129 };
        let replies =
            ws.ns
                .sniff_until("eth0", &answer_to(&ping, reply_type), SNIFF_WINDOW, Some(1));
        ws.ns.forge("eth0", &ws_gw, &ping);
        assert!(
            replies.matched() > 0,
            "the EHR's reply to ws's allowed ping (identifier {id:#x}, {ws_ip} -> {ehr_ip}) \
             came back"
        );

        let request = Forged::echo_request(ehr_ip, ws_ip, id);
        holes.watch(|| {
            leaked(&ehr.ns, &ehr_gw, &request, &ws.ns).map(|arrived| {
                format!(
                    "{arrived} echo REQUESTS {ehr_ip} -> {ws_ip} with the identifier of ws's \
                     ping ({id:#x}) reached ws: taken for replies of that ping"
                )
            })
        });

        let unsolicited = Forged::echo_reply(ip(ext, v4), ws_ip, id + 1);
        holes.watch(|| {
            leaked(&ext.ns, &ext_gw, &unsolicited, &ws.ns).map(|arrived| {
                format!(
                    "{arrived} unsolicited echo replies {} -> {ws_ip} reached ws",
                    unsolicited.src
                )
            })
        });
    }
    holes.none();
}

/// Attack: ws has an allowed TCP connection to ehr:443. The outside host
/// forges ICMP destination-unreachable errors quoting that connection's
/// packet (ws -> ehr:443) but sends them to the EHR (the responder, not the
/// quoted packet's source), and to a pump (a third host).
///
/// Expected: neither the EHR nor the pump receives them (an error passes as
/// related only towards the quoted packet's source; otherwise it is a new
/// ICMP connection: default deny). An error towards ws quoting ws's packet,
/// sent from the EHR's side, passes as related. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_icmp_errors_sent_elsewhere() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = ws_ehr_web_agent(&topo);
    let (ws, ehr, pump, ext) = (
        topo.host("ws"),
        topo.host("ehr"),
        topo.host("pump"),
        topo.host("ext"),
    );
    let (ext_gw, ehr_gw) = (gateway_mac(&topo, "ext"), gateway_mac(&topo, "ehr"));
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (client, server) = (at(ip(ws, v4), 40443), at(ip(ehr, v4), 443));
        let _conn = connected(&ws.ns, "ws", client, server, "tracked");
        let quoted = QuotedTuple::tcp(client, server);

        let legitimate = Forged::unreachable(server.ip(), client.ip(), quoted);
        assert!(
            arrives(&ehr.ns, &ehr_gw, &legitimate, &ws.ns),
            "an error towards {} quoting its own packet {client} -> {server} passes as related",
            client.ip()
        );

        let to_responder = Forged::unreachable(ip(ext, v4), server.ip(), quoted);
        holes.watch(|| {
            leaked(&ext.ns, &ext_gw, &to_responder, &ehr.ns).map(|arrived| {
                format!(
                    "{arrived} errors quoting {client} -> {server} but sent to the responder {} \
                     reached it",
                    server.ip()
                )
            })
        });

        let to_third = Forged::unreachable(ip(ext, v4), ip(pump, v4), quoted);
        holes.watch(|| {
            leaked(&ext.ns, &ext_gw, &to_third, &pump.ns).map(|arrived| {
                format!(
                    "{arrived} errors quoting {client} -> {server} reached a third host, the \
                     pump {}",
                    to_third.dst
                )
            })
        });

        // Last: today a dropped error is remembered as a denied connection
        // of its own, which would drop the errors above too.
        let untracked = QuotedTuple {
            src: at(client.ip(), 40999),
            ..quoted
        };
        let control = Forged::unreachable(ip(ext, v4), server.ip(), untracked);
        assert_eq!(
            arrivals(&ext.ns, &ext_gw, &control, &ehr.ns),
            0,
            "default deny: an error about an untracked connection is dropped"
        );
    }
    holes.none();
}

/// Attack: ws has an allowed TCP connection to ehr:443. From the EHR's
/// side, an ICMP error is sent to ws about a connection that does not
/// exist: it is dropped, and (the attacker hopes) remembered as a denied
/// connection of its own, so that the legitimate errors about ws's real
/// connection that follow on the same path are dropped with it.
///
/// Expected: the forged error is dropped, and the legitimate error that
/// follows passes as related (errors never create tracking entries, allowed
/// or denied). IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_forged_error_silences_related_errors() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = ws_ehr_web_agent(&topo);
    let (ws, ehr) = (topo.host("ws"), topo.host("ehr"));
    let ehr_gw = gateway_mac(&topo, "ehr");
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (client, server) = (at(ip(ws, v4), 40447), at(ip(ehr, v4), 443));
        let _conn = connected(&ws.ns, "ws", client, server, "tracked");
        let quoted = QuotedTuple::tcp(client, server);
        let bogus = Forged::unreachable(
            server.ip(),
            client.ip(),
            QuotedTuple {
                src: at(client.ip(), 40999),
                ..quoted
            },
        );
        assert_eq!(
            arrivals(&ehr.ns, &ehr_gw, &bogus, &ws.ns),
            0,
            "default deny: an error about an untracked connection is dropped"
        );
        let legitimate = Forged::unreachable(server.ip(), client.ip(), quoted);
        holes.watch(|| {
            (!arrives(&ehr.ns, &ehr_gw, &legitimate, &ws.ns)).then(|| {
                format!(
                    "the error towards {} quoting its own {client} -> {server} was dropped \
                     after a forged error on the same path: the forged one was remembered as \
                     a denied connection",
                    client.ip()
                )
            })
        });
    }
    holes.none();
}

/// Attack: ws has an allowed, established TCP connection to ehr:443 (from
/// port 40444). From the outside host, behind another interface of the
/// gateway, TCP segments are forged as the EHR's replies:
/// ehr:443 -> ws:40444.
///
/// Expected: ws receives none (a reply is one only where the responder
/// lives: the interface the connection's packets left through), and the
/// genuine connection keeps working. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_forged_reply_from_another_interface() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = ws_ehr_web_agent(&topo);
    no_reverse_path_filter(topo.agent_ns());
    let (ws, ehr, ext) = (topo.host("ws"), topo.host("ehr"), topo.host("ext"));
    let (ext_gw, ehr_gw) = (gateway_mac(&topo, "ext"), gateway_mac(&topo, "ehr"));
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (client, server) = (at(ip(ws, v4), 40444), at(ip(ehr, v4), 443));
        let conn = connected(&ws.ns, "ws", client, server, "before");
        let from_responder = Forged::tcp(server, client);
        assert!(
            arrives(&ehr.ns, &ehr_gw, &from_responder, &ws.ns),
            "the same segments sent where the responder lives pass as replies"
        );
        let forged = Forged::tcp(server, client);
        holes.watch(|| {
            leaked(&ext.ns, &ext_gw, &forged, &ws.ns).map(|arrived| {
                format!(
                    "{arrived} replies {server} -> {client} forged behind the outside \
                     interface reached ws"
                )
            })
        });
        holes.still_echoes(&conn, "after", &format!("the genuine {client} -> {server}"));
    }
    holes.none();
}

/// Attack: ws may query the EHR's DNS (policy ws -> ehr udp/53). A datagram
/// ehr:53 -> ws:40000 is forged from the EHR's side: a new connection from
/// the EHR, dropped and remembered as denied. Then ws really queries
/// ehr:53 from port 40000.
///
/// Expected: ws's query and its answer pass (a denied connection is looked
/// up only in its own orientation and never blocks the reverse one). IPv4
/// and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_denied_reverse_orientation() {
    require_root();
    let topo = topology::routed_gateway();
    let (ws, ehr) = (topo.host("ws"), topo.host("ehr"));
    let _dns = ehr.ns.serve(&[], &[53]);
    let agent = routed_agent(
        &topo,
        &[policy(
            "ws-ehr-dns",
            "allow",
            "ws",
            "ehr",
            "[{protocol: udp, port: 53}]",
        )],
        "",
    );
    let ehr_gw = gateway_mac(&topo, "ehr");
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (client, server) = (at(ip(ws, v4), 40000), at(ip(ehr, v4), 53));
        let other = udp_from(&ws.ns, at(client.ip(), 40001)).expect("ws binds port 40001");
        udp_echo(&other, server, UDP_WAIT).expect("ws may query the EHR's DNS");
        let forged = Forged::udp(server, client);
        assert_eq!(
            arrivals(&ehr.ns, &ehr_gw, &forged, &ws.ns),
            0,
            "the EHR may not open {server} -> {client}"
        );
        let socket = udp_from(&ws.ns, client).expect("ws binds port 40000");
        holes.watch(|| {
            udp_echo(&socket, server, UDP_WAIT).err().map(|e| {
                format!(
                    "ws's allowed query {client} -> {server} got no answer ({e}): the denial of \
                     the forged {server} -> {client} blocked the reverse orientation"
                )
            })
        });
    }
    holes.none();
}

/// The segments of the two-VLAN bridge: VLAN 30's, and VLAN 40's own.
fn two_vlan_segments() -> String {
    format!(
        "{VLAN_SEGMENTS}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: vlan40}}\n\
         spec: {{cidrs: [\"198.18.40.0/24\", \"2001:db8:40::/64\"], vlans: [40]}}\n"
    )
}

/// Attack: on the bridge before the pump VLAN, `vlan-only` is a pump by its
/// VLAN (30) with an address in no segment. It has live connections both
/// ways: to the pump server's 443 (pumps -> pump-server) and from the pump
/// server to its 8080 (pump-server -> world). A host on another access
/// VLAN (40) sends packets with vlan-only's address and those connections'
/// tuples: in the initiator's orientation (vlan-only -> pump-server:443)
/// and as vlan-only's replies (vlan-only:8080 -> pump-server).
///
/// Expected: the pump server receives none of them (a connection is bound
/// to the interface and VLAN it lives on: these are new connections from
/// the VLAN-40 segment, dropped by default deny), and both genuine
/// connections keep working. IPv4 and IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_vlan_hopping_with_a_live_tuple() {
    require_root();
    let topo = topology::vlan_bridge_with_second_vlan();
    let agent = Agent::start(
        topo.agent_ns(),
        &topo.interfaces(),
        &with(
            &two_vlan_segments(),
            &[
                policy(
                    "pumps-to-server",
                    "allow",
                    "pumps",
                    "pump-server",
                    "[{protocol: tcp, port: 443}]",
                ),
                policy(
                    "server-to-world",
                    "allow",
                    "pump-server",
                    "world",
                    "[{protocol: tcp, port: 8080}]",
                ),
            ],
        ),
    );
    let (device, server, attacker) = (
        topo.host("vlan-only"),
        topo.host("pump-server"),
        topo.host("vlan40"),
    );
    let server_mac = mac_of(&server.ns, "eth0");
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (dev_ip, srv_ip) = (ip(device, v4), ip(server, v4));
        let (up_client, up_server) = (at(dev_ip, 40445), at(srv_ip, 443));
        let up = connected(&device.ns, "the pump", up_client, up_server, "pump");
        let (down_client, down_server) = (at(srv_ip, 40446), at(dev_ip, 8080));
        let down = connected(
            &server.ns,
            "the pump server",
            down_client,
            down_server,
            "server",
        );

        let as_initiator = Forged::tcp(up_client, up_server);
        holes.watch(|| {
            leaked(&attacker.ns, &server_mac, &as_initiator, &server.ns).map(|arrived| {
                format!(
                    "{arrived} packets {up_client} -> {up_server} sent from VLAN 40 reached the \
                     pump server as part of the VLAN-30 pump's connection"
                )
            })
        });
        let as_reply = Forged::tcp(down_server, down_client);
        holes.watch(|| {
            leaked(&attacker.ns, &server_mac, &as_reply, &server.ns).map(|arrived| {
                format!(
                    "{arrived} replies {down_server} -> {down_client} forged from VLAN 40 \
                     reached the pump server"
                )
            })
        });
        holes.still_echoes(
            &up,
            "pump again",
            &format!("the pump's {up_client} -> {up_server}"),
        );
        holes.still_echoes(
            &down,
            "server again",
            &format!("the server's {down_client} -> {down_server}"),
        );
    }
    holes.none();
}

/// Attack (the other way round): a frame the bridge itself sends towards
/// the pump VLAN, tagged 30 as a VLAN-aware bridge tags frames on a trunk,
/// from the pump server's address (allowed: pump-server -> pumps udp/5000).
/// The tag says where the frame goes, not where it came from.
///
/// Expected: it leaves the trunk port and reaches the pump (VLAN identity
/// is judged at ingress only), while the same tagged frame sent by the
/// pump server into the bridge is dropped as a spoofed source. IPv4 and
/// IPv6.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_tagged_egress_frame_is_not_a_spoofed_source() {
    require_root();
    let topo = topology::vlan_bridge();
    let (pump, server) = (topo.host("pump"), topo.host("pump-server"));
    let pump_mac = mac_of(&pump.ns, "eth0");
    // Whether a frame the bridge writes to its trunk port t0 reaches the pump.
    let from_trunk = |packet: &Forged| {
        topo.agent_ns()
            .forge_and_count("t0", &pump_mac, packet, &pump.ns, "eth0", Some(1))
            > 0
    };
    // The path itself, before any agent: a frame tagged 30 written to t0
    // reaches the pump untagged.
    let path = Forged::udp(at(server.v4, 40001), at(pump.v4, 5000)).vlan(30);
    assert!(
        from_trunk(&path),
        "without an agent, a frame tagged 30 written to t0 reaches the pump"
    );
    let agent = Agent::start(
        topo.agent_ns(),
        &topo.interfaces(),
        &with(
            VLAN_SEGMENTS,
            &[policy(
                "server-to-pumps",
                "allow",
                "pump-server",
                "pumps",
                "[{protocol: udp, port: 5000}]",
            )],
        ),
    );
    let mut holes = Holes::new(&agent, topo.agent_ns());
    for v4 in families() {
        let (from, to) = (at(ip(server, v4), 40001), at(ip(pump, v4), 5000));
        // Into the bridge from the pump server's port: judged at ingress.
        let inbound = Forged::udp(from, to).vlan(30);
        assert_eq!(
            arrivals(&server.ns, &pump_mac, &inbound, &pump.ns),
            0,
            "frames tagged 30 from the pump server's address, arriving at the bridge, are a \
             spoofed source"
        );
        // Out of the bridge's trunk port towards the pump VLAN (t0).
        let outbound = Forged::udp(from, to).vlan(30);
        if !from_trunk(&outbound) {
            holes.push(format!(
                "the frames tagged 30 leaving the trunk t0 towards the pump ({from} -> {to}, \
                 allowed) were dropped at egress, as if the tag named their source; the agent \
                 reported {:?}",
                reported(&agent, from.ip(), to.port())
            ));
        }
    }
    holes.none();
}
