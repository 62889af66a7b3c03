//! The commands that need no control plane: offline validation and the
//! site PKI's files.

use wardline_pki as pki;

use crate::cli::{LocalCommand, LocalPki};
use crate::failure::{EXIT_FAILURE, EXIT_INVALID, Failure, fail, read_file};

pub fn run(command: LocalCommand) -> Result<(), Failure> {
    match command {
        LocalCommand::Validate { file } => {
            let source = read_file(&file)?;
            match wardline_policy::parse(&source) {
                Ok(set) => {
                    println!(
                        "{}: valid ({} segments, {} policies)",
                        file.display(),
                        set.segments.len(),
                        set.policies.len()
                    );
                    Ok(())
                }
                Err(errors) => Err(fail(
                    EXIT_INVALID,
                    format!("{}: invalid:\n{errors}", file.display()),
                )),
            }
        }
    }
}

pub fn pki(command: LocalPki) -> Result<(), Failure> {
    match command {
        LocalPki::Init { dir, site } => {
            let paths = pki::init_ca(&dir, &site).map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            println!("site CA for {site:?} written: {paths:?}");
            Ok(())
        }
        LocalPki::Issue {
            dir,
            role,
            name,
            san,
            out,
            days,
        } => {
            let out = out.as_deref().unwrap_or(&dir);
            let paths = pki::issue(&dir, role.into(), &name, &san, out, days)
                .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            let serial = serial_of_file(&paths.cert)?;
            println!("certificate for {name:?} (serial {serial}) written: {paths:?}");
            Ok(())
        }
    }
}

/// The serial number of the first certificate in a PEM file.
pub fn serial_of_file(path: &std::path::Path) -> Result<String, Failure> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).map_err(|e| {
        fail(
            EXIT_FAILURE,
            format!("{}: not a PEM certificate: {e}", path.display()),
        )
    })?;
    let facts = wardline_tls::revocation::CertificateFacts::of(&der).ok_or_else(|| {
        fail(
            EXIT_FAILURE,
            format!("{}: the certificate cannot be parsed", path.display()),
        )
    })?;
    Ok(wardline_tls::revocation::serial_hex(&facts.serial))
}
