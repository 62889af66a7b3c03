//! Debian's Chromium, headless, reading a replica's web dashboard as an
//! operator's browser would: the page's scripts run, its API calls go over
//! HTTPS to the replica, and what the test reads is the rendered document.
//!
//! Each load is a fresh browser profile signed in with a fresh link from
//! `wardctl dashboard login` (a link works once). The replica's
//! certificate is taken only with the public key the site issued it
//! (`--ignore-certificate-errors-spki-list`, a pin), not by turning
//! certificate checks off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Netns;

/// Where Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags that keep Chromium to the page on a closed network.
const QUIET: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
];

/// How long the page's scripts get to fetch and render (virtual time:
/// waiting on the network does not use it up).
const BUDGET_MS: &str = "8000";

/// A browser for one replica's dashboard.
pub struct Browser {
    ns_name: String,
    /// SHA-256 of the replica certificate's public key, base64.
    pin: String,
    dir: PathBuf,
    loads: usize,
}

impl Browser {
    /// For the dashboard whose certificate is `cert` (PEM), run in `ns`;
    /// profiles go under `dir`.
    pub fn new(ns: &Netns, cert: &Path, dir: &Path) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: `cargo xtask setup` installs Debian's chromium"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
                 | openssl dgst -sha256 -binary | base64",
            )
            .arg("sh")
            .arg(cert)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(pin.len(), 44, "a base64 SHA-256: {pin:?}");
        Browser {
            ns_name: ns.name().to_owned(),
            pin,
            dir: dir.to_owned(),
            loads: 0,
        }
    }

    fn chromium(&mut self, mode: &[String], url: &str) -> std::process::Output {
        self.loads += 1;
        let profile = self.dir.join(format!("chromium-{}", self.loads));
        std::fs::create_dir_all(&profile).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, CHROMIUM])
            .args(QUIET)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                self.pin
            ))
            .arg(format!("--virtual-time-budget={BUDGET_MS}"))
            .args(mode)
            .arg(url)
            .env("HOME", &profile)
            .stdin(Stdio::null())
            .output()
            .expect("chromium runs");
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The document `url` renders to, after its scripts ran.
    pub fn dom(&mut self, url: &str) -> String {
        let out = self.chromium(&["--dump-dom".to_owned()], url);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A screenshot of `url` at 1366x900 into `png`.
    pub fn screenshot(&mut self, url: &str, png: &Path) {
        let _ = std::fs::remove_file(png);
        self.chromium(
            &[
                format!("--screenshot={}", png.display()),
                "--window-size=1366,900".to_owned(),
            ],
            url,
        );
        let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", png.display());
    }
}

/// How often `needle` occurs in `haystack`.
pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
