//! The web dashboard in Debian's Chromium against a running lab: a managed
//! gateway agent carries allowed and dropped traffic, its flow records
//! reach the replica, and the rendered pages show them with the right
//! verdicts and policies; a filter narrows the flow table; a matrix cell
//! opens its flows; agents, the inventory, top sources and the segment
//! map show the lab. Screenshots go to `target/dashboard/`.

use std::time::{Duration, Instant};

use wardline_tests::agent::managed_gateway;
use wardline_tests::browser::{Browser, count};
use wardline_tests::docs::ws_ehr_web;
use wardline_tests::matrix::{Service, check_matrix};
use wardline_tests::require_root;
use wardline_tests::site::{REPLICAS, Site};

const DASHBOARD_PORT: u16 = 8443;

/// A fresh sign-in link for the operator, with `view` after the `#`.
fn link(site: &Site, view: &str) -> String {
    let out = site.wardctl(0, &["dashboard", "login"]);
    assert!(
        out.status.success(),
        "wardctl dashboard login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    format!("{url}#{view}")
}

/// The `data-` attribute `name` of each element that has one, in order.
fn attributes<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    dom.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect()
}

/// The rows of the flow table: (verdict, policy) each.
fn flow_rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr data-verdict=\"")
        .skip(1)
        .map(|row| {
            let verdict = row[..row.find('"').unwrap()].to_owned();
            let policy = row
                .split_once("data-policy=\"")
                .map(|(_, p)| p[..p.find('"').unwrap()].to_owned())
                .unwrap_or_default();
            (verdict, policy)
        })
        .collect()
}

fn ready(dom: &str, view: &str) {
    assert!(
        dom.contains("data-state=\"ready\""),
        "{view} did not render:\n{dom}"
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_the_dashboard_in_chromium_shows_the_labs_flows_verdicts_and_policies() {
    require_root();
    let mut site = Site::new();
    let dashboard = format!("{}:{DASHBOARD_PORT}", REPLICAS[0]);
    site.replica_flags
        .extend(["--dashboard-address".to_owned(), dashboard.clone()]);
    let (routed, agent) = managed_gateway(&mut site);
    let web = ws_ehr_web();
    let revision = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    check_matrix(&routed, "dashboard", |c| {
        c.from == "ws" && c.to == "ehr" && c.service == Service::Tcp(443)
    });
    // The agent's records reach the replica.
    let start = Instant::now();
    loop {
        let out = site.wardctl(0, &["observe", "--verdict", "allowed", "-o", "json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"policy\":\"ws-ehr-web\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no allowed ws-ehr-web record reached the replica: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let mut browser = Browser::new(&site.ns, &site.dir.join("cp.pem"), &site.dir);

    // A link is refused a second time, in the browser too.
    let once = link(&site, "matrix");
    ready(&browser.dom(&once), "matrix");
    let again = browser.dom(&once);
    assert!(
        again.contains("data-state=\"signed-out\""),
        "a used link signed in again:\n{again}"
    );

    // The flow table: allowed records name the policy that allowed them,
    // dropped ones none (default deny), as wardctl reports them.
    let all = browser.dom(&link(&site, "flows?since=1h"));
    ready(&all, "flows");
    let rows = flow_rows(&all);
    let allowed: Vec<_> = rows.iter().filter(|(v, _)| v == "allowed").collect();
    let dropped: Vec<_> = rows.iter().filter(|(v, _)| v == "dropped").collect();
    assert!(!allowed.is_empty() && !dropped.is_empty(), "{rows:?}");
    assert!(
        allowed.iter().all(|(_, p)| p == "ws-ehr-web"),
        "{allowed:?}"
    );
    assert!(dropped.iter().all(|(_, p)| p.is_empty()), "{dropped:?}");
    let out = site.wardctl(
        0,
        &["observe", "--since", "1h", "--last", "200", "-o", "json"],
    );
    let observed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        rows.len() <= observed && rows.len() + 20 >= observed.min(200),
        "the page shows {} records, wardctl {observed}",
        rows.len()
    );

    // A filter narrows it: only dropped records, fewer than all.
    let narrowed = browser.dom(&link(&site, "flows?verdict=dropped&since=1h"));
    ready(&narrowed, "flows?verdict=dropped");
    let only = flow_rows(&narrowed);
    assert!(!only.is_empty(), "{narrowed}");
    assert!(only.iter().all(|(v, _)| v == "dropped"), "{only:?}");
    assert!(only.len() < rows.len(), "{} of {}", only.len(), rows.len());
    let by_port = flow_rows(&browser.dom(&link(&site, "flows?from=ws&to=ehr&port=443&since=1h")));
    assert!(!by_port.is_empty(), "nothing from ws to ehr:443");
    assert!(
        by_port
            .iter()
            .all(|(v, p)| v == "allowed" && p == "ws-ehr-web"),
        "{by_port:?}"
    );

    // The matrix: ws to ehr has allowed connections; its link opens
    // exactly those flows.
    let matrix = browser.dom(&link(&site, "matrix"));
    ready(&matrix, "matrix");
    let hrefs = attributes(&matrix, "href");
    let cell = hrefs
        .iter()
        .find(|h| h.starts_with("#flows?from=ws&amp;to=ehr&amp;verdict=allowed"))
        .unwrap_or_else(|| panic!("no ws to ehr allowed cell: {hrefs:?}"))
        .replace("&amp;", "&");
    assert!(
        hrefs.iter().any(|h| h.contains("verdict=dropped")),
        "no dropped cell: {hrefs:?}"
    );
    let opened = flow_rows(&browser.dom(&link(&site, cell.trim_start_matches('#'))));
    assert!(!opened.is_empty(), "{cell} opened nothing");
    assert!(
        opened
            .iter()
            .all(|(v, p)| v == "allowed" && p == "ws-ehr-web"),
        "{cell}: {opened:?}"
    );

    // Agents: the gateway connected, at the revision in force.
    let agents = browser.dom(&link(&site, "agents"));
    ready(&agents, "agents");
    assert!(
        agents.contains(&format!(
            "data-node=\"{}\" data-connected=\"true\"",
            agent.node
        )),
        "{agents}"
    );
    assert!(agents.contains("current"), "{agents}");

    // The inventory has the lab's workstation and EHR server.
    let inventory = browser.dom(&link(&site, "inventory"));
    ready(&inventory, "inventory");
    let devices = attributes(&inventory, "data-address");
    for host in ["198.18.20.", "198.18.41."] {
        assert!(
            devices.iter().any(|d| d.starts_with(host)),
            "{host}: {devices:?}"
        );
    }

    // Top dropped sources and the map.
    let top = browser.dom(&link(&site, "top"));
    ready(&top, "top");
    assert!(!attributes(&top, "data-src").is_empty(), "{top}");
    let map = browser.dom(&link(&site, "map"));
    ready(&map, "map");
    // ws to ehr carried both: a line for each.
    for verdict in ["allowed", "dropped"] {
        assert!(
            map.contains(&format!(
                "data-src=\"ws\" data-dst=\"ehr\" data-verdict=\"{verdict}\""
            )),
            "{map}"
        );
    }
    assert!(count(&map, "class=\"node\"") >= 3, "{map}");

    for view in ["matrix", "flows", "top", "map", "agents", "inventory"] {
        browser.screenshot(&link(&site, view), &shots.join(format!("{view}.png")));
    }
}
