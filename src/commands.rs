//! The shell of the backup, restore and list commands: turn flags into options, run, print.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use crate::backup::{self, human, BackupOptions};
use crate::catalog;
use crate::cli::{BackupArgs, DrillArgs, RestoreArgs};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repo::{Access, Repository};
use crate::restore::base::{self, RestoreOptions, Target};
use crate::wal::Lsn;

fn open(cfg: &Config, access: Access, what: &str) -> Result<Repository> {
    crate::block_on(Repository::open(cfg, access, what))
}

/// `walseal init`.
pub fn init(cfg: &Config, json: bool) -> Result<()> {
    let report = crate::block_on(crate::repo::init(cfg))?;
    if json {
        return json_out(&report);
    }
    println!("{}", report.repository_id);
    eprintln!(
        "walseal init: created repository {} (id {}){}",
        report.repo,
        report.repository_id,
        if report.adopted_v1 {
            "; its objects from before walseal 0.2 are format 1: read them with allow_legacy = true until `walseal rekey` converts them"
        } else {
            ""
        }
    );
    Ok(())
}

fn json_out<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `walseal backup`.
pub fn backup(cfg: &Config, args: &BackupArgs) -> Result<()> {
    let progress = match args.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };
    let opts = BackupOptions {
        conninfo: args.pg.clone(),
        fast: args.fast,
        part_size: args.part_size,
        wal_timeout: Duration::from_secs(args.wal_timeout),
        progress,
        incremental: args.incremental,
        full_every: args.full_every,
        verify_checksums: !args.no_verify_checksums,
        jobs: args.jobs.unwrap_or_else(crate::cli::default_jobs),
    };
    let started = std::time::Instant::now();
    let record = crate::block_on(backup::backup(cfg, &opts))?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        json_out(&record)?;
    }
    eprintln!(
        "walseal backup: backup {} complete: {} -> {} stored in {:.1} s ({}/s), WAL {} to {} on timeline {}",
        record.id,
        human(record.size),
        human(record.stored),
        secs,
        human((record.size as f64 / secs.max(0.001)) as u64),
        record.start_lsn,
        record.stop_lsn,
        record.stop_timeline
    );
    Ok(())
}

/// `--target-time` / `--target-lsn` (restore and drill), if given.
fn parse_time_or_lsn(time: Option<&str>, lsn: Option<&str>) -> Result<Option<Target>> {
    if let Some(t) = time {
        let unix = crate::time::parse(t).ok_or_else(|| {
            Error::new(
                ErrorKind::Usage,
                format!("--target-time {t:?} is not a time"),
            )
            .hint("use 'YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]' (no zone means UTC)")
        })?;
        return Ok(Some(Target::Time(crate::time::format_pg(unix), unix)));
    }
    if let Some(l) = lsn {
        return Lsn::parse(l).map(|l| Some(Target::Lsn(l))).ok_or_else(|| {
            Error::new(
                ErrorKind::Usage,
                format!("--target-lsn {l:?} is not an LSN like 0/5000028"),
            )
        });
    }
    Ok(None)
}

fn parse_target(args: &RestoreArgs) -> Result<Target> {
    if let Some(t) = parse_time_or_lsn(args.target_time.as_deref(), args.target_lsn.as_deref())? {
        return Ok(t);
    }
    if let Some(x) = &args.target_xid {
        if x.parse::<u64>().is_err() {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("--target-xid {x:?} is not a transaction id"),
            ));
        }
        return Ok(Target::Xid(x.clone()));
    }
    if let Some(n) = &args.target_name {
        return Ok(Target::Name(n.clone()));
    }
    Ok(Target::Latest)
}

