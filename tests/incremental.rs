//! Incremental backups (PostgreSQL 17+, `summarize_wal = on`) on real servers: 17 (npm, through
//! `WALSEAL_TEST_PG17_BIN`), 18 (npm, `WALSEAL_TEST_PG18_BIN`) and the full 18.6 install
//! (`WALSEAL_TEST_PG18_FULL_BIN`, with pg_combinebackup and pg_verifybackup).
//!
//! - A chain full -> incremental 1 -> incremental 2 taken around pgbench load, a dropped table,
//!   a truncated table, a table created and a table shrunk by VACUUM: restore of the newest
//!   incremental, of incremental 1 up to an LSN and of `latest` up to a time between the two
//!   incrementals each start and hold the primary's data at that point; no file of a dropped
//!   or truncated relation comes back. On 18, `restore --raw` of each backup fed to
//!   `pg_combinebackup` gives exactly the files walseal rebuilt itself, and `pg_verifybackup`
//!   accepts walseal's rebuilt backup_manifest.
//! - Refusals: no parent (1), a PostgreSQL 15 server (2), `summarize_wal = off` (3); a chain
//!   whose parent (or full backup) is removed or whose parent's record or manifest is damaged
//!   is refused (5) before anything is written into PGDATA; a damaged part of the middle
//!   backup fails the restore (5) leaving PGDATA empty; a target time before the named
//!   incremental ended is refused (11).
//! - `--full-every`: a full backup when there is none or the newest is older than the period,
//!   an incremental of the newest backup otherwise.
//! - `retain --keep-full 1` removes the older chain (full and incremental) and keeps the newer
//!   one, which still restores; `verify` is clean on good chains and names a missing parent.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

/// Starts `pg` as `Pg::start` does, but moves it to another port if its port was taken in the
/// meantime (`free_port` finds a port that was free a moment ago; tests run in parallel).
fn start(pg: &mut Pg) {
    let log = pg.data.with_extension("log");
    for attempt in 0.. {
        let out = as_pg(&pg.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            attempt < 3 && tail(&text, 6).contains("Address already in use"),
            "pg_ctl start failed: {}; log:\n{}",
            stderr(&out),
            tail(&text, 40)
        );
        pg.port = free_port();
        let conf = pg.data.join("postgresql.conf");
        let mut settings = std::fs::read_to_string(&conf).unwrap();
        settings.push_str(&format!("port = {}\n", pg.port));
        std::fs::write(&conf, settings).unwrap();
    }
}

/// The restored data directory `name` started with `bin` (archiving off), once recovery has
/// ended (promoted).
fn start_restored(s: &Setup, bin: &Path, name: &str) -> Pg {
    let mut pg = Pg::existing_with(bin, s.dir.path(), name, &["archive_mode = off".into()]);
    start(&mut pg);
    pg.wait_for(
        "SELECT pg_is_in_recovery()",
        Duration::from_secs(120),
        |r| r == "f",
    );
    pg
}

/// `walseal backup --fast --wal-timeout 60 EXTRA... --json`; panics unless it succeeds, returns
/// the backup's record.
fn backup_ok(s: &Setup, pg: &Pg, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--wal-timeout", "60", "--json"];
    args.extend_from_slice(extra);
    let out = s.backup(pg, &args);
    assert_eq!(code(&out), 0, "backup {extra:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "backup --json printed no record ({e}): {}\n{}",
            stdout(&out),
            stderr(&out)
        )
    })
}

fn id_of(record: &serde_json::Value) -> String {
    record["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {record}"))
        .to_string()
}

