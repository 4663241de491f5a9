//! Push-ahead (`wal-push` also storing further `.ready` segments) and prefetch (`wal-fetch`
//! spooling the next segments through a detached worker), issue 13.
//!
//! On PostgreSQL 15: a pgbench primary archiving with push-ahead stores every segment exactly
//! once, each opens to the bytes PostgreSQL archived, and the records of segments stored ahead
//! go once PostgreSQL asked for them; a restore replaying through prefetch ends with exactly
//! the primary's data, and the first archive_command after it removes the spool; a recovery
//! along a newer timeline is not served the prefetched segments of the timeline it left.
//! Without a server, on real segments of a throwaway cluster: wal-push with push-ahead, and
//! wal-fetch's worker (or the call itself), SIGKILLed at many points lose nothing and never
//! put a partial file in pg_wal; spool files tampered with, planted without a sidecar, or
//! moved or copied over another name are never served. Timing decides no outcome: delays only
//! spread the kill points.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kill::*;
use common::*;

const SEGMENTS: usize = 8;
type Segs = [(String, Vec<u8>)];

fn is_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The segment after `name` on its timeline (16 MiB segments: 256 a log file).
fn next_segment(name: &str) -> String {
    let no = u64::from_str_radix(&name[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&name[16..24], 16).unwrap()
        + 1;
    format!("{}{:08X}{:08X}", &name[..8], no / 256, no % 256)
}

/// The names in `dir` (none if it does not exist), sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).map_or(vec![], |rd| {
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    });
    v.sort();
    v
}

