//! A scratch site for tests of this crate and of its users: a CA, a
//! control-plane certificate for `localhost` and `127.0.0.1`, an agent
//! (`node-1`) and an operator (`alice`) certificate, in a temporary
//! directory removed on drop.

use std::path::{Path, PathBuf};

use wardline_tls::Role;

use crate::{IssuedPaths, init_ca, issue};

/// Validity of the certificates issued here, in days.
pub const DAYS: u32 = 30;

pub struct Site {
    dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
}

impl Site {
    pub fn new(site: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wardline-pki-{site}-"))
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a scratch directory: {err}"));
        let ca =
            init_ca(&dir.path().join("ca"), site).unwrap_or_else(|err| panic!("init_ca: {err}"));
        let this = Self { dir, ca: ca.cert };
        this.issue(Role::ControlPlane, "cp", &["localhost", "127.0.0.1"]);
        this.issue(Role::Agent, "node-1", &[]);
        this.issue(Role::Operator, "alice", &[]);
        this
    }

    /// The site's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Issues a certificate of `role` for `name` with the site CA.
    pub fn issue(&self, role: Role, name: &str, sans: &[&str]) -> IssuedPaths {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        issue(&self.ca_dir(), role, name, &sans, &self.certs_dir(), DAYS)
            .unwrap_or_else(|err| panic!("issue {role} {name}: {err}"))
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}-key.pem"))
    }
}
