//! `walseal drill`: proves that a backup and the archive really restore. It restores the
//! backup into a scratch directory exactly as `walseal restore` does, starts PostgreSQL of the
//! backup's major version on it (no TCP listener, no archiving, `restore_command` = this
//! walseal), replays WAL to the target or the end of the archive, promotes, runs the checks
//! ([`checks`]), stops the server, removes the scratch directory ([`scratch`]) and seals its
//! report ([`report`]) into the repository for `status` and `list`.

pub mod checks;
pub mod report;
pub mod scratch;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::catalog::{self, BackupRecord, Listing};
use crate::config::Config;
use crate::error::{local_io, Error, ErrorKind, Result};
use crate::repo::{Access, Repository};
use crate::restore::base::{self, RestoreOptions, Target};
use crate::storage::PutOutcome;
use crate::wal::{parse_history, segment_name, Lsn, SegmentSize, WalFile};
use report::{Outcome, Phase, Replay, Report};
use scratch::Scratch;
use server::{Binaries, Paths, Server};

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Backup id or `latest`.
    pub backup: String,
    /// Recovery target: `Latest` (the end of the archive), a time or an LSN.
    pub target: Target,
    /// Where the scratch directory is made (default: the temporary directory).
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory.
    pub keep: bool,
    /// `--check-sql` file.
    pub check_sql: Option<PathBuf>,
    /// `--pg-bin` directory.
    pub pg_bin: Option<PathBuf>,
    /// The config file walseal was run with, for restore_command.
    pub config_file: Option<PathBuf>,
    /// Parallel jobs for pg_amcheck.
    pub jobs: usize,
}

/// What a drill needs besides its options, found before anything is restored.
struct Plan {
    repo: Repository,
    /// The configuration with the repository id pinned (restore_command carries it).
    cfg: Config,
    record: BackupRecord,
    /// Bytes the restore writes at most (the backup, or its whole chain).
    restored_size: u64,
    bin: Binaries,
    queries: Option<Vec<checks::CheckQuery>>,
    /// The drill server's restore_command, made before anything is restored (a repository
    /// URL that carries credentials is refused here, not after the restore).
    restore_command: String,
}

/// Runs a drill. Returns its report (already sealed into the repository when the host can
/// seal) and, if it failed, the error whose kind gives the exit code.
///
/// # Errors
/// What stops a drill before it restores anything (usage, configuration, no backup, no
/// binaries, no room): no report is written then.
pub async fn drill(cfg: &Config, opts: &DrillOptions) -> Result<(Report, Option<Error>)> {
    if rustix::process::getuid().is_root() {
        return Err(Error::new(
            ErrorKind::Usage,
            "PostgreSQL does not run as root, and the drill starts it",
        )
        .hint("run the drill as the OS user PostgreSQL runs as, e.g. `sudo -u postgres walseal drill`"));
    }
    let plan = plan(cfg, opts).await?;
    let parent = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let parent = scratch::check_location(&parent, plan.repo.storage.local_dir())?;
    for d in scratch::remove_interrupted(&parent) {
        eprintln!(
            "walseal drill: removed {}, left by an interrupted drill",
            d.display()
        );
    }
    check_space(&parent, plan.restored_size)?;
    let started_unix = crate::time::now();
    let (mut scratch, id) = make_scratch(&parent, &crate::time::format_id(started_unix))?;
    let mut report = Report {
        format_version: 1,
        id,
        ok: false,
        outcome: Outcome::RestoreFailed,
        error: None,
        host: hostname(),
        repository: plan.repo.storage.display().to_string(),
        backup: plan.record.id.clone(),
        pg_version: plan.record.pg_version.clone(),
        server_version: Some(plan.bin.version.clone()),
        target: describe_target(&opts.target),
        started: crate::time::format_pg(started_unix),
        started_unix,
        finished_unix: started_unix,
        restore: None,
        replay: None,
        recovery: None,
        recovery_seconds: None,
        checks: Vec::new(),
        databases: Vec::new(),
    };
    // A signal stops the drill cleanly: the run is dropped, which stops its server (and
    // pg_amcheck), then the scratch directory goes and the report says so.
    let mut interrupted = false;
    let result = tokio::select! {
        r = run(&plan, opts, &scratch, &mut report) => r,
        sig = signalled() => {
            interrupted = true;
            Err(Error::new(ErrorKind::Recovery, format!("the drill was interrupted ({sig})"))
                .hint("run it again when it may take its time"))
        }
    };
    report.finished_unix = crate::time::now();
    report.ok = result.is_ok();
    report.outcome = match &result {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::of(e.kind(), report.restore.is_none(), interrupted),
    };
    report.error = result.as_ref().err().map(ToString::to_string);
    if opts.keep {
        scratch.keep();
        eprintln!(
            "walseal drill: kept {} (remove it when done)",
            scratch.path().display()
        );
    }
    drop(scratch);
    if let Err(e) = seal_report(&plan.repo, &mut report).await {
        tracing::warn!("could not record the drill in the repository: {e}");
        eprintln!("walseal drill: warning: the drill's report is not in the repository ({e}); `walseal status` will not see it");
    }
    Ok((report, result.err()))
}