/// Polls `cond` every 20 ms until it gives a value; panics with `what()` after `secs` s.
fn poll<T>(secs: u64, what: impl Fn() -> String, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "{}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local-repository Setup. Retried: its fresh copy of the binary can fail to start ("Text
/// file busy") while a process another test thread forks still holds the copy's descriptor.
fn setup() -> Setup {
    for _ in 0..3 {
        if let Ok(s) = std::panic::catch_unwind(|| Setup::new(&Backend::Local)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Setup::new(&Backend::Local)
}

/// Appends `key = 'value'` to a configuration file (a later line wins).
fn append_conf(file: &Path, key: &str, value: &str) {
    let mut f = fs::OpenOptions::new().append(true).open(file).unwrap();
    writeln!(f, "{key} = '{}'", value.replace('\'', "''")).unwrap();
}

/// `n` consecutive WAL segments of a throwaway PostgreSQL 15 cluster made in `dir` (copies of
/// what it archived), in order.
fn real_segments(dir: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let copies = dir.join("generated");
    fs::create_dir(&copies).unwrap();
    chown_pg(&copies);
    let cp = format!("cp %p '{}/%f'", copies.display()).replace('\'', "''");
    let settings = [
        "archive_mode = on".into(),
        format!("archive_command = '{cp}'"),
    ];
    let pg = Pg::init(dir, "generator", &settings);
    pg.start();
    pg.pgbench(&["-i", "-s", "3", "-q"]);
    pg.psql("CREATE TABLE filler(x int)");
    for _ in 0..n {
        pg.psql("INSERT INTO filler SELECT generate_series(1, 30000)");
        pg.switch_and_wait_archived();
    }
    pg.stop();
    fs::remove_dir_all(&pg.data).unwrap();
    let names = names_in(&copies).into_iter().filter(|n| is_segment_name(n));
    let segs: Vec<_> = names
        .take(n)
        .map(|name| (name.clone(), fs::read(copies.join(&name)).unwrap()))
        .collect();
    assert_eq!(segs.len(), n, "the generator archived too few segments");
    segs
}

/// A data directory as archive_command and restore_command see it, owned by postgres:
/// `pg_wal/` with `archive_status/`, holding `segs`, each `.ready`.
fn layout(parent: &Path, name: &str, segs: &Segs) -> PathBuf {
    let data = parent.join(name);
    fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();
    for (n, bytes) in segs {
        fs::write(data.join("pg_wal").join(n), bytes).unwrap();
        fs::write(data.join(format!("pg_wal/archive_status/{n}.ready")), "").unwrap();
    }
    chown_pg(&data);
    data
}

/// Stores `segs` in `s`'s repository with plain wal-pushes (no archive_status beside them).
fn seed(s: &Setup, segs: &Segs) {
    let dir = s.dir.path().join("seed");
    fs::create_dir(&dir).unwrap();
    for (n, bytes) in segs {
        fs::write(dir.join(n), bytes).unwrap();
    }
    chown_pg(&dir);
    for (n, _) in segs {
        run_ok(walseal_pg(s).arg("wal-push").arg(dir.join(n)));
    }
}

/// Runs `cmd` to its end, stderr into an unnamed file (a detached prefetch worker may inherit
/// it: waiting for a pipe's end would wait for the worker); returns exit code and stderr.
fn run_to_end(cmd: &mut Command) -> (i32, String) {
    let mut err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut text = String::new();
    err.seek(SeekFrom::Start(0)).unwrap();
    err.read_to_string(&mut text).unwrap();
    (status.code().unwrap_or(-1), text)
}

/// `wal-push pg_wal/NAME` run in the data directory, as PostgreSQL's archiver runs it.
fn push_cmd(s: &Setup, data: &Path, name: &str) -> Command {
    let mut c = walseal_pg(s);
    c.current_dir(data)
        .env("WALSEAL_PUSH_PARALLEL", "8")
        .args(["--log-level", "info", "wal-push"])
        .arg(format!("pg_wal/{name}"));
    c
}

/// `wal-fetch NAME DEST` with prefetch 4, run in the data directory (DEST relative to it, as
/// PostgreSQL passes %p, or absolute).
fn fetch_cmd(s: &Setup, data: &Path, name: &str, dest: &Path) -> Command {
    let mut c = walseal_pg(s);
    c.current_dir(data)
        .env("WALSEAL_FETCH_PREFETCH", "4")
        .args(["--log-level", "info", "wal-fetch", name])
        .arg(dest);
    c
}

/// As PostgreSQL's startup process does: removes RECOVERYXLOG, asks for `name`, checks that
/// exactly `want` arrived; returns walseal's stderr.
fn serve(s: &Setup, data: &Path, dest: &Path, name: &str, want: &[u8]) -> String {
    let xlog = data.join("pg_wal/RECOVERYXLOG");
    let _ = fs::remove_file(&xlog);
    let (code, err) = run_to_end(&mut fetch_cmd(s, data, name, dest));
    assert_eq!(code, 0, "wal-fetch {name}: {err}");
    let got = fs::read(&xlog).unwrap();
    assert!(got == want, "{name}: other bytes: {err}");
    err
}

/// What the repository holds for `name` (fetched outside pg_wal: no prefetch), if anything.
fn stored(s: &Setup, name: &str) -> Option<Vec<u8>> {
    let scratch = tempfile::tempdir().unwrap();
    let dest = scratch.path().join(name);
    let mut cmd = s.repo.walseal(&s.key);
    let out = cmd.args(["wal-fetch", name]).arg(&dest).output().unwrap();
    match code(&out) {
        0 => Some(fs::read(&dest).unwrap()),
        1 => None,
        // Killed before the repository recorded its cluster: wal-fetch refuses the whole
        // repository, right only while it holds no segment.
        _ if stderr(&out).contains("no identity record") => {
            let wal = s.repo.local_dir.as_ref().unwrap().join("wal");
            let tlis = names_in(&wal);
            let objects: Vec<String> = tlis.iter().flat_map(|t| names_in(&wal.join(t))).collect();
            let segs = objects.iter().any(|n| is_segment_name(n));
            assert!(!segs, "no identity record, yet {objects:?}");
            None
        }
        other => panic!("wal-fetch {name}: exit {other}: {}", stderr(&out)),
    }
}

/// Segments with a push-ahead record in `data/pg_wal/.walseal/pushed`.
fn records(data: &Path) -> BTreeSet<String> {
    let names = names_in(&data.join("pg_wal/.walseal/pushed"));
    names.into_iter().filter(|n| is_segment_name(n)).collect()
}

/// Running processes (not zombies) of `bin`: each Setup has its own copy of the binary, so
/// these are the test's own.
fn running(bin: &Path) -> Vec<i32> {
    let bin = fs::canonicalize(bin).unwrap();
    let entries = fs::read_dir("/proc").unwrap();
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat.rsplit(')').next()?.trim_start().starts_with('Z');
            (!zombie && fs::read_link(format!("/proc/{pid}/exe")).ok()? == bin).then_some(pid)
        })
        .collect()
}

/// Waits until no process of `bin` runs (prefetch workers exit soon after the last request).
fn wait_workers_gone(bin: &Path) {
    let what = || format!("walseal still runs: {:?}", running(bin));
    poll(60, what, || running(bin).is_empty().then_some(()));
}

/// On drop (also on a panic): waits a while for `bin`'s processes to exit, then kills them.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let start = Instant::now();
        while !running(&self.0).is_empty() && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid in running(&self.0) {
            // SAFETY: kill(2) of a process that runs this test's own copy of walseal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The prefetch worker's pid as `spool/lock` holds it, if that process runs `bin`.
fn worker_pid(spool: &Path, bin: &Path) -> Option<i32> {
    let text = fs::read_to_string(spool.join("lock")).ok()?;
    let pid = text.trim().parse().ok()?;
    running(bin).contains(&pid).then_some(pid)
}

/// Waits until each of `names` is in the spool with its sidecar, then until the worker exited.
fn settle(spool: &Path, bin: &Path, names: &[&str]) {
    let here = |n: &&str| spool.join(format!("{n}.ok")).exists() && spool.join(n).exists();
    let all = || names.iter().all(here);
    let what = || format!("spool: {:?}, not {names:?}", names_in(spool));
    poll(60, what, || all().then_some(()));
    wait_workers_gone(bin);
}

/// Asserts that every segment file in the spool holds exactly that segment's bytes.
fn assert_spool_whole(spool: &Path, segs: &Segs, round: usize) {
    for name in names_in(spool).iter().filter(|n| is_segment_name(n)) {
        let Ok(bytes) = fs::read(spool.join(name)) else {
            continue; // removed meanwhile by a worker still running
        };
        let want = segs.iter().find(|(s, _)| s == name).map(|(_, b)| b);
        assert!(want == Some(&bytes), "round {round}: spool {name} is bad");
    }
}

/// Asserts pg_wal's top level holds nothing but RECOVERYXLOG, `.walseal` and `archive_status`.
fn assert_pg_wal_clean(data: &Path) {
    let known = ["RECOVERYXLOG", ".walseal", "archive_status"];
    let left: Vec<String> = names_in(&data.join("pg_wal"))
        .into_iter()
        .filter(|n| !known.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "pg_wal holds {left:?}");
}

/// restore_command with prefetch 8 and info logging, after the one `walseal restore` wrote.
fn prefetch_restore_command(s: &Setup, data: &Path) {
    let cmd = s.command("--log-level info wal-fetch %f %p");
    let cmd = format!("WALSEAL_FETCH_PREFETCH=8 {cmd}");
    append_conf(&data.join("postgresql.auto.conf"), "restore_command", &cmd);
}

fn wait_promoted(pg: &Pg) {
    let q = "SELECT pg_is_in_recovery()";
    pg.wait_for(q, Duration::from_secs(180), |r| r == "f");
}

/// The segments walseal logged as served from the prefetch spool; asserts there was at least
/// one, and that PostgreSQL restored each.
fn assert_served_from_spool(log: &str) -> Vec<String> {
    let served: Vec<String> = log
        .lines()
        .filter(|l| l.contains("from the prefetch spool"))
        .filter_map(|l| l.split("served ").nth(1)?.get(..24).map(String::from))
        .collect();
    assert!(!served.is_empty(), "none served:\n{}", tail(log, 40));
    for name in &served {
        let restored = format!("restored log file \"{name}\" from archive");
        assert!(log.contains(&restored), "{name} served, not restored");
    }
    served
}

fn fingerprint(pg: &Pg) -> String {
    pg.psql(
        "SELECT (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts) || ' ' || \
         (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
         (SELECT count(*) FROM pgbench_history)",
    )
}

#[test]
fn pg15_pgbench_with_push_ahead_archives_every_segment_once() {
    let s = setup();
    let copies = s.dir.path().join("copies");
    fs::create_dir(&copies).unwrap();
    chown_pg(&copies);
    // Archiving starts with a backlog of .ready segments (an empty archive_command keeps
    // them), so that push-ahead has work whatever the machine's speed.
    let settings = [
        "archive_command = ''",
        "max_wal_size = 32MB",
        "min_wal_size = 32MB",
    ];
    let pg = s.primary(&pg_bin(), &settings.map(String::from));
    pg.start();
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "3"]);
    pg.psql("CREATE TABLE filler(x int)");
    let status = pg.data.join("pg_wal/archive_status");
    let ready = || names_in(&status).len(); // nothing archived yet: only .ready files
    for _ in 0..30 {
        if ready() >= 12 {
            break;
        }
        pg.psql("INSERT INTO filler SELECT generate_series(1, 300000)");
        pg.psql("SELECT pg_switch_wal()");
    }
    assert!(ready() >= 12, "only {} .ready: proves nothing", ready());
    let push = s.command("--log-level info wal-push %p");
    let copy = format!("cp %p '{}/%f'", copies.display());
    let cmd = format!("WALSEAL_PUSH_PARALLEL=4 {push} && {copy}");
    append_conf(&pg.data.join("postgresql.conf"), "archive_command", &cmd);
    pg.psql("SELECT pg_reload_conf()");
    // Load while the archiver catches up.
    let load = pg.pgbench_background(4, 5).wait().unwrap();
    assert!(load.success(), "pgbench failed");
    pg.switch_and_wait_archived();
    let stats = pg.psql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver");
    let (archived, failed) = stats.split_once(' ').unwrap();
    assert!(archived.parse::<u32>().unwrap() >= 12, "archived: {stats}");
    assert_eq!(failed, "0", "failures:\n{}", tail(&pg.log_text(), 30));
    // Records only for segments PostgreSQL has not asked for yet.
    let stale: Vec<String> = records(&pg.data)
        .into_iter()
        .filter(|n| !status.join(format!("{n}.ready")).exists())
        .collect();
    assert!(stale.is_empty(), "records left behind: {stale:?}");
    pg.stop();

    let out = s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(code(&out), 0, "verify:\n{}\n{}", stdout(&out), stderr(&out));
    let checked = assert_wal_intact(&s, &s.key.display().to_string(), &copies, None);
    assert!(checked >= 12, "{checked} segments checked");

    let log = pg.log_text();
    let lines = |pat: &str| log.lines().filter(|l| l.contains(pat)).count();
    let ahead_total = lines(" ahead to ");
    assert!(ahead_total >= 1, "none ahead:\n{}", tail(&log, 40));
    let confirmed_total = lines("was archived ahead by an earlier call");
    assert!(confirmed_total >= 1, "none confirmed:\n{}", tail(&log, 40));
    for name in names_in(&copies).iter().filter(|n| is_segment_name(n)) {
        let plain = lines(&format!("archived {name} to "));
        let ahead = lines(&format!("archived {name} ahead to "));
        assert_eq!(plain + ahead, 1, "{name} stored {plain} + {ahead} times");
        let confirmed = lines(&format!("{name} was archived ahead by an earlier call"));
        assert_eq!(confirmed, ahead, "{name}: confirmed {confirmed}");
        let again = lines(&format!("{name} was already archived"));
        assert_eq!(again, 0, "{name} sealed again, not confirmed");
    }
    eprintln!("{ahead_total} segments archived ahead, {confirmed_total} confirmed");
}

