//! walseal: encrypted, compressed WAL archiving and restore for PostgreSQL.
//!
//! `main.rs` parses flags and calls [`run`]; everything else lives in the concept modules:
//! [`keys`] (master keys), [`seal`] (the object format), [`storage`] (object_store backends),
//! [`wal`] (file names, page headers), [`archive`] (`wal-push`), [`restore`] (`wal-fetch`),
//! [`repository`] (the repository identity record).
#![forbid(unsafe_code)]

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod keysource;
pub mod rekey;
pub mod repository;
pub mod restore;
pub mod retain;
pub mod seal;
pub mod status;
pub mod storage;
pub mod time;
pub mod verify;
pub mod wal;

mod commands;

use cli::{Cli, Command};
use config::Config;
use error::{Error, ErrorKind, Result};

/// Runs one command to completion.
///
/// # Errors
/// Whatever the command reports; the caller maps the kind to an exit code.
pub fn run(cli: Cli) -> Result<()> {
    let cfg = Config::resolve(&cli.global)?;
    init_logging(&cfg.log_level);
    match cli.command {
        Command::Keygen {
            passphrase: true, ..
        } => {
            let entry = keysource::passphrase_keygen()?;
            print!("{entry}");
            eprintln!("walseal: add the entry above to the config file and set WALSEAL_PASSPHRASE where walseal runs");
            Ok(())
        }
        Command::Keygen { output, .. } => {
            let output =
                output.ok_or_else(|| Error::new(ErrorKind::Usage, "keygen needs -o FILE"))?;
            let id = keys::keygen(&output)?;
            println!("{id}");
            eprintln!(
                "walseal: wrote master key {id} to {} (mode 0600); keep a copy off this host",
                output.display()
            );
            Ok(())
        }
        Command::WalPush { path } => block_on(archive::wal_push(&cfg, &path)).map(|_| ()),
        Command::WalFetch { name, dest } => {
            block_on(restore::wal_fetch(&cfg, &name, &dest)).map(|_| ())
        }
        Command::Backup(args) => commands::backup(&cfg, &args),
        Command::Restore(args) => commands::restore(&cfg, cli.global.config.as_deref(), &args),
        Command::List { json } => commands::list(&cfg, json),
        Command::Verify { quick, jobs, json } => commands::verify(&cfg, quick, jobs, json),
        Command::Rekey { to, jobs, json } => commands::rekey(&cfg, to.as_deref(), jobs, json),
        Command::Check { pg, wait, json } => commands::check(&cfg, pg.as_deref(), wait, json),
        Command::Status {
            pg,
            json,
            prometheus,
        } => commands::status(&cfg, pg.as_deref(), json, prometheus.as_deref()),
        Command::Retain {
            keep_full,
            keep_days,
            dry_run,
            json,
        } => commands::retain(
            &cfg,
            retain::Policy {
                keep_full,
                keep_days,
            },
            dry_run,
            json,
        ),
    }
}

pub(crate) fn block_on<F: std::future::Future<Output = Result<T>>, T>(f: F) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot start the async runtime: {e}"),
            )
        })?
        .block_on(f)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("walseal={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("walseal=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}