/// `walseal restore`.
pub fn restore(cfg: &Config, config_file: Option<&Path>, args: &RestoreArgs) -> Result<()> {
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let (old, new) = m.split_once('=').ok_or_else(|| {
            Error::new(
                ErrorKind::Usage,
                format!("--tablespace-map {m:?} is not OLD=NEW"),
            )
        })?;
        map.push((old.to_string(), new.to_string()));
    }
    let opts = RestoreOptions {
        backup: args.backup.clone(),
        pgdata: args.pgdata.clone(),
        target: parse_target(args)?,
        timeline: args.target_timeline.clone(),
        action: args.target_action.clone(),
        tablespace_map: map,
        config_file: config_file.map(Path::to_path_buf),
        direct_io: !args.buffered,
        sync: !args.no_sync,
        raw: args.raw,
        jobs: args.jobs.unwrap_or_else(crate::cli::default_jobs),
    };
    let restored = crate::block_on(base::restore(cfg, &opts))?;
    let record = &restored.record;
    let as_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if as_root {
        eprintln!(
            "walseal restore: warning: the restored files belong to root, and PostgreSQL will not start on them; \
             run `chown -R postgres:postgres {}` (and any tablespace directories) first, or run restore as the postgres user",
            args.pgdata.display()
        );
    }
    if args.json {
        json_out(&record)?;
    }
    eprintln!(
        "walseal restore: backup {}{} restored to {} ({}){}",
        record.id,
        match restored.chain.len() {
            0 | 1 => String::new(),
            n => format!(
                " (incremental: rebuilt from a chain of {n}, full backup {})",
                restored.chain[0]
            ),
        },
        args.pgdata.display(),
        human(restored.bytes),
        match &opts.target {
            _ if opts.raw => " as stored, without recovery settings".to_string(),
            Target::Latest => "; start the server to recover to the end of the archive".to_string(),
            Target::Time(t, _) => format!("; start the server to recover to {t}"),
            Target::Lsn(l) => format!("; start the server to recover to LSN {l}"),
            Target::Xid(x) => format!("; start the server to recover to transaction {x}"),
            Target::Name(n) => format!("; start the server to recover to restore point {n}"),
        }
    );
    Ok(())
}

/// `walseal list`.
pub fn list(cfg: &Config, json: bool) -> Result<()> {
    let repo = open(cfg, Access::Open, "list (backup records are sealed)")?;
    let (storage, keyring) = (&repo.storage, &repo.keyring);
    let listing = crate::block_on(catalog::list(storage, keyring))?;
    let drills = crate::block_on(crate::drill::list(storage, keyring))?;
    let drill_rows: Vec<serde_json::Value> = drills
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id,
                "backup": d.backup,
                "ok": d.ok,
                "outcome": d.outcome,
                "target": d.target,
                "recovery_seconds": d.recovery_seconds,
                "end_lsn": d.recovery.as_ref().map(|r| r.end_lsn.clone()),
                "error": d.error,
            })
        })
        .collect();
    if json {
        let mut v = serde_json::to_value(&listing)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode JSON: {e}")))?;
        v["drills"] = serde_json::Value::Array(drill_rows);
        // Each backup's chain (oldest first, ending with it; empty if broken).
        if let Some(rows) = v["backups"].as_array_mut() {
            for (row, b) in rows.iter_mut().zip(&listing.backups) {
                let chain: Vec<String> = catalog::chain(&listing.backups, &b.id)
                    .map(|c| c.iter().map(|r| r.id.clone()).collect())
                    .unwrap_or_default();
                row["chain"] = serde_json::json!(chain);
            }
        }
        return json_out(&v);
    }
    println!("repository {}", storage.display());
    println!(
        "{:<18} {:<30} {:<30} {:>3} {:>12} {:>12} {:>10} {:>10}  parent",
        "backup", "start", "stop", "tli", "start lsn", "stop lsn", "size", "stored"
    );
    for b in &listing.backups {
        println!(
            "{:<18} {:<30} {:<30} {:>3} {:>12} {:>12} {:>10} {:>10}  {}",
            b.id,
            b.start_time,
            b.stop_time,
            b.timeline,
            b.start_lsn.to_string(),
            b.stop_lsn.to_string(),
            human(b.size),
            human(b.stored),
            match &b.parent {
                None => "(full)".to_string(),
                Some(p) if catalog::chain(&listing.backups, &b.id).is_ok() => p.clone(),
                Some(p) => format!("{p} (MISSING: chain broken, not restorable)"),
            }
        );
    }
    if listing.backups.is_empty() {
        println!("(no complete backup)");
    }
    for id in &listing.incomplete {
        println!("{id:<18} incomplete (interrupted; not restorable)");
    }
    println!();
    println!(
        "{:<8} {:<26} {:<26} {:>8} history",
        "timeline", "first segment", "last segment", "segments"
    );
    for t in &listing.wal {
        println!(
            "{:<8} {:<26} {:<26} {:>8} {}",
            t.timeline,
            t.first,
            t.last,
            t.segments,
            if t.history { "yes" } else { "-" }
        );
    }
    if !drills.is_empty() {
        println!();
        println!(
            "{:<20} {:<18} {:<7} {:>10} {:<12} target",
            "drill", "backup", "result", "recovery", "replayed to"
        );
        for d in &drills {
            println!(
                "{:<20} {:<18} {:<7} {:>10} {:<12} {}",
                d.id,
                d.backup,
                if d.ok { "passed" } else { "FAILED" },
                d.recovery_seconds
                    .map_or_else(|| "-".to_string(), |s| format!("{s:.1} s")),
                d.recovery.as_ref().map_or("-", |r| r.end_lsn.as_str()),
                d.target
            );
        }
    }
    Ok(())
}