/// Resolves when SIGTERM, SIGINT or SIGHUP arrives (never, if they cannot be caught).
async fn signalled() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    }
}

/// Opens the repository, picks the backup, finds the binaries and reads the check queries.
async fn plan(cfg: &Config, opts: &DrillOptions) -> Result<Plan> {
    let queries = match &opts.check_sql {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| local_io(format!("--check-sql {}", path.display()), &e))?;
            Some(checks::parse_check_sql(&text)?)
        }
        None => None,
    };
    let repo = Repository::open(cfg, Access::Open, "drill").await?;
    let mut cfg = cfg.clone();
    cfg.repository_id = Some(crate::keys::hex_encode(&repo.id));
    let listing = catalog::list(&repo.storage, &repo.keyring).await?;
    if opts.backup != "latest" && !listing.backups.iter().any(|b| b.id == opts.backup) {
        catalog::load_record(&repo.storage, &repo.keyring, &opts.backup).await?;
    }
    let record = base::choose(&listing.backups, &opts.backup, &opts.target)?.clone();
    let major = server::major_of(&record.pg_version).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "backup {}: unreadable server version {:?}",
                record.id, record.pg_version
            ),
        )
    })?;
    let bin = Binaries::find(opts.pg_bin.as_deref(), major)?;
    let restore_command = base::restore_command(&cfg, opts.config_file.as_deref())?;
    // What the restore may need on disk: a rebuilt chain is at most its backups together.
    let restored_size = catalog::chain(&listing.backups, &record.id)?
        .iter()
        .map(|r| r.size)
        .fold(0u64, u64::saturating_add);
    Ok(Plan {
        repo,
        cfg,
        record,
        restored_size,
        bin,
        queries,
        restore_command,
    })
}

/// The steps after the scratch directory exists; each fills its part of the report.
async fn run(
    plan: &Plan,
    opts: &DrillOptions,
    scratch: &Scratch,
    report: &mut Report,
) -> Result<()> {
    let t0 = Instant::now();
    restore_phase(plan, opts, scratch, report).await?;
    // What the archive holds now: replay must reach at least its end.
    let archive = catalog::list(&plan.repo.storage, &plan.repo.keyring).await?;
    let paths = Paths {
        data: scratch.data(),
        socket: scratch.socket(),
        hba: scratch.path().join("pg_hba.conf"),
        ident: scratch.path().join("pg_ident.conf"),
        log: scratch.log(),
    };
    let (mut server, session, checksums_on) = recover_phase(plan, opts, &paths, report, t0).await?;
    let size = SegmentSize::new(plan.record.wal_segment_size)
        .map_err(|e| Error::new(ErrorKind::Integrity, e.to_string()))?;
    if let Some(replay) = report.recovery.as_mut() {
        let short = measure_lag(plan, &archive, replay, size, &opts.target).await;
        eprintln!(
            "walseal drill: recovered in {:.1} s ({} WAL files, to {} on timeline {}); checking",
            report.recovery_seconds.unwrap_or(0.0),
            replay.files_restored,
            replay.end_lsn,
            replay.timeline
        );
        short?;
    }
    check_phase(plan, opts, &session, report).await?;
    server.stop().await?;
    report
        .checks
        .push(checks::checksums(&plan.bin, &paths.data, checksums_on).await);
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        return Err(Error::new(
            ErrorKind::CheckFailed,
            format!("{} check(s) failed: {}", failed.len(), failed.join("; ")),
        ));
    }
    Ok(())
}

