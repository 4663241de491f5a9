//! walseal: encrypted, compressed WAL archiving and restore for PostgreSQL.
//!
//! `main.rs` parses flags and calls [`run`]; everything else lives in the concept modules:
//! [`keys`] (master keys), [`seal`] (the object format), [`storage`] (object_store backends),
//! [`wal`] (file names, page headers), [`archive`] (`wal-push`), [`restore`] (`wal-fetch`),
//! [`repository`] (the repository identity record).
#![forbid(unsafe_code)]

pub mod archive;
pub mod audit;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod drill;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod keysource;
pub mod pgwal;
pub mod recipient;
pub mod redact;
pub mod rekey;
pub mod repo;
pub mod repository;
pub mod restore;
pub mod retain;
pub mod seal;
pub mod secret;
pub mod signer;
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
    let op = cli.command.name();
    // What the audit log records for this command: the object and its size.
    let (result, object, bytes): (Result<()>, String, u64) = match cli.command {
        Command::Keygen {
            passphrase: true, ..
        } => {
            let entry = keysource::passphrase_keygen()?;
            print!("{entry}");
            eprintln!("walseal: add the entry above to the config file and set WALSEAL_PASSPHRASE where walseal runs");
            return Ok(());
        }
        Command::Keygen {
            output: Some(output),
            recipient: true,
            ..
        } => {
            let recipient = recipient::keygen(&output)?;
            println!("{recipient}");
            eprintln!(
                "walseal: wrote identity {} to {} (mode 0600); give the database host only the recipient printed above (WALSEAL_RECIPIENT) and keep the identity file on restore hosts and in escrow",
                recipient.id(),
                output.display()
            );
            return Ok(());
        }
        Command::Keygen {
            output: Some(output),
            signer: true,
            ..
        } => {
            let public = signer::keygen(&output)?;
            println!("{public}");
            eprintln!(
                "walseal: wrote signer {} to {} (mode 0600); keep it on the database host (signer_file) and give restore hosts the public line printed above (trusted_signers)",
                public.id(),
                output.display()
            );
            return Ok(());
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
            return Ok(());
        }
        Command::Audit { action } => return commands::audit(&cfg, action),
        Command::Init { json } => (commands::init(&cfg, json), "repository".into(), 0),
        Command::Key { action } => return commands::key(&cfg, action),
        Command::WalPush { path } => {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                block_on(archive::wal_push(&cfg, &path)).map(|_| ()),
                name,
                bytes,
            )
        }
        Command::WalFetch { name, dest } => {
            let object = match std::env::var_os(restore::prefetch::WORKER_ENV) {
                Some(_) => format!("prefetch after {name}"),
                None => name.clone(),
            };
            match block_on(restore::wal_fetch(&cfg, &name, &dest)) {
                Ok(bytes) => (Ok(()), object, bytes),
                Err(e) => (Err(e), object, 0),
            }
        }
        Command::Backup(args) => (commands::backup(&cfg, &args), "base backup".into(), 0),
        Command::Restore(args) => {
            let object = format!("backup {}", args.backup);
            (
                commands::restore(&cfg, cli.global.config.as_deref(), &args),
                object,
                0,
            )
        }
        Command::Drill(args) => {
            let object = format!("backup {}", args.backup);
            (
                commands::drill(&cfg, cli.global.config.as_deref(), &args),
                object,
                0,
            )
        }
        Command::List { json } => return commands::list(&cfg, json),
        Command::Verify { quick, jobs, json } => (
            commands::verify(&cfg, quick, jobs, json),
            "repository".into(),
            0,
        ),
        Command::Rekey { to, jobs, json } => (
            commands::rekey(&cfg, to.as_deref(), jobs, json),
            "repository".into(),
            0,
        ),
        Command::Check { pg, wait, json } => {
            return commands::check(&cfg, pg.as_deref(), wait, json)
        }
        Command::Status {
            pg,
            json,
            prometheus,
        } => return commands::status(&cfg, pg.as_deref(), json, prometheus.as_deref()),
        Command::Retain {
            keep_full,
            keep_days,
            dry_run,
            json,
        } => (
            commands::retain(
                &cfg,
                retain::Policy {
                    keep_full,
                    keep_days,
                },
                dry_run,
                json,
            ),
            "repository".into(),
            0,
        ),
    };
    let outcome = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) if e.kind() == ErrorKind::NotFound => "not found".to_string(),
        Err(e) => format!("error {}", e.kind().exit_code()),
    };
    // A wal-fetch of a file that is not archived used no key: PostgreSQL probes for every
    // .history file and the next segment at the end of recovery, and a standby does so every
    // few seconds, which would flood the log.
    let key_unused = op == "wal-fetch" && outcome == "not found";
    if !key_unused {
        audit::append(cfg.audit_log.as_deref(), op, &object, bytes, &outcome);
    }
    result
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
