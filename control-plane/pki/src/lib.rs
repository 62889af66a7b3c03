//! The site PKI: one certificate authority per site, and the certificates it
//! issues to agents, operators and the control plane itself.
//!
//! Every party on the control plane's gRPC APIs authenticates with a
//! certificate from the site CA, and the certificate says who it is: the
//! subject's common name (CN) is the party's name (an agent's node name, an
//! operator's login, a control-plane host name), the organizational unit
//! (OU) its [`Role`], and the organization (O) the site.
//! [`wardline_tls::identity_of`] reads that back on the server side.
//!
//! Keys are ECDSA P-256. Private keys are written with mode 0600, and
//! nothing here ever overwrites an existing file: re-issuing a certificate
//! means removing the old one first.
//!
//! This crate owns the CA's files and the certificates it signs. It does
//! no networking and must not depend on the server or the store: `wardctl`
//! runs it offline, on the machine that keeps the CA key.
#![forbid(unsafe_code)]

pub mod renew;
#[cfg(feature = "test-support")]
pub mod testing;

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_policy::{NameProblem, NodeName};
use wardline_tls::Role;
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

/// File name of the site CA's certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the site CA's private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long a site CA is valid for: ten years.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// How far back the start of a new certificate's validity is set, so that a
/// host whose clock runs a little behind the issuer's accepts it at once.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// One day, the unit of [`issue`]'s validity.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest value of an X.520 organization name (`ub-organization-name`).
const MAX_SITE_LEN: usize = 64;
/// Longest DNS name.
const MAX_DNS_NAME_LEN: usize = 253;
/// Names that would collide with the CA's own files if a certificate were
/// issued into the CA directory.
const RESERVED_NAMES: [&str; 2] = ["ca", "ca-key"];

/// Errors of the site PKI. Each names the file, name or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A site CA already exists in the directory.
    #[error("a site CA already exists at {path}; refusing to overwrite it")]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },
    /// A certificate or key file already exists where a new one would go.
    #[error("{path} already exists; refusing to overwrite it (remove it first to re-issue)")]
    FileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The site name cannot be used as the CA's organization.
    #[error("invalid site name {site:?}: {reason}")]
    InvalidSite {
        /// The site name given.
        site: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name of a certificate holder is not acceptable for its role.
    #[error("invalid {role} name {name:?}: {reason}")]
    InvalidName {
        /// The role the certificate was for.
        role: Role,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A subject alternative name is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {san:?}: {reason}")]
    InvalidSan {
        /// The value given.
        san: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested validity period is empty or cannot be represented.
    #[error("invalid validity period: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate would stay valid after the CA that signs it expires.
    #[error(
        "certificate would expire at {not_after}, after the site CA in {ca} (expires {ca_not_after})"
    )]
    OutlivesCa {
        /// The CA certificate.
        ca: PathBuf,
        /// When the CA expires.
        ca_not_after: String,
        /// When the certificate would expire.
        not_after: String,
    },
    /// A directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file does not hold the PEM object expected.
    #[error("{path} is not a PEM {what}: {reason}")]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the file should hold.
        what: &'static str,
        /// What went wrong reading it.
        reason: String,
    },
    /// A file holds a certificate that cannot be parsed.
    #[error("cannot parse the certificate in {path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The CA directory holds a certificate that is not a CA.
    #[error("{path} is not a CA certificate (no CA basic constraint)")]
    NotCa {
        /// The certificate file.
        path: PathBuf,
    },
    /// The CA certificate carries no site (organization) name.
    #[error("the CA certificate in {path} has no organization (site) name")]
    NoSite {
        /// The certificate file.
        path: PathBuf,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key in {key} does not match the CA certificate in {cert}")]
    CaKeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// Key generation or signing failed.
    #[error("cannot {what}: {source}")]
    Crypto {
        /// The operation that failed.
        what: &'static str,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A private key file that others than its owner may read.
    #[error("{path} is readable by others (mode {mode:04o}); a private key must be 0600")]
    KeyReadable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate signing request cannot be honoured.
    #[error("certificate signing request refused: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// A subject attribute is not a readable string.
    #[error("certificate subject {attribute} is not a readable string")]
    UnreadableAttribute {
        /// The attribute (CN, OU, O).
        attribute: &'static str,
    },
}

/// Where [`init_ca`] wrote the site CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// The CA certificate (`ca.pem`), to be given to every party.
    pub cert: PathBuf,
    /// The CA private key (`ca-key.pem`, mode 0600), to be kept offline.
    pub key: PathBuf,
}

