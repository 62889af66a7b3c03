//! Wardline's kernel programs: one TC classifier per direction, both thin
//! wrappers around [`try_judge`]. The decision logic mirrors
//! `wardline_policy::packet` and `wardline_policy::reference`, against which
//! it is tested packet by packet through `BPF_PROG_TEST_RUN`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, TC_ACT_SHOT},
        macros::classifier,
        programs::TcContext,
    };
    use wardline_ebpf_abi::{DIR_EGRESS, DIR_INGRESS};

    use crate::verdict::try_judge;

    #[classifier]
    pub fn wardline_ingress(ctx: TcContext) -> i32 {
        if try_judge(&ctx, DIR_INGRESS) {
            TC_ACT_OK
        } else {
            TC_ACT_SHOT
        }
    }

    #[classifier]
    pub fn wardline_egress(ctx: TcContext) -> i32 {
        if try_judge(&ctx, DIR_EGRESS) {
            TC_ACT_OK
        } else {
            TC_ACT_SHOT
        }
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
