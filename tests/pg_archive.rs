//! End to end on a real PostgreSQL 15: archive_command runs walseal under pgbench load, a
//! second cluster made with `pg_basebackup -X none` replays only from the archive through
//! restore_command and ends with exactly the primary's data; a tampered archive stops
//! recovery instead of promoting. Once with a local repository configured through environment
//! variables inside the command, once with S3 configured through `--config`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        p.is_file() && contains(&std::fs::read(&p).unwrap(), needle)
    })
}

fn fingerprint(pg: &Pg) -> String {
    pg.psql(
        "SELECT (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts) || ' ' || \
         (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT count(*) FROM pgbench_history) || ' ' || \
         (SELECT string_agg(t, ',' ORDER BY t) FROM canary)",
    )
}

fn archive_then_replay_from_archive_only(backend: Backend) {
    let s = Setup::new(&backend);
    let primary = s.primary(&pg_bin(), &["max_wal_senders = 4".into()]);
    primary.start();
    let base = s.dir.path().join("base");
    plain_basebackup(&primary, &base);

    let marker = format!("walseal-canary-{}", unique("m"));
    primary.psql(&format!(
        "CREATE TABLE canary(t text); INSERT INTO canary VALUES ('{marker}')"
    ));
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    primary.pgbench(&["-c", "4", "-j", "2", "-T", "6"]);
    let expected = fingerprint(&primary);
    let last = primary.switch_and_wait_archived();
    let archived: u32 = primary
        .psql("SELECT archived_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    assert!(archived >= 5, "only {archived} segments archived");
    assert_eq!(
        primary.psql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "archive_command failed; log:\n{}",
        tail(&primary.log_text(), 30)
    );

    // The marker is in the primary's WAL in clear, and nowhere in the repository's bytes.
    assert!(
        files_contain(&primary.data.join("pg_wal"), marker.as_bytes()),
        "marker not found in pg_wal: test cannot prove anything"
    );
    let objects = s.raw_objects();
    assert!(
        objects.iter().any(|(k, _)| k.ends_with(&last)),
        "{last} not in repository: {:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (key, bytes) in &objects {
        assert!(
            !contains(bytes, marker.as_bytes()),
            "plaintext marker found in repository object {key}"
        );
    }
    primary.stop();

    // A tampered copy of the archive must stop recovery, not promote.
    let tampered_base = s.dir.path().join("base-tampered");
    run_ok(Command::new("cp").arg("-a").arg(&base).arg(&tampered_base));
    let mid = objects
        .iter()
        .filter(|(k, _)| k.starts_with("wal/00000001/") && k.len() == 37)
        .nth(2)
        .unwrap()
        .0
        .clone();

    // The restored cluster: only restore_command, no streaming.
    let restore = format!(
        "restore_command = '{}'",
        s.command("wal-fetch %f %p").replace('\'', "''")
    );
    let replica = Pg::existing(
        s.dir.path(),
        "base",
        &[
            "archive_mode = off".into(),
            restore.clone(),
            "recovery_target_action = promote".into(),
        ],
    );
    std::fs::write(base.join("recovery.signal"), "").unwrap();
    chown_pg(&base);
    replica.start();
    replica.wait_for(
        "SELECT pg_is_in_recovery()",
        Duration::from_secs(180),
        |r| r == "f",
    );
    assert_eq!(
        fingerprint(&replica),
        expected,
        "restored cluster differs from the primary"
    );
    let log = replica.log_text();
    assert!(
        log.contains(&format!("restored log file \"{last}\" from archive")),
        "last segment not restored; log:\n{}",
        tail(&log, 30)
    );
    replica.stop();

    // Now damage one segment in the repository and replay again from the untouched base.
    let storage = s.repo.storage();
    let mut bad = block_on(storage.get_bytes(&mid)).unwrap().unwrap();
    let at = bad.len() - 40;
    bad[at] ^= 0x01;
    block_on(async {
        storage.delete(&mid).await.unwrap();
        storage.put_new(&mid, bad.into()).await.unwrap();
    });
    let broken = Pg::existing(
        s.dir.path(),
        "base-tampered",
        &[
            "archive_mode = off".into(),
            restore,
            "recovery_target_action = promote".into(),
        ],
    );
    std::fs::write(tampered_base.join("recovery.signal"), "").unwrap();
    chown_pg(&tampered_base);
    broken.start_nowait();
    let seg = mid.rsplit('/').next().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let log = broken.log_text();
        if log.contains("could not restore file") && !broken.data.join("postmaster.pid").exists() {
            assert!(
                log.contains(&seg),
                "FATAL names another file; log:\n{}",
                tail(&log, 20)
            );
            assert!(
                !log.contains("selected new timeline ID"),
                "recovery promoted past a tampered segment:\n{}",
                tail(&log, 30)
            );
            assert!(
                log.contains("failed authentication"),
                "walseal's reason is not in the server log:\n{}",
                tail(&log, 20)
            );
            break;
        }
        assert!(
            !log.contains("selected new timeline ID"),
            "recovery promoted past a tampered segment:\n{}",
            tail(&log, 30)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "recovery neither failed nor promoted; log:\n{}",
            tail(&log, 30)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !tampered_base.join("pg_wal").join(&seg).exists(),
        "tampered segment left in pg_wal"
    );
    let _ = (&s.key, &s.bin);
}

#[test]
fn pg15_archive_and_replay_local_repository() {
    archive_then_replay_from_archive_only(Backend::Local);
}

#[test]
fn pg15_archive_and_replay_s3_repository() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    archive_then_replay_from_archive_only(Backend::S3 { endpoint, bucket });
}
