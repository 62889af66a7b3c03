//! Reaching the control plane: the address and files from the flags,
//! their environment variables or the config file, and the channel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wardline_policy::yaml::{self, Limits, YamlError};
use wardline_proto::v1::management_client::ManagementClient;
use wardline_tls::{MAX_MESSAGE_BYTES, ServerAddress};

use crate::cli::ConnectionArgs;
use crate::failure::{EXIT_FAILURE, EXIT_UNAVAILABLE, Failure, fail};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the config file may ask of the YAML reader: it is four lines.
const CONFIG_LIMITS: Limits = Limits {
    what: "a wardctl configuration",
    max_bytes: 64 << 10,
    max_depth: 8,
    max_values: 1_000,
    max_alias_replays: 100,
};

/// `~/.config/wardline/wardctl.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    endpoint: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// Where the control plane is and the files to prove who this is.
pub struct Connection {
    pub endpoint: ServerAddress,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where `wardctl login` keeps the second-factor session's token.
    pub session: PathBuf,
}

/// The header a session's token travels in.
pub const SESSION_HEADER: &str = "x-wardline-session";

/// A management client whose every call carries the session's token, if
/// there is one.
pub type Client = ManagementClient<InterceptedService<Channel, SessionToken>>;

/// Adds the token to each call.
#[derive(Clone)]
pub struct SessionToken(Option<AsciiMetadataValue>);

impl Interceptor for SessionToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert(SESSION_HEADER, token.clone());
        }
        Ok(req)
    }
}

/// The default session file: one per operator certificate, under
/// `$XDG_CACHE_HOME/wardline` (else `~/.cache/wardline`).
fn default_session(cert: &Path) -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let which = std::fs::read(cert).ok()?;
    let id = hex::encode(&Sha256::digest(&which)[..8]);
    Some(dir.join("wardline").join(format!("session-{id}")))
}

/// The token of the session file, if there is one.
pub fn read_session(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// Keeps `token` where only this user can read it.
pub fn write_session(path: &Path, token: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: std::io::Error| fail(EXIT_FAILURE, format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(err)
}

/// Each setting from its flag or environment variable (clap reads both),
/// else from the config file.
pub fn connection(args: &ConnectionArgs) -> Result<Connection, Failure> {
    let path = args.config.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/wardline/wardctl.yaml"))
    });
    let file: ConfigFile = match &path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", p.display())))?;
            config_file(&text).map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", p.display())))?
        }
        _ => ConfigFile::default(),
    };
    let endpoint = match (&args.endpoint, file.endpoint) {
        (Some(text), _) => text
            .parse::<ServerAddress>()
            .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?,
        (None, Some(text)) => text.parse::<ServerAddress>().map_err(|e| {
            let p = path.as_deref().unwrap_or_else(|| "config file".as_ref());
            fail(EXIT_FAILURE, format!("{}: endpoint: {e}", p.display()))
        })?,
        (None, None) => {
            return Err(fail(
                EXIT_FAILURE,
                "no endpoint: give --endpoint, WARDCTL_ENDPOINT or the config file",
            ));
        }
    };
    let need = |v: Option<PathBuf>, what: &str| {
        v.ok_or_else(|| {
            fail(
                EXIT_FAILURE,
                format!(
                    "no {what}: give --{what}, set the environment variable, or the config file"
                ),
            )
        })
    };
    let cert = need(args.cert.clone().or(file.cert_file), "cert")?;
    let session = args
        .session
        .clone()
        .or_else(|| default_session(&cert))
        .ok_or_else(|| {
            fail(
                EXIT_FAILURE,
                "no place for the session file: give --session, WARDCTL_SESSION, or set HOME",
            )
        })?;
    Ok(Connection {
        endpoint,
        ca: need(args.ca.clone().or(file.ca_file), "ca")?,
        cert,
        key: need(args.key.clone().or(file.key_file), "key")?,
        session,
    })
}

/// Reads the config file's text, within [`CONFIG_LIMITS`].
fn config_file(text: &str) -> Result<ConfigFile, YamlError> {
    yaml::from_str(text, &CONFIG_LIMITS)
}

/// A management client over mutual TLS, built by `wardline-tls` with its
/// checks of the files and its connect timeout.
pub async fn client(c: &Connection) -> Result<Client, Failure> {
    let channel = wardline_tls::client_endpoint(&c.endpoint, &c.ca, &c.cert, &c.key)
        .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| {
            let mut msg = format!("{}: {e}", c.endpoint);
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            fail(EXIT_UNAVAILABLE, msg)
        })?;
    // A token that is no header value is not sent: the control plane then
    // asks for a new session, which replaces the file.
    let token = read_session(&c.session).and_then(|t| MetadataValue::try_from(t).ok());
    Ok(
        ManagementClient::with_interceptor(channel, SessionToken(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_read() {
        let file = config_file("endpoint: cp.example:7443\ncaFile: /ca.pem\n").unwrap();
        assert_eq!(file.endpoint.as_deref(), Some("cp.example:7443"));
        assert_eq!(file.ca_file, Some(PathBuf::from("/ca.pem")));
        let err = config_file("endpont: x\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 1, column 1: unknown field `endpont`"),
            "{err}"
        );
    }

    #[test]
    fn a_config_file_over_the_size_limit_is_refused() {
        let text = format!("endpoint: x\n{}", "#".repeat(CONFIG_LIMITS.max_bytes));
        assert_eq!(
            config_file(&text).unwrap_err().to_string(),
            format!(
                "{} bytes is too large for a wardctl configuration (at most 65536 bytes)",
                text.len()
            )
        );
    }

    #[test]
    fn alias_and_nesting_bombs_are_refused() {
        // No field of the file holds a list or a mapping, so a bomb is
        // refused at its first bracket, before it can expand.
        let mut bomb =
            String::from("endpoint:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (anchor, alias) in "bcdefghi".chars().zip("abcdefgh".chars()) {
            let aliases = vec![format!("*{alias}"); 9].join(", ");
            bomb.push_str(&format!("  - &{anchor} [{aliases}]\n"));
        }
        let nested = format!("{}{}\n", "[".repeat(100), "]".repeat(100));
        let mappings = format!("caFile: {}x{}\n", "{a: ".repeat(100), "}".repeat(100));
        for text in [bomb, nested, mappings] {
            let err = config_file(&text).expect_err(&text);
            assert!(err.location.is_some_and(|at| at.line <= 2), "{err}");
        }
    }
}