/// Restores the backup into the scratch directory, tablespaces beneath it.
async fn restore_phase(
    plan: &Plan,
    opts: &DrillOptions,
    scratch: &Scratch,
    report: &mut Report,
) -> Result<()> {
    let record = &plan.record;
    let t0 = Instant::now();
    eprintln!(
        "walseal drill: restoring backup {} ({}{}) into {}",
        record.id,
        crate::backup::human(plan.restored_size),
        if record.is_incremental() {
            " at most: an incremental backup, rebuilt from its chain"
        } else {
            ""
        },
        scratch.path().display()
    );
    let restore = RestoreOptions {
        backup: record.id.clone(),
        pgdata: scratch.data(),
        target: opts.target.clone(),
        timeline: "latest".into(),
        action: "promote".into(),
        tablespace_map: record
            .archives
            .iter()
            .filter_map(|a| {
                let oid = a.tablespace_oid?;
                Some((
                    a.location.clone(),
                    scratch.tablespace(oid).to_string_lossy().into_owned(),
                ))
            })
            .collect(),
        config_file: opts.config_file.clone(),
        direct_io: true,
        sync: true,
        raw: false,
        jobs: crate::cli::default_jobs(),
    };
    let restored = base::restore(&plan.cfg, &restore).await?;
    let secs = t0.elapsed().as_secs_f64();
    report.restore = Some(Phase::new(secs, restored.bytes));
    eprintln!(
        "walseal drill: restored in {secs:.1} s; starting PostgreSQL {} from {} and replaying WAL",
        plan.bin.version,
        plan.bin.dir.display()
    );
    Ok(())
}

/// Starts the server, waits until it promoted, and reads where replay ended; returns the
/// running server, a session on it, and whether the cluster has data checksums.
async fn recover_phase(
    plan: &Plan,
    opts: &DrillOptions,
    paths: &Paths,
    report: &mut Report,
    t0: Instant,
) -> Result<(Server, checks::Session, Option<bool>)> {
    server::prepare(paths)?;
    let settings = server::settings(paths, &plan.restore_command, &opts.target, plan.bin.major);
    let t1 = Instant::now();
    let mut server = Server::start(&plan.bin, paths, &settings)?;
    let facts = server.wait_ready().await?;
    report.recovery_seconds = Some(t0.elapsed().as_secs_f64());
    let replayed = t1.elapsed().as_secs_f64();
    let as_recovery = |e: Error| {
        Error::new(
            ErrorKind::Recovery,
            format!("the drill's server promoted, but {}", e.message()),
        )
        .hint("rerun with --keep and read server.log in the drill directory")
    };
    let (session, mut conn) = checks::Session::open(&paths.socket, plan.bin.major)
        .await
        .map_err(as_recovery)?;
    // A checkpoint puts the new timeline into pg_control, which pg_controldata reads.
    conn.query("CHECKPOINT").await.map_err(as_recovery)?;
    let rows = conn
        .query("SELECT pg_catalog.pg_last_xact_replay_timestamp()::text, pg_catalog.current_setting('data_checksums'), (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())")
        .await
        .map_err(as_recovery)?;
    conn.close().await;
    let row = rows.into_iter().next().unwrap_or_default();
    let sql_checksums = row.get(1).cloned().flatten().map(|v| v == "on");
    let sql_timeline = row.get(2).cloned().flatten().and_then(|v| v.parse().ok());
    // pg_controldata reads the control file itself; SQL only where the binaries lack it.
    let (ctl_timeline, ctl_checksums) = server::controldata(&plan.bin, &paths.data);
    let promoted = ctl_timeline.or(sql_timeline).ok_or_else(|| {
        Error::new(
            ErrorKind::Recovery,
            "the drill's server does not say its timeline",
        )
    })?;
    let (timeline, end) = replay_end(&paths.data, promoted)?;
    report.replay = Some(Phase::new(
        replayed,
        end.0.saturating_sub(plan.record.start_lsn.0),
    ));
    let size = SegmentSize::new(plan.record.wal_segment_size)
        .map_err(|e| Error::new(ErrorKind::Integrity, e.to_string()))?;
    report.recovery = Some(Replay {
        files_restored: facts.restored,
        timeline,
        end_lsn: end.to_string(),
        end_segment: end.prev_segment_name(timeline, size),
        promoted_timeline: promoted,
        last_commit_time: row.first().cloned().flatten(),
        ..Replay::default()
    });
    Ok((server, session, ctl_checksums.or(sql_checksums)))
}

