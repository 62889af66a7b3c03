//! Prometheus (Debian's, for real) scraping a managed agent and its
//! control plane while the routed gateway carries allowed and dropped
//! traffic: what Prometheus stores is what the agent counted, the control
//! plane's figures follow an apply, and every panel of the Grafana
//! dashboard in `packaging/grafana/` has data.

use std::time::{Duration, Instant};

use wardline_tests::agent::{Agent, managed_gateway};
use wardline_tests::docs::{WS_PUMP_EHR, ws_ehr_web};
use wardline_tests::matrix::{Service, check_matrix};
use wardline_tests::prometheus::{Prometheus, Target};
use wardline_tests::require_root;
use wardline_tests::site::{REPLICAS, Site};

/// Where the replica serves `/metrics`, on the management network.
const METRICS_PORT: u16 = 9465;

/// The sum of the agent's `wardline_packets_total` series of `verdict`.
fn packets(agent: &Agent, ns: &wardline_tests::Netns, verdict: &str) -> f64 {
    let (_, metrics) = agent.get(ns, "/metrics").expect("/metrics answers");
    let needle = format!("verdict=\"{verdict}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("wardline_packets_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 250 ms until it holds, for at most `within`.
fn until(within: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() > within => panic!("{what}, not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_prometheus_scrapes_agent_and_control_plane_and_every_dashboard_panel_has_data() {
    require_root();
    let mut site = Site::new();
    let metrics_address = format!("{}:{METRICS_PORT}", REPLICAS[0]);
    site.replica_flags
        .extend(["--metrics-address".to_owned(), metrics_address.clone()]);
    let (routed, agent) = managed_gateway(&mut site);
    let ns = routed.agent_ns();
    let web = ws_ehr_web();
    let first = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], first, Duration::from_secs(10));

    // Prometheus in the agent's namespace: the agent's status endpoint on
    // loopback, the replica over the management link.
    let prometheus = Prometheus::start(
        ns,
        &site.dir,
        &[
            Target {
                job: "wardline-agent",
                address: agent.status,
                labels: &[("node", &agent.node)],
            },
            Target {
                job: "wardline-control-plane",
                address: metrics_address.parse().unwrap(),
                labels: &[("replica", "replica-0")],
            },
        ],
    );

    // Traffic through the gateway: allowed and dropped, both families.
    check_matrix(&routed, "scraped", |c| {
        c.from == "ws" && c.to == "ehr" && c.service == Service::Tcp(443)
    });
    // An apply while Prometheus watches: the revision and the
    // apply-to-acknowledgement histogram move.
    let second = site.apply(0, &web.replace("port: 443", "port: 8443"));
    site.wait_acked(0, &[&agent.node], second, Duration::from_secs(10));

    // What Prometheus stores is what the agent counted.
    for verdict in ["allowed", "dropped"] {
        let expr =
            format!("sum(wardline_packets_total{{job=\"wardline-agent\", verdict=\"{verdict}\"}})");
        until(
            Duration::from_secs(15),
            &format!("{verdict} packets"),
            || {
                let counted = packets(&agent, ns, verdict);
                let stored = prometheus.value(ns, &expr);
                if counted > 0.0 && stored == Some(counted) {
                    Ok(())
                } else {
                    Err(format!(
                        "the agent counted {counted}, Prometheus has {stored:?}"
                    ))
                }
            },
        );
    }
    for (expr, want) in [
        (
            "max(wardline_policy_revision{job=\"wardline-control-plane\"})".to_owned(),
            second as f64,
        ),
        (
            format!(
                "max(wardline_policy_revision{{job=\"wardline-agent\", node=\"{}\"}})",
                agent.node
            ),
            second as f64,
        ),
        ("sum(wardline_agents_connected)".to_owned(), 1.0),
        (
            "sum(wardline_apply_to_ack_seconds_count{job=\"wardline-control-plane\"})".to_owned(),
            2.0,
        ),
    ] {
        until(Duration::from_secs(15), &expr, || {
            match prometheus.value(ns, &expr) {
                Some(v) if v == want => Ok(()),
                other => Err(format!("{other:?}, want {want}")),
            }
        });
    }

    // Every panel of the dashboard has data: each query returns at least
    // one series, each a number.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/grafana/wardline.json"
        ))
        .expect("the dashboard is in the repository"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            until(
                Duration::from_secs(20),
                &format!("panel {title:?}: {expr}"),
                || {
                    let result = prometheus.query(ns, expr);
                    let values: Vec<Option<f64>> = result
                        .iter()
                        .map(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                        .collect();
                    if !values.is_empty() && values.iter().all(|v| v.is_some_and(f64::is_finite)) {
                        Ok(())
                    } else {
                        Err(format!("{result:?}"))
                    }
                },
            );
        }
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition whose
/// labels contain every one of `with` and none of `without`.
fn metric_sum(metrics: &str, name: &str, with: &[&str], without: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| with.iter().all(|w| l.contains(w)) && !without.iter().any(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// SYNs in the denied flood: more than the kernel's ring buffer holds, so
/// that some may be lost, and each must then be counted.
const FLOOD_FRAMES: u32 = 120_000;

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_a_denied_flood_loses_no_count_kernel_drops_equal_stored_records_plus_counted_losses()
{
    use wardline_tests::forge::{flood_bin, mac_of};
    require_root();
    let mut site = Site::new();
    let (routed, agent) = managed_gateway(&mut site);
    let ns = routed.agent_ns();
    let revision = site.apply(0, WS_PUMP_EHR);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));

    // Every one a new connection to a port no policy allows, from spoofed
    // outside sources: each is a dropped connection's first packet.
    let ext = &routed.host("ext").ns;
    let gw_mac = mac_of(ns, "gw-ext");
    let out = ext.exec([
        flood_bin().to_string_lossy().as_ref(),
        "--interface",
        "eth0",
        "--dst-mac",
        &gw_mac,
        "--dst",
        "198.18.41.10",
        "--dport",
        "22",
        "--src-prefix",
        "203.0.113.0/24",
        "--count",
        &FLOOD_FRAMES.to_string(),
        "--seconds",
        "20",
    ]);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let sent: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sent= in {out:?}"));

    // Until the agent has handed over every record it read: what it read
    // is what it sent, had refused or over quota, or dropped itself.
    let mut last = String::new();
    let start = Instant::now();
    let settled = loop {
        let (_, m) = agent.get(ns, "/metrics").expect("/metrics answers");
        let read = metric_sum(&m, "wardline_flow_events_total", &[], &[]);
        let handled = metric_sum(&m, "wardline_flow_records_total", &[], &[]);
        let waiting = metric_sum(&m, "wardline_flow_buffer_bytes", &[], &[]);
        if read > 0.0 && handled == read && waiting == 0.0 && m == last {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent read {read} records and handed over {handled}, {waiting} bytes waiting"
        );
        last = m;
        std::thread::sleep(Duration::from_millis(1000));
    };

    // The kernel: each dropped first packet (a later packet of a dropped
    // connection is no new record) is a drop event or a counted loss.
    let kernel_drops = metric_sum(
        &settled,
        "wardline_packets_total",
        &["verdict=\"dropped\""],
        &["reason=\"dropped-flow\""],
    );
    let lost_kernel = metric_sum(
        &settled,
        "wardline_events_lost_total",
        &["source=\"kernel\""],
        &[],
    );
    let new_connections = metric_sum(
        &settled,
        "wardline_flow_events_total",
        &["verdict=\"allowed\""],
        &[],
    ) + metric_sum(
        &settled,
        "wardline_flow_events_total",
        &["verdict=\"audited\""],
        &[],
    );
    let not_stored = ["dropped", "refused", "over-quota"]
        .iter()
        .map(|r| {
            metric_sum(
                &settled,
                "wardline_flow_records_total",
                &[&format!("result=\"{r}\"")],
                &[],
            )
        })
        .sum::<f64>();
    // The control plane: dropped connections stored.
    let out = site.wardctl(0, &["matrix", "--verdict", "dropped", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matrix: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = matrix["connections"].as_f64().unwrap();
    let figures = format!(
        "flood sent {sent}; kernel dropped {kernel_drops} first packets and lost {lost_kernel} events; \
         {new_connections} allowed or audited events; the control plane stored {stored} dropped \
         connections; the agent did not store {not_stored}"
    );
    eprintln!("{figures}");
    assert!(kernel_drops >= sent as f64 * 0.99, "{figures}");
    assert_eq!(
        kernel_drops,
        stored + lost_kernel + not_stored,
        "a count went missing: {figures}"
    );
}
