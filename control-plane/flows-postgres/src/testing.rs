//! A PostgreSQL 15 server of a test's own (Debian's, in
//! `/usr/lib/postgresql/15/bin`): a cluster in a temporary folder, trusted
//! user `wardline`, database `wardline`, on 127.0.0.1 and a free port,
//! stopped when dropped. As root it is the `postgres` user's (initdb
//! refuses root). For tests only: it panics on any failure.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of its own, stopped (by its PID's pg_ctl, fast) on
/// drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    root: bool,
    netns: Option<String>,
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
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "wardline", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-o")
            .arg(format!(
                "-k {} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off",
                pg.data.display()
            ))
            .args(["-w", "-l"])
            .arg(pg.dir.path().join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        let out = pg
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "wardline"])
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

    /// The database `wardline`, user `wardline` (trusted).
    pub fn url(&self) -> String {
        format!("postgresql://wardline@127.0.0.1:{}/wardline", self.port)
    }

    /// `sql`'s one text value, through psql.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
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
