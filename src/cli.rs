//! Command-line flags (clap). Only parsing and validation live here; `config` resolves them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Encrypted, compressed WAL archiving and restore for PostgreSQL.
///
/// Everything that leaves the database host is compressed (lz4) and encrypted (AES-256-GCM)
/// under per-object keys. Set in postgresql.conf:
///   archive_command = 'walseal wal-push %p'
///   restore_command = 'walseal wal-fetch %f %p'
#[derive(Debug, Parser)]
#[command(
    name = "walseal",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by every command. Each flag also reads its environment variable; both
/// override the config file.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// TOML configuration file (see README, "Configuration").
    #[arg(long, global = true, env = "WALSEAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository URL: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.
    #[arg(long, global = true, env = "WALSEAL_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Master key file(s) made by `walseal keygen`; several may be given separated by `:`,
    /// the first seals new objects.
    #[arg(
        long,
        global = true,
        env = "WALSEAL_KEY_FILE",
        value_name = "FILE[:FILE...]"
    )]
    pub key_file: Option<String>,
    /// Identity file(s) made by `walseal keygen --recipient` (`:`-separated): open objects
    /// sealed to their recipients. Restore hosts only.
    #[arg(
        long,
        global = true,
        env = "WALSEAL_IDENTITY_FILE",
        value_name = "FILE[:FILE...]"
    )]
    pub identity_file: Option<String>,
    /// Seal new objects to this recipient (`wsr1…`, printed by `walseal keygen --recipient`).
    /// A host given only a recipient can archive and back up but open nothing (push-only).
    #[arg(
        long = "seal-to",
        global = true,
        env = "WALSEAL_RECIPIENT",
        value_name = "RECIPIENT"
    )]
    pub recipient: Option<String>,
    /// Signer file made by `walseal keygen --signer`: signs what this host seals to a
    /// recipient (required on push-only hosts).
    #[arg(long, global = true, env = "WALSEAL_SIGNER_FILE", value_name = "FILE")]
    pub signer_file: Option<PathBuf>,
    /// Signers (`wss1…`, `:`- or `,`-separated) whose objects this host accepts when they are
    /// sealed to a recipient. Objects sealed to a recipient by anyone else are refused.
    #[arg(
        long,
        global = true,
        env = "WALSEAL_TRUSTED_SIGNERS",
        value_name = "SIGNER[,SIGNER...]"
    )]
    pub trusted_signers: Option<String>,
    /// Accept objects in format version 1 (written before walseal 0.2): they are not bound to
    /// a repository and, if sealed to a recipient, not signed. For migration only; `walseal
    /// rekey` converts them.
    #[arg(long, global = true, env = "WALSEAL_ALLOW_LEGACY", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_legacy: Option<bool>,
    /// The repository id (`walseal init` prints it): refuse a repository whose id differs.
    /// `restore` pins it in the restore_command it writes.
    #[arg(long, global = true, env = "WALSEAL_REPOSITORY_ID", value_name = "ID")]
    pub repository_id: Option<String>,
    /// Allow a plain-http storage endpoint (e.g. a test server on loopback). Off by default:
    /// data in transit is encrypted by TLS unless you allow this.
    #[arg(long, global = true, env = "WALSEAL_ALLOW_HTTP", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_http: Option<bool>,
    /// Time budget for each storage operation, retries included (config `storage_timeout_secs`,
    /// default 60).
    #[arg(long, global = true, env = "WALSEAL_STORAGE_TIMEOUT", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub storage_timeout: Option<u64>,
    /// Retries of a failed storage request within that budget (config `storage_retries`,
    /// default 3).
    #[arg(long, global = true, env = "WALSEAL_STORAGE_RETRIES", value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=20))]
    pub storage_retries: Option<u64>,
    /// How new objects are compressed: lz4 (default), zstd, zstd:LEVEL (1-19, default 3) or
    /// none (config `compression`). Every walseal that knows zstd reads all of them.
    #[arg(
        long,
        global = true,
        env = "WALSEAL_COMPRESSION",
        value_name = "METHOD"
    )]
    pub compression: Option<String>,
    /// wal-push: also archive up to N-1 further segments PostgreSQL has marked ready,
    /// concurrently, so that its later calls for them return at once (config
    /// `push_parallel`, default 4; 1 turns push-ahead off).
    #[arg(long, global = true, env = "WALSEAL_PUSH_PARALLEL", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=16))]
    pub push_parallel: Option<u64>,
    /// wal-fetch: fetch the next N segments in the background into a spool in pg_wal, so
    /// that recovery's later calls are served at once (config `fetch_prefetch`, default 8;
    /// 0 turns prefetch off).
    #[arg(long, global = true, env = "WALSEAL_FETCH_PREFETCH", value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=64))]
    pub fetch_prefetch: Option<u64>,
    /// Audit log: a JSON line per operation that uses a key, hash-chained (see README).
    #[arg(long, global = true, env = "WALSEAL_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "WALSEAL_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// walseal's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new random 256-bit master key file (mode 0600). Never overwrites.
    ///
    /// Prints the key id. Keep a copy of the key off this host: without it, nothing sealed under
    /// it can be restored.
    Keygen {
        /// Where to write the key.
        #[arg(
            short,
            long,
            value_name = "FILE",
            required_unless_present = "passphrase"
        )]
        output: Option<PathBuf>,
        /// Create an X25519 identity for push-only hosts instead: writes the identity (secret)
        /// to FILE and prints its recipient (public, `wsr1…`) on standard output.
        #[arg(
            long = "recipient",
            id = "keygen_recipient",
            conflicts_with = "passphrase",
            requires = "output"
        )]
        recipient: bool,
        /// Create an Ed25519 signer for a push-only host instead: writes the signer (secret)
        /// to FILE and prints its public half (`wss1…`) for trusted_signers on restore hosts.
        #[arg(
            long,
            conflicts_with_all = ["passphrase", "keygen_recipient"],
            requires = "output"
        )]
        signer: bool,
        /// Derive the key from a passphrase instead (PBKDF2-HMAC-SHA256, ~0.5 s of work): reads
        /// it from WALSEAL_PASSPHRASE or the first line of standard input, and prints the
        /// `[[keys]]` entry (salt, iterations, id) to put in the config file.
        #[arg(long, conflicts_with = "output")]
        passphrase: bool,
    },
    /// Create a repository at the configured location (once, before the first wal-push or
    /// backup; like pgBackRest's stanza-create).
    ///
    /// Writes the repository record with a new random repository id, which every object
    /// written later is bound to. Refuses a location that already holds a repository, or
    /// that holds other files. On a repository from before walseal 0.2 (format 1 objects),
    /// adds the record and leaves the objects as they are (read them with allow_legacy until
    /// `walseal rekey` converts them).
    Init {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive one WAL file (archive_command = 'walseal wal-push %p').
    ///
    /// Seals a segment, .partial, .history or .backup file and stores it in the repository.
    /// Exits 0 only once the object is durably stored. Pushing identical content again
    /// succeeds without rewriting; different content under an existing name is refused.
    WalPush {
        /// Path of the WAL file (PostgreSQL's %p, relative to the data directory).
        path: PathBuf,
    },
    /// Restore one WAL file (restore_command = 'walseal wal-fetch %f %p').
    ///
    /// Exit codes: 0 restored; 1 not in the archive (PostgreSQL's normal end of archive);
    /// 202-209 anything that must stop recovery (tampered or truncated object, wrong or missing
    /// key, storage unreachable): PostgreSQL aborts recovery on a code above 125 instead of
    /// promoting with WAL missing. On a standby (standby.signal), storage unreachable after
    /// the retries answers 1 with a WARNING: the standby streams meanwhile and retries.
    WalFetch {
        /// WAL file name (PostgreSQL's %f).
        name: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
    },
    /// Take an encrypted base backup over the replication protocol (run it from cron).
    ///
    /// Connects like pg_basebackup (a role with REPLICATION, a `replication` line in
    /// pg_hba.conf), streams every tablespace and the backup manifest into sealed parts, waits
    /// until the WAL the backup needs is archived, then writes the backup's record. Only then is
    /// the backup complete and listed. On PostgreSQL 17+ with summarize_wal = on,
    /// --incremental or --full-every store only what changed since the newest backup. A
    /// standby can be backed up too (its primary archives the last segment).
    Backup(BackupArgs),
    /// Restore a base backup into a new data directory, ready for point-in-time recovery.
    ///
    /// Checks every file against the backup manifest and writes recovery.signal plus
    /// restore_command and the recovery target into postgresql.auto.conf: start the server
    /// afterwards. An incremental backup is rebuilt from its chain (its full backup and the
    /// incrementals up to it), as pg_combinebackup would. Run it as the OS user PostgreSQL
    /// runs as.
    Restore(RestoreArgs),
    /// Restore drill: restore a backup into a scratch directory, start PostgreSQL on it (no
    /// network, no archiving), replay WAL, check the data, measure, and record the result.
    ///
    /// Run it from cron on a restore host, as the OS user PostgreSQL runs as. Exit codes: 0
    /// every check passed; the restore's own code (1-12) if the backup could not be restored;
    /// 13 the server did not start, recovery failed, or a signal stopped the drill; 14 replay
    /// stopped short of the end of the archive or the target (WAL missing); 15 a check failed.
    Drill(DrillArgs),
    /// Prove the repository complete and authentic: open every object, check every backup
    /// against its parts and the WAL for gaps. Exit 0 only when all is well (5 otherwise).
    Verify {
        /// Check listing and WAL continuity only, without reading object bodies.
        #[arg(long)]
        quick: bool,
        /// Objects checked in parallel (1 to 64).
        #[arg(long, default_value_t = 4, value_parser = parse_jobs)]
        jobs: usize,
        /// JSON output (see README, "verify").
        #[arg(long)]
        json: bool,
    },
    /// Remove backups beyond the retention policy and the WAL no kept backup needs.
    ///
    /// Never removes the newest complete backup, a backup a kept incremental builds on, or WAL
    /// a kept backup needs for recovery to any point after it; also removes parts of
    /// interrupted backups.
    Retain {
        /// Keep the newest N complete full backups, each with the incrementals built on it.
        #[arg(long, value_name = "N")]
        keep_full: Option<usize>,
        /// Keep what recovery to any time in the last D days needs.
        #[arg(long, value_name = "D")]
        keep_days: Option<f64>,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the setup line by line: configuration, key, repository (write/read/delete a probe),
    /// PostgreSQL's archiving settings, and a forced WAL switch reaching the repository.
    Check {
        /// Connection (SQL, as a superuser or a role allowed to run pg_switch_wal): libpq
        /// conninfo or URL; unset parts from PGHOST, PGPORT, PGUSER, ...
        #[arg(long, value_name = "CONNINFO")]
        pg: Option<String>,
        /// Seconds to wait for the switched segment to reach the repository.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        wait: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// What monitoring alerts on: newest archived segment and its age, archive lag, backups and
    /// their age, repository size, last verify result.
    Status {
        /// Measure the archive lag against this cluster (SQL connection).
        #[arg(long, value_name = "CONNINFO")]
        pg: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Write the Prometheus text format to FILE (atomically; `-` for stdout), e.g. into
        /// node_exporter's textfile directory.
        #[arg(long, value_name = "FILE")]
        prometheus: Option<std::path::PathBuf>,
    },
    /// Rotate keys: rewrap every object sealed under another key so that it opens with the
    /// active key (or --to KEYID) alone; the old key can then be retired. Resumable, parallel,
    /// safe while archiving goes on; payloads are not re-encrypted.
    Rekey {
        /// Target key id (default: the active key, the first configured).
        #[arg(long, value_name = "KEYID")]
        to: Option<String>,
        /// Objects rewrapped in parallel (1 to 64).
        #[arg(long, default_value_t = 4, value_parser = parse_jobs)]
        jobs: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The audit log: verify its chain and MACs, or seal its new lines into the repository.
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Key escrow: export a master key sealed under a passphrase, or import one.
    Key {
        /// What to do.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// List complete backups and the archived WAL per timeline.
    List {
        /// JSON output: an object with `backups` (oldest first, each with its `parent` and `chain`),
        /// `incomplete`, `wal` and `drills`.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `walseal backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Connection: libpq conninfo ('host=H port=P user=U') or URL (postgresql://U@H:P/).
    /// Unset parts come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGPASSFILE/~/.pgpass, PGSSLMODE.
    #[arg(long, value_name = "CONNINFO")]
    pub pg: Option<String>,
    /// Request an immediate checkpoint instead of a spread one (PostgreSQL's default).
    #[arg(long)]
    pub fast: bool,
    /// Parts sealed at once (1 to 64; default: one per core, at most 4). Memory is about
    /// (N + 3) × --part-size.
    #[arg(long, value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Plaintext bytes per sealed part (KiB, MiB, GiB), 1MiB to 1GiB. Memory use is about
    /// three parts.
    #[arg(long, default_value = "32MiB", value_name = "SIZE", value_parser = part_size)]
    pub part_size: u64,
    /// Seconds to wait for the WAL the backup needs to reach the archive.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wal_timeout: u64,
    /// Print the backup record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Progress bar: auto (on a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub progress: String,
    /// Incremental backup (PostgreSQL 17+, summarize_wal = on): only what changed since the
    /// newest complete backup, which becomes its parent; once the parent's chain holds 400
    /// incrementals, a full backup instead. Restore rebuilds the chain itself.
    #[arg(long, conflicts_with = "full_every")]
    pub incremental: bool,
    /// PostgreSQL 17+, summarize_wal = on: a full backup when the newest full one is older than
    /// this (e.g. 7d, 36h), when there is no usable parent or the server cannot take the
    /// incremental; an incremental otherwise. One cron line for "weekly full, daily incremental".
    #[arg(long, value_name = "PERIOD", value_parser = parse_period)]
    pub full_every: Option<f64>,
    /// Do not let the server verify page checksums while reading (on clusters with data
    /// checksums). A damaged page is then backed up as it is instead of failing the backup:
    /// accept that only knowingly.
    #[arg(long)]
    pub no_verify_checksums: bool,
}

/// `7d`, `36h`, `90m`, `3600s` (or plain seconds) as seconds.
fn parse_period(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a period such as 7d, 36h or 90m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit in {s:?}: use s, m, h, d or w")),
    };
    if n == 0 {
        return Err("the period must be longer than 0".into());
    }
    n.checked_mul(mult)
        .map(|v| v as f64)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Flags of `walseal restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id (see `walseal list`) or `latest`.
    pub backup: String,
    /// Parts downloaded and opened at once (1 to 64; default: one per core, at most 4).
    /// Memory is about (N + 2) × the backup's --part-size.
    #[arg(long, value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Data directory to create; must not exist or be empty.
    pub pgdata: PathBuf,
    /// Recover to this time (e.g. '2026-11-28 08:15:00+00'; no zone means UTC).
    #[arg(long, value_name = "TIME", group = "target")]
    pub target_time: Option<String>,
    /// Recover to this WAL location (e.g. 0/5000028).
    #[arg(long, value_name = "LSN", group = "target")]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "XID", group = "target")]
    pub target_xid: Option<String>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    pub target_name: Option<String>,
    /// Timeline to recover along: latest, current, or a number.
    #[arg(long, default_value = "latest", value_name = "TLI")]
    pub target_timeline: String,
    /// What the server does at the target: pause, promote or shutdown.
    #[arg(long, default_value = "pause", value_parser = ["pause", "promote", "shutdown"])]
    pub target_action: String,
    /// Put a tablespace at another location: OLD=NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Write through the page cache instead of O_DIRECT (the default bypasses it for large
    /// files: a restore writes the whole cluster once and reads none of it back).
    #[arg(long)]
    pub buffered: bool,
    /// Do not wait for the restored files to reach the disk (by default walseal flushes them,
    /// as pg_basebackup does, before it reports success). For tests: after a crash, a
    /// cluster restored with --no-sync may be incomplete.
    #[arg(long)]
    pub no_sync: bool,
    /// Print the restored backup's record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write this one backup exactly as PostgreSQL sent it, with its own backup_manifest and
    /// no recovery settings: an incremental backup stays incremental (INCREMENTAL.* files),
    /// as input for pg_combinebackup. No chain is rebuilt; no target may be given.
    #[arg(long, conflicts_with = "target")]
    pub raw: bool,
}

/// Flags of `walseal drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Backup id (see `walseal list`) or `latest`.
    #[arg(default_value = "latest")]
    pub backup: String,
    /// Recover to this time instead of the end of the archive (no zone means UTC).
    #[arg(long, value_name = "TIME", group = "drill_target")]
    pub target_time: Option<String>,
    /// Recover to this WAL location instead of the end of the archive.
    #[arg(long, value_name = "LSN", group = "drill_target")]
    pub target_lsn: Option<String>,
    /// Where to make the scratch directory (default: $TMPDIR, else /tmp); it needs room for
    /// the whole database. Never inside a data directory or the repository.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory (restored data and server log) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Queries that must each return a row whose first value is not false or NULL (one
    /// statement per `;`-terminated line, `\c DB` switches database).
    #[arg(long, value_name = "FILE")]
    pub check_sql: Option<PathBuf>,
    /// Directory of the PostgreSQL server binaries (default: found from the backup's major
    /// version in PATH and the usual locations).
    #[arg(long, env = "WALSEAL_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Parallel jobs for pg_amcheck (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Print the drill's report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the drill's metrics in the Prometheus text format to FILE (atomically; `-` for
    /// stdout).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

/// `walseal key` subcommands. The passphrase comes from WALSEAL_PASSPHRASE or the first line
/// of standard input.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Write a key or identity (default: the first master key, else the identity of the
    /// active recipient) sealed under a passphrase (PBKDF2, ~0.5 s) to FILE.
    Export {
        /// Which configured key or identity (its id; a recipient id for an identity).
        #[arg(long, value_name = "KEYID")]
        key_id: Option<String>,
        /// Where to write the export (never overwritten).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Open an export with its passphrase and write the key file (mode 0600).
    Import {
        /// The export.
        #[arg(short, long, value_name = "FILE")]
        input: PathBuf,
        /// The key file to write (never overwritten).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// `walseal audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check that no line was edited, removed or reordered. Exit 0 only when intact (5 otherwise).
    Verify {
        /// The log (default: WALSEAL_AUDIT_LOG / audit_log).
        file: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Seal the lines appended since the last seal into the repository (verify does this too).
    Seal,
}

/// The smallest `--part-size`.
pub const MIN_PART_SIZE: u64 = 1 << 20;
/// The largest `--part-size` (a backup holds about three parts in memory).
pub const MAX_PART_SIZE: u64 = 1 << 30;

/// Parses and bounds `--part-size`.
fn part_size(s: &str) -> Result<u64, String> {
    let n = crate::backup::parse_size(s)
        .map_err(|e| format!("{}; a part size is 1MiB to 1GiB", e.message()))?;
    if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) {
        Ok(n)
    } else {
        Err("a part size is 1MiB to 1GiB".into())
    }
}

impl Command {
    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Keygen { .. } => "keygen",
            Command::Init { .. } => "init",
            Command::WalPush { .. } => "wal-push",
            Command::WalFetch { .. } => "wal-fetch",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Drill(_) => "drill",
            Command::List { .. } => "list",
            Command::Verify { .. } => "verify",
            Command::Retain { .. } => "retain",
            Command::Check { .. } => "check",
            Command::Rekey { .. } => "rekey",
            Command::Audit { .. } => "audit",
            Command::Key { .. } => "key",
            Command::Status { .. } => "status",
        }
    }
}

/// The default of `backup --jobs` and `restore --jobs`: one per core, at most 4.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// `--jobs`: each job streams one object through a blocking thread (and, for large objects,
/// spool files), so the count is bounded.
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number of jobs from 1 to 64")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_outside_1mib_to_1gib_are_usage_errors() {
        for bad in ["2GiB", "512KiB", "17179869184GiB", "0", "x"] {
            let e = Cli::try_parse_from(["walseal", "backup", "--part-size", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(e.to_string().contains("--part-size"), "{e}");
        }
        for (good, bytes) in [("1MiB", 1 << 20), ("32MiB", 32 << 20), ("1GiB", 1 << 30)] {
            match Cli::try_parse_from(["walseal", "backup", "--part-size", good]) {
                Ok(Cli {
                    command: Command::Backup(b),
                    ..
                }) => assert_eq!(b.part_size, bytes),
                _ => panic!("{good} refused"),
            }
        }
    }
}