fn list(s: &Setup) -> serde_json::Value {
    let out = s.walseal_as_pg().args(["list", "--json"]).output().unwrap();
    assert_eq!(code(&out), 0, "list: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (id, parent) of every listed backup, oldest first.
fn chain_of(listing: &serde_json::Value) -> Vec<(String, Option<String>)> {
    listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["parent"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// `walseal restore ARGS... DEST --no-sync` as postgres.
fn restore(s: &Setup, dest: &Path, args: &[&str]) -> Output {
    let mut a = args.to_vec();
    a.push("--no-sync");
    s.restore(dest, &a)
}

fn restore_ok(s: &Setup, dest: &Path, args: &[&str]) -> Output {
    let out = restore(s, dest, args);
    assert_eq!(code(&out), 0, "restore {args:?}: {}", stderr(&out));
    out
}

/// What a restored or combined data directory holds: relative path -> entry.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
    Link(PathBuf),
}

fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&p).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &p, out);
            } else {
                out.insert(rel, Entry::File(meta.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Regular files under `root` whose name starts with `INCREMENTAL.`.
fn incremental_files(root: &Path) -> Vec<String> {
    tree(root)
        .into_iter()
        .filter(|(rel, e)| {
            matches!(e, Entry::File(_))
                && rel.rsplit('/').next().unwrap().starts_with("INCREMENTAL.")
        })
        .map(|(rel, _)| rel)
        .collect()
}

/// Panics unless `dest` is absent or an empty directory (a refused restore wrote nothing).
/// A destination the refused restore must not even have created (refused before anything is
/// written, not written and emptied again).
fn assert_never_created(dest: &Path, what: &str) {
    assert!(
        !dest.exists(),
        "{what}: the refused restore created {}",
        dest.display()
    );
}

fn assert_nothing_written(dest: &Path, what: &str) {
    if dest.exists() {
        let left: Vec<_> = std::fs::read_dir(dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{what}: the refused restore left files in PGDATA: {left:?}"
        );
    }
}

/// Everything the chain test compares: pgbench balances and history, the marker rows, the
/// truncated table, an untouched table, a table updated sparsely, the shrunk table.
fn fingerprint(pg: &Pg) -> String {
    pg.psql(
        "SELECT concat_ws(' | ', \
           (SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts), \
           (SELECT sum(bbalance) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) FROM pgbench_branches), \
           (SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history), \
           (SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM marks), \
           (SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || note, ',' ORDER BY id), '')) FROM trunc), \
           (SELECT count(*) || ' ' || md5(string_agg(h, ',' ORDER BY id)) FROM steady), \
           (SELECT count(*) || ' ' || sum(id) FROM shrink))",
    )
}

/// The data checks every restored cluster of the chain test passes besides its fingerprint:
/// the dropped table is gone, the truncated table holds only its rows from after the
/// TRUNCATE, the table created after the full backup is there.
fn structural_checks(pg: &Pg, what: &str) {
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_class WHERE relname = 'gone'"),
        "0",
        "{what}: the dropped table is back"
    );
    assert_eq!(
        pg.psql("SELECT count(*), min(id), max(id), count(*) FILTER (WHERE note LIKE 'before%') FROM trunc"),
        "50|1|50|0",
        "{what}: the truncated table"
    );
    assert_eq!(
        pg.psql("SELECT count(*), sum(id) FROM born"),
        "3000|4501500",
        "{what}: the table created after the full backup"
    );
    // Every page of every relation is readable (a wrongly rebuilt block would fail here or in
    // the fingerprint; with data checksums on (18) a torn page fails the read).
    pg.psql("SELECT count(*) FROM pgbench_accounts WHERE aid % 7 = 3");
}

/// A file under `data` as `pg_relation_filepath` names it.
fn relation_file(pg: &Pg, rel: &str) -> String {
    pg.psql(&format!("SELECT pg_relation_filepath('{rel}')"))
}

/// The whole chain story on one server version. `combine`: the bin dir of a pg_combinebackup
/// and pg_verifybackup to check walseal's rebuild against (None: data checks only).
fn chain(major: u32, bin: &Path, combine: Option<&Path>) {
    let s = Setup::new(&Backend::Local);
    let mut pg = s.primary(bin, &["summarize_wal = on".into()]);
    start(&mut pg);
    assert!(pg
        .psql("SHOW server_version")
        .starts_with(&major.to_string()));
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql(
        "CREATE TABLE marks(id int PRIMARY KEY, note text); \
         INSERT INTO marks VALUES (1, 'before full'); \
         CREATE TABLE gone AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g; \
         CREATE TABLE trunc(id int PRIMARY KEY, note text); \
         INSERT INTO trunc SELECT g, 'before ' || g FROM generate_series(1, 20000) g; \
         CREATE TABLE steady AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 50000) g; \
         CREATE TABLE shrink AS SELECT g AS id, repeat('y', 100) AS pad FROM generate_series(1, 40000) g",
    );
    let full = backup_ok(&s, &pg, &[]);
    let full_id = id_of(&full);
    assert!(
        full["parent"].is_null(),
        "a full backup has no parent: {full}"
    );

    // Between the full backup and incremental 1: load, a drop, a truncate, a new table, a
    // relation that shrinks (VACUUM truncates its tail).
    let gone_file = relation_file(&pg, "gone");
    let trunc_old_file = relation_file(&pg, "trunc");
    let shrink_file = relation_file(&pg, "shrink");
    pg.pgbench(&["-c", "2", "-t", "300"]);
    pg.psql("DROP TABLE gone");
    pg.psql("TRUNCATE trunc");
    pg.psql("INSERT INTO trunc SELECT g, 'after ' || g FROM generate_series(1, 50) g");
    pg.psql("CREATE TABLE born AS SELECT g AS id FROM generate_series(1, 3000) g");
    let size = |pg: &Pg| -> u64 {
        pg.psql("SELECT pg_relation_size('shrink')")
            .parse()
            .unwrap()
    };
    assert!(size(&pg) > 4 * 1024 * 1024, "{}", size(&pg));
    pg.psql("DELETE FROM shrink WHERE id > 5000");
    pg.psql("VACUUM shrink");
    assert!(
        size(&pg) < 4 * 1024 * 1024,
        "VACUUM did not shrink: {}",
        size(&pg)
    );
    pg.psql("UPDATE steady SET h = 'changed ' || id WHERE id % 997 = 0");
    pg.psql("INSERT INTO marks VALUES (2, 'before incr1')");
    assert_ne!(
        relation_file(&pg, "trunc"),
        trunc_old_file,
        "TRUNCATE gave the table a new file"
    );
    let incr1 = backup_ok(&s, &pg, &["--incremental"]);
    let incr1_id = id_of(&incr1);
    assert_eq!(
        incr1["parent"].as_str(),
        Some(full_id.as_str()),
        "incremental 1's parent: {incr1}"
    );

    // Point A (an LSN) and point B (a time), both between incremental 1 and 2.
    pg.psql("INSERT INTO marks VALUES (3, 'after incr1')");
    pg.pgbench(&["-c", "2", "-t", "100"]);
    let lsn_a = pg.psql("SELECT pg_current_wal_lsn()");
    let fp_a = fingerprint(&pg);
    pg.psql("INSERT INTO marks VALUES (4, 'after point A')");
    pg.pgbench(&["-c", "2", "-t", "100"]);
    std::thread::sleep(Duration::from_millis(300));
    let time_b = pg.psql("SELECT clock_timestamp()");
    let fp_b = fingerprint(&pg);
    std::thread::sleep(Duration::from_millis(300));
    pg.psql("INSERT INTO marks VALUES (5, 'after point B')");
    pg.pgbench(&["-c", "2", "-t", "300"]);
    pg.psql("UPDATE steady SET h = 'again ' || id WHERE id % 1009 = 0");
    let incr2 = backup_ok(&s, &pg, &["--incremental"]);
    let incr2_id = id_of(&incr2);
    assert_eq!(
        incr2["parent"].as_str(),
        Some(incr1_id.as_str()),
        "incremental 2's parent: {incr2}"
    );
    assert!(
        incr2["size"].as_u64().unwrap() < full["size"].as_u64().unwrap(),
        "an incremental backup is smaller than the full one: {} vs {}",
        incr2["size"],
        full["size"]
    );
    pg.psql("INSERT INTO marks VALUES (6, 'after incr2')");
    pg.pgbench(&["-c", "2", "-t", "100"]);
    let fp_end = fingerprint(&pg);
    pg.switch_and_wait_archived();
    pg.stop();
    assert_ne!(fp_a, fp_b);
    assert_ne!(fp_b, fp_end);

    assert_eq!(
        chain_of(&list(&s)),
        vec![
            (full_id.clone(), None),
            (incr1_id.clone(), Some(full_id.clone())),
            (incr2_id.clone(), Some(incr1_id.clone())),
        ],
        "list --json: ids and parents"
    );
    let l = list(&s);
    assert_eq!(
        l["backups"][2]["chain"],
        serde_json::json!([full_id, incr1_id, incr2_id]),
        "list --json: the newest backup's chain"
    );
    let st = s
        .walseal_as_pg()
        .args(["status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        st["newest_backup"].as_str(),
        Some(incr2_id.as_str()),
        "{st}"
    );
    let (newest, full) = (
        st["newest_backup_age_seconds"].as_f64().unwrap(),
        st["newest_full_backup_age_seconds"].as_f64().unwrap(),
    );
    assert!(
        full > newest,
        "the full backup is older than incremental 2: {st}"
    );
    let v = s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(
        code(&v),
        0,
        "verify on a good chain: {}\n{}",
        stdout(&v),
        stderr(&v)
    );

    // Latest (incremental 2), rebuilt by walseal.
    let latest = s.dir.path().join("latest");
    let out = restore_ok(&s, &latest, &["latest", "--json"]);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["id"].as_str(), Some(incr2_id.as_str()), "{rec}");
    assert_eq!(
        incremental_files(&latest),
        Vec::<String>::new(),
        "the rebuilt data directory holds incremental files"
    );
    let label = std::fs::read_to_string(latest.join("backup_label")).unwrap();
    assert!(!label.contains("INCREMENTAL"), "backup_label:\n{label}");
    assert!(
        label.contains("START WAL LOCATION"),
        "backup_label:\n{label}"
    );
    assert!(latest.join("recovery.signal").exists());
    assert!(latest.join("backup_manifest").exists());
    let auto = std::fs::read_to_string(latest.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("restore_command"), "{auto}");
    for (what, f) in [("dropped", &gone_file), ("pre-TRUNCATE", &trunc_old_file)] {
        assert!(
            !latest.join(f).exists(),
            "the {what} relation's file {f} is in the rebuilt data directory"
        );
    }
    let shrunk = std::fs::metadata(latest.join(&shrink_file)).unwrap().len();
    assert!(
        shrunk < 4 * 1024 * 1024,
        "the shrunk relation {shrink_file} was not truncated: {shrunk} bytes"
    );

    // --raw: each backup as the server sent it.
    let raws: Vec<PathBuf> = [&full_id, &incr1_id, &incr2_id]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let dir = s.dir.path().join(format!("raw{i}"));
            restore_ok(&s, &dir, &[id.as_str(), "--raw"]);
            assert!(dir.join("backup_manifest").exists(), "raw {id}");
            assert!(!dir.join("recovery.signal").exists(), "raw {id}");
            let label = std::fs::read_to_string(dir.join("backup_label")).unwrap();
            let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
            assert!(
                !auto.contains("walseal"),
                "raw {id} has recovery settings: {auto}"
            );
            if i == 0 {
                assert!(!label.contains("INCREMENTAL"), "{label}");
                assert!(incremental_files(&dir).is_empty());
            } else {
                assert!(label.contains("INCREMENTAL FROM LSN"), "raw {id}:\n{label}");
                assert!(
                    !incremental_files(&dir).is_empty(),
                    "raw {id} has no INCREMENTAL.* file"
                );
            }
            dir
        })
        .collect();

    if let Some(tools) = combine {
        compare_with_pg_combinebackup(major, tools, &s, &raws, &latest);
    }

    let pg2 = start_restored(&s, bin, "latest");
    assert_eq!(
        fingerprint(&pg2),
        fp_end,
        "PG{major}: restore of incremental 2 with all the archive"
    );
    structural_checks(&pg2, "latest");
    pg2.stop();

    // Incremental 1 by id, up to point A.
    let at_a = s.dir.path().join("at_a");
    restore_ok(
        &s,
        &at_a,
        &[
            &incr1_id,
            "--target-lsn",
            &lsn_a,
            "--target-action",
            "promote",
        ],
    );
    assert!(incremental_files(&at_a).is_empty());
    let pga = start_restored(&s, bin, "at_a");
    assert_eq!(
        fingerprint(&pga),
        fp_a,
        "PG{major}: incremental 1 recovered to {lsn_a}"
    );
    structural_checks(&pga, "incremental 1 at an LSN");
    pga.stop();

    // Latest before point B: incremental 1 (incremental 2 ended after B).
    let at_b = s.dir.path().join("at_b");
    let out = restore_ok(
        &s,
        &at_b,
        &[
            "latest",
            "--target-time",
            &time_b,
            "--target-action",
            "promote",
            "--json",
        ],
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rec["id"].as_str(),
        Some(incr1_id.as_str()),
        "PITR to {time_b} should restore incremental 1: {rec}"
    );
    let pgb = start_restored(&s, bin, "at_b");
    assert_eq!(
        fingerprint(&pgb),
        fp_b,
        "PG{major}: PITR to {time_b} from incremental 1"
    );
    structural_checks(&pgb, "PITR between the incrementals");
    pgb.stop();

    if combine.is_some() {
        // A restore drill of the chain (the full install has pg_amcheck and pg_checksums).
        let dir = s.dir.path().join("drills");
        std::fs::create_dir_all(&dir).unwrap();
        chown_pg(&dir);
        let out = s
            .walseal_as_pg()
            .args(["drill", "latest", "--json", "--dir"])
            .arg(&dir)
            .arg("--pg-bin")
            .arg(bin)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "drill of the chain: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(
            report["backup"].as_str(),
            Some(incr2_id.as_str()),
            "{report}"
        );
    }

    // Incremental 2 named explicitly cannot reach a time before it ended.
    let early = s.dir.path().join("early");
    let out = restore(&s, &early, &[&incr2_id, "--target-time", &time_b]);
    assert_eq!(
        code(&out),
        11,
        "incremental 2 to a time before its end: {}",
        stderr(&out)
    );
    assert_never_created(&early, "a target before the backup");

    broken_chain(&s, &full_id, &incr1_id);
}