/// The checks on the running server: prepared transactions rolled back, the `--check-sql`
/// queries, the row counts, pg_amcheck.
async fn check_phase(
    plan: &Plan,
    opts: &DrillOptions,
    session: &checks::Session,
    report: &mut Report,
) -> Result<()> {
    report
        .checks
        .push(checks::roll_back_prepared(session).await);
    let mut conn = session.connect("postgres").await?;
    let dbs = checks::databases(&mut conn, false).await?;
    let all = checks::databases(&mut conn, true).await?;
    conn.close().await;
    if let Some(q) = &plan.queries {
        report
            .checks
            .extend(checks::run_check_sql(session, q).await);
    }
    for db in &dbs {
        match checks::summarize(session, db).await {
            Ok(d) => report.databases.push(d),
            Err(e) => report.checks.push(checks::Check {
                name: "counts".into(),
                ok: false,
                skipped: None,
                detail: format!("counting the rows of database {db} failed: {}", e.message()),
                seconds: 0.0,
            }),
        }
    }
    report
        .checks
        .push(checks::amcheck(&plan.bin, session, &all, opts.jobs).await);
    Ok(())
}

/// Where recovery ended: the last line of the history file of `promoted`, the timeline the
/// server promoted to (from pg_control): (the timeline recovery ended on, where).
///
/// # Errors
/// `Recovery` if there is none.
fn replay_end(data: &Path, promoted: u32) -> Result<(u32, Lsn)> {
    let path = data.join("pg_wal").join(format!("{promoted:08X}.history"));
    let entry = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| parse_history(&text).last().map(|h| (h.parent, h.switch)));
    entry.ok_or_else(|| {
        Error::new(
            ErrorKind::Recovery,
            format!(
                "the drill's server promoted to timeline {promoted} but {} holds no history",
                path.display()
            ),
        )
    })
}

/// Compares where replay ended with what the archive held when replay began; fills the lag
/// figures. For a drill to the end of the archive, WAL archived after the end segment on the
/// same timeline, or a newer timeline, means replay stopped short: the next segment is
/// missing.
async fn measure_lag(
    plan: &Plan,
    archive: &Listing,
    replay: &mut Replay,
    size: SegmentSize,
    target: &Target,
) -> Result<()> {
    let on_timeline = archive.wal.iter().find(|t| t.timeline == replay.timeline);
    let seg = |name: &str| WalFile::parse(name).and_then(|w| w.segment_in(size));
    let end = seg(&replay.end_segment).unwrap_or(0);
    if let Some(t) = on_timeline {
        replay.newest_archived_segment = Some(t.last.clone());
        replay.segments_behind = seg(&t.last).map_or(0, |last| last.saturating_sub(end));
        let prefix = format!("wal/{:08X}/", t.timeline);
        if let Ok(objects) = plan.repo.storage.list_meta(&prefix).await {
            let stored = objects
                .iter()
                .find(|o| o.key.ends_with(&t.last))
                .map(|o| o.modified);
            let commit = replay
                .last_commit_time
                .as_deref()
                .and_then(crate::time::parse);
            if let (Some(stored), Some(commit)) = (stored, commit) {
                replay.seconds_behind = Some((stored - commit).max(0.0));
            }
        }
    }
    if *target != Target::Latest {
        return Ok(());
    }
    if replay.segments_behind > 0 {
        let missing = segment_name(replay.timeline, end + 1, size);
        return Err(Error::new(
            ErrorKind::ReplayShort,
            format!(
                "replay stopped at {} in {}, but the archive holds WAL up to {}: segment {missing} is missing from the archive",
                replay.end_lsn,
                replay.end_segment,
                replay.newest_archived_segment.as_deref().unwrap_or("?")
            ),
        )
        .hint("run `walseal verify` to list the gaps; restore the missing file from a copy of the repository, or take a new backup"));
    }
    if let Some(newer) = archive
        .wal
        .iter()
        .find(|t| t.timeline > replay.timeline && t.segments > 0 && !t.last.is_empty())
    {
        return Err(Error::new(
            ErrorKind::ReplayShort,
            format!(
                "recovery ended on timeline {}, but the archive holds timeline {} (up to {})",
                replay.timeline, newer.timeline, newer.last
            ),
        )
        .hint(format!(
            "check that {:08X}.history is archived (`walseal verify`), or drill a backup of timeline {}",
            newer.timeline, newer.timeline
        )));
    }
    Ok(())
}

