//! Storage faults on a real PostgreSQL 15, with the loopback S3 server behind a fault proxy
//! (tests/common/proxy.rs): the storage goes away under pgbench, answers slowly, answers
//! 5xx, resets connections, loses answers, or goes away in the middle of a recovery; and two
//! pushes of one segment race. Whatever happens, a segment is either stored (and opens to
//! exactly its bytes) or PostgreSQL still has it: exit 0 is never given for an object that
//! is not stored, and recovery never promotes past a hole.
//!
//! Storage requests get a 3 s budget and 3 retries here (`storage_timeout_secs`,
//! `storage_retries`), so that outages are found out quickly.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::proxy::{Fault, Proxy, Rule};
use common::*;

const SYSID: u64 = 7_301_000_000_000_000_010;
/// Synthetic segments are 1 MiB (a size PostgreSQL allows): quick to seal and send.
const SEG: u32 = 1 << 20;
const RETRIES: usize = 3;
const TIMEOUT_SECS: u64 = 3;

/// A repository on the S3 server, reachable directly (`direct`, for checks) and through a
/// fault proxy (`faulty`, what the commands under test use).
struct Faulty {
    s: Setup,
    proxy: Proxy,
    /// Config file that goes through the proxy.
    faulty: PathBuf,
    /// Config file that goes straight to the server.
    direct: PathBuf,
}

impl Faulty {
    fn new() -> Option<Faulty> {
        let (endpoint, bucket) = s3_endpoint()?;
        let proxy = Proxy::start(&endpoint);
        let s = Setup::new(&Backend::S3 {
            endpoint: endpoint.clone(),
            bucket,
        });
        let direct = s.config_file.clone().unwrap();
        let text = std::fs::read_to_string(&direct).unwrap();
        assert!(
            text.contains(&endpoint),
            "config without the endpoint: {text}"
        );
        // Top-level keys first: everything after `[storage]` belongs to that table.
        let budget =
            format!("storage_retries = {RETRIES}\nstorage_timeout_secs = {TIMEOUT_SECS}\n");
        let faulty = s.dir.path().join("faulty.toml");
        std::fs::write(&faulty, budget + &text.replace(&endpoint, &proxy.url())).unwrap();
        chown_pg(&faulty);
        Some(Faulty {
            s,
            proxy,
            faulty,
            direct,
        })
    }