/// On the chain full -> incr1 -> incr2: a damaged part of the middle backup and a removed
/// full backup, each refused (5, naming what is wrong) with nothing left in PGDATA.
fn broken_chain(s: &Setup, full_id: &str, incr1_id: &str) {
    let backups = s.repo.local_dir.clone().unwrap().join("backups");
    let part = backups.join(incr1_id).join("base.tar.00000");
    let original = std::fs::read(&part).unwrap();
    let mut bad = original.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&part, &bad).unwrap();
    let dest = s.dir.path().join("damaged-middle");
    let out = restore(s, &dest, &["latest"]);
    assert_eq!(
        code(&out),
        5,
        "a damaged part of incremental 1: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("base.tar.00000"),
        "the damaged part is not named: {}",
        stderr(&out)
    );
    assert_nothing_written(&dest, "a damaged part of the middle backup");
    std::fs::write(&part, &original).unwrap();

    let aside = s.dir.path().join("full-aside");
    std::fs::rename(backups.join(full_id), &aside).unwrap();
    for id in ["latest", incr1_id] {
        let dest = s.dir.path().join(format!("no-full-{id}"));
        let out = restore(s, &dest, &[id]);
        assert_eq!(
            code(&out),
            5,
            "{id} with the full backup removed: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(full_id),
            "{id}: the missing full backup {full_id} is not named: {}",
            stderr(&out)
        );
        assert_never_created(&dest, "the full backup removed");
    }
    std::fs::rename(&aside, backups.join(full_id)).unwrap();
}