/// `walseal verify`.
pub fn verify(cfg: &Config, quick: bool, jobs: usize, json: bool) -> Result<()> {
    let repo = open(cfg, Access::Open, "verify")?;
    let (storage, keyring) = (&repo.storage, &repo.keyring);
    let report = crate::block_on(async {
        let report = crate::verify::verify(storage, keyring.clone(), quick, jobs).await?;
        // Remember the result for `walseal status` (sealed like everything else).
        let summary = serde_json::json!({
            "ok": report.ok,
            "time": crate::time::format_pg(crate::time::now()),
            "time_unix": crate::time::now(),
            "authenticated": report.authenticated,
            "objects": report.objects,
            "problems": report.missing_count as usize + report.failed_objects.len() + report.unknown_key_objects.len()
                + report.backup_problems.len() + report.incomplete_backups.len(),
        });
        // Best effort: a read-only repository can still be verified.
        let key = crate::verify::LAST_VERIFY_KEY;
        // (A restore host that seals to its recipient needs a signer for this: without one
        // the result is not recorded, and verify still reports it.)
        let stored = match keyring.seal_to_vec(key, summary.to_string().as_bytes()) {
            Ok(sealed) => storage.replace(key, sealed.into()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::warn!("could not record the verify result for `walseal status`: {e}");
        }
        if let Some(path) = &cfg.audit_log {
            if let Err(e) = crate::audit::seal_pending(path, storage, keyring).await {
                tracing::warn!("could not seal the audit log into the repository: {e}");
            }
        }
        Ok::<_, Error>(report)
    })?;
    if json {
        json_out(&report)?;
    } else {
        print_verify(&report);
    }
    if report.ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "verify found problems in {} (listed above)",
                report.repository
            ),
        )
        .hint("restore missing or damaged objects from another copy; re-run the affected backups"))
    }
}

fn print_verify(r: &crate::verify::Report) {
    println!("repository {}", r.repository);
    println!(
        "{} objects, {}; {} complete backups; bodies {}",
        r.objects,
        human(r.bytes),
        r.backups,
        if r.authenticated {
            "authenticated"
        } else {
            "not read (--quick)"
        }
    );
    for w in &r.windows {
        println!(
            "backup {}{}: {} from {} to {} (last segment {})",
            w.backup,
            if w.chain.len() > 1 {
                format!(
                    " (incremental, chain of {} from {})",
                    w.chain.len(),
                    w.chain[0]
                )
            } else {
                String::new()
            },
            if w.restorable {
                "restorable"
            } else if w.chain.is_empty() {
                "NOT restorable (its chain is broken)"
            } else {
                "NOT restorable (WAL missing before its end)"
            },
            w.earliest,
            w.latest.as_deref().unwrap_or("?"),
            w.latest_segment.as_deref().unwrap_or("none")
        );
    }
    let mut listed = 0u64;
    for g in &r.missing_ranges {
        listed += g.count;
        if g.count == 1 {
            println!("MISSING   {}", g.first);
        } else {
            println!("MISSING   segments {} to {} ({})", g.first, g.last, g.count);
        }
    }
    if r.missing_count > listed {
        println!(
            "MISSING   ... {} more segments in further ranges",
            r.missing_count - listed
        );
    }
    for p in &r.failed_objects {
        println!("DAMAGED   {}: {}", p.object, p.reason);
    }
    for p in &r.unknown_key_objects {
        println!("NO KEY    {}: {}", p.object, p.reason);
    }
    for p in &r.backup_problems {
        println!("BACKUP    {}: {}", p.object, p.reason);
    }
    for id in &r.incomplete_backups {
        println!("LEFTOVER  backups/{id}/: parts of an interrupted backup (no record)");
    }
    for id in &r.backups_in_progress {
        println!("RUNNING   backups/{id}/: parts written in the last 6 hours, no record yet (a backup in progress, or interrupted recently)");
    }
    for key in &r.legacy_objects {
        println!("LEGACY    {key}: format 1 (bound to no repository, unsigned); `walseal rekey` converts it");
    }
    println!(
        "{}",
        if r.ok {
            "verify: all is well"
        } else {
            "verify: PROBLEMS FOUND"
        }
    );
}