/// Where [`issue`] wrote a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// The certificate (`<name>.pem`).
    pub cert: PathBuf,
    /// The private key (`<name>-key.pem`, mode 0600).
    pub key: PathBuf,
}

/// Creates a site CA in `dir`: an ECDSA P-256 key and a self-signed CA
/// certificate valid for ten years, whose subject names the site.
///
/// Writes `ca.pem` and `ca-key.pem` (mode 0600), creating `dir` (mode 0700)
/// if needed. Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path, site: &str) -> Result<CaPaths, PkiError> {
    validate_site(site)?;
    let paths = CaPaths {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    for path in [&paths.cert, &paths.key] {
        if path.exists() {
            return Err(PkiError::CaExists { path: path.clone() });
        }
    }

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Crypto {
            what: "generate the CA key",
            source,
        })?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Wardline site CA {site}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, site);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
    let expiry = now
        .checked_add(CA_VALIDITY)
        .ok_or_else(|| PkiError::InvalidValidity {
            reason: "ten years from now is out of range".to_owned(),
        })?;
    params.not_after = to_offset(expiry)?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Crypto {
            what: "sign the CA certificate",
            source,
        })?;

    create_dir(dir)?;
    write_pair(&paths.cert, &cert.pem(), &paths.key, &key.serialize_pem())?;
    Ok(paths)
}

/// Issues a certificate for `name` in `role`, signed by the site CA in
/// `ca_dir`, valid for `days` days (at least one) from now. The start of
/// its validity is set five minutes back, so that hosts whose clocks run a
/// little behind accept it at once.
///
/// Writes `<name>.pem` and `<name>-key.pem` (mode 0600) into `out_dir`,
/// creating it (mode 0700) if needed; never overwrites either file.
///
/// The subject is CN = `name`, OU = the role, O = the CA's site. The
/// subject alternative names are `name` and each of `sans` (an IP address
/// SAN when the value parses as one, a DNS name otherwise): a control-plane
/// certificate needs every host name and address clients dial it by, e.g.
/// `localhost` and `127.0.0.1`. Agent and operator certificates are for
/// client authentication; control-plane certificates for both server and
/// client authentication.
///
/// `name` must be a lowercase DNS name, and for an agent a single DNS label
/// (the node name).
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    out_dir: &Path,
    days: u32,
) -> Result<IssuedPaths, PkiError> {
    if days == 0 {
        return Err(PkiError::InvalidValidity {
            reason: "a certificate must be valid for at least one day".to_owned(),
        });
    }
    let now = SystemTime::now();
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    let validity = DAY.saturating_mul(days);
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| PkiError::InvalidValidity {
            reason: format!("{days} days from now is out of range"),
        })?;
    issue_valid_between(ca_dir, role, name, sans, out_dir, not_before, not_after)
}

/// Like [`issue`], with an explicit validity window instead of a number of
/// days from now: for backdated or already expired certificates (expiry
/// drills, tests) and for certificates that start in the future.
///
/// `not_after` must be later than `not_before`, and no later than the CA's
/// own expiry.
pub fn issue_valid_between(
    ca_dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    out_dir: &Path,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<IssuedPaths, PkiError> {
    validate_name(role, name)?;
    let subject_alt_names = subject_alt_names(name, sans)?;
    let not_before = to_offset(not_before)?;
    let not_after = to_offset(not_after)?;
    if not_after <= not_before {
        return Err(PkiError::InvalidValidity {
            reason: format!(
                "not after ({}) must be later than not before ({})",
                rfc3339(not_after),
                rfc3339(not_before)
            ),
        });
    }

    let paths = IssuedPaths {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}-key.pem")),
    };
    for path in [&paths.cert, &paths.key] {
        if path.exists() {
            return Err(PkiError::FileExists { path: path.clone() });
        }
    }

    let ca = SiteCa::load(ca_dir)?;
    ca.check_outlives(not_after)?;

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Crypto {
            what: "generate a key",
            source,
        })?;
    let params = leaf_params(
        role,
        name,
        subject_alt_names,
        &ca.site,
        not_before,
        not_after,
    );
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| PkiError::Crypto {
            what: "sign the certificate",
            source,
        })?;

    create_dir(out_dir)?;
    write_pair(&paths.cert, &cert.pem(), &paths.key, &key.serialize_pem())?;
    Ok(paths)
}

