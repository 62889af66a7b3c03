//! `wardline-forge`: the raw-packet tool that Wardline's attack tests run
//! inside network namespaces (`ip netns exec NAME wardline-forge ...`).
//!
//! `send` builds Ethernet frames (IPv4 or IPv6; TCP, UDP, ICMP echo
//! request and reply, destination-unreachable errors quoting a chosen
//! tuple) with any source address and ports, optionally 802.1Q-tagged, and
//! writes them to an interface through an `AF_PACKET` socket: a bounded
//! number of copies at a bounded rate. `sniff` counts the frames arriving
//! on an interface that match a filter, for a bounded time; it prints
//! `ready` once it listens and `matched=N frames=M` at the end.
//!
//! Exit status: 0 done, 1 failed, 2 bad arguments.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command as Process, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::libc;
use nix::sys::socket::{
    self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike,
    sockopt,
};
use nix::sys::time::TimeVal;
use wardline_tests::frame::{
    self, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Filter, FrameSpec, Mac, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, Quoted, QuotedProto, Transport,
};

/// The most copies one `send` writes.
const MAX_COUNT: u32 = 10_000;
/// The fastest `send` writes, in frames per second.
const MAX_RATE: u32 = 10_000;
/// The longest `sniff` listens.
const MAX_SNIFF: f64 = 30.0;
/// How long `send --next-hop` waits for neighbour resolution.
const RESOLVE_WITHIN: Duration = Duration::from_secs(1);
/// `sll_pkttype` of a frame this host sent (`PACKET_OUTGOING`).
const PACKET_OUTGOING: u8 = 4;

#[derive(Parser)]
#[command(
    name = "wardline-forge",
    about = "Raw-packet tool for Wardline's attack tests: forge frames, count what arrives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a frame and write COUNT copies of it to an interface.
    Send(SendArgs),
    /// Count the frames arriving on an interface that match a filter.
    Sniff(SniffArgs),
}