/// `walseal retain`.
pub fn retain(
    cfg: &Config,
    policy: crate::retain::Policy,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let repo = open(cfg, Access::Open, "retain (backup records are sealed)")?;
    let plan = crate::block_on(crate::retain::retain(
        &repo.storage,
        &repo.keyring,
        policy,
        dry_run,
    ))?;
    if json {
        return json_out(&plan);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for id in &plan.removed_backups {
        println!("{verb} backup {id}");
    }
    for id in &plan.removed_incomplete {
        println!("{verb} interrupted backup {id}");
    }
    if let (Some(first), Some(last)) = (plan.removed_wal.first(), plan.removed_wal.last()) {
        println!(
            "{verb} {} WAL files, {first} .. {last}",
            plan.removed_wal.len()
        );
    }
    if plan.removed_staging_files > 0 {
        println!(
            "{verb} {} staging files of interrupted writes",
            plan.removed_staging_files
        );
    }
    println!(
        "retain: kept {} backups ({}); {verb} {} objects, {}",
        plan.kept.len(),
        plan.kept.join(", "),
        plan.removed_objects,
        human(plan.freed_bytes)
    );
    Ok(())
}

/// `walseal check`.
pub fn check(cfg: &Config, pg: Option<&str>, wait: u64, json: bool) -> Result<()> {
    let lines = crate::block_on(async {
        Ok::<_, Error>(crate::check::check(cfg, pg, Duration::from_secs(wait)).await)
    })?;
    if json {
        json_out(&lines)?;
    } else {
        for l in &lines {
            match &l.fix {
                None => println!("OK    {:<20} {}", l.item, l.detail),
                Some(fix) => println!("FAIL  {:<20} {}\n      fix: {fix}", l.item, l.detail),
            }
        }
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        if !json {
            println!("check: all is well");
        }
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!("check found {failed} problem(s) (listed above)"),
        ))
    }
}

/// `walseal status`.
pub fn status(cfg: &Config, pg: Option<&str>, json: bool, prometheus: Option<&Path>) -> Result<()> {
    let repo = open(cfg, Access::Seal, "status")?;
    let st = crate::block_on(crate::status::status(&repo.storage, &repo.keyring, pg))?;
    if let Some(path) = prometheus {
        write_prometheus(path, &crate::status::prometheus(&st))?;
    }
    if json {
        json_out(&st)?;
    } else if prometheus.is_none() {
        let age = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{s:.0} s ago"));
        println!("repository            {}", st.repository);
        println!(
            "newest segment        {} ({})",
            st.newest_segment.as_deref().unwrap_or("none"),
            age(st.newest_segment_age_seconds)
        );
        if let Some(lag) = st.archive_lag_segments {
            println!(
                "archive lag           {lag} segment(s) behind {}",
                st.current_segment.as_deref().unwrap_or("?")
            );
        }
        println!(
            "backups               {} complete, {} interrupted; newest {} ({})",
            st.backups,
            st.incomplete_backups,
            st.newest_backup.as_deref().unwrap_or("none"),
            age(st.newest_backup_age_seconds)
        );
        if st.newest_full_backup_age_seconds != st.newest_backup_age_seconds {
            println!(
                "newest full backup    {}",
                age(st.newest_full_backup_age_seconds)
            );
        }
        println!(
            "repository size       {} in {} objects",
            human(st.repository_bytes),
            st.repository_objects
        );
        println!(
            "last verify           {} ({})",
            match st.last_verify_ok {
                Some(true) => "all well",
                Some(false) => "PROBLEMS",
                None if st.push_only && st.last_verify_age_seconds.is_some() => {
                    "result sealed (push-only host)"
                }
                None => "never run",
            },
            age(st.last_verify_age_seconds)
        );
        println!(
            "last drill            {} ({}{})",
            match (st.last_drill_ok, &st.last_drill) {
                (Some(true), Some(id)) => format!("{id} passed"),
                (Some(false), Some(id)) => format!("{id} FAILED"),
                (None, Some(id)) => format!("{id} (result sealed: push-only host)"),
                _ => "never run".to_string(),
            },
            age(st.last_drill_age_seconds),
            st.last_drill_recovery_seconds
                .map_or_else(String::new, |s| format!(", recovery {s:.1} s"))
        );
    }
    Ok(())
}