#[test]
fn pg15_recovery_with_prefetch_restores_exactly() {
    let s = setup();
    let _reaper = Reaper(s.bin.clone());
    let primary = s.primary(&pg_bin(), &["max_wal_size = 64MB".into()]);
    primary.start();
    let out = s.backup(&primary, &[]);
    assert_eq!(code(&out), 0, "backup: {}", stderr(&out));
    primary.pgbench(&["-i", "-s", "10", "-q"]);
    primary.pgbench(&["-c", "4", "-j", "2", "-T", "5"]);
    let expected = fingerprint(&primary);
    let lsn = primary.psql("SELECT pg_current_wal_lsn()");
    primary.switch_and_wait_archived();
    primary.stop();

    let dest = s.dir.path().join("restored");
    let out = s.restore(&dest, &["latest"]);
    assert_eq!(code(&out), 0, "restore: {}", stderr(&out));
    prefetch_restore_command(&s, &dest);
    // Archiving into the same repository: the new timeline's history file and segments.
    let settings = ["archive_mode = on".into(), s.archive_setting()];
    let restored = Pg::existing(s.dir.path(), "restored", &settings);
    restored.start();
    wait_promoted(&restored);
    assert_eq!(fingerprint(&restored), expected, "restored cluster differs");
    let reached = format!("SELECT pg_current_wal_lsn() >= '{lsn}'::pg_lsn");
    assert_eq!(restored.psql(&reached), "t");
    assert_served_from_spool(&restored.log_text());
    // The first archive_command after the end of recovery removes the spool.
    let count = "SELECT archived_count FROM pg_stat_archiver";
    restored.wait_for(count, Duration::from_secs(60), |n| n != "0");
    let prefetch = dest.join("pg_wal/.walseal/prefetch");
    let what = || format!("spool left: {:?}", names_in(&prefetch));
    poll(15, what, || (!prefetch.exists()).then_some(()));
    restored.psql("CREATE TABLE after(x int); INSERT INTO after VALUES (1)");
    restored.switch_and_wait_archived();
    assert!(!prefetch.exists(), "the spool came back after recovery");
    let names = names_in(&dest.join("pg_wal"));
    let tmp: Vec<&String> = names.iter().filter(|n| n.contains("tmp")).collect();
    assert!(tmp.is_empty(), "temporary files left in pg_wal: {tmp:?}");
    restored.stop();
}

