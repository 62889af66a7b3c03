//! The commands that need no control plane: offline validation and the
//! site PKI's files.

use wardline_pki as pki;

use crate::cli::{LocalCommand, PkiCommand};
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
        LocalCommand::Pki(PkiCommand::Init { dir, site }) => {
            let paths = pki::init_ca(&dir, &site).map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            println!("site CA for {site:?} written: {paths:?}");
            Ok(())
        }
        LocalCommand::Pki(PkiCommand::Issue {
            dir,
            role,
            name,
            san,
            out,
            days,
        }) => {
            let out = out.as_deref().unwrap_or(&dir);
            let paths = pki::issue(&dir, role.into(), &name, &san, out, days)
                .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            println!("certificate for {name:?} written: {paths:?}");
            Ok(())
        }
    }
}