#[derive(Args)]
struct SendArgs {
    /// The interface to write to.
    #[arg(long, short = 'i')]
    interface: String,
    /// Destination MAC address of the frame.
    #[arg(
        long,
        required_unless_present = "next_hop",
        conflicts_with = "next_hop"
    )]
    dst_mac: Option<String>,
    /// Take the destination MAC address from this neighbour (resolved first
    /// if the neighbour table does not have it).
    #[arg(long)]
    next_hop: Option<IpAddr>,
    /// Source MAC address; default the interface's own.
    #[arg(long)]
    src_mac: Option<String>,
    /// Tag the frame with this 802.1Q VLAN id.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    vlan: Option<u16>,
    /// Source address (any: this is a forgery).
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    /// TTL or hop limit.
    #[arg(long, default_value_t = 64)]
    ttl: u8,
    /// Bytes after the transport header (after the quoted headers of an error).
    #[arg(long, default_value = "")]
    payload: String,
    /// Copies to send.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
    count: u32,
    /// Copies per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RATE)))]
    rate: u32,
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// A TCP segment.
    Tcp {
        #[arg(long)]
        sport: u16,
        #[arg(long)]
        dport: u16,
        /// Comma-separated: fin, syn, rst, psh, ack, urg; or none.
        #[arg(long, default_value = "psh,ack")]
        flags: String,
        #[arg(long, default_value_t = 0)]
        seq: u32,
        #[arg(long, default_value_t = 0)]
        ack: u32,
    },
    /// A UDP datagram.
    Udp {
        #[arg(long)]
        sport: u16,
        #[arg(long)]
        dport: u16,
    },
    /// An ICMP or ICMPv6 echo request.
    EchoRequest {
        #[arg(long)]
        id: u16,
        #[arg(long, default_value_t = 1)]
        seq: u16,
    },
    /// An ICMP or ICMPv6 echo reply.
    EchoReply {
        #[arg(long)]
        id: u16,
        #[arg(long, default_value_t = 1)]
        seq: u16,
    },
    /// An ICMP (type 3) or ICMPv6 (type 1) destination unreachable quoting
    /// the packet INNER_SRC:INNER_SPORT -> INNER_DST:INNER_DPORT.
    Unreachable {
        #[arg(long, default_value_t = 1)]
        code: u8,
        #[arg(long, value_enum)]
        inner_proto: InnerProto,
        #[arg(long)]
        inner_src: IpAddr,
        #[arg(long)]
        inner_dst: IpAddr,
        /// The quoted source port (an echo's identifier).
        #[arg(long, default_value_t = 0)]
        inner_sport: u16,
        #[arg(long, default_value_t = 0)]
        inner_dport: u16,
        #[arg(long, default_value_t = 0)]
        inner_seq: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum InnerProto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

#[derive(Args)]
struct SniffArgs {
    /// The interface to listen on.
    #[arg(long, short = 'i')]
    interface: String,
    /// How long to listen.
    #[arg(long)]
    seconds: f64,
    /// Stop as soon as this many frames matched.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Count frames this host sends too (by default only arriving ones).
    #[arg(long)]
    outgoing: bool,
    #[arg(long, value_enum)]
    proto: Option<Proto>,
    #[arg(long)]
    src: Option<IpAddr>,
    #[arg(long)]
    dst: Option<IpAddr>,
    #[arg(long)]
    sport: Option<u16>,
    #[arg(long)]
    dport: Option<u16>,
    #[arg(long)]
    icmp_type: Option<u8>,
    /// The identifier of an echo request or reply.
    #[arg(long)]
    icmp_id: Option<u16>,
    /// Text that must appear in the frame (a forged packet's payload).
    #[arg(long)]
    contains: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Send(args) => send(&args),
        Command::Sniff(args) => sniff(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wardline-forge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn transport(kind: &Kind) -> anyhow::Result<Transport> {
    Ok(match *kind {
        Kind::Tcp {
            sport,
            dport,
            ref flags,
            seq,
            ack,
        } => Transport::Tcp {
            sport,
            dport,
            flags: frame::parse_tcp_flags(flags)?,
            seq,
            ack,
        },
        Kind::Udp { sport, dport } => Transport::Udp { sport, dport },
        Kind::EchoRequest { id, seq } => Transport::EchoRequest { id, seq },
        Kind::EchoReply { id, seq } => Transport::EchoReply { id, seq },
        Kind::Unreachable {
            code,
            inner_proto,
            inner_src,
            inner_dst,
            inner_sport,
            inner_dport,
            inner_seq,
        } => Transport::Unreachable {
            code,
            quoted: Quoted {
                proto: match inner_proto {
                    InnerProto::Tcp => QuotedProto::Tcp,
                    InnerProto::Udp => QuotedProto::Udp,
                    InnerProto::Icmp => QuotedProto::Echo,
                },
                src: inner_src,
                dst: inner_dst,
                sport: inner_sport,
                dport: inner_dport,
                seq: inner_seq,
            },
        },
    })
}

fn ifindex(interface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(interface).with_context(|| format!("interface {interface}"))
}

/// The interface's own MAC address.
fn own_mac(interface: &str) -> anyhow::Result<Mac> {
    nix::ifaddrs::getifaddrs()
        .context("listing interfaces")?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .with_context(|| format!("interface {interface} has no MAC address"))
}

/// The neighbour table's MAC for `ip` on `interface`, if it has one.
fn neighbour(ip: IpAddr, interface: &str) -> anyhow::Result<Option<Mac>> {
    let out = Process::new("ip")
        .args(["neigh", "show", "to", &ip.to_string(), "dev", interface])
        .output()
        .context("running `ip neigh show`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "lladdr" {
            let mac = words.next().unwrap_or_default();
            return Ok(Some(frame::parse_mac(mac)?));
        }
    }
    Ok(None)
}

/// The next hop's MAC: from the neighbour table, after provoking
/// resolution with a datagram to its discard port if needed.
fn resolve(ip: IpAddr, interface: &str) -> anyhow::Result<Mac> {
    if let Some(mac) = neighbour(ip, interface)? {
        return Ok(mac);
    }
    let any: IpAddr = if ip.is_ipv4() {
        "0.0.0.0".parse()?
    } else {
        "::".parse()?
    };
    let probe = UdpSocket::bind(SocketAddr::new(any, 0)).context("a socket to resolve with")?;
    let deadline = Instant::now() + RESOLVE_WITHIN;
    while Instant::now() < deadline {
        // Errors (unreachable) only mean the answer is not there yet.
        let _ = probe.send_to(b"", SocketAddr::new(ip, 9));
        thread::sleep(Duration::from_millis(50));
        if let Some(mac) = neighbour(ip, interface)? {
            return Ok(mac);
        }
    }
    bail!("no neighbour entry for {ip} on {interface} within {RESOLVE_WITHIN:?}")
}

/// An `AF_PACKET` address for `interface`; `protocol` in host order.
fn link_addr(ifindex: u32, protocol: u16, mac: Mac) -> anyhow::Result<LinkAddr> {
    let mut addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: i32::try_from(ifindex)?,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    addr.sll_addr[..6].copy_from_slice(&mac);
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>())?;
    // SAFETY: `addr` is a fully initialised `sockaddr_ll` of family
    // AF_PACKET, and `len` is its size.
    unsafe { LinkAddr::from_raw((&raw const addr).cast(), Some(len)) }
        .context("building an AF_PACKET address")
}

fn send(args: &SendArgs) -> anyhow::Result<()> {
    let index = ifindex(&args.interface)?;
    let dst_mac = match (&args.dst_mac, args.next_hop) {
        (Some(mac), _) => frame::parse_mac(mac)?,
        (None, Some(hop)) => resolve(hop, &args.interface)?,
        (None, None) => bail!("give --dst-mac or --next-hop"),
    };
    let src_mac = match &args.src_mac {
        Some(mac) => frame::parse_mac(mac)?,
        None => own_mac(&args.interface)?,
    };
    let mut spec = FrameSpec {
        dst_mac,
        src_mac,
        vlan: args.vlan,
        src: args.src,
        dst: args.dst,
        ttl: args.ttl,
        ip_id: (std::process::id() & 0xffff) as u16,
        transport: transport(&args.kind)?,
        payload: args.payload.as_bytes().to_vec(),
    };
    let ethertype = if args.vlan.is_some() {
        ETH_P_8021Q
    } else if args.src.is_ipv4() {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let to = link_addr(index, ethertype, dst_mac)?;
    // Protocol 0: this socket sends only, it receives nothing.
    let fd: OwnedFd = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("an AF_PACKET socket (needs CAP_NET_RAW)")?;
    let every = Duration::from_secs(1) / args.rate;
    let started = Instant::now();
    let (mut len, mut refused) = (0, 0u32);
    for n in 0..args.count {
        let at = started + every * n;
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        spec.ip_id = spec.ip_id.wrapping_add(1);
        let bytes = frame::build(&spec)?;
        len = bytes.len();
        match socket::sendto(fd.as_raw_fd(), &bytes, &to, MsgFlags::empty()) {
            Ok(_) => {}
            // The interface's egress (a TC program, a qdisc) dropped it:
            // a verdict, not a failure of the forge.
            Err(nix::Error::ENOBUFS) => refused += 1,
            Err(err) => {
                return Err(err).with_context(|| format!("writing to {}", args.interface));
            }
        }
    }
    println!(
        "sent {} frames of {len} bytes on {} to {}, {refused} dropped at the interface's egress",
        args.count,
        args.interface,
        frame::format_mac(&dst_mac)
    );
    Ok(())
}

fn filter(args: &SniffArgs) -> Filter {
    Filter {
        proto: args.proto.map(|p| match p {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
            Proto::Icmp => PROTO_ICMP,
            Proto::Icmpv6 => PROTO_ICMPV6,
        }),
        src: args.src,
        dst: args.dst,
        sport: args.sport,
        dport: args.dport,
        icmp_type: args.icmp_type,
        icmp_id: args.icmp_id,
        contains: args.contains.as_ref().map(|c| c.as_bytes().to_vec()),
    }
}

fn sniff(args: &SniffArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= MAX_SNIFF) {
        bail!("--seconds must be above 0 and at most {MAX_SNIFF}");
    }
    let index = ifindex(&args.interface)?;
    let fd: OwnedFd = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .context("an AF_PACKET socket (needs CAP_NET_RAW)")?;
    socket::bind(
        fd.as_raw_fd(),
        &link_addr(index, libc::ETH_P_ALL as u16, [0; 6])?,
    )
    .with_context(|| format!("listening on {}", args.interface))?;
    let filter = filter(args);
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut buf = vec![0u8; 65_536];
    let (mut frames, mut matched) = (0u64, 0u64);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || args.stop_after.is_some_and(|n| matched >= n) {
            break;
        }
        let wait = left.min(Duration::from_millis(100));
        let wait = TimeVal::new(0, wait.as_micros().clamp(1, 999_999).try_into()?);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &wait)?;
        let (n, from) = match socket::recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok(got) => got,
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
            Err(err) => return Err(err).context("receiving"),
        };
        // Frames queued before the bind may come from another interface.
        let Some(from) = from else { continue };
        if from.ifindex() != index as usize || (from.pkttype() == PACKET_OUTGOING && !args.outgoing)
        {
            continue;
        }
        frames += 1;
        if filter.matches(&buf[..n]) {
            matched += 1;
        }
    }
    println!("matched={matched} frames={frames}");
    Ok(())
}