#[test]
fn push_ahead_killed_at_many_points_loses_nothing() {
    let work = PgDir::new("speed-push");
    let segs = real_segments(work.path(), SEGMENTS);
    let first = segs[0].0.clone();
    // Uninterrupted: the requested segment stored, others ahead, each with a record.
    let s0 = setup();
    let data = layout(s0.dir.path(), "pgdata", &segs);
    let t = Instant::now();
    let (c, err) = run_to_end(&mut push_cmd(&s0, &data, &first));
    let run = t.elapsed();
    assert_eq!(c, 0, "{err}");
    assert!(err.contains(&format!("archived {first} to ")), "{err}");
    let ahead: BTreeSet<String> = segs[1..]
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| err.contains(&format!("archived {n} ahead to ")))
        .collect();
    assert!(!ahead.is_empty(), "nothing archived ahead: {err}");
    assert_eq!(records(&data), ahead, "one record per segment stored ahead");
    for (n, bytes) in segs.iter().filter(|(n, _)| ahead.contains(n)) {
        assert!(stored(&s0, n).as_ref() == Some(bytes), "{n} differs");
    }
    drop(s0);

    let pace = Pacer::new(run, 10);
    let mut kills = Kills::new("wal-push (push-ahead 8)");
    let (mut with_records, mut confirmed) = (0, 0);
    let mut current: Option<Setup> = None;
    for i in pace.points() {
        // Even rounds: a fresh repository; odd ones the previous round's, where every segment
        // is stored already (re-pushes are accepted).
        if i % 2 == 0 {
            current = Some(setup());
        }
        let s = current.as_ref().unwrap();
        let data = layout(s.dir.path(), &format!("round{i}"), &segs);
        kills.run(push_cmd(s, &data, &first), pace.delay(i));
        // Nothing reads as archived that is not: a record means a whole stored object.
        let recs = records(&data);
        with_records += usize::from(!recs.is_empty());
        for (n, bytes) in &segs {
            match stored(s, n) {
                Some(b) => assert!(b == *bytes, "round {i}: stored {n} differs after the kill"),
                None => assert!(!recs.contains(n), "round {i}: record for {n}, not stored"),
            }
        }
        // PostgreSQL's archiver then asks for each in order, .ready to .done on success.
        let st = data.join("pg_wal/archive_status");
        for (n, _) in &segs {
            let (c, err) = run_to_end(&mut push_cmd(s, &data, n));
            assert_eq!(c, 0, "round {i}: wal-push {n} after the kill: {err}");
            confirmed += err.matches("was archived ahead by an earlier call").count();
            fs::rename(st.join(format!("{n}.ready")), st.join(format!("{n}.done"))).unwrap();
        }
        let left = records(&data);
        assert!(left.is_empty(), "round {i}: records left: {left:?}");
        for (n, bytes) in &segs {
            assert!(stored(s, n).as_ref() == Some(bytes), "round {i}: {n} lost");
        }
        let out = walseal_pg(s).arg("verify").output().unwrap();
        assert_eq!(code(&out), 0, "verify, round {i}:\n{}", stdout(&out));
        fs::remove_dir_all(&data).unwrap();
    }
    kills.report();
    eprintln!("kills leaving push-ahead records: {with_records}; calls confirmed: {confirmed}");
    assert!(confirmed > 0, "no call was ever confirmed from a record");
}

