//! The `walseal` binary: parse flags, run, map the error to the documented exit code.

use std::process::ExitCode;

use clap::Parser;
use walseal::cli::Cli;
use walseal::error::ErrorKind;

fn main() -> ExitCode {
    let is_fetch = std::env::args().nth(1).is_some_and(|a| a == "wal-fetch")
        || std::env::args().any(|a| a == "wal-fetch");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                // A broken restore_command must stop recovery, not look like "end of archive".
                _ if is_fetch => ExitCode::from(ErrorKind::Usage.fetch_exit_code()),
                _ => ExitCode::from(ErrorKind::Usage.exit_code()),
            };
        }
    };
    let command = cli.command.name();
    match walseal::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = if command == "wal-fetch" {
                err.kind().fetch_exit_code()
            } else {
                err.kind().exit_code()
            };
            if err.kind() == ErrorKind::NotFound && command == "wal-fetch" {
                // PostgreSQL probes for files that do not exist all the time: not an error.
                tracing::info!("{err}");
            } else {
                eprintln!("walseal {command}: error: {err}");
            }
            ExitCode::from(code)
        }
    }
}