/// Writes Prometheus text to `path` atomically (`-`: stdout).
fn write_prometheus(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| crate::error::local_io(format!("cannot write {}", path.display()), &e))
}

/// `walseal drill`.
pub fn drill(cfg: &Config, config_file: Option<&Path>, args: &DrillArgs) -> Result<()> {
    let opts = crate::drill::DrillOptions {
        backup: args.backup.clone(),
        target: parse_time_or_lsn(args.target_time.as_deref(), args.target_lsn.as_deref())?
            .unwrap_or(Target::Latest),
        dir: args.dir.clone(),
        keep: args.keep,
        check_sql: args.check_sql.clone(),
        pg_bin: args.pg_bin.clone(),
        config_file: config_file.map(Path::to_path_buf),
        jobs: args.jobs,
    };
    let (report, failure) = crate::block_on(crate::drill::drill(cfg, &opts))?;
    if let Some(path) = &args.prometheus {
        let last = crate::drill::report::LastDrill::of(&report, 0.0);
        let text = crate::drill::report::prometheus(&report.repository, &last);
        write_prometheus(path, &text)?;
    }
    if args.json {
        json_out(&report)?;
    } else if args.prometheus.as_deref() != Some(Path::new("-")) {
        print_drill(&report);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The drill's report, for people.
fn print_drill(r: &crate::drill::report::Report) {
    println!(
        "drill {}: {} (backup {}, PostgreSQL {}, target {})",
        r.id,
        if r.ok { "PASSED" } else { "FAILED" },
        r.backup,
        r.server_version.as_deref().unwrap_or(&r.pg_version),
        r.target
    );
    if let Some(p) = &r.restore {
        println!(
            "restore      {} in {:.1} s ({:.1} MiB/s)",
            human(p.bytes),
            p.seconds,
            p.mib_per_second
        );
    }
    if let (Some(p), Some(rec)) = (&r.replay, &r.recovery) {
        println!(
            "replay       {} of WAL, {} files restored, in {:.1} s ({:.1} MiB/s); ended at {} in {}",
            human(p.bytes),
            rec.files_restored,
            p.seconds,
            p.mib_per_second,
            rec.end_lsn,
            rec.end_segment
        );
        println!(
            "last commit  {}; newest archived segment {} ({} segment(s) later{})",
            rec.last_commit_time.as_deref().unwrap_or("none replayed"),
            rec.newest_archived_segment.as_deref().unwrap_or("-"),
            rec.segments_behind,
            rec.seconds_behind.map_or_else(String::new, |s| format!(
                ", stored {s:.0} s after that commit"
            ))
        );
    }
    if let Some(s) = r.recovery_seconds {
        println!("recovery     {s:.1} s from the start of the restore to a usable server");
    }
    for c in &r.checks {
        let state = match (&c.skipped, c.ok) {
            (Some(_), _) => "skipped",
            (None, true) => "ok",
            (None, false) => "FAILED",
        };
        println!(
            "check        {:<10} {:<7} {}",
            c.name,
            state,
            c.skipped.as_deref().unwrap_or(&c.detail)
        );
    }
    for d in &r.databases {
        println!(
            "database     {:<20} {} tables, {} rows",
            d.name, d.tables, d.rows
        );
    }
    if let Some(e) = &r.error {
        println!("error        {e}");
    }
}

/// `walseal rekey`.
pub fn rekey(cfg: &Config, to: Option<&str>, jobs: usize, json: bool) -> Result<()> {
    let repo = open(cfg, Access::Open, "rekey")?;
    let keyring = repo.keyring.clone();
    let target = match to {
        None => None,
        Some(hex) => {
            let mut id = [0u8; crate::keys::KEY_ID_LEN];
            crate::keys::hex_decode_into(hex, &mut id).ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    format!("--to {hex:?} is not a key id (32 hex digits)"),
                )
            })?;
            Some(crate::keys::KeyId(id))
        }
    };
    let report = crate::block_on(crate::rekey::rekey(&repo.storage, keyring, target, jobs))?;
    if json {
        return json_out(&report);
    }
    println!(
        "rekey: {} of {} objects rewrapped under key {} ({} were already)",
        report.rewrapped, report.objects, report.to, report.unchanged
    );
    Ok(())
}

