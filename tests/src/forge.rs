//! Attacks from inside namespaces: `wardline-forge` writes forged frames
//! and counts the ones that arrive ([`Netns::forge`], [`Netns::sniff`]);
//! real sockets bound to chosen ports play the genuine connections being
//! attacked ([`tcp_from`], [`udp_from`]).
//!
//! Every forged packet carries a marker of its own in its payload, and the
//! filter of [`Forged::filter`] counts only frames with that marker, so the
//! genuine connection a forgery imitates is never counted with it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
use nix::sys::time::TimeVal;

use crate::command::describe;
use crate::netns::Netns;
use crate::probe::probe_bin;

/// The forge binary's name.
pub const FORGE_BIN_NAME: &str = "wardline-forge";

/// The SYN flooder's name.
pub const FLOOD_BIN_NAME: &str = "wardline-flood";

/// How long a sniffer listens: the forged frames are all sent within its
/// first tenth.
pub const SNIFF_WINDOW: Duration = Duration::from_millis(1000);

/// How long [`Netns::sniff`] waits for the sniffer to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

static MARKERS: AtomicU32 = AtomicU32::new(0);

/// The attack tool `name`, next to the probe. Panics, saying how to build
/// it, if it is not there.
#[track_caller]
fn tool_bin(name: &str) -> PathBuf {
    let bin = probe_bin().with_file_name(name);
    assert!(
        bin.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// `wardline-forge`, next to the probe (see [`tool_bin`]).
#[track_caller]
pub fn forge_bin() -> PathBuf {
    tool_bin(FORGE_BIN_NAME)
}

/// `wardline-flood`, next to the probe (see [`tool_bin`]).
#[track_caller]
pub fn flood_bin() -> PathBuf {
    tool_bin(FLOOD_BIN_NAME)
}

/// What a forged packet carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp {
        sport: u16,
        dport: u16,
        /// As `wardline-forge send tcp --flags` takes them: `syn`, `psh,ack`.
        flags: &'static str,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Destination unreachable (ICMP type 3, ICMPv6 type 1) about `quoted`.
    Unreachable {
        code: u8,
        quoted: QuotedTuple,
    },
}

/// The packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedTuple {
    /// `tcp`, `udp` or `icmp` (an echo request; `sport` is its identifier).
    pub proto: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl QuotedTuple {
    /// A TCP segment `src -> dst`.
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> QuotedTuple {
        QuotedTuple {
            proto: "tcp",
            src,
            dst,
        }
    }
}

/// A forged packet: addresses, what it carries, how many copies, and the
/// marker in its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forged {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: Kind,
    /// An 802.1Q tag written in the frame.
    pub vlan: Option<u16>,
    pub count: u32,
    pub marker: String,
}

/// A marker no other forged packet of this process carries.
fn marker() -> String {
    format!(
        "wardline-forge-{}-{}",
        std::process::id(),
        MARKERS.fetch_add(1, Ordering::Relaxed)
    )
}

impl Forged {
    /// A packet of `kind` from `src` to `dst`, sent three times.
    pub fn new(src: IpAddr, dst: IpAddr, kind: Kind) -> Forged {
        Forged {
            src,
            dst,
            kind,
            vlan: None,
            count: 3,
            marker: marker(),
        }
    }

    /// A TCP segment (PSH+ACK unless [`Forged::flags`] says otherwise).
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Forged {
        Forged::new(
            src.ip(),
            dst.ip(),
            Kind::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags: "psh,ack",
                seq: 0x5741_5244,
                ack: 0x4c49_4e45,
            },
        )
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Forged {
        Forged::new(
            src.ip(),
            dst.ip(),
            Kind::Udp {
                sport: src.port(),
                dport: dst.port(),
            },
        )
    }

    pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16) -> Forged {
        Forged::new(src, dst, Kind::EchoRequest { id })
    }

    pub fn echo_reply(src: IpAddr, dst: IpAddr, id: u16) -> Forged {
        Forged::new(src, dst, Kind::EchoReply { id })
    }

    /// A destination unreachable (code 1: host unreachable) about `quoted`.
    pub fn unreachable(src: IpAddr, dst: IpAddr, quoted: QuotedTuple) -> Forged {
        Forged::new(src, dst, Kind::Unreachable { code: 1, quoted })
    }

    /// Other TCP flags.
    pub fn flags(mut self, new: &'static str) -> Forged {
        if let Kind::Tcp { flags, .. } = &mut self.kind {
            *flags = new;
        }
        self
    }

    /// Tagged with 802.1Q VLAN `vid`.
    pub fn vlan(mut self, vid: u16) -> Forged {
        self.vlan = Some(vid);
        self
    }

    /// `wardline-forge send` arguments after `--interface` and `--dst-mac`.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--src".to_string(),
            self.src.to_string(),
            "--dst".to_string(),
            self.dst.to_string(),
            "--count".to_string(),
            self.count.to_string(),
            "--rate".to_string(),
            "50".to_string(),
            "--payload".to_string(),
            self.marker.clone(),
        ];
        if let Some(vid) = self.vlan {
            args.extend(["--vlan".to_string(), vid.to_string()]);
        }
        let kind: Vec<String> = match &self.kind {
            Kind::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => vec![
                "tcp".into(),
                "--sport".into(),
                sport.to_string(),
                "--dport".into(),
                dport.to_string(),
                "--flags".into(),
                (*flags).into(),
                "--seq".into(),
                seq.to_string(),
                "--ack".into(),
                ack.to_string(),
            ],
            Kind::Udp { sport, dport } => vec![
                "udp".into(),
                "--sport".into(),
                sport.to_string(),
                "--dport".into(),
                dport.to_string(),
            ],
            Kind::EchoRequest { id } => vec!["echo-request".into(), "--id".into(), id.to_string()],
            Kind::EchoReply { id } => vec!["echo-reply".into(), "--id".into(), id.to_string()],
            Kind::Unreachable { code, quoted } => vec![
                "unreachable".into(),
                "--code".into(),
                code.to_string(),
                "--inner-proto".into(),
                quoted.proto.into(),
                "--inner-src".into(),
                quoted.src.ip().to_string(),
                "--inner-sport".into(),
                quoted.src.port().to_string(),
                "--inner-dst".into(),
                quoted.dst.ip().to_string(),
                "--inner-dport".into(),
                quoted.dst.port().to_string(),
            ],
        };
        args.extend(kind);
        args
    }

    /// A sniffer filter that counts this packet's copies and nothing else.
    pub fn filter(&self) -> SniffFilter {
        let v4 = self.src.is_ipv4();
        let icmp = if v4 { "icmp" } else { "icmpv6" };
        let mut f = SniffFilter {
            src: Some(self.src),
            dst: Some(self.dst),
            contains: Some(self.marker.clone()),
            ..SniffFilter::default()
        };
        match &self.kind {
            Kind::Tcp { sport, dport, .. } | Kind::Udp { sport, dport } => {
                let tcp = matches!(self.kind, Kind::Tcp { .. });
                f.proto = Some(if tcp { "tcp" } else { "udp" });
                f.sport = Some(*sport);
                f.dport = Some(*dport);
            }
            Kind::EchoRequest { id } => {
                f.proto = Some(icmp);
                f.icmp_type = Some(if v4 { 8 } else { 128 });
                f.icmp_id = Some(*id);
            }
            Kind::EchoReply { id } => {
                f.proto = Some(icmp);
                f.icmp_type = Some(if v4 { 0 } else { 129 });
                f.icmp_id = Some(*id);
            }
            Kind::Unreachable { .. } => {
                f.proto = Some(icmp);
                f.icmp_type = Some(if v4 { 3 } else { 1 });
            }
        }
        f
    }
}

/// What `wardline-forge sniff` counts: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SniffFilter {
    /// `tcp`, `udp`, `icmp` or `icmpv6`.
    pub proto: Option<&'static str>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_id: Option<u16>,
    pub contains: Option<String>,
}

impl SniffFilter {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(flag.to_string());
                args.push(v);
            }
        };
        push("--proto", self.proto.map(str::to_string));
        push("--src", self.src.map(|a| a.to_string()));
        push("--dst", self.dst.map(|a| a.to_string()));
        push("--sport", self.sport.map(|p| p.to_string()));
        push("--dport", self.dport.map(|p| p.to_string()));
        push("--icmp-type", self.icmp_type.map(|t| t.to_string()));
        push("--icmp-id", self.icmp_id.map(|i| i.to_string()));
        push("--contains", self.contains.clone());
        args
    }
}

/// A `wardline-forge sniff` listening in a namespace. Dropping it without
/// [`Sniffer::matched`] leaves it to its namespace guard (it ends by itself
/// within its window anyway).
#[derive(Debug)]
pub struct Sniffer {
    child: Child,
    rest: mpsc::Receiver<String>,
    what: String,
}

