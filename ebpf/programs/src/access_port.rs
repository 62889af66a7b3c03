//! An emulated 802.1Q switch port pair, for labs and tests on kernels
//! without the 8021q module: frames arriving on an access port are tagged
//! and sent out of the trunk; frames arriving on the trunk are untagged and
//! sent to the device. Not part of enforcement.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::TC_ACT_OK,
        helpers::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
        macros::{classifier, map},
        maps::HashMap,
        programs::TcContext,
    };
    use wardline_ebpf_abi::{AccessPort, ETH_P_8021Q, PORT_ACCESS, PORT_UNTAG};

    #[map]
    static WL_ACCESS_PORTS: HashMap<u32, AccessPort> = HashMap::with_max_entries(64, 0);

    #[classifier]
    pub fn wardline_access_port(ctx: TcContext) -> i32 {
        let skb = ctx.skb.skb;
        // SAFETY: `skb` is the context pointer the kernel handed to the program.
        let (ifindex, tagged) = unsafe { ((*skb).ifindex, (*skb).vlan_present != 0) };
        // SAFETY: the value is copied out at once.
        let Some(port) = (unsafe { WL_ACCESS_PORTS.get(ifindex) }).copied() else {
            return TC_ACT_OK;
        };
        if port.mode == PORT_ACCESS {
            if port.vid != 0 {
                // SAFETY: helper call on this program's skb.
                unsafe { bpf_skb_vlan_push(skb.cast(), ETH_P_8021Q.to_be(), port.vid) };
            }
        } else if tagged {
            // SAFETY: helper call on this program's skb.
            unsafe { bpf_skb_vlan_pop(skb.cast()) };
        }
        if port.mode == PORT_UNTAG {
            return TC_ACT_OK;
        }
        // SAFETY: helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
        unsafe { bpf_redirect(port.out_ifindex, 0) as i32 }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        // SAFETY: the verifier rejects any program that could reach a panic.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