/// `walseal audit`.
pub fn audit(cfg: &Config, action: crate::cli::AuditAction) -> Result<()> {
    let keyring = Keyring::from_config(cfg)?;
    let configured = || {
        cfg.audit_log.clone().ok_or_else(|| {
            Error::new(ErrorKind::Config, "no audit log configured")
                .hint("set WALSEAL_AUDIT_LOG or audit_log in the config, or name the file")
        })
    };
    match action {
        crate::cli::AuditAction::Verify { file, json } => {
            let path = match file {
                Some(f) => f,
                None => configured()?,
            };
            let report = crate::audit::verify_file(&path, &keyring)?;
            if json {
                json_out(&report)?;
            } else {
                for p in &report.problems {
                    println!("{p}");
                }
                println!(
                    "audit: {} lines, {}",
                    report.lines,
                    if report.ok { "intact" } else { "TAMPERED" }
                );
            }
            if report.ok {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Integrity,
                    format!("audit log {} was tampered with", path.display()),
                )
                .hint("compare with the batches sealed in the repository under audit/"))
            }
        }
        crate::cli::AuditAction::Seal => {
            let path = configured()?;
            let repo = open(cfg, Access::Seal, "audit seal")?;
            match crate::block_on(crate::audit::seal_pending(
                &path,
                &repo.storage,
                &repo.keyring,
            ))? {
                Some(key) => println!("audit: sealed new lines as {key}"),
                None => println!("audit: nothing new to seal"),
            }
            Ok(())
        }
    }
}

/// `walseal key export|import`.
pub fn key(cfg: &Config, action: crate::cli::KeyAction) -> Result<()> {
    match action {
        crate::cli::KeyAction::Export { key_id, output } => {
            let keyring = Keyring::from_config(cfg)?;
            // Default: the first master key, else the identity of the active recipient.
            let id = match key_id {
                None => keyring
                    .first_master()
                    .map_or_else(|| keyring.active().id(), crate::keys::MasterKey::id),
                Some(hex) => {
                    let mut id = [0u8; crate::keys::KEY_ID_LEN];
                    crate::keys::hex_decode_into(&hex, &mut id).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Usage,
                            format!("--key-id {hex:?} is not a key id"),
                        )
                    })?;
                    crate::keys::KeyId(id)
                }
            };
            let text = if let Some(k) = keyring.get(&id) {
                k.to_file_text()
            } else if let Some(i) = keyring.identity(&id) {
                i.to_file_text()
            } else {
                return Err(Error::new(
                    ErrorKind::Key,
                    format!("no master key or identity with id {id} is configured on this host"),
                )
                .hint("a push-only host holds only the recipient; export the identity on a host that has it (WALSEAL_IDENTITY_FILE)"));
            };
            crate::keysource::export(id, &text, &output)?;
            eprintln!(
                "walseal: exported key {id} to {} (sealed under your passphrase)",
                output.display()
            );
            Ok(())
        }
        crate::cli::KeyAction::Import { input, output } => {
            let id = crate::keysource::import(&input, &output)?;
            println!("{id}");
            eprintln!(
                "walseal: imported key {id} into {} (mode 0600)",
                output.display()
            );
            Ok(())
        }
    }
}