#[test]
fn prefetch_killed_at_many_points_never_serves_a_partial_file() {
    let s = setup();
    let _reaper = Reaper(s.bin.clone());
    let segs = real_segments(s.dir.path(), SEGMENTS);
    seed(&s, &segs);
    let data = layout(s.dir.path(), "pgdata", &[]);
    let spool = data.join("pg_wal/.walseal/prefetch");
    let dest = Path::new("pg_wal/RECOVERYXLOG");
    let xlog = data.join(dest);
    let (first, rest) = segs.split_first().unwrap();
    let after_last = next_segment(&segs[SEGMENTS - 1].0);
    // The rest of a recovery: each later segment asked for in order and served exactly, then
    // the name after the last (not archived: exit 1, nothing written); once the workers have
    // exited, the spool holds no temporary file and no segment, pg_wal nothing else.
    let finish = |round: &str| -> usize {
        let mut from_spool = 0;
        for (name, bytes) in rest {
            std::thread::sleep(Duration::from_millis(50)); // replay
            let err = serve(&s, &data, dest, name, bytes);
            let line = format!("served {name} from the prefetch spool");
            from_spool += usize::from(err.contains(&line));
        }
        let _ = fs::remove_file(&xlog);
        let (c, err) = run_to_end(&mut fetch_cmd(&s, &data, &after_last, dest));
        assert_eq!(c, 1, "{round}: {after_last} is not archived: {err}");
        assert!(!xlog.exists(), "{round}: not found, yet written");
        wait_workers_gone(&s.bin);
        assert_pg_wal_clean(&data);
        let left: Vec<String> = names_in(&spool)
            .into_iter()
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".ok") || is_segment_name(n))
            .collect();
        assert!(left.is_empty(), "{round}: the spool holds {left:?}");
        from_spool
    };

    // Uninterrupted: the call's length, and how long its worker takes to fill the spool.
    let t = Instant::now();
    serve(&s, &data, dest, &first.0, &first.1);
    let call = t.elapsed();
    let window: Vec<&str> = segs[1..5].iter().map(|(n, _)| n.as_str()).collect();
    settle(&spool, &s.bin, &window);
    let fill = t.elapsed();
    let mut served = finish("uninterrupted");

    let (call_pace, worker_pace) = (Pacer::new(call, 12), Pacer::new(fill - call, 12));
    let mut call_kills = Kills::new("wal-fetch (prefetch 4)");
    let mut worker_kills = Kills::new("prefetch worker");
    for i in call_pace.points() {
        let _ = fs::remove_file(&xlog);
        if i % 3 == 0 {
            call_kills.run(fetch_cmd(&s, &data, &first.0, dest), call_pace.delay(i));
            if let Ok(b) = fs::read(&xlog) {
                assert!(b == first.1, "round {i}: partial RECOVERYXLOG");
            }
        } else {
            serve(&s, &data, dest, &first.0, &first.1);
            let what = || format!("round {i}: no prefetch worker");
            let pid = poll(10, what, || worker_pid(&spool, &s.bin));
            std::thread::sleep(worker_pace.delay(i));
            if running(&s.bin).contains(&pid) {
                // SAFETY: kill(2) of this test's own walseal worker.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let what = || format!("round {i}: worker {pid} survived SIGKILL");
                poll(10, what, || (!running(&s.bin).contains(&pid)).then_some(()));
                worker_kills.killed += 1;
            } else {
                worker_kills.finished_first += 1;
            }
        }
        assert_spool_whole(&spool, &segs, i);
        served += finish(&format!("round {i}"));
    }
    call_kills.report();
    worker_kills.report();
    eprintln!("segments served from the spool: {served}");
    assert!(worker_kills.killed > 0, "no kill reached a running worker");
    assert!(served > 0, "no segment was ever served from the spool");
}