/// Files that differ on purpose between pg_combinebackup's output and walseal's restore.
const NOT_COMPARED: [&str; 3] = ["backup_manifest", "postgresql.auto.conf", "recovery.signal"];

/// `pg_combinebackup` of the raw backups against walseal's own rebuild (`latest`, not yet
/// started): the same entries, every regular file byte for byte; and `pg_verifybackup`
/// accepts walseal's rebuilt manifest.
fn compare_with_pg_combinebackup(
    major: u32,
    tools: &Path,
    s: &Setup,
    raws: &[PathBuf],
    latest: &Path,
) {
    for raw in raws {
        if major == 18 {
            run_ok(as_pg(&tools.join("pg_verifybackup")).arg("-n").arg(raw));
        }
    }
    let combined = s.dir.path().join("combined");
    let out = as_pg(&tools.join("pg_combinebackup"))
        .arg("-N")
        .args(raws)
        .arg("-o")
        .arg(&combined)
        .output()
        .unwrap();
    if major != 18 && !out.status.success() {
        // pg_combinebackup 18 cannot read PostgreSQL 17's pg_control ("CRC is incorrect": the
        // control file's layout changed), so on 17 only the data checks run.
        let err = stderr(&out);
        assert!(
            err.contains("pg_control") || err.contains("version"),
            "pg_combinebackup on PG{major} failed for another reason: {err}"
        );
        eprintln!(
            "SKIPPED: pg_combinebackup comparison on PG{major}: {}",
            err.trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "pg_combinebackup: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let keep = |(rel, _): &(String, Entry)| !NOT_COMPARED.contains(&rel.as_str());
    let theirs: BTreeMap<String, Entry> = tree(&combined).into_iter().filter(keep).collect();
    let ours: BTreeMap<String, Entry> = tree(latest).into_iter().filter(keep).collect();
    let only_theirs: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let only_ours: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "pg_combinebackup's and walseal's trees differ: only in pg_combinebackup's {only_theirs:?}, only in walseal's {only_ours:?}"
    );
    let mut files = 0;
    for (rel, entry) in &theirs {
        assert_eq!(entry, &ours[rel], "{rel}: kind or size differs");
        if let Entry::File(_) = entry {
            let a = std::fs::read(combined.join(rel)).unwrap();
            let b = std::fs::read(latest.join(rel)).unwrap();
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            assert!(
                a == b,
                "{rel}: walseal's rebuild differs from pg_combinebackup's (first differing byte at {first:?}, sizes {} and {})",
                b.len(),
                a.len()
            );
            files += 1;
        }
    }
    assert!(files > 500, "only {files} files compared");
    eprintln!("PG{major}: {files} files identical to pg_combinebackup's");
    run_ok(
        as_pg(&tools.join("pg_verifybackup"))
            .args(["-n", "-i", "postgresql.auto.conf", "-i", "recovery.signal"])
            .arg(latest),
    );
}

#[test]
fn pg17_incremental_chain_restores() {
    let Some(bin) = server_bin(17) else { return };
    // pg_combinebackup 18 is tried on the 17 backups too (and skipped if it refuses them).
    let tools = std::env::var_os("WALSEAL_TEST_PG18_FULL_BIN").map(PathBuf::from);
    chain(17, &bin, tools.as_deref());
}

#[test]
fn pg18_incremental_chain_matches_pg_combinebackup() {
    let Some(bin) = pg18_full() else { return };
    chain(18, &bin, Some(&bin));
}

/// Two chains on one 18 cluster: refusals without a parent, `--full-every`, the listing,
/// `retain --keep-full 1`, and a chain whose parent is damaged or removed.
#[test]
fn pg18_incremental_refusals_retain_and_broken_chains() {
    let Some(bin) = server_bin(18) else { return };
    let s = Setup::new(&Backend::Local);
    let mut pg = s.primary(&bin, &["summarize_wal = on".into()]);
    start(&mut pg);
    pg.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    pg.pgbench(&["-i", "-s", "1", "-q"]);

    // No complete backup to be a parent.
    let out = s.backup(&pg, &["--incremental", "--wal-timeout", "60"]);
    assert_eq!(
        code(&out),
        1,
        "incremental without a parent: {}",
        stderr(&out)
    );
    let l = list(&s);
    assert!(chain_of(&l).is_empty(), "{l}");
    assert_eq!(l["incomplete"], serde_json::json!([]), "{l}");

    // Chain A: --full-every on an empty repository takes a full backup; then an incremental.
    let a0 = backup_ok(&s, &pg, &["--full-every", "7d"]);
    assert!(a0["parent"].is_null(), "--full-every with no backup: {a0}");
    let a0 = id_of(&a0);
    // ... and a full backup again once the newest full one is older than the period.
    std::thread::sleep(Duration::from_millis(2100));
    let a = backup_ok(&s, &pg, &["--full-every", "1s"]);
    assert!(
        a["parent"].is_null(),
        "--full-every 1s with a full backup 2 s old: {a}"
    );
    let a = id_of(&a);
    assert_ne!(a, a0);
    pg.psql("INSERT INTO t VALUES (2)");
    pg.pgbench(&["-t", "100"]);
    let a1 = backup_ok(&s, &pg, &["--incremental"]);
    assert_eq!(a1["parent"].as_str(), Some(a.as_str()), "{a1}");
    let a1 = id_of(&a1);
    // Chain B: a full backup, then --full-every with a fresh full takes an incremental of it.
    pg.psql("INSERT INTO t VALUES (3)");
    let b = backup_ok(&s, &pg, &[]);
    assert!(b["parent"].is_null(), "{b}");
    let b = id_of(&b);
    pg.psql("INSERT INTO t VALUES (4)");
    pg.pgbench(&["-t", "100"]);
    let b1 = backup_ok(&s, &pg, &["--full-every", "7d"]);
    assert_eq!(
        b1["parent"].as_str(),
        Some(b.as_str()),
        "--full-every 7d with a fresh full backup: {b1}"
    );
    let b1 = id_of(&b1);
    pg.psql("INSERT INTO t VALUES (5)");
    let expected_counts = pg.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts");
    pg.switch_and_wait_archived();
    pg.stop();

    assert_eq!(
        chain_of(&list(&s)),
        vec![
            (a0.clone(), None),
            (a.clone(), None),
            (a1.clone(), Some(a.clone())),
            (b.clone(), None),
            (b1.clone(), Some(b.clone())),
        ]
    );
    let v = s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(code(&v), 0, "verify: {}\n{}", stdout(&v), stderr(&v));

    // retain counts full backups: chain A goes, chain B stays.
    let out = s
        .walseal_as_pg()
        .args(["retain", "--keep-full", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "retain: {}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut removed: Vec<String> = plan["removed_backups"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    removed.sort();
    assert_eq!(removed, vec![a0.clone(), a.clone(), a1.clone()], "{plan}");
    assert_eq!(
        chain_of(&list(&s)),
        vec![(b.clone(), None), (b1.clone(), Some(b.clone()))]
    );
    let repo = s.repo.local_dir.clone().unwrap();
    for id in [&a0, &a, &a1] {
        let d = repo.join("backups").join(id);
        assert!(
            !d.exists() || std::fs::read_dir(&d).unwrap().next().is_none(),
            "objects of {id} remain after retain"
        );
    }
    let v = s.walseal_as_pg().arg("verify").output().unwrap();
    assert_eq!(
        code(&v),
        0,
        "verify after retain: {}\n{}",
        stdout(&v),
        stderr(&v)
    );
    let restored = s.dir.path().join("b1");
    restore_ok(&s, &restored, &[&b1]);
    let r = start_restored(&s, &bin, "b1");
    assert_eq!(
        r.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3,4,5"
    );
    assert_eq!(
        r.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        expected_counts
    );
    r.stop();

    // A damaged or missing parent: refused before anything is written.
    let bdir = repo.join("backups").join(&b);
    let record = bdir.join("backup.json");
    let manifest = bdir.join("backup_manifest.00000");
    assert!(record.exists(), "{}", record.display());
    assert!(manifest.exists(), "{}", manifest.display());
    let b1_record = std::fs::read(repo.join("backups").join(&b1).join("backup.json")).unwrap();
    let flipped = |bytes: &[u8]| {
        let mut v = bytes.to_vec();
        let at = v.len() / 2;
        v[at] ^= 0x01;
        v
    };
    let original_record = std::fs::read(&record).unwrap();
    let original_manifest = std::fs::read(&manifest).unwrap();
    let cases: Vec<(&str, &Path, Vec<u8>, &[u8])> = vec![
        (
            "parent record with a flipped byte",
            record.as_path(),
            flipped(&original_record),
            original_record.as_slice(),
        ),
        (
            "parent record replaced by the child's",
            record.as_path(),
            b1_record.clone(),
            original_record.as_slice(),
        ),
        (
            "parent manifest part with a flipped byte",
            manifest.as_path(),
            flipped(&original_manifest),
            original_manifest.as_slice(),
        ),
    ];
    for (i, (what, path, bad, good)) in cases.into_iter().enumerate() {
        std::fs::write(path, &bad).unwrap();
        let dest = s.dir.path().join(format!("broken{i}"));
        let out = restore(&s, &dest, &[&b1]);
        assert_eq!(code(&out), 5, "{what}: {}", stderr(&out));
        assert_never_created(&dest, what);
        std::fs::write(path, good).unwrap();
    }
    // Put back, the chain restores again (the refusals above came from the damage).
    restore_ok(&s, &s.dir.path().join("b1-again"), &[&b1]);

    // The parent removed: every object under backups/<B>/.
    let aside = s.dir.path().join("parent-aside");
    std::fs::rename(&bdir, &aside).unwrap();
    let dest = s.dir.path().join("orphan");
    std::fs::create_dir(&dest).unwrap();
    chown_pg(&dest);
    let out = restore(&s, &dest, &[&b1]);
    assert_eq!(code(&out), 5, "parent removed: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&b),
        "the missing parent {b} is not named: {}",
        stderr(&out)
    );
    assert_nothing_written(&dest, "parent removed");
    let v = s
        .walseal_as_pg()
        .args(["verify", "--json"])
        .output()
        .unwrap();
    // verify sees the broken chain too.
    assert_ne!(code(&v), 0, "verify with a parent removed: {}", stdout(&v));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["backup_problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"].as_str().is_some_and(|r| r.contains(&b))),
        "verify does not name the missing parent {b}: {report}"
    );
    let out = restore(&s, &s.dir.path().join("orphan-latest"), &["latest"]);
    assert_ne!(
        code(&out),
        0,
        "latest with its parent removed: {}",
        stderr(&out)
    );
    assert_never_created(
        &s.dir.path().join("orphan-latest"),
        "latest, parent removed",
    );
}

/// `--incremental` against a server that cannot do it (15) and one that does not summarize
/// WAL (18 with summarize_wal = off): refused with 2 and 3, nothing added to the repository.
#[test]
fn incremental_refused_on_pg15_and_without_wal_summaries() {
    let s15 = Setup::new(&Backend::Local);
    let mut pg15 = s15.primary(&pg_bin(), &[]);
    start(&mut pg15);
    backup_ok(&s15, &pg15, &[]);
    let out = s15.backup(&pg15, &["--incremental", "--wal-timeout", "60"]);
    assert_eq!(
        code(&out),
        2,
        "--incremental on PostgreSQL 15: {}",
        stderr(&out)
    );
    let l = list(&s15);
    assert_eq!(chain_of(&l).len(), 1, "{l}");
    assert_eq!(l["incomplete"], serde_json::json!([]), "{l}");
    pg15.stop();

    let Some(bin) = server_bin(18) else { return };
    let s = Setup::new(&Backend::Local);
    let mut pg = s.primary(&bin, &["summarize_wal = off".into()]);
    start(&mut pg);
    backup_ok(&s, &pg, &[]);
    let out = s.backup(&pg, &["--incremental", "--wal-timeout", "60"]);
    assert_eq!(code(&out), 3, "summarize_wal off: {}", stderr(&out));
    assert!(
        stderr(&out).contains("summarize_wal"),
        "the message should name summarize_wal: {}",
        stderr(&out)
    );
    let l = list(&s);
    assert_eq!(chain_of(&l).len(), 1, "{l}");
    assert_eq!(l["incomplete"], serde_json::json!([]), "{l}");

    // summarize_wal turned on after the full backup: the server has no summaries back to
    // it, so --incremental fails saying what it needs, and --full-every takes a full one.
    // (The summarizer starts at the newest checkpoint's redo point: make that later than the
    // full backup's start.)
    pg.psql("CREATE TABLE after_full AS SELECT generate_series(1, 1000) i");
    pg.psql("CHECKPOINT");
    pg.psql("ALTER SYSTEM SET summarize_wal = on");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    let out = s.backup(&pg, &["--incremental", "--wal-timeout", "60"]);
    assert_eq!(
        code(&out),
        10,
        "no summaries back to the parent: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("WAL summaries"),
        "the hint should name WAL summaries: {}",
        stderr(&out)
    );
    let out = s.backup(
        &pg,
        &["--full-every", "7d", "--wal-timeout", "60", "--json"],
    );
    assert_eq!(code(&out), 0, "--full-every falls back: {}", stderr(&out));
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rec["parent"].is_null(), "a full backup was due: {rec}");
    let l = list(&s);
    assert_eq!(chain_of(&l).len(), 2, "{l}");
    assert_eq!(l["incomplete"], serde_json::json!([]), "{l}");
}
