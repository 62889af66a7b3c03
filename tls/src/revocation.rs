//! Certificates the site has revoked, refused at every handshake and on
//! every call.
//!
//! A revocation names one certificate by its serial number, or every
//! certificate of one role and name issued (its `notBefore`) at or before a
//! given instant: a node's or operator's lost key, whatever its serial,
//! while a certificate issued to the same name afterwards is accepted. The
//! control plane keeps revocations in its store and gives each replica's
//! [`RevocationList`] the current set; [`server_config`](crate::server_config)
//! consults it in the handshake, and the server again for each request of a
//! connection opened before the revocation.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::identity::{Identity, Role, identity_of};

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// The certificate with this serial number (big-endian bytes, without
    /// leading zeros).
    Serial(Vec<u8>),
    /// Every certificate of `role` for `name` whose validity starts at or
    /// before `issued_until` (seconds since the epoch).
    Name {
        role: Role,
        name: String,
        issued_until: u64,
    },
}

/// The revocations in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    serials: HashSet<Vec<u8>>,
    names: HashMap<(Role, String), u64>,
}

/// Why a certificate is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub identity: Option<Identity>,
    pub serial: String,
    pub by: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(id) => write!(
                f,
                "the certificate of {id} (serial {}) is revoked ({})",
                self.serial, self.by
            ),
            None => write!(
                f,
                "the certificate with serial {} is revoked ({})",
                self.serial, self.by
            ),
        }
    }
}

/// A serial number in the form `wardctl` prints and takes: lowercase hex.
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(serial)
}

/// Parses a serial written in hex (colons allowed, as `openssl` prints it).
pub fn parse_serial(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    hex::decode(padded).ok().map(strip)
}

fn strip(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes.remove(0);
    }
    bytes
}

/// What revocation checks read from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub serial: Vec<u8>,
    /// Seconds since the epoch.
    pub not_before: u64,
    pub not_after: u64,
    pub identity: Option<Identity>,
}

impl CertificateFacts {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn of(der: &[u8]) -> Option<CertificateFacts> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertificateFacts {
            serial: strip(cert.raw_serial().to_vec()),
            not_before: u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0),
            not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            identity: identity_of(der).ok(),
        })
    }
}

impl Revoked {
    pub fn new(revocations: impl IntoIterator<Item = Revocation>) -> Revoked {
        let mut out = Revoked::default();
        for r in revocations {
            match r {
                Revocation::Serial(s) => {
                    out.serials.insert(strip(s));
                }
                Revocation::Name {
                    role,
                    name,
                    issued_until,
                } => {
                    let until = out.names.entry((role, name)).or_insert(issued_until);
                    *until = (*until).max(issued_until);
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.names.is_empty()
    }

    /// Why the certificate with `facts` is revoked, if it is.
    pub fn refuses(&self, facts: &CertificateFacts) -> Option<Refusal> {
        let refusal = |by| Refusal {
            identity: facts.identity.clone(),
            serial: serial_hex(&facts.serial),
            by,
        };
        if self.serials.contains(&facts.serial) {
            return Some(refusal("by serial"));
        }
        let id = facts.identity.as_ref()?;
        let until = self.names.get(&(id.role, id.name.clone()))?;
        (facts.not_before <= *until).then(|| refusal("by name: issued before the revocation"))
    }

    /// [`Revoked::refuses`] for a DER certificate. A certificate that does
    /// not parse is not judged here (the chain check refuses it).
    pub fn refuses_der(&self, der: &[u8]) -> Option<Refusal> {
        if self.is_empty() {
            return None;
        }
        self.refuses(&CertificateFacts::of(der)?)
    }
}

/// A replica's current revocations, shared by its TLS acceptor and its
/// services, replaced whole when the store's set changes.
#[derive(Clone, Debug, Default)]
pub struct RevocationList(Arc<RwLock<Arc<Revoked>>>);

impl RevocationList {
    pub fn set(&self, revoked: Revoked) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
    }

    pub fn current(&self) -> Arc<Revoked> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(serial: &[u8], not_before: u64, role: Role, name: &str) -> CertificateFacts {
        CertificateFacts {
            serial: serial.to_vec(),
            not_before,
            not_after: not_before + 86_400,
            identity: Some(Identity {
                role,
                name: name.to_owned(),
            }),
        }
    }

    #[test]
    fn by_serial_and_by_name_before_a_time() {
        let revoked = Revoked::new([
            Revocation::Serial(vec![0, 0x12, 0x34]),
            Revocation::Name {
                role: Role::Agent,
                name: "gw-2".into(),
                issued_until: 1_000,
            },
        ]);
        assert!(
            revoked
                .refuses(&facts(&[0x12, 0x34], 5_000, Role::Operator, "alice"))
                .is_some()
        );
        assert!(
            revoked
                .refuses(&facts(&[0x12, 0x35], 5_000, Role::Operator, "alice"))
                .is_none()
        );
        assert!(
            revoked
                .refuses(&facts(&[9], 1_000, Role::Agent, "gw-2"))
                .is_some()
        );
        assert!(
            revoked
                .refuses(&facts(&[9], 1_001, Role::Agent, "gw-2"))
                .is_none(),
            "issued after the revocation"
        );
        assert!(
            revoked
                .refuses(&facts(&[9], 10, Role::Operator, "gw-2"))
                .is_none(),
            "another role of the same name"
        );
    }

    #[test]
    fn serials_read_as_openssl_and_wardctl_print_them() {
        assert_eq!(parse_serial("0a:1B:ff"), Some(vec![0x0a, 0x1b, 0xff]));
        assert_eq!(parse_serial("00a1"), Some(vec![0xa1]));
        assert_eq!(parse_serial("abc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(parse_serial("xyz"), None);
        assert_eq!(parse_serial(""), None);
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "0abc");
    }
}
