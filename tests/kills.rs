//! Faults of the process and the host (issue 10): `wal-push`, `backup`, `restore`, `rekey`
//! and `retain` each killed with SIGKILL at many points; a restore into a full file system;
//! a host crash right after a restore reported success.
//!
//! Kills are timed: each command is first run once uninterrupted, then started again and
//! killed after delays spread over that run's length, from start-up to the last step. The
//! assertions hold wherever a kill landed: after each one, nothing half-written reads as
//! valid, a rerun completes, no archived segment is lost (every one opens to the bytes
//! PostgreSQL archived) and `verify` is clean. The kill counts are printed as `KILLS` lines
//! (`--nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::kill::*;
use common::*;

const SYSID: u64 = 7_301_000_000_000_000_410;
const SEG: u32 = 16 << 20;

/// A PostgreSQL 15 primary archiving into a local repository, with a copy of every archived
/// file in `copies`. (Fields drop in order: the server stops before its directory goes.)
struct Cluster {
    pg: Pg,
    s: Setup,
    copies: PathBuf,
}

impl Cluster {
    /// A started primary with `pgbench -i -s scale` data and a table `t` holding `1`.
    fn new(scale: u32) -> Cluster {
        let s = Setup::new(&Backend::Local);
        let copies = s.dir.path().join("copies");
        std::fs::create_dir(&copies).unwrap();
        chown_pg(&copies);
        let pg = s.primary(&pg_bin(), &[archive_and_copy_setting(&s, &copies)]);
        pg.start();
        pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
        pg.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t VALUES (1)");
        Cluster { pg, s, copies }
    }

    fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.pg.port)
    }

    /// `walseal backup` (parts of 1 MiB, so there are many part boundaries to be killed at).
    fn backup(&self) -> Command {
        let mut c = walseal_pg(&self.s);
        c.args(["backup", "--fast", "--part-size", "1MiB", "--pg"])
            .arg(self.conninfo());
        c
    }

    fn walseal(&self, args: &[&str]) -> Command {
        let mut c = walseal_pg(&self.s);
        c.args(args);
        c
    }

    fn list(&self) -> serde_json::Value {
        serde_json::from_str(&run_ok(&mut self.walseal(&["list", "--json"]))).unwrap()
    }

    fn local_repo(&self) -> PathBuf {
        self.s.repo.local_dir.clone().unwrap()
    }
}

fn ids(listing: &serde_json::Value, field: &str) -> Vec<String> {
    listing[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b.as_str()
                .unwrap_or_else(|| b["id"].as_str().unwrap())
                .to_string()
        })
        .collect()
}

/// `verify --json` with `cmd`; returns the exit code and the report.
fn verify(mut cmd: Command) -> (i32, serde_json::Value) {
    let out = cmd.args(["verify", "--json"]).output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify printed no report ({e}): {}", stderr(&out)));
    (code(&out), report)
}

/// Asserts that verify found nothing wrong.
fn assert_verify_clean(cmd: Command, when: &str) {
    let (code, report) = verify(cmd);
    assert!(code == 0 && report["ok"] == true, "verify {when}: {report}");
}

/// Asserts that verify found nothing wrong except interrupted backups, all of them in `killed`
/// (a killed backup is listed as incomplete until retain removes it).
fn assert_verify_clean_but_interrupted(cmd: Command, killed: &BTreeSet<String>, when: &str) {
    let (_, r) = verify(cmd);
    let empty = |f: &str| r[f].as_array().is_some_and(|a| a.is_empty());
    assert!(
        r["missing_count"] == 0
            && empty("failed_objects")
            && empty("unknown_key_objects")
            && empty("backup_problems"),
        "verify {when}: {r}"
    );
    for id in ids(&r, "incomplete_backups") {
        assert!(killed.contains(&id), "verify {when}: {id} incomplete: {r}");
    }
}

/// Dates the objects of the interrupted backups back 7 hours, as if they had been left long
/// ago, so that retain (which spares what may still be running) removes them.
fn age_interrupted(c: &Cluster) {
    for id in ids(&c.list(), "incomplete") {
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg("find \"$0\" -type f -exec touch -d '7 hours ago' {} +")
                .arg(c.local_repo().join("backups").join(id)),
        );
    }
}