/// Refuses a drill without room for the backup plus its WAL.
fn check_space(parent: &Path, backup_size: u64) -> Result<()> {
    let Ok(st) = rustix::fs::statvfs(parent) else {
        return Ok(());
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let needed = backup_size
        .saturating_add(backup_size / 10)
        .saturating_add(256 << 20);
    if free < needed {
        return Err(Error::new(
            ErrorKind::LocalIo,
            format!(
                "the drill needs about {} in {} (the backup is {}, plus WAL), and it has {} free",
                crate::backup::human(needed),
                parent.display(),
                crate::backup::human(backup_size),
                crate::backup::human(free)
            ),
        )
        .hint("pass --dir a directory with more room"));
    }
    Ok(())
}

/// Makes the scratch directory, with a suffix if another drill started in the same second.
fn make_scratch(parent: &Path, base: &str) -> Result<(Scratch, String)> {
    let mut last = None;
    for n in 0..10 {
        let id = if n == 0 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        };
        match Scratch::create(parent, &id) {
            Ok(s) => return Ok((s, id)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::Internal, "no scratch directory")))
}

/// Seals the report into `drills/<id>.json` (create-only: another host's drill of the same
/// second gets a suffix).
async fn seal_report(repo: &Repository, report: &mut Report) -> Result<String> {
    let base = report.id.clone();
    for n in 0..10 {
        if n > 0 {
            report.id = format!("{base}-r{n}");
        }
        let key = report::report_key(&report.id);
        let bytes = serde_json::to_vec(report)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("report: {e}")))?;
        let sealed = repo.keyring.seal_to_vec(&key, &bytes)?;
        if repo.storage.put_new(&key, sealed.into()).await? == PutOutcome::Created {
            return Ok(key);
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("drills/{base}*.json: ten reports of that second exist"),
    ))
}

/// The newest drill report in the repository, with its age, if any.
///
/// # Errors
/// Storage errors, and a newest report that does not open.
pub async fn last_report(
    storage: &crate::storage::Storage,
    keyring: &crate::keys::Keyring,
    objects: &[crate::storage::ObjectInfo],
) -> Result<Option<Report>> {
    let newest = objects
        .iter()
        .filter(|o| report::id_of(&o.key).is_some())
        .max_by(|a, b| a.key.cmp(&b.key));
    let Some(o) = newest else {
        return Ok(None);
    };
    let Some(sealed) = storage.get_bytes_max(&o.key, report::REPORT_MAX).await? else {
        return Ok(None);
    };
    let plain =
        crate::seal::open_to_vec(keyring, &o.key, &sealed).map_err(|e| e.into_error(&o.key))?;
    report::decode(&o.key, &plain).map(Some)
}

/// Every drill report that opens, oldest first (one that does not is logged and skipped).
///
/// # Errors
/// Storage errors.
pub async fn list(
    storage: &crate::storage::Storage,
    keyring: &crate::keys::Keyring,
) -> Result<Vec<Report>> {
    let mut keys: Vec<String> = storage
        .list(&format!("{}/", report::DRILLS))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| report::id_of(k).is_some())
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        if let Some(sealed) = storage.get_bytes_max(&key, report::REPORT_MAX).await? {
            // One damaged report must not hide the others (`verify` names it).
            let opened = crate::seal::open_to_vec(keyring, &key, &sealed)
                .map_err(|e| e.into_error(&key))
                .and_then(|plain| report::decode(&key, &plain));
            match opened {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("skipping drill report {key}: {e}"),
            }
        }
    }
    Ok(out)
}

fn describe_target(t: &Target) -> String {
    match t {
        Target::Latest => "latest".into(),
        Target::Time(text, _) => format!("time {text}"),
        Target::Lsn(l) => format!("lsn {l}"),
        Target::Xid(x) => format!("xid {x}"),
        Target::Name(n) => format!("name {n}"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