/// The parameters of every certificate the site CA issues to a party:
/// CN = `name`, OU = the role, O = the site; not a CA; digital signatures
/// only, with the role's extended key usages; a random serial number.
fn leaf_params(
    role: Role,
    name: &str,
    subject_alt_names: Vec<SanType>,
    site: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, site);
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = extended_key_usages(role);
    params.use_authority_key_identifier_extension = true;
    // 16 random bytes, the top bit clear so that it reads as positive:
    // revocation and renewal lineage go by serial, so no two may meet.
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// The site CA loaded from its files, ready to sign.
struct SiteCa {
    /// The CA certificate's file, for error messages.
    cert_path: PathBuf,
    /// The site name (the CA's organization).
    site: String,
    /// When the CA expires.
    not_after: OffsetDateTime,
    /// The CA's name, key identifier and signing key.
    issuer: Issuer<'static, KeyPair>,
}

impl SiteCa {
    /// Loads `ca.pem` and `ca-key.pem` from `dir` and checks that they are a
    /// CA certificate and its key.
    fn load(dir: &Path) -> Result<Self, PkiError> {
        Self::load_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    /// Loads the CA certificate `cert_path` and its key `key_path`, with
    /// the same checks as [`SiteCa::load`].
    fn load_files(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (cert_path.to_owned(), key_path.to_owned());
        let cert_der = read_cert_der(&cert_path)?;
        let key_pem = read_to_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| PkiError::NotPem {
            path: key_path.clone(),
            what: "private key",
            reason: err.to_string(),
        })?;

        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|err| {
            PkiError::BadCertificate {
                path: cert_path.clone(),
                reason: err.to_string(),
            }
        })?;
        if !cert.is_ca() {
            return Err(PkiError::NotCa { path: cert_path });
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::CaKeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let site = site_of(&cert, &cert_path)?;
        let not_after = cert.validity().not_after.to_datetime();

        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key).map_err(|err| {
            PkiError::BadCertificate {
                path: cert_path.clone(),
                reason: err.to_string(),
            }
        })?;
        Ok(Self {
            cert_path,
            site,
            not_after,
            issuer,
        })
    }
}

impl SiteCa {
    /// Refuses a certificate that would outlive the CA.
    fn check_outlives(&self, not_after: OffsetDateTime) -> Result<(), PkiError> {
        if not_after > self.not_after {
            return Err(PkiError::OutlivesCa {
                ca: self.cert_path.clone(),
                ca_not_after: rfc3339(self.not_after),
                not_after: rfc3339(not_after),
            });
        }
        Ok(())
    }
}

/// The site named by a CA certificate's organization.
fn site_of(cert: &X509Certificate<'_>, path: &Path) -> Result<String, PkiError> {
    let subject: &X509Name<'_> = cert.subject();
    let sites = attribute_values(subject.iter_organization(), "O")?;
    match sites.as_slice() {
        [site] if !site.is_empty() => Ok((*site).to_owned()),
        _ => Err(PkiError::NoSite {
            path: path.to_owned(),
        }),
    }
}

/// The string values of some subject attributes.
fn attribute_values<'a>(
    attributes: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    attribute: &'static str,
) -> Result<Vec<&'a str>, PkiError> {
    attributes
        .map(|value| {
            value
                .as_str()
                .map_err(|_| PkiError::UnreadableAttribute { attribute })
        })
        .collect()
}

/// Reads the first PEM certificate of a file as DER.
fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let pem = fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cert = CertificateDer::from_pem_slice(&pem).map_err(|err| PkiError::NotPem {
        path: path.to_owned(),
        what: "certificate",
        reason: err.to_string(),
    })?;
    Ok(cert.to_vec())
}