/// The segment a backup starts in (timeline 1), from its `start_lsn`.
fn start_segment(backup: &serde_json::Value) -> String {
    let lsn = backup["start_lsn"].as_str().unwrap();
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let seg = lsn / u64::from(SEG);
    format!("00000001{:08X}{:08X}", seg >> 8, seg & 0xFF)
}

fn pg_verifybackup(dir: &Path) {
    run_ok(as_pg(&pg_bin().join("pg_verifybackup")).arg("-n").arg(dir));
}

/// A data directory left by a killed restore must not start: PostgreSQL refuses it (no
/// recovery.signal, so no archive recovery; no WAL in pg_wal for its checkpoint).
fn assert_cannot_start(dir: &Path, sockets: &Path) {
    let log = sockets.join("partial-start.log");
    let out = as_pg(&pg_bin().join("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-p {} -c listen_addresses='' -k {}",
            free_port(),
            sockets.display()
        ))
        .args(["-w", "-t", "60", "start"])
        .output()
        .unwrap();
    if out.status.success() {
        let _ = as_pg(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        panic!(
            "a half-restored data directory started:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// Empties `dir` (as root).
fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn pg15_backup_and_retain_killed_at_many_points() {
    let c = Cluster::new(2);
    let mut pace = Pacer::new(timed(&mut c.backup()), 10);
    let mut kills = Kills::new("backup");
    let mut killed = BTreeSet::new();
    for i in pace.points() {
        let before = c.list();
        let known: BTreeSet<String> = ids(&before, "backups")
            .into_iter()
            .chain(ids(&before, "incomplete"))
            .collect();
        c.pg.psql(&format!("INSERT INTO t VALUES ({})", 100 + i));
        kills.run(c.backup(), pace.delay(i));
        // The interrupted backup is at most listed as incomplete; every backup that is listed
        // as complete checks out against its parts (verify below).
        let after = c.list();
        killed.extend(
            ids(&after, "incomplete")
                .into_iter()
                .filter(|id| !known.contains(id)),
        );
        pace.rerun(&mut c.backup());
        assert_verify_clean_but_interrupted(
            c.walseal(&[]),
            &killed,
            &format!("after backup kill {i}"),
        );
    }
    kills.report();
    if let Some(id) = killed.iter().next() {
        let out = c.s.restore(&c.s.dir.path().join("interrupted"), &[id]);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("incomplete"), "{}", stderr(&out));
    }
    // Left alone for hours, interrupted backups are removed by retain; verify is then clean.
    age_interrupted(&c);
    run_ok(&mut c.walseal(&["retain", "--keep-full", "1000"]));
    assert!(ids(&c.list(), "incomplete").is_empty());
    assert_verify_clean(c.walseal(&[]), "after the backup kills");

    // retain, killed while it removes one backup (and the WAL only it needed) per round.
    let retain = |keep: usize| c.walseal(&["retain", "--keep-full", &keep.to_string()]);
    let mut n = ids(&c.list(), "backups").len();
    assert!(n >= 10, "{n} backups");
    n -= 1;
    let retain_pace = Pacer::new(timed(&mut retain(n)), 8);
    let mut kills = Kills::new("retain");
    let objects = || block_on(c.s.repo.storage().list("")).unwrap().len();
    let mut mid_deletion = 0;
    for i in retain_pace.points() {
        n -= 1;
        let want: Vec<String> = ids(&c.list(), "backups")[1..].to_vec();
        let before = objects();
        kills.run(retain(n), retain_pace.delay(i));
        let after_kill = objects();
        // A half-done retain leaves backups that are either whole or no longer listed, and
        // no gap in the WAL a listed backup needs.
        assert_verify_clean_but_interrupted(
            c.walseal(&[]),
            &ids(&c.list(), "incomplete").into_iter().collect(),
            "right after a retain kill",
        );
        run_ok(&mut retain(n));
        assert_eq!(ids(&c.list(), "backups"), want);
        if before > after_kill && after_kill > objects() {
            mid_deletion += 1;
        }
        age_interrupted(&c);
        run_ok(&mut retain(n));
        assert_verify_clean(c.walseal(&[]), "after a retain kill and rerun");
    }
    kills.report();
    eprintln!("retain kills that landed between its first and last delete: {mid_deletion}");

    // Every segment the oldest kept backup needs is there, byte for byte, and it restores.
    c.pg.psql("INSERT INTO t VALUES (2)");
    c.pg.switch_and_wait_archived();
    c.pg.stop();
    let listing = c.list();
    let oldest = &listing["backups"][0];
    let checked = assert_wal_intact(
        &c.s,
        &c.s.key.display().to_string(),
        &c.copies,
        Some(&start_segment(oldest)),
    );
    assert!(checked >= 3, "{checked} segments checked");
    let out = c.s.restore(
        &c.s.dir.path().join("oldest"),
        &[oldest["id"].as_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = c.s.start_restored(&pg_bin(), "oldest");
    let want: Vec<String> = ["1", "2"]
        .into_iter()
        .map(String::from)
        .chain(pace.points().map(|i| (100 + i).to_string()))
        .collect();
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        want.join(",")
    );
}

#[test]
fn pg15_restore_killed_at_many_points() {
    let c = Cluster::new(2);
    run_ok(&mut c.backup());
    c.pg.psql("INSERT INTO t VALUES (2)");
    c.pg.switch_and_wait_archived();
    c.pg.stop();
    let dir = c.s.dir.path();
    // --no-sync: the flush at the end takes as long as the rest of the machine's dirty pages
    // do, which would scatter the kill points; a kill there finds the target complete anyway
    // (the flush is what pg15_restore_survives_a_host_crash_right_after_success checks).
    let restore = |dest: &Path| {
        let mut cmd = c.walseal(&["restore", "latest", "--no-sync"]);
        cmd.arg(dest);
        cmd
    };
    let mut pace = Pacer::new(timed(&mut restore(&dir.join("r0"))), 12);
    pg_verifybackup(&dir.join("r0"));
    // What a kill just before the last write (recovery.signal) leaves: every file, and still
    // nothing PostgreSQL will start.
    std::fs::remove_file(dir.join("r0/recovery.signal")).unwrap();
    assert_cannot_start(&dir.join("r0"), dir);
    std::fs::remove_dir_all(dir.join("r0")).unwrap();
    let mut kills = Kills::new("restore");
    let (mut refused, mut start_tries) = (0, 0);
    let n = pace.points().end;
    for i in pace.points() {
        let dest = dir.join(format!("r{}", i + 1));
        kills.run(restore(&dest), pace.delay(i));
        let out = c.s.restore(&dest, &["latest"]);
        match code(&out) {
            0 => {} // killed before it wrote anything: the rerun restored it
            7 => {
                // Refused: the target is not empty. Only a complete restore writes
                // recovery.signal (last); anything less cannot be started by mistake.
                assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
                refused += 1;
                if !dest.join("recovery.signal").exists() {
                    if start_tries < 3 && dest.join("PG_VERSION").exists() {
                        assert_cannot_start(&dest, dir);
                        start_tries += 1;
                    }
                    empty_dir(&dest);
                    pace.rerun(&mut restore(&dest));
                }
            }
            other => panic!("rerun of a killed restore: exit {other}: {}", stderr(&out)),
        }
        pg_verifybackup(&dest);
        if i + 1 < n {
            std::fs::remove_dir_all(&dest).unwrap();
        }
    }
    kills.report();
    eprintln!("restore reruns refused (target not empty): {refused}, partial targets started: {start_tries} (all refused)");
    let restored = c.s.start_restored(&pg_bin(), &format!("r{n}"));
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
}

#[test]
fn pg15_rekey_killed_at_many_points() {
    let c = Cluster::new(1);
    run_ok(&mut c.backup());
    c.pg.psql("INSERT INTO t VALUES (2)");
    run_ok(&mut c.backup());
    c.pg.switch_and_wait_archived();
    c.pg.stop();
    let key_a = c.s.key.display().to_string();
    let key_b = c.s.dir.path().join("b.key");
    run_ok(as_pg(&c.s.bin).arg("keygen").arg("-o").arg(&key_b));
    let key_b = key_b.display().to_string();
    let with_keys = |keys: &str| {
        let mut cmd = walseal_pg(&c.s);
        cmd.env("WALSEAL_KEY_FILE", keys);
        cmd
    };
    let (kills, last) = rekey_kills(&with_keys, &key_a, &key_b, 8, "rekey");
    kills.report();
    // Everything opens with the last round's target key alone.
    let restored = c.s.dir.path().join("restored");
    run_ok(with_keys(&last).args(["restore", "latest"]).arg(&restored));
    pg_verifybackup(&restored);
    assert!(assert_wal_intact(&c.s, &last, &c.copies, None) >= 3);
}

/// Rekey rounds on a repository: round 0 uninterrupted, then `rounds` rounds, each switching
/// the active key between `a` and `b` (so every round rewraps every object), killed at spread
/// points. After each kill every object still opens; the rerun completes and everything then
/// opens with the round's target key alone. Returns the kills and the last target key.
fn rekey_kills(
    walseal: &dyn Fn(&str) -> Command,
    a: &str,
    b: &str,
    rounds: u32,
    what: &str,
) -> (Kills, String) {
    let keys = |round: usize| {
        if round.is_multiple_of(2) {
            (format!("{b}:{a}"), b.to_string())
        } else {
            (format!("{a}:{b}"), a.to_string())
        }
    };
    let rekey = |keys: &str| {
        let mut cmd = walseal(keys);
        cmd.args(["rekey", "--jobs", "1"]);
        cmd
    };
    let pace = Pacer::new(timed(&mut rekey(&keys(0).0)), rounds);
    assert_verify_clean(walseal(&keys(0).1), "with the new key alone");
    let mut kills = Kills::new(what);
    for i in pace.points() {
        let (both, target) = keys(i + 1);
        kills.run(rekey(&both), pace.delay(i));
        assert_verify_clean(walseal(&both), "right after a rekey kill");
        run_ok(&mut rekey(&both));
        assert_verify_clean(
            walseal(&target),
            "with the target key alone after the rerun",
        );
    }
    let last = keys(pace.points().end).1;
    (kills, last)
}

/// A repository holding synthetic segments of one cluster, pushed as root.
struct Synthetic {
    dir: tempfile::TempDir,
    repo: RepoEnv,
    key_a: PathBuf,
    key_b: PathBuf,
}

impl Synthetic {
    fn new(repo: impl FnOnce(&Path) -> RepoEnv) -> Synthetic {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        let repo = repo(dir.path());
        let (key_a, key_b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        for k in [&key_a, &key_b] {
            run_ok(Command::new(walseal_bin()).arg("keygen").arg("-o").arg(k));
        }
        run_ok(repo.walseal(&key_a).arg("init"));
        Synthetic {
            dir,
            repo,
            key_a,
            key_b,
        }
    }

    fn segment(&self, i: u32) -> (String, Vec<u8>) {
        let name = format!("00000001{:08X}{:08X}", i >> 8, i & 0xFF);
        let data = synthetic_segment(&name, SYSID, SEG, Some(name.as_bytes()));
        let path = self.dir.path().join("pg_wal").join(&name);
        if !path.exists() {
            std::fs::write(path, &data).unwrap();
        }
        (name, data)
    }

    fn push(&self, name: &str) -> Command {
        let mut c = self.repo.walseal(&self.key_a);
        c.arg("wal-push")
            .arg(self.dir.path().join("pg_wal").join(name));
        c
    }

    fn fetch(&self, name: &str) -> (Output, Option<Vec<u8>>) {
        let dest = self.dir.path().join("fetched");
        let _ = std::fs::remove_file(&dest);
        let out = self
            .repo
            .walseal(&self.key_a)
            .args(["wal-fetch", name])
            .arg(&dest)
            .output()
            .unwrap();
        let bytes = std::fs::read(&dest).ok();
        (out, bytes)
    }

    /// The stored copy of `name` is absent (fetch says "not found", nothing written) or whole.
    fn assert_absent_or_whole(&self, name: &str, data: &[u8]) -> bool {
        let (out, bytes) = self.fetch(name);
        match code(&out) {
            1 => assert!(bytes.is_none(), "not found, yet something was written"),
            0 => assert!(
                bytes.as_deref() == Some(data),
                "{name} opens to other bytes"
            ),
            other => panic!("{name} after a kill: exit {other}: {}", stderr(&out)),
        }
        code(&out) == 0
    }

    /// Segments killed at `n` spread points while pushed (every other one also while
    /// re-pushed, when the stored copy is compared); after each kill the rerun stores it and
    /// it opens to its bytes. Segment 1 (the first push also records the cluster's identity)
    /// is not killed; segment 2 times a push and a re-push.
    fn wal_push_kills(&self, n: u32, what: &str) -> Kills {
        run_ok(&mut self.push(&self.segment(1).0));
        let (second, data) = self.segment(2);
        let mut push = Pacer::new(timed(&mut self.push(&second)), n);
        let repush = Pacer::new(timed(&mut self.push(&second)), n);
        self.assert_absent_or_whole(&second, &data);
        let mut kills = Kills::new(what);
        for i in push.points() {
            let (name, data) = self.segment(3 + i as u32);
            kills.run(self.push(&name), push.delay(i));
            if self.assert_absent_or_whole(&name, &data) {
                run_ok(&mut self.push(&name));
            } else {
                push.rerun(&mut self.push(&name));
            }
            if i % 2 == 1 {
                // Killed while comparing with what is stored: the stored copy is untouched.
                kills.run(self.push(&name), repush.delay(i));
                run_ok(&mut self.push(&name));
            }
            let (out, bytes) = self.fetch(&name);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert!(bytes.as_deref() == Some(&data[..]), "{name} differs");
        }
        for i in 1..=n + 2 {
            let (name, data) = self.segment(i);
            let (out, bytes) = self.fetch(&name);
            assert_eq!(code(&out), 0, "segment {name} lost: {}", stderr(&out));
            assert!(bytes.as_deref() == Some(&data[..]), "{name} differs");
        }
        assert_verify_clean(self.repo.walseal(&self.key_a), "after the wal-push kills");
        kills
    }
}

#[test]
fn wal_push_killed_at_many_points_local() {
    let r = Synthetic::new(|dir| RepoEnv::local(&dir.join("repo")));
    let kills = r.wal_push_kills(24, "wal-push");
    kills.report();
}

#[test]
fn wal_push_and_rekey_killed_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    let r = Synthetic::new(|_| RepoEnv::s3(&endpoint, &bucket, &unique("kills")));
    r.wal_push_kills(6, "wal-push (S3)").report();
    let (a, b) = (r.key_a.display().to_string(), r.key_b.display().to_string());
    let with_keys = |keys: &str| r.repo.walseal(Path::new(keys));
    rekey_kills(&with_keys, &a, &b, 3, "rekey (S3)").0.report();
}

#[test]
fn pg15_restore_into_a_full_file_system() {
    let c = Cluster::new(2);
    run_ok(&mut c.backup());
    c.pg.stop();
    // Declared after `c`, so unmounted before the test directory goes, whatever happens.
    let small = Tmpfs::mount(&c.s.dir.path().join("small"), 96);
    let filler = small.path.join("filler");
    run_ok(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=1M", "count=88", "status=none"]),
    );
    let dest = small.path.join("pgdata");
    let out = c.s.restore(&dest, &["latest"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("free space"), "no hint: {err}");
    // The target is empty again, and nothing else was left on that file system.
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "a failed restore left files in the target"
    );
    let mut left: Vec<String> = std::fs::read_dir(&small.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["filler", "pgdata"]);
    // With the space back, the same target restores.
    std::fs::remove_file(&filler).unwrap();
    let out = c.s.restore(&dest, &["latest"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pg_verifybackup(&dest);
}

/// The host crash is an ext4 shutdown that drops everything not yet on the disk (page cache,
/// uncommitted journal), on a loop device; then the file system is mounted again.
#[test]
fn pg15_restore_survives_a_host_crash_right_after_success() {
    let c = Cluster::new(1);
    run_ok(&mut c.backup());
    c.pg.psql("INSERT INTO t VALUES (2)");
    c.pg.switch_and_wait_archived();
    c.pg.stop();
    let dir = c.s.dir.path();
    let mut disk = LoopExt4::new(&dir.join("disk.img"), &dir.join("disk"), 256);
    // The simulation bites: a restore that does not sync is lost in the crash.
    let unsynced = disk.path.join("unsynced");
    let out = c.s.restore(&unsynced, &["latest", "--no-sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    disk.crash();
    disk.mount();
    assert!(
        !unsynced.join("recovery.signal").exists(),
        "an unsynced restore survived the crash: the simulation drops nothing"
    );
    // The real path: success is reported only once everything is on the disk.
    let dest = disk.path.join("pgdata");
    let out = c.s.restore(&dest, &["latest"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    disk.crash();
    disk.mount();
    pg_verifybackup(&dest);
    let restored = {
        let pg = Pg::existing(&disk.path, "pgdata", &["archive_mode = off".into()]);
        pg.start();
        pg.wait_for(
            "SELECT pg_is_in_recovery()",
            Duration::from_secs(120),
            |r| r == "f",
        );
        pg
    };
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );
    restored.stop();
}