impl Sniffer {
    /// Waits for the end of the window and returns how many frames matched.
    #[track_caller]
    pub fn matched(mut self) -> u64 {
        let status = self.child.wait().expect("the sniffer is waited for");
        let out = self
            .rest
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        eprintln!("[{}] {}", self.what, out.trim_end());
        assert!(status.success(), "`{}` failed ({status}): {out}", self.what);
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("matched="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{}` printed no count: {out:?}", self.what))
    }
}

impl Netns {
    /// `ip netns exec NAME wardline-forge args...`, run to completion; its
    /// output whatever its exit status.
    #[track_caller]
    pub fn run_forge<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> = vec![forge_bin().into_os_string()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let mut cmd = self.command(full);
        cmd.stdin(Stdio::null());
        let output = cmd
            .output()
            .unwrap_or_else(|err| panic!("`{}` could not be started: {err}", describe(&cmd)));
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            eprintln!("[{}] {line}", self.name());
        }
        output
    }

    /// Writes `packet`'s copies to `interface` in a frame for `dst_mac`
    /// (see [`mac_of`]). Panics if the forge fails.
    #[track_caller]
    pub fn forge(&self, interface: &str, dst_mac: &str, packet: &Forged) {
        let mut args = vec![
            "send".to_string(),
            "--interface".to_string(),
            interface.to_string(),
            "--dst-mac".to_string(),
            dst_mac.to_string(),
        ];
        args.extend(packet.args());
        let out = self.run_forge(&args);
        assert!(
            out.status.success(),
            "wardline-forge {} failed in {}: {}",
            args.join(" "),
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts counting the frames arriving on `interface` that match
    /// `filter`, for `window`; returns once the sniffer listens.
    #[track_caller]
    pub fn sniff(&self, interface: &str, filter: &SniffFilter, window: Duration) -> Sniffer {
        self.sniff_until(interface, filter, window, None)
    }

    /// [`Netns::sniff`] that ends as soon as `stop_after` frames matched.
    #[track_caller]
    pub fn sniff_until(
        &self,
        interface: &str,
        filter: &SniffFilter,
        window: Duration,
        stop_after: Option<u64>,
    ) -> Sniffer {
        let mut args: Vec<String> = vec![
            forge_bin().display().to_string(),
            "sniff".into(),
            "--interface".into(),
            interface.into(),
            "--seconds".into(),
            format!("{:.3}", window.as_secs_f64()),
        ];
        if let Some(n) = stop_after {
            args.extend(["--stop-after".into(), n.to_string()]);
        }
        args.extend(filter.args());
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let what = format!("{}: {}", self.name(), args[1..].join(" "));
        let mut child = self.spawn_command(&mut cmd);
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (rest_tx, rest_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = ready_tx.send(first);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            let _ = rest_tx.send(rest);
        });
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim_end() == "ready" => Sniffer {
                child,
                rest: rest_rx,
                what,
            },
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{what}` did not become ready: {outcome:?}")
            }
        }
    }

    /// Sniffs `receiver`'s `receiver_if` while `self` forges `packet` out of
    /// `interface` towards `dst_mac`; how many copies arrived within
    /// [`SNIFF_WINDOW`] (the sniffer stops once `stop_after` did: `Some(1)`
    /// asks whether one arrives).
    #[track_caller]
    pub fn forge_and_count(
        &self,
        interface: &str,
        dst_mac: &str,
        packet: &Forged,
        receiver: &Netns,
        receiver_if: &str,
        stop_after: Option<u64>,
    ) -> u64 {
        let sniffer = receiver.sniff_until(receiver_if, &packet.filter(), SNIFF_WINDOW, stop_after);
        self.forge(interface, dst_mac, packet);
        sniffer.matched()
    }
}

/// The MAC address of `interface` in `ns`.
#[track_caller]
pub fn mac_of(ns: &Netns, interface: &str) -> String {
    let out = ns.ip(["-j", "link", "show", "dev", interface]);
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("`ip -j link show` gives JSON");
    links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{interface} in {} has no MAC address: {links}", ns.name()))
        .to_string()
}