    /// walseal as postgres with config file `cfg`, cwd `cwd`.
    fn walseal(&self, cfg: &Path, cwd: &Path) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(&self.s.bin)
            .arg("--config")
            .arg(cfg)
            .current_dir(cwd)
            .env_remove("WALSEAL_CONFIG")
            .env_remove("WALSEAL_REPO")
            .env_remove("WALSEAL_KEY_FILE")
            .env_remove("WALSEAL_LOG");
        c
    }

    /// `command` as a PostgreSQL setting through the proxy.
    fn setting(&self, name: &str, sub: &str) -> String {
        let cmd = format!(
            "{} --config '{}' {sub}",
            self.s.bin.display(),
            self.faulty.display()
        );
        format!("{name} = '{}'", cmd.replace('\'', "''"))
    }

    /// Writes a synthetic segment into `dir/pg_wal` and returns its path.
    fn write_segment(&self, dir: &str, name: &str, marker: &[u8]) -> (PathBuf, Vec<u8>) {
        let wal = self.s.dir.path().join(dir).join("pg_wal");
        std::fs::create_dir_all(&wal).unwrap();
        let data = synthetic_segment(name, SYSID, SEG, Some(marker));
        let path = wal.join(name);
        std::fs::write(&path, &data).unwrap();
        chown_pg(&self.s.dir.path().join(dir));
        (path, data)
    }

    /// `wal-push` of `path` through the proxy.
    fn push(&self, path: &Path) -> Output {
        self.walseal(&self.faulty, path.parent().unwrap().parent().unwrap())
            .arg("wal-push")
            .arg(Path::new("pg_wal").join(path.file_name().unwrap()))
            .output()
            .unwrap()
    }

    /// What the repository holds under `name`, fetched straight from the server (`None`: not
    /// archived). The object must open, authenticate and pass wal-fetch's checks.
    fn archived(&self, name: &str) -> Option<Vec<u8>> {
        let dest = self.s.dir.path().join(format!("fetched-{name}"));
        let out = self
            .walseal(&self.direct, self.s.dir.path())
            .arg("wal-fetch")
            .arg(name)
            .arg(&dest)
            .output()
            .unwrap();
        match code(&out) {
            0 => {
                let bytes = std::fs::read(&dest).unwrap();
                std::fs::remove_file(&dest).unwrap();
                Some(bytes)
            }
            1 => None,
            c => panic!("wal-fetch {name} exited {c}: {}", stderr(&out)),
        }
    }

    /// Asserts that `verify` (straight to the storage) finds no missing segment and no damaged
    /// object.
    fn assert_no_gap(&self, when: &str) {
        let out = self
            .walseal(&self.direct, self.s.dir.path())
            .args(["verify", "--json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["missing_count"], 0, "gap {when}: {report}");
        assert_eq!(
            report["failed_objects"].as_array().unwrap().len(),
            0,
            "damaged objects {when}: {report}"
        );
    }

    /// Asserts `out` succeeded and `name` is archived with exactly `data`.
    fn assert_stored(&self, what: &str, out: &Output, name: &str, data: &[u8]) {
        assert_eq!(code(out), 0, "{what}: wal-push failed: {}", stderr(out));
        let stored = self.archived(name);
        assert!(
            stored.as_deref() == Some(data),
            "{what}: wal-push exited 0 but {name} is {}",
            match stored {
                None => "not archived".to_string(),
                Some(b) => format!("archived with other bytes ({} bytes)", b.len()),
            }
        );
    }

    /// Asserts `out` is a storage failure (6) with a one-line message and a fix.
    fn assert_storage_failure(&self, what: &str, out: &Output) {
        let err = stderr(out);
        assert_eq!(code(out), 6, "{what}: expected exit 6, stderr: {err}");
        assert_one_line_error(what, &err, "walseal wal-push: error: ");
        eprintln!("{what}: {err}");
    }
}

fn assert_one_line_error(what: &str, err: &str, prefix: &str) {
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err:?}");
    assert!(err.starts_with(prefix), "{what}: {err:?}");
    assert!(err.contains("(fix: "), "{what}: no fix hint: {err:?}");
    for secret in ["aws_secret_access_key", "Authorization", "Signature="] {
        assert!(
            !err.contains(secret),
            "{what}: {secret} in the message: {err}"
        );
    }
}

fn seg_name(n: u32) -> String {
    format!("00000001000000000000{n:04X}")
}

