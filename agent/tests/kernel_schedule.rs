//! Policy windows switch in the kernel, on time, with nothing in user space
//! doing anything: the generations of coming window boundaries are
//! programmed ahead with their instants, and packets judged after an
//! instant use the generation it starts. A tracked connection admitted
//! before a window closed is cut by its next packet.

mod common;

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use wardline_agent::enforcer::{self, Enforcer, Scheduled};
use wardline_ebpf_abi as abi;
use wardline_policy::{CompileOptions, Dataplane};

const SEGMENTS: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: vendor}
spec: {cidrs: ["203.0.113.0/24"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: ["198.18.30.0/24"]}
"#;

/// A TCP packet from the vendor's 203.0.113.7:40000 to a pump's :22.
fn frame(flags: u8, reply: bool) -> Vec<u8> {
    let (src, dst, sport, dport) = if reply {
        ([198, 18, 30, 10], [203, 0, 113, 7], 22u16, 40000u16)
    } else {
        ([203, 0, 113, 7], [198, 18, 30, 10], 40000, 22)
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend(src);
    f.extend(dst);
    f.extend(sport.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// The reason `program` gives `frame`.
fn judge(enforcer: &mut Enforcer, frame: &[u8], program: &str) -> abi::Reason {
    common::run(enforcer, program, frame, None)
        .expect("test run")
        .0
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_a_vendor_window_opens_and_closes_in_the_kernel() {
    let now = OffsetDateTime::now_utc();
    let opens = now + Duration::from_millis(700);
    let closes = now + Duration::from_millis(1400);
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let policy = format!(
        "{SEGMENTS}---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: vendor-window}}\n\
         spec: {{action: allow, from: [vendor], to: [pumps], ports: [{{protocol: tcp, port: 22}}], \
         validFrom: \"{}\", validUntil: \"{}\"}}\n",
        rfc(opens),
        rfc(closes)
    );
    let set = wardline_policy::parse(&policy).expect("test policy parses");
    let compile = |at| Dataplane::compile(&set, &CompileOptions::at(at)).unwrap();
    let (before, during, after) = (compile(now), compile(opens), compile(closes));
    assert_eq!(before.next_change, Some(opens));

    let (mut enforcer, _pins) = common::open("sched");
    let tai = enforcer::tai_ns();
    let at = |t: OffsetDateTime| tai + (t - now).whole_nanoseconds() as u64;
    let applied = enforcer
        .apply(
            &before,
            &[
                Scheduled {
                    dataplane: &during,
                    at_tai_ns: at(opens),
                },
                Scheduled {
                    dataplane: &after,
                    at_tai_ns: at(closes),
                },
            ],
        )
        .unwrap();
    assert_eq!(applied.scheduled.len(), 2);
    let started = Instant::now();
    let syn = frame(0x02, false);
    let ack = frame(0x10, false);
    let reply = frame(0x12, true);

    // Before the window: dropped.
    assert_eq!(
        judge(&mut enforcer, &syn, abi::PROG_INGRESS),
        abi::Reason::DefaultDeny
    );
    assert_eq!(enforcer.generation().unwrap(), applied.live);
    // Inside it (nothing in user space did anything): allowed and tracked.
    // The remembered drop is of the old generation, so the retry is new.
    std::thread::sleep(Duration::from_millis(900).saturating_sub(started.elapsed()));
    assert_eq!(
        judge(&mut enforcer, &syn, abi::PROG_INGRESS),
        abi::Reason::PolicyAllow
    );
    assert_eq!(
        judge(&mut enforcer, &reply, abi::PROG_EGRESS),
        abi::Reason::Established
    );
    assert_eq!(enforcer.generation().unwrap(), applied.scheduled[0]);
    // After it: the established connection's next packet is cut, in both
    // directions, and a new one is dropped.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(started.elapsed()));
    assert_eq!(
        judge(&mut enforcer, &ack, abi::PROG_INGRESS),
        abi::Reason::DroppedFlow
    );
    assert_eq!(
        judge(&mut enforcer, &reply, abi::PROG_EGRESS),
        abi::Reason::DroppedFlow
    );
    assert_eq!(enforcer.generation().unwrap(), applied.scheduled[1]);
    enforcer.flush_tracking().unwrap();
    assert_eq!(
        judge(&mut enforcer, &syn, abi::PROG_INGRESS),
        abi::Reason::DefaultDeny
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the test ran in time: {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_every_apply_takes_a_new_generation_number() {
    let now = OffsetDateTime::now_utc();
    let set = wardline_policy::parse(SEGMENTS).expect("test policy parses");
    let dp = Dataplane::compile(&set, &CompileOptions::at(now)).unwrap();
    let (mut enforcer, _pins) = common::open("gens");
    let far = enforcer::tai_ns() + 3600 * abi::SECOND_NS;
    let mut seen = Vec::new();
    for round in 0..6 {
        // Every other apply schedules two boundaries an hour ahead: the
        // numbers they took are never given again.
        let ahead: Vec<Scheduled<'_>> = if round % 2 == 0 {
            vec![
                Scheduled {
                    dataplane: &dp,
                    at_tai_ns: far,
                },
                Scheduled {
                    dataplane: &dp,
                    at_tai_ns: far + 1,
                },
            ]
        } else {
            Vec::new()
        };
        let applied = enforcer.apply(&dp, &ahead).unwrap();
        assert_eq!(enforcer.generation().unwrap(), applied.live);
        seen.push(applied.live);
        seen.extend(&applied.scheduled);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "generation numbers only grow: {seen:?}");
}