/// Turns the reverse-path filter off in `ns` (all, default and every
/// interface), so that a forged source is stopped by Wardline or not at
/// all, never by the routing code.
#[track_caller]
pub fn no_reverse_path_filter(ns: &Netns) {
    let out = ns.ip(["-j", "link", "show"]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut names = vec!["all".to_string(), "default".to_string()];
    if let Some(links) = links.as_array() {
        names.extend(
            links
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string)),
        );
    }
    for name in names {
        ns.sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "0");
    }
}

/// A TCP connection from `local` (address and port chosen) to `remote`,
/// opened in `ns`; `timeout` bounds the connect.
pub fn tcp_from(
    ns: &Netns,
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    ns.run_in(move || {
        let family = if local.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
        // Linux bounds a blocking connect by the send timeout.
        socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout))?;
        socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)).map_err(|err| {
            if err == nix::Error::EINPROGRESS {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {remote} timed out"),
                )
            } else {
                io::Error::from(err)
            }
        })?;
        let stream = TcpStream::from(fd);
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::new(
        d.as_secs().try_into().unwrap_or(i64::MAX),
        d.subsec_micros().into(),
    )
}

/// Sends `line` (a newline is added) over `stream` and waits up to
/// `timeout` for the echo server to send it back.
pub fn echo(stream: &TcpStream, line: &str, timeout: Duration) -> io::Result<()> {
    let line = format!("{line}\n");
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    (&*stream).write_all(line.as_bytes())?;
    let mut echoed = String::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_line(&mut echoed)?;
    if echoed == line {
        Ok(())
    } else {
        Err(io::Error::other(format!("echoed {echoed:?} for {line:?}")))
    }
}

/// A UDP socket bound to `local` in `ns`.
pub fn udp_from(ns: &Netns, local: SocketAddr) -> io::Result<UdpSocket> {
    ns.run_in(move || UdpSocket::bind(local))
}

/// Sends a datagram from `socket` to `remote` every 200 ms until its echo
/// comes back or `timeout` passes.
pub fn udp_echo(socket: &UdpSocket, remote: SocketAddr, timeout: Duration) -> io::Result<()> {
    let tag = marker();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        socket.send_to(tag.as_bytes(), remote)?;
        let resend = (Instant::now() + Duration::from_millis(200)).min(deadline);
        while let Some(wait) = resend
            .checked_duration_since(Instant::now())
            .filter(|w| !w.is_zero())
        {
            socket.set_read_timeout(Some(wait))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == remote && buf[..n] == *tag.as_bytes() => return Ok(()),
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                // An ICMP error seen on the socket: keep trying until the deadline.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(err) => return Err(err),
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no echo from {remote} within {timeout:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_packet_filters_on_its_own_marker() {
        let a: SocketAddr = "198.18.41.10:443".parse().unwrap();
        let b: SocketAddr = "198.18.20.10:40444".parse().unwrap();
        let one = Forged::tcp(a, b);
        let two = Forged::tcp(a, b);
        assert_ne!(one.marker, two.marker);
        let f = one.filter();
        assert_eq!(f.proto, Some("tcp"));
        assert_eq!((f.sport, f.dport), (Some(443), Some(40444)));
        assert_eq!(f.contains.as_deref(), Some(one.marker.as_str()));
        let args = one.clone().flags("syn").vlan(40).args();
        let joined = args.join(" ");
        assert!(joined.contains("--vlan 40"), "{joined}");
        assert!(
            joined.contains("tcp --sport 443 --dport 40444 --flags syn"),
            "{joined}"
        );

        let echo = Forged::echo_request(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            7,
        );
        let f = echo.filter();
        assert_eq!(
            (f.proto, f.icmp_type, f.icmp_id),
            (Some("icmpv6"), Some(128), Some(7))
        );
        let err = Forged::unreachable(
            "198.51.100.10".parse().unwrap(),
            "198.18.41.10".parse().unwrap(),
            QuotedTuple::tcp(b, a),
        );
        assert_eq!(err.filter().icmp_type, Some(3));
        let joined = err.args().join(" ");
        assert!(
            joined.contains("--inner-src 198.18.20.10 --inner-sport 40444 --inner-dst 198.18.41.10 --inner-dport 443"),
            "{joined}"
        );
    }

    #[test]
    fn sniff_filter_arguments() {
        let f = SniffFilter {
            proto: Some("udp"),
            dport: Some(53),
            ..SniffFilter::default()
        };
        assert_eq!(f.args(), ["--proto", "udp", "--dport", "53"]);
    }
}
