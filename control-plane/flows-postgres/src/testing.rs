//! A PostgreSQL 15 server of a test's own (Debian's, in
//! `/usr/lib/postgresql/15/bin`): a cluster in a temporary folder, user
//! `wardline`, database `wardline`, on 127.0.0.1 and a free port, stopped
//! when dropped. As a site runs it: over TCP only TLS, with a certificate
//! from a CA of its own ([`PgPki`]), and `cert` authentication (the client
//! certificate's common name the user); plaintext TCP has no `pg_hba.conf`
//! entry. Its own tools reach it by its Unix socket. As root it is the
//! `postgres` user's (initdb refuses root). For tests only: it panics on
//! any failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::PgTls;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A CA of a test database's own and what it issued, as PEM files in a
/// folder: `ca.pem`; `server.pem` and `server-key.pem` for 127.0.0.1 and
/// localhost; `client.pem` and `client-key.pem`, `CN=wardline`.
#[derive(Debug, Clone)]
pub struct PgPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl PgPki {
    /// Makes a new CA and its certificates in `dir` (created if absent);
    /// every call a different CA.
    pub fn generate(dir: &Path) -> PgPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "Wardline test PostgreSQL CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let issue = |cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = issue(
            "wardline-test-postgres",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = issue("wardline", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let pki = PgPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, pem) in [
            (&pki.ca, &ca_cert.pem()),
            (&pki.server_cert, &server.0),
            (&pki.server_key, &server.1),
            (&pki.client_cert, &client.0),
            (&pki.client_key, &client.1),
        ] {
            std::fs::write(path, pem).unwrap();
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        pki
    }

    /// What a replica connects with: this CA, and the client certificate.
    pub fn tls(&self) -> PgTls {
        PgTls {
            ca: self.ca.clone(),
            client: Some((self.client_cert.clone(), self.client_key.clone())),
        }
    }
}

/// A PostgreSQL server of its own, stopped (by its PID's pg_ctl, fast) on
/// drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    root: bool,
    netns: Option<String>,
    pki: PgPki,
}

impl Postgres {
    /// Starts one listening on 127.0.0.1.
    pub fn start() -> Postgres {
        Postgres::start_in(None)
    }

    /// Starts one listening on 127.0.0.1 of the network namespace
    /// `netns`, if any.
    pub fn start_in(netns: Option<&str>) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let root = is_root();
        std::fs::create_dir(&data).unwrap();
        let pki = PgPki::generate(&dir.path().join("pki"));
        if root {
            // initdb refuses root: the cluster is the postgres user's.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to postgres");
        }
        // Free on the host: the namespace's loopback is as free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            dir,
            data,
            port,
            root,
            netns: netns.map(str::to_owned),
            pki,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "wardline", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        // Its own tools by the socket; over TCP only TLS with a client
        // certificate (and no entry at all for plaintext).
        pg.write_as_owner(
            &pg.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all wardline 127.0.0.1/32 cert\n",
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-o")
            .arg(format!(
                "-k {} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c ssl=on \
                 -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
                pg.data.display(),
                pg.pki.server_cert.display(),
                pg.pki.server_key.display(),
                pg.pki.ca.display(),
            ))
            .args(["-w", "-l"])
            .arg(pg.dir.path().join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        let out = pg
            .command("createdb")
            .arg("-h")
            .arg(&pg.data)
            .args(["-p", &port.to_string(), "-U", "wardline"])
            .arg("wardline")
            .output()
            .unwrap();
        assert!(out.status.success(), "createdb: {out:?}");
        pg
    }

    fn command(&self, tool: &str) -> Command {
        let path = Path::new(BIN).join(tool);
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        if self.root {
            argv.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
        }
        argv.push(path.into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// The database `wardline`, user `wardline`, over TCP (with
    /// [`Postgres::tls`]).
    pub fn url(&self) -> String {
        format!("postgresql://wardline@127.0.0.1:{}/wardline", self.port)
    }

    /// Its certificates: what a replica connects with is `pki().tls()`.
    pub fn pki(&self) -> &PgPki {
        &self.pki
    }

    /// [`PgPki::tls`] of [`Postgres::pki`].
    pub fn tls(&self) -> PgTls {
        self.pki.tls()
    }

    /// The database over its Unix socket, which needs no TLS.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=wardline dbname=wardline",
            self.data.display(),
            self.port
        )
    }

    /// Writes `text` to `path` as the cluster's owner would.
    fn write_as_owner(&self, path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        if self.root {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {}", path.display());
        }
    }

    /// `sql`'s one text value, through psql.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-U", "wardline", "-d", "wardline", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