/// Slow, failing and resetting storage, one `wal-push` at a time: transient faults are
/// retried away inside the budget; the rest fail with exit 6 and one line; exit 0 always
/// means the segment is stored and opens to its bytes.
#[test]
fn slow_and_failing_storage_retries_then_fails_clearly() {
    let Some(f) = Faulty::new() else { return };
    let mut n = 0;
    let mut next = |tag: &str| {
        n += 1;
        let name = seg_name(n);
        let (path, data) = f.write_segment("w", &name, tag.as_bytes());
        (name, path, data)
    };

    // Slow answers within the budget: stored.
    let (name, path, data) = next("slow");
    f.proxy.set(Fault::Delay(Duration::from_millis(700)));
    f.assert_stored("slow answers", &f.push(&path), &name, &data);

    // Two 503s, then the storage answers: the retries absorb them.
    f.proxy.set(Fault::Pass);
    f.proxy.clear_seen();
    let (name, path, data) = next("503-twice");
    f.proxy.inject(Rule::new(Fault::Status(503), 2));
    f.assert_stored("two 503s", &f.push(&path), &name, &data);
    assert_eq!(f.proxy.rule_left(), 0, "the 503s were never answered");

    // Reads reset twice: retried.
    let (name, path, data) = next("get-reset");
    f.proxy.inject(Rule::new(Fault::Reset, 2).method("GET"));
    f.assert_stored("reset reads", &f.push(&path), &name, &data);
    assert_eq!(f.proxy.rule_left(), 0);

    // The create-only PUT lands, but the connection closes before the answer: object_store
    // sends it again, the storage answers 412 (exists), and wal-push compares the archived
    // copy with the file before it reports success.
    let (name, path, data) = next("answer-lost");
    f.proxy.clear_seen();
    f.proxy.inject(
        Rule::new(Fault::CloseAfterUpstream, 1)
            .method("PUT")
            .path(&name),
    );
    f.assert_stored("answer lost", &f.push(&path), &name, &data);
    let puts: Vec<_> = f
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains(&name))
        .collect();
    assert!(
        puts.len() >= 2
            && puts[0].fault == Fault::CloseAfterUpstream
            && puts[0].upstream_status == Some(200)
            && puts.iter().any(|r| r.upstream_status == Some(412)),
        "expected a stored PUT whose answer was lost, then a 412: {puts:?}"
    );

    // The PUT lands, the answer is reset (not retried: a create-only PUT is not idempotent):
    // a clear failure; PostgreSQL would push again, and that push finds the identical copy.
    let (name, path, data) = next("answer-reset");
    f.proxy.inject(
        Rule::new(Fault::ResetAfterUpstream, 1)
            .method("PUT")
            .path(&name),
    );
    let out = f.push(&path);
    if code(&out) == 0 {
        f.assert_stored("answer reset, retried", &out, &name, &data);
    } else {
        f.assert_storage_failure("answer reset", &out);
        f.assert_stored("answer reset, pushed again", &f.push(&path), &name, &data);
    }

    // The answer comes after the time budget: a failure, then a second push succeeds.
    let (name, path, data) = next("answer-late");
    f.proxy.inject(
        Rule::new(Fault::Delay(Duration::from_secs(TIMEOUT_SECS + 3)), 1)
            .method("PUT")
            .path(&name),
    );
    let out = f.push(&path);
    f.assert_storage_failure("answer after the budget", &out);
    f.assert_stored("answer late, pushed again", &f.push(&path), &name, &data);

    // The request is reset before it reaches the storage: a failure, nothing stored.
    let (name, path, data) = next("put-reset");
    f.proxy
        .inject(Rule::new(Fault::Reset, 1).method("PUT").path(&name));
    let out = f.push(&path);
    f.assert_storage_failure("reset write", &out);
    assert_eq!(f.archived(&name), None, "a reset write is archived");
    f.assert_stored("reset write, pushed again", &f.push(&path), &name, &data);

    // 503 for good: retried RETRIES times with backoff, then a clear failure.
    let (name, path, data) = next("503-always");
    f.proxy.set(Fault::Status(503));
    f.proxy.clear_seen();
    let out = f.push(&path);
    f.assert_storage_failure("503 always", &out);
    let answered = f.proxy.seen();
    assert_eq!(
        answered.len(),
        RETRIES + 1,
        "one request plus {RETRIES} retries expected: {answered:?}"
    );
    assert!(answered.iter().all(|r| r.target == answered[0].target));
    assert!(
        stderr(&out).contains(&format!("after {RETRIES} retries")),
        "{}",
        stderr(&out)
    );

    // Slow beyond the budget on every request: a failure.
    f.proxy
        .set(Fault::Delay(Duration::from_secs(TIMEOUT_SECS + 2)));
    let out = f.push(&path);
    f.assert_storage_failure("everything slow", &out);
    assert!(
        stderr(&out).contains("raise storage_timeout_secs"),
        "{}",
        stderr(&out)
    );

    // Storage down: connection refused, retried, then a failure that says so.
    f.proxy.set(Fault::Refuse);
    let out = f.push(&path);
    f.assert_storage_failure("storage down", &out);
    let err = stderr(&out);
    assert!(
        err.contains("Connection refused") && err.contains("did not accept the connection"),
        "{err}"
    );

    f.proxy.pass();
    assert_eq!(f.archived(&name), None, "a failed push is archived");
    f.assert_stored("storage back", &f.push(&path), &name, &data);

    // Nothing is missing between the first and the last segment.
    f.assert_no_gap("after the slow and failing storage");
}