/// Flips one byte of `path` in place, keeping its size and modification time.
fn flip_byte(path: &Path, at: u64) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x40;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn prefetch_never_serves_a_tampered_or_planted_spool_file() {
    let s = setup();
    let _reaper = Reaper(s.bin.clone());
    let segs = real_segments(s.dir.path(), SEGMENTS);
    seed(&s, &segs);
    let data = layout(s.dir.path(), "pgdata", &[]);
    let dest = data.join("pg_wal/RECOVERYXLOG"); // an absolute %p this time
    let spool = data.join("pg_wal/.walseal/prefetch");
    let name = |i: usize| segs[i].0.as_str();
    let file = |i: usize| spool.join(name(i));
    let ok = |i: usize| spool.join(format!("{}.ok", name(i)));
    // Serves segment i, then waits until the worker spooled i+1..=i+4 and exited.
    let step = |i: usize| {
        let err = serve(&s, &data, &dest, name(i), &segs[i].1);
        let next: Vec<&str> = (i + 1..SEGMENTS.min(i + 5)).map(name).collect();
        settle(&spool, &s.bin, &next);
        err
    };
    // The same for a segment whose spool copy was tampered with: not served from the spool.
    let refused = |i: usize| {
        let err = step(i);
        let line = format!("served {} from the prefetch spool", name(i));
        assert!(!err.contains(&line), "{}: bad spool copy served", name(i));
    };

    step(0);
    let mode = fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "spool directory mode {mode:o}");
    // One byte flipped in place; size and mtime as the sidecar recorded them.
    flip_byte(&file(1), 3 * 8192 + 100);
    refused(1);
    // Garbage of the same size, planted without a sidecar.
    let len = fs::metadata(file(2)).unwrap().len() as usize;
    fs::remove_file(ok(2)).unwrap();
    let garbage: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(file(2), garbage).unwrap();
    refused(2);
    // Intact content, sidecar removed.
    fs::remove_file(ok(3)).unwrap();
    refused(3);
    // Another segment's file and sidecar moved over this name's (the inode, size and mtime
    // the sidecar records; another name).
    fs::rename(file(5), file(4)).unwrap();
    fs::rename(ok(5), ok(4)).unwrap();
    refused(4);
    // Another segment's file and sidecar copied over this name's.
    fs::copy(file(6), file(5)).unwrap();
    fs::copy(ok(6), ok(5)).unwrap();
    refused(5);
    // Untouched: served from the spool (so the cases above did meet the spool).
    let err = step(6);
    let line = format!("served {} from the prefetch spool", name(6));
    assert!(err.contains(&line), "untouched, not served: {err}");
    serve(&s, &data, &dest, name(7), &segs[7].1);
    let _ = fs::remove_file(&dest);
    let after_last = next_segment(name(SEGMENTS - 1));
    let (c, err) = run_to_end(&mut fetch_cmd(&s, &data, &after_last, &dest));
    assert_eq!(c, 1, "{after_last} is not archived: {err}");
    wait_workers_gone(&s.bin);
    assert_pg_wal_clean(&data);
}