/// Reads a whole text file.
fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Checks a site name: it becomes the organization (O) of every
/// certificate of the site.
fn validate_site(site: &str) -> Result<(), PkiError> {
    let reason = if site.trim().is_empty() {
        Some("must not be empty".to_owned())
    } else if site.chars().count() > MAX_SITE_LEN {
        Some(format!("must be at most {MAX_SITE_LEN} characters"))
    } else if site.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else if site.trim() != site {
        Some("must not start or end with white space".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PkiError::InvalidSite {
            site: site.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a certificate holder's name for its role.
fn validate_name(role: Role, name: &str) -> Result<(), PkiError> {
    let invalid = |reason: String| PkiError::InvalidName {
        role,
        name: name.to_owned(),
        reason,
    };
    if RESERVED_NAMES.contains(&name) {
        return Err(invalid(
            "is reserved for the site CA's own files".to_owned(),
        ));
    }
    match role {
        Role::Agent => name.parse::<NodeName>().map(drop).map_err(|err| {
            invalid(format!(
                "an agent's name must be its node name, a DNS label: {}",
                err.problem
            ))
        }),
        Role::Operator | Role::ControlPlane => {
            check_dns_name(name).map_err(|reason| invalid(format!("must be a DNS name: {reason}")))
        }
    }
}

/// The subject alternative names of a certificate: `name`, then `sans`
/// without repeats.
fn subject_alt_names(name: &str, sans: &[String]) -> Result<Vec<SanType>, PkiError> {
    let mut out = Vec::with_capacity(sans.len() + 1);
    let mut seen: Vec<&str> = Vec::with_capacity(sans.len() + 1);
    for value in std::iter::once(name).chain(sans.iter().map(String::as_str)) {
        if seen.contains(&value) {
            continue;
        }
        seen.push(value);
        let invalid = |reason: String| PkiError::InvalidSan {
            san: value.to_owned(),
            reason,
        };
        let san = match value.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                check_dns_name(value).map_err(|reason| {
                    invalid(format!("not an IP address, nor a DNS name: {reason}"))
                })?;
                SanType::DnsName(
                    value
                        .try_into()
                        .map_err(|err: rcgen::Error| invalid(err.to_string()))?,
                )
            }
        };
        out.push(san);
    }
    Ok(out)
}

/// Checks a DNS name: dot-separated labels, at most 253 characters.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(format!("must be at most {MAX_DNS_NAME_LEN} characters"));
    }
    for label in name.split('.') {
        if let Some(problem) = NameProblem::of(label) {
            return Err(format!("label {label:?}: {problem}"));
        }
    }
    Ok(())
}

/// Extended key usages of a certificate for `role`: client auth for
/// agents and operators, server and client auth for the control plane.
fn extended_key_usages(role: Role) -> Vec<ExtendedKeyUsagePurpose> {
    match role {
        Role::Agent | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Role::ControlPlane => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    }
}

/// Converts a system time to the representation certificates use.
fn to_offset(at: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let since_epoch = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|nanos| -nanos),
    };
    since_epoch
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .map(|at| at.replace_nanosecond(0).unwrap_or(at))
        .ok_or_else(|| PkiError::InvalidValidity {
            reason: "time out of range for a certificate".to_owned(),
        })
}

/// Formats a time for messages.
fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Creates a directory and its parents; a new directory gets mode 0700.
fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// Writes a certificate and its key, neither of which may exist yet. The
/// key is written first, with mode 0600; if the certificate then cannot be
/// written the key is removed again.
fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
) -> Result<(), PkiError> {
    write_new(key_path, key_pem, 0o600)?;
    if let Err(err) = write_new(cert_path, cert_pem, 0o644) {
        // Best effort: the key is useless without its certificate, and
        // leaving it would block a retry.
        if let Err(remove) = fs::remove_file(key_path) {
            tracing::warn!(path = %key_path.display(), error = %remove, "cannot remove key of a failed issue");
        }
        return Err(err);
    }
    Ok(())
}

/// Writes a file that must not exist yet, with the given mode on Unix.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::FileExists {
                path: path.to_owned(),
            }
        } else {
            PkiError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_are_dns_labels() {
        assert!(validate_name(Role::Agent, "node-1").is_ok());
        for bad in [
            "",
            "-node",
            "node-",
            "Node1",
            "node.example",
            "node_1",
            "ca",
        ] {
            let err = validate_name(Role::Agent, bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted as an agent name"));
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(validate_name(Role::Agent, &"a".repeat(64)).is_err());
    }

    #[test]
    fn other_names_are_dns_names() {
        assert!(validate_name(Role::ControlPlane, "cp.example.org").is_ok());
        assert!(validate_name(Role::Operator, "alice").is_ok());
        assert!(validate_name(Role::Operator, "alice..x").is_err());
        assert!(validate_name(Role::ControlPlane, "cp/../x").is_err());
    }

    #[test]
    fn sans_are_ips_or_dns_names() {
        let sans = subject_alt_names(
            "cp",
            &[
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
                "localhost".to_owned(),
                "cp".to_owned(),
            ],
        )
        .unwrap_or_else(|err| panic!("valid SANs refused: {err}"));
        assert_eq!(sans.len(), 4);
        assert!(matches!(sans[1], SanType::IpAddress(_)));
        let err = subject_alt_names("cp", &["bad name".to_owned()])
            .err()
            .unwrap_or_else(|| panic!("bad SAN accepted"));
        assert!(err.to_string().contains("\"bad name\""), "{err}");
    }

    #[test]
    fn sites_are_checked() {
        assert!(validate_site("Paris DC-1").is_ok());
        assert!(validate_site("").is_err());
        assert!(validate_site(" x").is_err());
        assert!(validate_site("a\nb").is_err());
        assert!(validate_site(&"s".repeat(65)).is_err());
    }
}