/// Two `wal-push` of one segment at once, many times: with the same content both succeed
/// and one object is stored; with different content one is refused (exit 7) and the stored
/// copy is the other's, intact.
#[test]
fn racing_pushes_of_one_segment() {
    let Some(f) = Faulty::new() else { return };
    const ROUNDS: u32 = 12;
    let race = |a: &Path, b: &Path| -> (Output, Output) {
        let spawn = |p: &Path| {
            f.walseal(&f.direct, p.parent().unwrap().parent().unwrap())
                .arg("wal-push")
                .arg(Path::new("pg_wal").join(p.file_name().unwrap()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn(a), spawn(b));
        (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        )
    };
    for round in 1..=ROUNDS {
        // The same segment, pushed twice at once.
        let name = seg_name(round);
        let (path, data) = f.write_segment("same", &name, b"same");
        let (a, b) = race(&path, &path);
        assert_eq!(code(&a), 0, "round {round}: {}", stderr(&a));
        assert_eq!(code(&b), 0, "round {round}: {}", stderr(&b));
        let stored = f.archived(&name);
        assert!(
            stored.as_deref() == Some(&data[..]),
            "round {round}: not stored intact"
        );

        // Two different files under one name.
        let name = seg_name(0x100 + round);
        let (pa, da) = f.write_segment("a", &name, b"content-a");
        let (pb, db) = f.write_segment("b", &name, b"content-b");
        let (a, b) = race(&pa, &pb);
        let (winner, loser) = match (code(&a), code(&b)) {
            (0, 7) => (&da, &b),
            (7, 0) => (&db, &a),
            (x, y) => panic!(
                "round {round}: exits {x} and {y}, expected one 0 and one 7:\n{}\n{}",
                stderr(&a),
                stderr(&b)
            ),
        };
        let err = stderr(loser);
        assert_one_line_error("conflict", &err, "walseal wal-push: error: ");
        assert!(err.contains("different content"), "{err}");
        let stored = f.archived(&name);
        assert!(
            stored.as_ref() == Some(winner),
            "round {round}: the stored copy is not the successful push's content"
        );
    }
    // One object per name, nothing else beside them.
    let keys: Vec<String> = block_on(f.s.repo.storage().list("wal/"))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 2 * ROUNDS as usize, "{keys:?}");
}

/// Polls `cond` every 200 ms until it holds; panics with `what` after `secs` seconds.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The segments PostgreSQL has marked `.ready` (not archived yet), sorted.
fn ready_segments(pg: &Pg) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pg.data.join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".ready")
                .filter(|n| n.len() == 24)
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// The storage stops in the middle of an archiving run under pgbench, then comes back
/// refusing writes (503 on every PUT): `wal-push` fails with one line, PostgreSQL keeps every
/// segment (`.ready`), and once the storage is well the archive catches up with each of
/// those segments intact and `verify` finds no gap.
#[test]
fn storage_down_under_pgbench_keeps_segments_then_catches_up() {
    let Some(f) = Faulty::new() else { return };
    let primary = Pg::init(
        f.s.dir.path(),
        "primary",
        &[
            "archive_mode = on".into(),
            f.setting("archive_command", "wal-push %p"),
        ],
    );
    primary.start();
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.switch_and_wait_archived();
    primary.psql("CREATE TABLE tick(n int)");
    let mut load = primary.pgbench_background(2, 8);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    // The server goes down; then it is back but answers every write with 503 (a wal-push
    // that took a failed write for success would let PostgreSQL recycle the segment).
    let outages = [
        ("storage down", Fault::Refuse, None),
        (
            "writes refused",
            Fault::Pass,
            Some(Rule::new(Fault::Status(503), usize::MAX).method("PUT")),
        ),
    ];
    for (what, standing, rule) in outages {
        let failed_before: u64 = primary
            .psql("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
        let ready_before = ready_segments(&primary).len();
        f.proxy.set(standing);
        if standing == Fault::Pass {
            f.proxy.pass();
        }
        if let Some(rule) = rule {
            f.proxy.inject(rule);
        }
        // Segments pile up, whether or not pgbench is still writing.
        wait_until(&format!("segments left .ready ({what})"), 60, || {
            primary.psql("INSERT INTO tick VALUES (1)");
            primary.psql("SELECT pg_switch_wal()");
            let failed: u64 = primary
                .psql("SELECT failed_count FROM pg_stat_archiver")
                .parse()
                .unwrap();
            failed > failed_before && ready_segments(&primary).len() >= ready_before + 2
        });
        for n in ready_segments(&primary) {
            if !kept.iter().any(|(k, _)| *k == n) {
                let bytes = std::fs::read(primary.data.join("pg_wal").join(&n)).unwrap();
                kept.push((n, bytes));
            }
        }
        // What PostgreSQL logged from walseal: one line per failure, with the fix.
        let log = primary.log_text();
        assert!(
            log.contains("archive command failed with exit code 6"),
            "{what}: {}",
            tail(&log, 20)
        );
        let line = log
            .lines()
            .rfind(|l| l.starts_with("walseal wal-push: error: "))
            .unwrap_or_else(|| panic!("{what}: no walseal error in the log:\n{}", tail(&log, 20)));
        assert_one_line_error(what, line, "walseal wal-push: error: ");
        // The same by hand, on a kept segment.
        let out = f
            .walseal(&f.faulty, &primary.data)
            .arg("wal-push")
            .arg(format!("pg_wal/{}", kept.last().unwrap().0))
            .output()
            .unwrap();
        f.assert_storage_failure(what, &out);
    }

    f.proxy.pass();
    assert!(load.wait().unwrap().success(), "pgbench failed");
    let last = primary.switch_and_wait_archived();
    wait_until("every .ready segment archived", 60, || {
        ready_segments(&primary).is_empty()
    });
    for (name, bytes) in &kept {
        assert!(
            f.archived(name).as_deref() == Some(&bytes[..]),
            "{name}, kept during the outage, is not archived intact"
        );
    }
    assert!(f.archived(&last).is_some());
    f.assert_no_gap("after the outage");
    primary.stop();
}

/// Waits until the server started with `start_nowait` is up or has shut down again.
fn wait_settled(pg: &Pg, secs: u64) {
    wait_until("the server to finish starting or to stop", secs, || {
        let log = pg.log_text();
        log.contains("database system is ready to accept connections")
            || (log.contains("database system is shut down")
                && !pg.data.join("postmaster.pid").exists())
    });
}

/// The storage goes away during recovery. Archive recovery (recovery.signal) stops with a
/// FATAL instead of promoting past the hole, and finishes with all the data once the storage
/// is back. A standby (standby.signal) stays up through the outage, warning loudly, and
/// catches up afterwards.
#[test]
fn storage_down_during_recovery_stops_it_and_a_standby_rides_it_out() {
    let Some(f) = Faulty::new() else { return };
    // The primary archives straight to the storage; the recovering servers read through
    // the proxy.
    let primary = f.s.primary(&pg_bin(), &["max_wal_senders = 4".into()]);
    primary.start();
    let base = f.s.dir.path().join("base");
    plain_basebackup(&primary, &base);
    primary.psql("CREATE TABLE canary(t text); INSERT INTO canary VALUES ('before')");
    primary.pgbench(&["-i", "-s", "4", "-q"]);
    let fingerprint = |pg: &Pg| {
        pg.psql(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
             (SELECT string_agg(t, ',' ORDER BY t) FROM canary)",
        )
    };
    let expected = fingerprint(&primary);
    primary.switch_and_wait_archived();
    let copy = |name: &str| {
        let dir = f.s.dir.path().join(name);
        run_ok(Command::new("cp").arg("-a").arg(&base).arg(&dir));
        dir
    };

    // Archive recovery: the storage goes away after two segments were restored.
    let data = copy("recovering");
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    chown_pg(&data);
    // Without prefetch: the outage is placed by counting WAL GETs through the proxy, and the
    // prefetch worker's GETs would move it.
    let settings = [
        "archive_mode = off".to_string(),
        f.setting("restore_command", "--fetch-prefetch 0 wal-fetch %f %p"),
        "recovery_target_action = promote".into(),
    ];
    let recovering = Pg::existing(f.s.dir.path(), "recovering", &settings);
    f.proxy.inject(
        Rule::new(Fault::Refuse, usize::MAX)
            .method("GET")
            .path("/wal/00000001/00000001")
            .skip(2),
    );
    recovering.start_nowait();
    wait_settled(&recovering, 120);
    let log = recovering.log_text();
    assert!(
        f.proxy.is_refusing(),
        "the outage never began:\n{}",
        tail(&log, 30)
    );
    for never in [
        "selected new timeline ID",
        "archive recovery complete",
        "database system is ready to accept connections",
    ] {
        assert!(
            !log.contains(never),
            "recovery went on past the outage ({never}):\n{}",
            tail(&log, 30)
        );
    }
    assert!(
        log.matches("restored log file").count() >= 2,
        "the outage did not come mid-recovery:\n{}",
        tail(&log, 30)
    );
    assert!(
        log.contains("could not restore file") && log.contains("exit code 206"),
        "recovery did not stop on the outage:\n{}",
        tail(&log, 30)
    );
    let line = log
        .lines()
        .find(|l| l.starts_with("walseal wal-fetch: error: "))
        .unwrap_or_else(|| panic!("no walseal error in the log:\n{}", tail(&log, 30)));
    assert_one_line_error("restore_command", line, "walseal wal-fetch: error: ");
    assert!(line.contains(&format!("after {RETRIES} retries")), "{line}");

    // The storage is back: the same recovery finishes, with everything.
    f.proxy.pass();
    recovering.start_nowait();
    recovering.wait_for(
        "SELECT pg_is_in_recovery()",
        Duration::from_secs(120),
        |r| r == "f",
    );
    assert_eq!(fingerprint(&recovering), expected, "recovered data differs");
    recovering.stop();

    // A standby: it follows the archive, the storage goes away, it stays up and retries.
    let data = copy("standby");
    std::fs::write(data.join("standby.signal"), "").unwrap();
    chown_pg(&data);
    let standby = Pg::existing(
        f.s.dir.path(),
        "standby",
        &[
            "archive_mode = off".to_string(),
            f.setting("restore_command", "wal-fetch %f %p"),
            "wal_retrieve_retry_interval = '1s'".into(),
        ],
    );
    standby.start();
    standby.wait_for(
        "SELECT string_agg(t, ',') FROM canary",
        Duration::from_secs(60),
        |r| r == "before",
    );
    f.proxy.set(Fault::Refuse);
    primary.psql("INSERT INTO canary VALUES ('after-outage')");
    primary.switch_and_wait_archived();
    let warning = "walseal wal-fetch: WARNING: storage outage on a standby";
    wait_until("two outage warnings from the standby", 90, || {
        let log = standby.log_text();
        assert!(
            !log.contains("could not restore file"),
            "the outage stopped the standby:\n{}",
            tail(&log, 30)
        );
        log.matches(warning).count() >= 2
    });
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    let log = standby.log_text();
    assert!(
        !log.contains("could not restore file"),
        "{}",
        tail(&log, 30)
    );
    let line = log.lines().find(|l| l.starts_with(warning)).unwrap();
    assert_eq!(line.matches(warning).count(), 1, "{line}");
    assert!(
        line.contains(&format!("after {RETRIES} retries")) && line.contains("(fix: "),
        "{line}"
    );

    f.proxy.pass();
    standby.wait_for(
        "SELECT count(*) FROM canary WHERE t = 'after-outage'",
        Duration::from_secs(90),
        |r| r == "1",
    );
    standby.stop();
    primary.stop();
}
