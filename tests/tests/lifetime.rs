//! Enforcement does not depend on the agent process: killed with SIGKILL
//! while an allowed stream runs and a denied client keeps retrying, the
//! pinned dataplane keeps both as they were, and the restarted agent adopts
//! the pins and becomes ready. Only `--uninstall` ends enforcement.

use std::time::Duration;

use wardline_tests::agent::{Agent, agent_bin};
use wardline_tests::docs;
use wardline_tests::require_root;
use wardline_tests::topology;

fn policy() -> String {
    docs::ws_ehr_web()
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_kill_and_restart_keeps_enforcing() {
    require_root();
    let topo = topology::routed_gateway();
    let ns = topo.agent_ns();
    let mut agent = Agent::start(ns, &topo.interfaces(), &policy());
    let ehr = topo.host("ehr").v4.to_string();
    let generation = agent.generation(ns);

    let stream = topo.host("ws").ns.spawn_probe([
        "stream",
        &ehr,
        "443",
        "--seconds",
        "10",
        "--report-ms",
        "1000",
    ]);
    let retry = topo
        .host("pump")
        .ns
        .spawn_probe(["retry-tcp", &ehr, "443", "--seconds", "10"]);
    std::thread::sleep(Duration::from_secs(2));

    agent.kill9();
    assert!(agent.pinned(), "pins outlive the process");
    assert!(agent.get(ns, "/healthz").is_none(), "the process is gone");
    std::thread::sleep(Duration::from_secs(3));

    agent.spawn();
    agent.wait_ready(ns, Duration::from_secs(10));
    assert!(
        agent.log().contains("adopted pinned dataplane"),
        "log:\n{}",
        agent.log()
    );
    let status = agent.status_json(ns);
    assert!(
        status["generation"].as_u64().unwrap() > generation,
        "{status}"
    );
    assert!(
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["enforced"] == true),
        "{status}"
    );

    let stream = stream.wait_with_output().expect("stream ends");
    let stream_out = String::from_utf8_lossy(&stream.stdout);
    assert!(
        stream.status.success(),
        "the allowed stream survives: {stream_out}"
    );
    let retry = retry.wait_with_output().expect("retry ends");
    let retry_out = String::from_utf8_lossy(&retry.stdout);
    let last = retry_out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("succeeded=0 "),
        "nothing denied gets through: {last}"
    );
    let attempted: u64 = last
        .rsplit_once("attempted=")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(attempted >= 20, "the denied client kept trying: {last}");

    // Only --uninstall takes enforcement away.
    agent.kill9();
    let uninstall = std::process::Command::new(agent_bin())
        .arg("--config")
        .arg(agent.dir.join("agent.yaml"))
        .arg("--uninstall")
        .output()
        .expect("uninstall runs");
    assert!(uninstall.status.success());
    assert!(!agent.pinned(), "no pins left");
    // The kernel detaches a link once its last reference goes, shortly after.
    let detached = (0..30).any(|_| {
        let left = ns.exec(["bpftool", "net", "show"]);
        let left = String::from_utf8_lossy(&left.stdout).contains("wardline");
        if left {
            std::thread::sleep(Duration::from_millis(100));
        }
        !left
    });
    assert!(detached, "the programs are detached after --uninstall");
    assert!(
        topo.host("pump").ns.tcp_ok(&ehr, 443),
        "without Wardline nothing is filtered"
    );
}
