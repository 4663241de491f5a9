//! `walseal retain` on a real repository (PostgreSQL 15): after four backups, `--keep-full 2`
//! keeps exactly the two newest and the WAL they need; `--dry-run` changes nothing; PITR to a
//! time after the older kept backup still works and verify finds no gap.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

fn list(s: &Setup) -> serde_json::Value {
    serde_json::from_slice(
        &s.walseal_as_pg()
            .args(["list", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

fn scenario(backend: Backend) {
    let s = Setup::new(&backend);
    let pg = s.primary(&pg_bin(), &[]);
    pg.start();
    pg.psql("CREATE TABLE t(id int PRIMARY KEY)");
    let mut target = String::new();
    for i in 1..=4 {
        pg.psql(&format!("INSERT INTO t VALUES ({i})"));
        pg.switch_and_wait_archived();
        let out = s.backup(&pg, &[]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        if i == 3 {
            // A point after backup 3 ended and before backup 4: recoverable only from backup 3.
            pg.psql("INSERT INTO t VALUES (30)");
            std::thread::sleep(Duration::from_millis(300));
            target = pg.psql("SELECT clock_timestamp()");
            std::thread::sleep(Duration::from_millis(300));
            pg.psql("INSERT INTO t VALUES (31)");
        }
    }
    pg.psql("INSERT INTO t VALUES (5)");
    pg.switch_and_wait_archived();
    pg.stop();
    let before = list(&s);
    let all = ids(&before);
    assert_eq!(all.len(), 4);
    let objects_before = block_on(s.repo.storage().list("")).unwrap();

    let out = s
        .walseal_as_pg()
        .args(["retain", "--keep-full", "2", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["removed_backups"], serde_json::json!([all[0], all[1]]));
    assert_eq!(
        block_on(s.repo.storage().list("")).unwrap(),
        objects_before,
        "--dry-run changed the repository"
    );

    // --keep-days 0: only what recovery from now on needs, i.e. the newest backup.
    let out = s
        .walseal_as_pg()
        .args(["retain", "--keep-days", "0", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["kept"], serde_json::json!([all[3]]), "{plan}");
    // Both policies combine: a backup either keeps is kept.
    let out = s
        .walseal_as_pg()
        .args([
            "retain",
            "--keep-days",
            "0",
            "--keep-full",
            "3",
            "--dry-run",
            "--json",
        ])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["removed_backups"],
        serde_json::json!([all[0]]),
        "{plan}"
    );

    let out = s
        .walseal_as_pg()
        .args(["retain", "--keep-full", "2"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let after = list(&s);
    assert_eq!(
        ids(&after),
        vec![all[2].clone(), all[3].clone()],
        "kept the wrong backups"
    );
    assert!(
        block_on(s.repo.storage().list(&format!("backups/{}/", all[0])))
            .unwrap()
            .is_empty(),
        "parts of a removed backup remain"
    );
    // WAL below backup 3's start is gone; from there on it is all there.
    let start3 = after["backups"][0]["start_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let first_wal = after["wal"][0]["first"].as_str().unwrap().to_string();
    let (hi, lo) = start3.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    assert_eq!(
        first_wal,
        format!("00000001{:08X}{:08X}", (lsn >> 24) / 256, (lsn >> 24) % 256),
        "oldest kept WAL should be backup 3's start segment"
    );
    let out = s.walseal_as_pg().args(["verify"]).output().unwrap();
    assert_eq!(
        code(&out),
        0,
        "verify after retain: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // PITR to the point between backups 3 and 4 still works.
    let dest = s.dir.path().join("restored");
    let out = s
        .walseal_as_pg()
        .args(["restore", "latest"])
        .arg(&dest)
        .args(["--target-time", &target, "--target-action", "promote"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let restored = s.start_restored(&pg_bin(), "restored");
    assert_eq!(
        restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3,30"
    );
}

#[test]
fn pg15_retain_keep_full_local() {
    scenario(Backend::Local);
}

#[test]
fn pg15_retain_keep_full_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    scenario(Backend::S3 { endpoint, bucket });
}
