//! `wardctl`: the operators' command line for the Wardline control plane.
//!
//! Exit codes, for scripts:
//! 0 done; 1 any other failure; 2 bad command line; 3 policy invalid;
//! 4 stale revision (someone changed the policy first); 5 not found;
//! 6 control plane unreachable; 7 refused (certificate not accepted or not
//! allowed); 8 `status --check`: an agent is disconnected or behind; 9 the
//! stored history fails verification (`history --verify`); 10 `promote`:
//! refused, critical flows would be dropped.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod clinical;
mod connect;
mod failure;
mod flows;
mod governance;
mod local;
mod remote;
mod report;
mod table;

use cli::{Cli, Command, PkiCommand};
use failure::{EXIT_FAILURE, Failure};

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Local(command) => local::run(command),
        Command::Pki(PkiCommand::Local(command)) => local::pki(command),
        Command::Remote(command) => {
            let connection = connect::connection(&cli.connection)?;
            let mut client = connect::client(&connection).await?;
            remote::run(command, &mut client, &connection.ca).await
        }
        Command::Governance(command) => {
            let connection = connect::connection(&cli.connection)?;
            let mut client = connect::client(&connection).await?;
            governance::run(command, &mut client, &connection).await
        }
        Command::Clinical(command) => {
            let connection = connect::connection(&cli.connection)?;
            let mut client = connect::client(&connection).await?;
            clinical::run(command, &mut client).await
        }
        Command::Pki(PkiCommand::Remote(command)) => {
            let connection = connect::connection(&cli.connection)?;
            let mut client = connect::client(&connection).await?;
            remote::pki(command, &mut client).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardctl: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("wardctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
