//! A real Prometheus (Debian's `prometheus`) in a namespace, scraping what
//! a test names every second, and its HTTP query API.
//!
//! It runs under `ip netns exec`, listens on loopback in that namespace,
//! keeps its data in a directory of its own, and is ended by its PID when
//! the fixture drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::http_get;
use crate::netns::Netns;

/// Where Debian installs it (`cargo xtask setup` does).
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// One scrape target: its job, its address and the labels it gets.
pub struct Target<'a> {
    pub job: &'a str,
    pub address: SocketAddr,
    pub labels: &'a [(&'a str, &'a str)],
}

pub struct Prometheus {
    ns_name: String,
    api: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `targets` every second, and
    /// waits until it is ready.
    pub fn start(ns: &Netns, dir: &Path, targets: &[Target<'_>]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run `cargo xtask setup` (Debian package prometheus)"
        );
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for t in targets {
            let labels: Vec<String> = t
                .labels
                .iter()
                .map(|(k, v)| format!("{k}: {v:?}"))
                .collect();
            config.push_str(&format!(
                "  - job_name: {:?}\n    static_configs:\n      - targets: [{:?}]\n        labels: {{{}}}\n",
                format!("{}-{}", t.job, t.address.port()),
                t.address.to_string(),
                std::iter::once(format!("job: {:?}", t.job))
                    .chain(labels)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let api: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), PROMETHEUS])
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            ns_name: ns.name().to_owned(),
            api,
            dir,
            log,
            child: Some(child),
        };
        let start = Instant::now();
        while p.get(ns, "/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus is not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Ready is not scraping: targets start a few seconds later. Wait
        // until every target has been scraped once, so that what the test
        // does next is seen from before.
        let want = targets.len().to_string();
        while p
            .get(
                ns,
                &format!("/api/v1/query?query={}", percent_encode("count(up == 1)")),
            )
            .is_none_or(|(_, body)| !body.contains(&format!("\"{want}\"]")))
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus has not scraped all {want} targets:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, ns: &Netns, path: &str) -> Option<(u16, String)> {
        let (api, path) = (self.api, path.to_owned());
        ns.run_in(move || http_get(api, &path).ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instant query `expr`: its result vector (each element a
    /// `{metric, value}` object). Panics, with the answer, on an error.
    pub fn query(&self, ns: &Netns, expr: &str) -> Vec<serde_json::Value> {
        assert_eq!(ns.name(), self.ns_name, "query from Prometheus's namespace");
        let (code, body) = self
            .get(ns, &format!("/api/v1/query?query={}", percent_encode(expr)))
            .unwrap_or_else(|| panic!("prometheus does not answer {expr}:\n{}", self.log()));
        let answer: serde_json::Value = serde_json::from_str(body.trim())
            .unwrap_or_else(|e| panic!("{expr}: not JSON ({e}): {body}"));
        assert!(
            code == 200 && answer["status"] == "success",
            "{expr}: {code} {answer}"
        );
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value `expr` gives (its first series), as a number.
    pub fn value(&self, ns: &Netns, expr: &str) -> Option<f64> {
        self.query(ns, expr)
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

/// `s` for a URL's query string: unreserved characters as they are,
/// everything else as `%XX` bytes (RFC 3986).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::percent_encode(r#"sum by (verdict) (x{a="b"})"#),
            "sum%20by%20%28verdict%29%20%28x%7Ba%3D%22b%22%7D%29"
        );
    }
}
