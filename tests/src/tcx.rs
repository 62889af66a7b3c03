//! Foreign TCX programs: the smallest possible BPF programs, loaded and
//! attached with the raw `bpf(2)` system call, to play the other software
//! that shares an interface with Wardline (a monitoring agent attached
//! before it, a second filter attached after it).
//!
//! Each program is two instructions, `r0 = CODE; exit`: it returns the same
//! TCX verdict for every packet. The link is not pinned: dropping the
//! [`TcxProgram`] closes its descriptors and the kernel detaches it. The
//! benchmark's empty program is one of them too (`load`, `pin`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use aya::programs::{SchedClassifier, TcAttachType};
use nix::libc;

use crate::netns::Netns;

/// `TCX_NEXT`: hand the packet to the next program (or the legacy tc
/// filters).
pub const TCX_NEXT: i32 = -1;
/// `TCX_PASS` (`TC_ACT_OK`): accept the packet and end the chain.
pub const TCX_PASS: i32 = 0;
/// `TCX_DROP` (`TC_ACT_SHOT`): drop the packet.
pub const TCX_DROP: i32 = 2;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_F_BEFORE` with no relative program: the head of the chain.
const BPF_F_BEFORE: u32 = 1 << 3;

/// Which hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

/// Where in the interface's TCX chain the program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// After every program already attached (the default of `bpf(2)`).
    Last,
    /// Before every program already attached.
    First,
}

/// An attached foreign program; dropping it detaches it.
#[derive(Debug)]
pub struct TcxProgram {
    _link: OwnedFd,
    _prog: OwnedFd,
    pub interface: String,
    pub hook: Hook,
    pub code: i32,
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The head of `union bpf_attr` as `BPF_PROG_LOAD` reads it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The head of `union bpf_attr` as `BPF_LINK_CREATE` reads it for TCX.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<RawFd> {
    let size = std::mem::size_of::<T>() as libc::c_long;
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` prefix of
    // `union bpf_attr` of `size` bytes; the kernel reads at most `size`
    // bytes of it and every pointer inside it outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    RawFd::try_from(ret).map_err(|_| io::Error::other(format!("bpf({cmd}) returned {ret}")))
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Loads `r0 = code; exit` as a TC classifier named `name` (at most 15
/// bytes, `[A-Za-z0-9_]`).
pub(crate) fn load(name: &str, code: i32) -> io::Result<OwnedFd> {
    let insns = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0: r0 = imm (sign-extended).
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: code,
        },
        // BPF_JMP | BPF_EXIT.
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    let bytes = name.as_bytes();
    let n = bytes.len().min(attr.prog_name.len() - 1);
    attr.prog_name[..n].copy_from_slice(&bytes[..n]);
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|err| {
        let log = String::from_utf8_lossy(&log);
        io::Error::new(
            err.kind(),
            format!(
                "BPF_PROG_LOAD {name}: {err}; verifier: {}",
                log.trim_end_matches('\0')
            ),
        )
    })
}

/// `union bpf_attr` as `BPF_OBJ_PIN` reads it.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins the program (or map) `fd` at `path` on a bpffs.
pub(crate) fn pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other(format!("{}: a NUL byte in the path", path.display())))?;
    let mut attr = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr)
        .map(|_| ())
        .map_err(|e| io::Error::new(e.kind(), format!("pinning at {}: {e}", path.display())))
}

/// Loads a program that returns `code` for every packet and attaches it to
/// `interface`'s `hook` in `ns`, at `order` of the chain. Panics on failure.
#[track_caller]
pub fn attach(ns: &Netns, interface: &str, hook: Hook, order: Order, code: i32) -> TcxProgram {
    let name = match code {
        TCX_NEXT => "atk_next",
        TCX_PASS => "atk_pass_all",
        TCX_DROP => "atk_drop_all",
        _ => "atk_verdict",
    };
    let result = ns.run_in(|| -> io::Result<(OwnedFd, OwnedFd)> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(io::Error::from)?;
        let prog = load(name, code)?;
        let mut attr = LinkCreateAttr {
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
            target_ifindex: ifindex,
            attach_type: match hook {
                Hook::Ingress => BPF_TCX_INGRESS,
                Hook::Egress => BPF_TCX_EGRESS,
            },
            flags: match order {
                Order::Last => 0,
                Order::First => BPF_F_BEFORE,
            },
            ..LinkCreateAttr::default()
        };
        let link = bpf(BPF_LINK_CREATE, &mut attr).map(owned)?;
        Ok((prog, link))
    });
    let (prog, link) = result.unwrap_or_else(|err| {
        panic!(
            "attaching {name} to {interface} {hook:?} in {}: {err}",
            ns.name()
        )
    });
    TcxProgram {
        _link: link,
        _prog: prog,
        interface: interface.to_owned(),
        hook,
        code,
    }
}

/// The names of the programs in `interface`'s TCX chain at `hook`, first
/// to run first (the kernel truncates names to 15 bytes).
#[track_caller]
pub fn chain(ns: &Netns, interface: &str, hook: Hook) -> Vec<String> {
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    ns.run_in(|| SchedClassifier::query_tcx(interface, attach_type))
        .unwrap_or_else(|err| panic!("querying the TCX chain of {interface} {hook:?}: {err}"))
        .1
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
        .collect()
}
