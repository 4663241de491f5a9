//! The `walseal` binary: parse flags, run, map the error to the documented exit code.

use std::process::ExitCode;

use clap::Parser;
use walseal::cli::{Cli, Command};
use walseal::error::ErrorKind;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "wal-push" || a == "wal-fetch") {
        return_freed_buffers();
    }
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
    let fetch_dest = match &cli.command {
        Command::WalFetch { dest, .. } => Some(dest.clone()),
        _ => None,
    };
    match walseal::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = match &fetch_dest {
                Some(dest) => walseal::restore::fetch_exit_code(err.kind(), dest),
                None => err.kind().exit_code(),
            };
            if err.kind() == ErrorKind::NotFound && fetch_dest.is_some() {
                // PostgreSQL probes for files that do not exist all the time: not an error.
                tracing::info!("{err}");
            } else if fetch_dest.is_some() && code == 1 {
                eprintln!("walseal {command}: WARNING: storage outage on a standby (standby.signal): answering \"not available\" (exit 1) so that the standby stays up, streams meanwhile and retries restore_command: {err}");
            } else {
                eprintln!("walseal {command}: error: {err}");
            }
            ExitCode::from(code)
        }
    }
}

/// Makes glibc hand buffers of 128 KiB and more straight back to the system when freed,
/// instead of keeping up to twice the largest one freed so far: push-ahead seals several
/// segments one after another, and the process's peak memory should be that of the
/// sealings running at once (`docs/bench`: wal-push ≤ 16 MiB), not of all of them.
fn return_freed_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters. It runs first thing in main, before
    // this process has started any other thread, which is how glibc documents its use.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
