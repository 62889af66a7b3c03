//! `wardline-probe`: the traffic probe that tests run inside network
//! namespaces (`ip netns exec NAME wardline-probe ...`).
//!
//! `serve` echoes TCP lines and UDP datagrams until it is killed. The client
//! commands print one result line and exit 0 on success, 1 on failure (2 is
//! left to argument errors). Every client loop is bounded in time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6,
    sockopt,
};
use nix::sys::time::TimeVal;
use wardline_tests::frame::{
    ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
    ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_TIME_EXCEEDED, PROTO_ICMP, PROTO_ICMPV6,
    echo_message, internet_checksum,
};

/// How long `serve` keeps an idle TCP connection open.
const IDLE_CONNECTION: Duration = Duration::from_secs(120);
/// The longest line `serve` echoes; longer lines are cut.
const MAX_LINE: u64 = 64 * 1024;
/// How often `udp` and `ping` send again while they wait for an answer.
const RESEND_EVERY: Duration = Duration::from_millis(200);
/// How often `stream` sends a line.
const STREAM_EVERY: Duration = Duration::from_millis(50);
/// How long `stream` waits for an echo (or to connect) before it calls the
/// connection stalled.
const STREAM_STALL: Duration = Duration::from_secs(1);
/// How often `retry-tcp` starts a connection.
const RETRY_EVERY: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    name = "wardline-probe",
    about = "Traffic probe for Wardline's namespace tests: echo server and reachability checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo TCP lines and UDP datagrams on the given ports (IPv4 and IPv6)
    /// until killed; prints "ready" once every socket listens.
    Serve {
        /// TCP ports to echo lines on.
        #[arg(long = "tcp", value_name = "PORT", num_args = 1..)]
        tcp: Vec<u16>,
        /// UDP ports to echo datagrams on.
        #[arg(long = "udp", value_name = "PORT", num_args = 1..)]
        udp: Vec<u16>,
        /// Addresses to listen on (repeatable); default `::`, which takes
        /// IPv4 too, or `0.0.0.0` where IPv6 is disabled.
        #[arg(long = "bind", value_name = "ADDR")]
        bind: Vec<IpAddr>,
        /// Exit when standard input reaches end of file, so that a server
        /// never outlives the process that started it.
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// Connect over TCP and have one line echoed; exit 0 iff it comes back.
    Tcp {
        addr: String,
        port: u16,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Send a datagram; exit 0 iff the echo comes back.
    Udp {
        addr: String,
        port: u16,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// ICMP or ICMPv6 echo; exit 0 iff a matching echo reply arrives.
    Ping {
        addr: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Keep one TCP connection busy (a line every 50 ms, each echoed) for the
    /// whole duration; exit 1 as soon as it breaks or stalls for over 1 s.
    Stream {
        addr: String,
        port: u16,
        #[arg(long)]
        seconds: u64,
        /// Print the running count this often.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        report_ms: u64,
    },
    /// Open a fresh TCP connection every 100 ms for the duration and count
    /// the ones whose echo came back; always exits 0, last line
    /// `succeeded=K attempted=M`.
    RetryTcp {
        addr: String,
        port: u16,
        #[arg(long)]
        seconds: u64,
        /// The time each attempt gets.
        #[arg(long, default_value_t = 250)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            tcp,
            udp,
            bind,
            until_stdin_closes,
        } => serve(&tcp, &udp, &bind, until_stdin_closes),
        Command::Tcp {
            addr,
            port,
            timeout_ms,
        } => with_target(&addr, port, |target| {
            let timeout = Duration::from_millis(timeout_ms);
            report("tcp", target, tcp_echo(target, timeout, &nonce()))
        }),
        Command::Udp {
            addr,
            port,
            timeout_ms,
        } => with_target(&addr, port, |target| {
            let timeout = Duration::from_millis(timeout_ms);
            report("udp", target, udp_echo(target, timeout))
        }),
        Command::Ping { addr, timeout_ms } => with_target(&addr, 0, |target| {
            let timeout = Duration::from_millis(timeout_ms);
            let started = Instant::now();
            let outcome = ping(target, timeout).map(|()| started.elapsed());
            match outcome {
                Ok(rtt) => {
                    println!("ping {} ok rtt_ms={:.3}", target.ip(), millis(rtt));
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    println!("ping {} {failure}", target.ip());
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Stream {
            addr,
            port,
            seconds,
            report_ms,
        } => with_target(&addr, port, |target| {
            stream(
                target,
                Duration::from_secs(seconds),
                Duration::from_millis(report_ms),
            )
        }),
        Command::RetryTcp {
            addr,
            port,
            seconds,
            timeout_ms,
        } => with_target(&addr, port, |target| {
            retry_tcp(
                target,
                Duration::from_secs(seconds),
                Duration::from_millis(timeout_ms),
            )
        }),
    }
}

/// Why a check failed, printed after the target on the result line.
#[derive(Debug)]
enum Failure {
    Refused,
    Timeout,
    Unreachable(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str("refused"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Unreachable(what) => write!(f, "unreachable ({what})"),
            Failure::Other(what) => write!(f, "error: {what}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Failure::Unreachable(err.to_string())
            }
            _ => Failure::Other(err.to_string()),
        }
    }
}

impl From<nix::Error> for Failure {
    fn from(err: nix::Error) -> Self {
        Failure::from(io::Error::from(err))
    }
}

fn report(what: &str, target: SocketAddr, outcome: Result<Duration, Failure>) -> ExitCode {
    match outcome {
        Ok(rtt) => {
            println!("{what} {target} ok rtt_ms={:.3}", millis(rtt));
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("{what} {target} {failure}");
            ExitCode::FAILURE
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Parses `ADDR` (IPv4, IPv6, optionally `[v6]` or `v6%ifname`) and runs
/// `f` on it; a bad address exits 2, like any argument error.
fn with_target(addr: &str, port: u16, f: impl FnOnce(SocketAddr) -> ExitCode) -> ExitCode {
    match parse_target(addr, port) {
        Ok(target) => f(target),
        Err(err) => {
            eprintln!("wardline-probe: {err}");
            ExitCode::from(2)
        }
    }
}

fn parse_target(addr: &str, port: u16) -> Result<SocketAddr, String> {
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let (ip, scope) = match addr.split_once('%') {
        Some((ip, scope)) => (ip, Some(scope)),
        None => (addr, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
    match (ip, scope) {
        (ip, None) => Ok(SocketAddr::new(ip, port)),
        (IpAddr::V6(ip), Some(scope)) => {
            let scope_id = match scope.parse::<u32>() {
                Ok(index) => index,
                Err(_) => nix::net::if_::if_nametoindex(scope)
                    .map_err(|err| format!("no interface `{scope}` for `{addr}`: {err}"))?,
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope_id)))
        }
        (IpAddr::V4(_), Some(_)) => Err(format!("`{addr}`: only IPv6 addresses take a %scope")),
    }
}

/// A token that tells this run's packets from anybody else's.
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:x}-{nanos:x}", std::process::id())
}

fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(left)
    }
}

// ---------------------------------------------------------------- serve --

fn serve(tcp: &[u16], udp: &[u16], bind: &[IpAddr], until_stdin_closes: bool) -> ExitCode {
    if tcp.is_empty() && udp.is_empty() {
        eprintln!("wardline-probe serve: give at least one --tcp or --udp port");
        return ExitCode::from(2);
    }
    let wildcard = bind.is_empty();
    let binds: Vec<IpAddr> = if wildcard {
        vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
    } else {
        bind.to_vec()
    };
    for &ip in &binds {
        for &port in tcp {
            let listener = match bind_fallback(ip, port, wildcard, TcpListener::bind) {
                Ok(listener) => listener,
                Err(err) => {
                    eprintln!("wardline-probe serve: tcp {ip} port {port}: {err}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "wardline-probe serve: tcp listening on {}",
                local(listener.local_addr())
            );
            thread::spawn(move || accept_loop(&listener));
        }
        for &port in udp {
            let socket = match bind_fallback(ip, port, wildcard, UdpSocket::bind) {
                Ok(socket) => socket,
                Err(err) => {
                    eprintln!("wardline-probe serve: udp {ip} port {port}: {err}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "wardline-probe serve: udp listening on {}",
                local(socket.local_addr())
            );
            thread::spawn(move || udp_echo_loop(&socket));
        }
    }
    println!("ready");
    if until_stdin_closes {
        // Ends when the starter closes its end of the pipe or dies.
        let mut sink = [0u8; 256];
        let mut stdin = io::stdin().lock();
        while let Ok(n) = stdin.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        ExitCode::SUCCESS
    } else {
        loop {
            thread::park();
        }
    }
}

fn local(addr: io::Result<SocketAddr>) -> String {
    addr.map_or_else(|err| err.to_string(), |a| a.to_string())
}

/// Binds `ip:port`; a wildcard `::` falls back to `0.0.0.0` when the
/// namespace has IPv6 disabled.
fn bind_fallback<T>(
    ip: IpAddr,
    port: u16,
    wildcard: bool,
    bind: impl Fn(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    match bind(SocketAddr::new(ip, port)) {
        Err(err) if wildcard && ip.is_ipv6() => {
            bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).map_err(|_| err)
        }
        other => other,
    }
}

fn accept_loop(listener: &TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                thread::spawn(move || {
                    if let Err(err) = echo_lines(conn) {
                        eprintln!("wardline-probe serve: connection: {err}");
                    }
                });
            }
            Err(err) => {
                eprintln!("wardline-probe serve: accept: {err}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn echo_lines(conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(IDLE_CONNECTION))?;
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        writer.write_all(&line)?;
    }
}

fn udp_echo_loop(socket: &UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if let Err(err) = socket.send_to(&buf[..n], peer) {
                    eprintln!("wardline-probe serve: udp reply to {peer}: {err}");
                }
            }
            Err(err) => {
                eprintln!("wardline-probe serve: udp receive: {err}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ------------------------------------------------------------------ tcp --

/// Connects, sends one line, reads it back; returns the round-trip time.
fn tcp_echo(target: SocketAddr, timeout: Duration, tag: &str) -> Result<Duration, Failure> {
    let started = Instant::now();
    let deadline = started + timeout;
    let conn = TcpStream::connect_timeout(&target, remaining(deadline)?)?;
    conn.set_nodelay(true)?;
    conn.set_write_timeout(Some(remaining(deadline)?))?;
    let line = format!("wardline-probe {tag}\n");
    (&conn).write_all(line.as_bytes())?;
    conn.set_read_timeout(Some(remaining(deadline)?))?;
    let mut echoed = String::new();
    BufReader::new(&conn)
        .take(MAX_LINE)
        .read_line(&mut echoed)?;
    if echoed == line {
        Ok(started.elapsed())
    } else if echoed.is_empty() {
        Err(Failure::Other("connection closed before the echo".into()))
    } else {
        Err(Failure::Other(format!("wrong echo {echoed:?}")))
    }
}

// ------------------------------------------------------------------ udp --

fn udp_echo(target: SocketAddr, timeout: Duration) -> Result<Duration, Failure> {
    let started = Instant::now();
    let deadline = started + timeout;
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    let tag = nonce();
    let mut buf = [0u8; 2048];
    let mut seq = 0u32;
    loop {
        let message = format!("wardline-probe {tag} {seq}");
        socket.send(message.as_bytes())?;
        seq += 1;
        let resend_at = (Instant::now() + RESEND_EVERY).min(deadline);
        loop {
            let wait = resend_at.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(wait))?;
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let got = &buf[..n];
                    let prefix = format!("wardline-probe {tag} ");
                    if got.starts_with(prefix.as_bytes()) {
                        return Ok(started.elapsed());
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => return Err(err.into()),
            }
        }
        remaining(deadline)?;
    }
}

// ----------------------------------------------------------------- ping --

/// An echo request: type, code, checksum, identifier, sequence, payload.
/// The checksum is filled in for ICMP; for ICMPv6 the kernel computes it
/// (it covers a pseudo-header the sender cannot see).
fn echo_request(kind: u8, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = echo_message(kind, ident, seq, payload);
    if kind == ICMP_ECHO_REQUEST {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// What one received ICMP message means to this probe.
#[derive(Debug, PartialEq)]
enum Heard {
    Reply,
    Error(u8, u8),
    Other,
}

/// Reads an ICMP or ICMPv6 message (without its IP header). `quoted_offset`
/// finds, inside an error's quoted packet, where the quoted ICMP header
/// starts (`None` if it cannot be ours).
fn classify(
    icmp: &[u8],
    reply: u8,
    errors: [u8; 2],
    request: u8,
    ident: u16,
    payload: &[u8],
    quoted_offset: impl Fn(&[u8]) -> Option<usize>,
) -> Heard {
    if icmp.len() < 8 {
        return Heard::Other;
    }
    let (kind, code) = (icmp[0], icmp[1]);
    if kind == reply {
        if icmp[4..6] == ident.to_be_bytes() && icmp[8..] == *payload {
            return Heard::Reply;
        }
    } else if errors.contains(&kind) {
        let quoted = &icmp[8..];
        if let Some(at) = quoted_offset(quoted) {
            let inner = &quoted[at..];
            if inner.len() >= 8 && inner[0] == request && inner[4..6] == ident.to_be_bytes() {
                return Heard::Error(kind, code);
            }
        }
    }
    Heard::Other
}

fn ping(target: SocketAddr, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let ident = (std::process::id() & 0xffff) as u16;
    let tag = nonce();
    let payload = format!("wardline-probe {tag}").into_bytes();
    let (family, protocol) = match target {
        SocketAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        SocketAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let fd = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)?;
    let mut buf = [0u8; 4096];
    let mut seq = 0u16;
    loop {
        seq = seq.wrapping_add(1);
        send_echo(&fd, target, ident, seq, &payload)?;
        let resend_at = (Instant::now() + RESEND_EVERY).min(deadline);
        loop {
            let wait = resend_at.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            let wait = TimeVal::new(
                wait.as_secs().try_into().unwrap_or(i64::MAX),
                wait.subsec_micros().max(1).into(),
            );
            socket::setsockopt(&fd, sockopt::ReceiveTimeout, &wait)?;
            let heard = match receive_icmp(&fd, target, &mut buf, ident, &payload) {
                Ok(heard) => heard,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
                Err(err) => return Err(err.into()),
            };
            match heard {
                Heard::Reply => return Ok(()),
                Heard::Error(kind, code) => {
                    return Err(Failure::Unreachable(format!(
                        "icmp type {kind} code {code}"
                    )));
                }
                Heard::Other => {}
            }
        }
        remaining(deadline)?;
    }
}

fn send_echo(
    fd: &OwnedFd,
    target: SocketAddr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    match target {
        SocketAddr::V4(v4) => {
            let packet = echo_request(ICMP_ECHO_REQUEST, ident, seq, payload);
            let to = SockaddrIn::from(v4);
            socket::sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty())?;
        }
        SocketAddr::V6(v6) => {
            let packet = echo_request(ICMPV6_ECHO_REQUEST, ident, seq, payload);
            let to = SockaddrIn6::from(v6);
            socket::sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty())?;
        }
    }
    Ok(())
}

/// Receives one message and says whether it answers us. Messages from
/// other sources, or for other probes, are [`Heard::Other`].
fn receive_icmp(
    fd: &OwnedFd,
    target: SocketAddr,
    buf: &mut [u8],
    ident: u16,
    payload: &[u8],
) -> nix::Result<Heard> {
    use std::os::fd::AsRawFd;
    match target {
        SocketAddr::V4(v4) => {
            let (n, from) = socket::recvfrom::<SockaddrIn>(fd.as_raw_fd(), buf)?;
            let packet = &buf[..n];
            // A raw IPv4 socket hands over the IP header too.
            let Some(&first) = packet.first() else {
                return Ok(Heard::Other);
            };
            let header_len = usize::from(first & 0x0f) * 4;
            let Some(icmp) = packet.get(header_len..) else {
                return Ok(Heard::Other);
            };
            let heard = classify(
                icmp,
                ICMP_ECHO_REPLY,
                [ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED],
                ICMP_ECHO_REQUEST,
                ident,
                payload,
                |quoted| {
                    let first = *quoted.first()?;
                    // The quoted packet must be ICMP to our target.
                    (quoted.len() >= 20
                        && quoted[9] == PROTO_ICMP
                        && quoted[16..20] == v4.ip().octets())
                    .then_some(usize::from(first & 0x0f) * 4)
                },
            );
            // Errors come from routers; replies only from the target.
            let from_target = from.is_some_and(|a| a.ip() == *v4.ip());
            Ok(match heard {
                Heard::Reply if !from_target => Heard::Other,
                other => other,
            })
        }
        SocketAddr::V6(v6) => {
            let (n, from) = socket::recvfrom::<SockaddrIn6>(fd.as_raw_fd(), buf)?;
            let icmp = &buf[..n];
            let heard = classify(
                icmp,
                ICMPV6_ECHO_REPLY,
                [ICMPV6_DEST_UNREACH, ICMPV6_TIME_EXCEEDED],
                ICMPV6_ECHO_REQUEST,
                ident,
                payload,
                |quoted| {
                    // Fixed header, no extension headers: that is how the
                    // probe sends.
                    (quoted.len() >= 40
                        && quoted[6] == PROTO_ICMPV6
                        && quoted[24..40] == v6.ip().octets())
                    .then_some(40)
                },
            );
            let from_target = from.is_some_and(|a| a.ip() == *v6.ip());
            Ok(match heard {
                Heard::Reply if !from_target => Heard::Other,
                other => other,
            })
        }
    }
}

// --------------------------------------------------------------- stream --

fn stream(target: SocketAddr, duration: Duration, report_every: Duration) -> ExitCode {
    let started = Instant::now();
    let mut count: u64 = 0;
    let outcome = stream_inner(target, duration, report_every, started, &mut count);
    let elapsed_ms = started.elapsed().as_millis();
    match outcome {
        Ok(()) => {
            println!("stream {target} ok count={count} elapsed_ms={elapsed_ms}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!(
                "stream {target} broken after count={count} elapsed_ms={elapsed_ms}: {failure}"
            );
            ExitCode::FAILURE
        }
    }
}

fn stream_inner(
    target: SocketAddr,
    duration: Duration,
    report_every: Duration,
    started: Instant,
    count: &mut u64,
) -> Result<(), Failure> {
    let end = started + duration;
    let conn = TcpStream::connect_timeout(&target, STREAM_STALL)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(STREAM_STALL))?;
    conn.set_write_timeout(Some(STREAM_STALL))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let tag = nonce();
    let mut next_send = Instant::now();
    let mut next_report = started + report_every;
    let mut echoed = String::new();
    while Instant::now() < end {
        let line = format!("stream {tag} {count}\n");
        let sent = Instant::now();
        (&conn).write_all(line.as_bytes())?;
        echoed.clear();
        (&mut reader).take(MAX_LINE).read_line(&mut echoed)?;
        if echoed.is_empty() {
            return Err(Failure::Other("connection closed by the server".into()));
        }
        if echoed != line {
            return Err(Failure::Other(format!("wrong echo {echoed:?}")));
        }
        if sent.elapsed() > STREAM_STALL {
            return Err(Failure::Other(format!(
                "echo took {} ms",
                sent.elapsed().as_millis()
            )));
        }
        *count += 1;
        let now = Instant::now();
        if now >= next_report {
            println!(
                "stream {target} count={count} elapsed_ms={}",
                (now - started).as_millis()
            );
            while next_report <= now {
                next_report += report_every;
            }
        }
        next_send += STREAM_EVERY;
        let now = Instant::now();
        if next_send > now {
            thread::sleep((next_send - now).min(end.saturating_duration_since(now)));
        }
    }
    Ok(())
}

// ------------------------------------------------------------ retry-tcp --

fn retry_tcp(target: SocketAddr, duration: Duration, attempt_timeout: Duration) -> ExitCode {
    let started = Instant::now();
    let end = started + duration;
    let (mut attempted, mut succeeded) = (0u64, 0u64);
    let mut last: Option<bool> = None;
    let mut next = started;
    let tag = nonce();
    while Instant::now() < end {
        let timeout = attempt_timeout.min(end.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            break;
        }
        attempted += 1;
        let outcome = tcp_echo(target, timeout, &tag);
        let ok = outcome.is_ok();
        if ok {
            succeeded += 1;
        }
        if last != Some(ok) {
            let state = match &outcome {
                Ok(_) => "ok".to_string(),
                Err(failure) => failure.to_string(),
            };
            println!(
                "retry-tcp {target} at_ms={} {state}",
                started.elapsed().as_millis()
            );
            last = Some(ok);
        }
        next += RETRY_EVERY;
        let now = Instant::now();
        if next > now {
            thread::sleep((next - now).min(end.saturating_duration_since(now)));
        } else {
            next = now;
        }
    }
    println!("succeeded={succeeded} attempted={attempted}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_checksummed_packet_is_zero() {
        let packet = echo_request(ICMP_ECHO_REQUEST, 0x1234, 7, b"odd-length payload!");
        assert_eq!(internet_checksum(&packet), 0);
        assert_eq!(&packet[..2], &[8, 0]);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the one's complement sum of these is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn icmpv6_requests_leave_the_checksum_to_the_kernel() {
        let packet = echo_request(ICMPV6_ECHO_REQUEST, 1, 1, b"x");
        assert_eq!(&packet[..4], &[128, 0, 0, 0]);
    }

    #[test]
    fn replies_and_errors_are_told_apart() {
        let payload = b"wardline-probe abc";
        let mut reply = echo_request(ICMP_ECHO_REPLY, 42, 1, payload);
        reply[0] = ICMP_ECHO_REPLY;
        let none = |_: &[u8]| None;
        let classify_v4 = |icmp: &[u8], quoted: &dyn Fn(&[u8]) -> Option<usize>| {
            classify(
                icmp,
                ICMP_ECHO_REPLY,
                [ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED],
                ICMP_ECHO_REQUEST,
                42,
                payload,
                quoted,
            )
        };
        assert_eq!(classify_v4(&reply, &none), Heard::Reply);
        let mut other_ident = reply.clone();
        other_ident[5] = 43;
        assert_eq!(classify_v4(&other_ident, &none), Heard::Other);

        let mut error = vec![ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&echo_request(ICMP_ECHO_REQUEST, 42, 1, payload)[..8]);
        assert_eq!(classify_v4(&error, &|_: &[u8]| Some(0)), Heard::Error(3, 1));
        assert_eq!(classify_v4(&error, &none), Heard::Other);
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("198.18.0.1", 80).unwrap(),
            "198.18.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_target("[2001:db8::1]", 80).unwrap(),
            "[2001:db8::1]:80".parse().unwrap()
        );
        let scoped = parse_target("fe80::1%7", 0).unwrap();
        assert!(matches!(scoped, SocketAddr::V6(v6) if v6.scope_id() == 7));
        assert!(parse_target("198.18.0.1%lo", 0).is_err());
        assert!(parse_target("example.com", 0).is_err());
    }
}
