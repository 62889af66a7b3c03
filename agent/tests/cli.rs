//! The agent's command line as packaging and operators use it; no root needed.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wardline-agent"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wardline-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = scratch("bad");
    let cases = [
        (
            "spec:\n  interfaces: []\n  policyFile: /p.yaml\n",
            "spec.interfaces",
        ),
        ("spec:\n  interfaces: [eth0]\n", "either policyFile"),
        (
            "spec:\n  interfaces: [eth0]\n  policyFile: /p.yaml\n  statusAdress: 1\n",
            "unknown field `statusAdress`",
        ),
        (
            "spec:\n  interfaces: [eth0]\n  policyFile: /p.yaml\n  statusAddress: nowhere\n",
            "spec.statusAddress",
        ),
    ];
    for (spec, expected) in cases {
        let config = write(
            &dir,
            "agent.yaml",
            &format!("apiVersion: wardline/v1\nkind: AgentConfig\nmetadata: {{name: n1}}\n{spec}"),
        );
        let out = agent().arg("--config").arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{spec}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{spec}: expected {expected:?} in {stderr}"
        );
    }
    let out = agent()
        .arg("--config")
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_validates_the_policy_file() {
    let dir = scratch("check");
    let policy = write(
        &dir,
        "policy.yaml",
        include_str!("../../examples/hospital.yaml"),
    );
    let config = write(
        &dir,
        "agent.yaml",
        &format!(
            "apiVersion: wardline/v1\nkind: AgentConfig\nmetadata: {{name: n1}}\nspec:\n  interfaces: [eth0]\n  policyFile: {}\n",
            policy.display()
        ),
    );
    let out = agent()
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    std::fs::write(
        &policy,
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: x}\nspec: {vlans: [5000]}\n",
    )
    .unwrap();
    let out = agent()
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.vlans[0]") && stderr.contains("5000"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
