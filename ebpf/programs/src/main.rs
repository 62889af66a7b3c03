//! Wardline's kernel programs: one TC classifier per direction, both thin
//! wrappers around [`verdict::try_judge`]. Attached first in each
//! interface's TCX chain, they drop what the policy drops and hand every
//! other packet on (`TCX_NEXT`), so later programs and tc filters still
//! run. The decision logic mirrors `wardline_policy::packet` and
//! `wardline_policy::reference`, against which it is tested through
//! `BPF_PROG_TEST_RUN`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod failsafe;
#[cfg(target_arch = "bpf")]
mod fragments;
#[cfg(target_arch = "bpf")]
mod generation;
#[cfg(target_arch = "bpf")]
mod l2;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod segments;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
        macros::classifier,
        programs::TcContext,
    };
    use wardline_ebpf_abi::{ACTION_DROP, ACTION_PASS, DIR_EGRESS, DIR_INGRESS};

    const _: () = assert!(ACTION_PASS == TCX_NEXT && ACTION_DROP == TC_ACT_SHOT);

    use crate::verdict::try_judge;

    #[inline(always)]
    fn action(passes: bool) -> i32 {
        if passes { ACTION_PASS } else { ACTION_DROP }
    }

    #[classifier]
    pub fn wardline_ingress(ctx: TcContext) -> i32 {
        action(try_judge(&ctx, DIR_INGRESS))
    }

    #[classifier]
    pub fn wardline_egress(ctx: TcContext) -> i32 {
        action(try_judge(&ctx, DIR_EGRESS))
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        // SAFETY: the verifier rejects any program that could reach a panic,
        // so this is never executed.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs exist only for the BPF target; the agent's build.rs
    // builds them with `aya-build`. This stub lets host tools (clippy,
    // `cargo check --workspace`) pass over the crate.
}
