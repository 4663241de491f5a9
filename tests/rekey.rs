//! Key rotation on a real cluster (PostgreSQL 15, local repository): a repository written under
//! key A, then B active while archiving goes on; `rekey` runs while pgbench load is archived, a
//! rekey killed half-way is completed by running it again; then A is removed from the keyring,
//! and verify plus a full PITR succeed with B alone.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn pg15_rekey_under_load_then_retire_the_old_key() {
    let s = Setup::new(&Backend::Local);
    let key_a = s.key.clone();
    let key_b = s.dir.path().join("b.key");
    run_ok(as_pg(&s.bin).arg("keygen").arg("-o").arg(&key_b));
    let both = format!("{}:{}", key_b.display(), key_a.display());
    let pg = s.primary(&pg_bin(), &[]);
    pg.start();
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE t(id int PRIMARY KEY)");
    assert_eq!(code(&s.backup(&pg, &["--part-size", "1MiB"])), 0);
    pg.psql("INSERT INTO t VALUES (1)");
    pg.switch_and_wait_archived();

    // Key B becomes active for archiving; A stays configured.
    let cmd = format!(
        "WALSEAL_REPO='{}' WALSEAL_KEY_FILE='{both}' {} wal-push %p",
        s.repo.url,
        s.bin.display()
    );
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        cmd.replace('\'', "''")
    ));
    pg.psql("SELECT pg_reload_conf()");
    let as_b = |args: &[&str], keys: &str| {
        s.walseal_as_pg()
            .env("WALSEAL_KEY_FILE", keys)
            .args(args)
            .output()
            .unwrap()
    };

    // A rekey killed half-way...
    let mut child = s
        .walseal_as_pg()
        .env("WALSEAL_KEY_FILE", &both)
        .args(["rekey", "--jobs", "1"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let _ = Command::new("kill")
        .arg("-9")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    // ...then run again while pgbench writes and archiving (under B) goes on.
    let load = pg.pgbench_background(2, 5);
    let out = as_b(&["rekey", "--json"], &both);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut load = load;
    assert!(load.wait().unwrap().success());
    pg.psql("INSERT INTO t VALUES (2)");
    pg.switch_and_wait_archived();
    // Objects archived under A during the rekey (none: B was active) and anything left: run once more.
    let out = as_b(&["rekey", "--json"], &both);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pg.stop();

    // A retired: verify and a full restore with B alone.
    let b_only = key_b.display().to_string();
    let out = as_b(&["verify", "--json"], &b_only);
    assert_eq!(code(&out), 0, "verify with B alone: {}", stdout(&out));
    let dest = s.dir.path().join("restored");
    let out = s
        .walseal_as_pg()
        .env("WALSEAL_KEY_FILE", &b_only)
        .args(["restore", "latest"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = s.start_restored(&pg_bin(), "restored");
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    // With A alone nothing opens any more: verify cannot even read the backup records.
    let out = as_b(&["verify"], &key_a.display().to_string());
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the configured keyring"),
        "{}",
        stderr(&out)
    );
}
