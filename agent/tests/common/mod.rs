//! What the kernel tests share: the real programs loaded under pins of the
//! test's own that are removed whatever happens, and one test run read back
//! as the one reason its packet was counted under.

use std::path::PathBuf;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use wardline_agent::enforcer::{self, Enforcer};
use wardline_ebpf_abi as abi;

/// Removes the test's pins when dropped.
pub struct Pins {
    bpffs: PathBuf,
    node: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = enforcer::uninstall(&self.bpffs, &self.node);
    }
}

/// Loads the programs under a node name of this test's own (`tag` and the
/// process id); the pins go when the guard does.
pub fn open(tag: &str) -> (Enforcer, Pins) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    let pins = Pins {
        bpffs: PathBuf::from("/sys/fs/bpf"),
        node: format!("wl-test-{tag}-{}", std::process::id()),
    };
    let enforcer = Enforcer::open(&pins.bpffs, &pins.node).expect("load programs");
    (enforcer, pins)
}

/// Runs `program` on `frame` (with `ctx` as its `__sk_buff`, if given) and
/// returns the reason it counted the packet under, and its action. Exactly
/// one counter of the program's direction moves per packet.
pub fn run(
    enforcer: &mut Enforcer,
    program: &str,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> Result<(abi::Reason, i32), ProgramError> {
    let direction = if program == abi::PROG_INGRESS {
        abi::DIR_INGRESS
    } else {
        abi::DIR_EGRESS
    } as usize;
    let before = enforcer.counters().expect("counters");
    let result = enforcer
        .program(program)
        .expect("the program is loaded")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            ..TestRunOptions::default()
        })?;
    let after = enforcer.counters().expect("counters");
    let moved: Vec<usize> = (0..abi::REASON_COUNT)
        .filter(|r| after.packets[direction][*r] != before.packets[direction][*r])
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one counter moves per packet: {moved:?}"
    );
    let reason = abi::Reason::from_u8(moved[0] as u8).expect("a counter is a reason");
    Ok((reason, result.return_value as i32))
}