#[test]
fn pg15_timeline_switch_during_prefetch_serves_the_right_file() {
    let s = setup();
    let _reaper = Reaper(s.bin.clone());
    let primary = s.primary(&pg_bin(), &[]);
    primary.start();
    let out = s.backup(&primary, &[]);
    assert_eq!(code(&out), 0, "backup: {}", stderr(&out));
    // Timeline 1 segments before the switch (prefetched and served), then marker A and L1.
    primary.pgbench(&["-i", "-s", "4", "-q"]);
    primary.psql("CREATE TABLE marker(t text); CREATE TABLE filler(x int)");
    primary.psql("INSERT INTO marker VALUES ('A')");
    let l1 = primary.psql("SELECT pg_current_wal_lsn()");
    let switch_seg = primary.psql(&format!("SELECT pg_walfile_name('{l1}')"));
    // After L1 on timeline 1: B, then several more segments.
    primary.psql("INSERT INTO marker VALUES ('B')");
    primary.pgbench(&["-c", "2", "-T", "2"]);
    for _ in 0..4 {
        primary.psql("INSERT INTO filler SELECT generate_series(1, 50000)");
        primary.switch_and_wait_archived();
    }
    primary.stop();

    // Recovered to L1 and promoted: timeline 2, archiving into the same repository.
    let to_l1 = [
        "latest",
        "--target-lsn",
        l1.as_str(),
        "--target-action",
        "promote",
    ];
    let out = s.restore(&s.dir.path().join("branch"), &to_l1);
    assert_eq!(code(&out), 0, "restore to L1: {}", stderr(&out));
    let settings = ["archive_mode = on".into(), s.archive_setting()];
    let branch = Pg::existing(s.dir.path(), "branch", &settings);
    branch.start();
    wait_promoted(&branch);
    let markers = "SELECT string_agg(t, ',' ORDER BY t) FROM marker";
    assert_eq!(branch.psql(markers), "A");
    let tli = branch.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)");
    assert_eq!(tli, "00000002");
    branch.psql("INSERT INTO marker VALUES ('C')");
    for _ in 0..3 {
        branch.psql("INSERT INTO filler SELECT generate_series(1, 50000)");
        branch.switch_and_wait_archived();
    }
    branch.stop();

    // The base backup again, along the latest timeline, with prefetch.
    let out = s.restore(&s.dir.path().join("final"), &["latest"]);
    assert_eq!(code(&out), 0, "restore: {}", stderr(&out));
    prefetch_restore_command(&s, &s.dir.path().join("final"));
    let pg = Pg::existing(s.dir.path(), "final", &["archive_mode = off".into()]);
    pg.start();
    wait_promoted(&pg);
    let log = pg.log_text();
    assert_eq!(pg.psql(markers), "A,C", "log:\n{}", tail(&log, 40));
    for name in assert_served_from_spool(&log) {
        let late = name.starts_with("00000001") && name[8..] >= switch_seg[8..];
        assert!(!late, "served {name}: switched in {switch_seg}");
    }
    pg.stop();
    wait_workers_gone(&s.bin);
}
