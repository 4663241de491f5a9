//! Push-only hosts (public-key mode): a database host given only the recipient archives and
//! backs up but can open nothing; a restore host given the identity opens everything.
//! Synthetic segments on every backend for the edge cases, then a real PostgreSQL 15 cluster
//! under pgbench load, archived and backed up push-only, restored to a point in time with the
//! identity.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const SYSID: u64 = 7_301_000_000_000_000_077;
const SEG: u32 = 16 << 20;

/// A recipient/identity pair made by `walseal keygen --recipient` (as `runner`).
fn keygen_recipient(runner: Command, path: &Path) -> String {
    let mut runner = runner;
    let out = runner
        .args(["keygen", "--recipient", "-o"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let recipient = stdout(&out).trim().to_string();
    assert!(
        recipient.starts_with("wsr1") && recipient.len() == 76,
        "{recipient}"
    );
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The identity file holds the same recipient.
    assert!(std::fs::read_to_string(path)
        .unwrap()
        .contains(&format!("recipient: {recipient}")));
    recipient
}

/// The signer every push-only host of these tests signs with (a file owned by postgres, mode
/// 0600), and its public `wss1…` text, which every host trusts.
fn test_signer() -> &'static (PathBuf, String) {
    static SIGNER: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("walseal-signer")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("signer");
        let out = Command::new(walseal_bin())
            .args(["keygen", "--signer", "-o"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        chown_pg(&path);
        let public = stdout(&out).trim().to_string();
        assert!(public.starts_with("wss1") && public.len() == 76, "{public}");
        (path, public)
    })
}

/// Creates the repository from the push-only host (recipient and signer only).
fn init_push_only(repo: &RepoEnv, recipient: &str, dir: &Path) {
    let mut c = bare(repo);
    c.env("WALSEAL_RECIPIENT", recipient);
    let out = run(c, &["init"], dir);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// walseal configured for `repo` with no key at all; the caller adds the recipient or identity.
/// It has the test signer (signs what it seals to a recipient) and trusts it.
fn bare(repo: &RepoEnv) -> Command {
    let mut c = Command::new(walseal_bin());
    let (signer, public) = test_signer();
    c.env("WALSEAL_SIGNER_FILE", signer)
        .env("WALSEAL_TRUSTED_SIGNERS", public);
    c.env_remove("WALSEAL_CONFIG")
        .env_remove("WALSEAL_LOG")
        .env_remove("WALSEAL_KEY_FILE")
        .env_remove("WALSEAL_RECIPIENT")
        .env_remove("WALSEAL_IDENTITY_FILE");
    for (k, v) in &repo.vars {
        c.env(k, v);
    }
    c
}

fn run(mut c: Command, args: &[&str], dir: &Path) -> Output {
    c.args(args).current_dir(dir).output().unwrap()
}

/// Makes a repository under a test directory.
type MakeRepo = Box<dyn Fn(&Path) -> RepoEnv>;

fn backends() -> Vec<MakeRepo> {
    let mut v: Vec<MakeRepo> = vec![Box::new(|root: &Path| RepoEnv::local(&root.join("repo")))];
    for backend in bucket_backends() {
        v.push(Box::new(move |_: &Path| {
            backend.bucket_repo("push-only").unwrap()
        }));
    }
    v
}

#[test]
fn push_only_host_archives_compares_by_digest_and_cannot_open() {
    for make_repo in backends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("pg_wal")).unwrap();
        let repo = make_repo(root);
        let identity = root.join("identity");
        let recipient = keygen_recipient(bare(&repo), &identity);
        init_push_only(&repo, &recipient, root);
        let push_host = || {
            let mut c = bare(&repo);
            c.env("WALSEAL_RECIPIENT", &recipient);
            c
        };
        let restore_host = || {
            let mut c = bare(&repo);
            c.env("WALSEAL_IDENTITY_FILE", &identity);
            c
        };
        let name = "000000010000000000000005";
        let data = synthetic_segment(name, SYSID, SEG, Some(b"push-only marker"));
        std::fs::write(root.join("pg_wal").join(name), &data).unwrap();
        let path = format!("pg_wal/{name}");

        let out = run(push_host(), &["wal-push", &path], root);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        // PostgreSQL re-archives after a crash: the same content succeeds (content digest)...
        let out = run(
            push_host(),
            &["wal-push", &path, "--log-level", "info"],
            root,
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("identical content"),
            "{}",
            stderr(&out)
        );
        // A damaged archived copy (one byte appended) with the right digest is not taken for
        // the segment: this host cannot authenticate it, so size and slot must match too.
        let storage = repo.storage();
        let key = format!("wal/00000001/{name}");
        let good = block_on(storage.get_bytes(&key)).unwrap().unwrap();
        let mut padded = good.clone();
        padded.push(0);
        block_on(storage.replace(&key, padded.into())).unwrap();
        let out = run(push_host(), &["wal-push", &path], root);
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert!(stderr(&out).contains("cannot open it"), "{}", stderr(&out));
        block_on(storage.replace(&key, good.into())).unwrap();
        // ...different content under the same name is refused.
        let mut other = data.clone();
        other[200_000] ^= 0xff;
        std::fs::write(root.join("pg_wal").join(name), &other).unwrap();
        let out = run(push_host(), &["wal-push", &path], root);
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("different content"),
            "{}",
            stderr(&out)
        );
        std::fs::write(root.join("pg_wal").join(name), &data).unwrap();
        // Another cluster's segment: refused against the plain identity copy.
        let foreign = "000000010000000000000006";
        std::fs::write(
            root.join("pg_wal").join(foreign),
            synthetic_segment(foreign, SYSID + 1, SEG, None),
        )
        .unwrap();
        let out = run(
            push_host(),
            &["wal-push", &format!("pg_wal/{foreign}")],
            root,
        );
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("belongs to system"),
            "{}",
            stderr(&out)
        );

        // The push-only host opens nothing, and says what is needed. wal-fetch exits above
        // 125 (stop recovery), never 1 (which would look like the end of the archive), even
        // for a name that is not archived; nothing is written to the destination.
        for fetch_name in [name, "000000010000000000000009"] {
            let out = run(push_host(), &["wal-fetch", fetch_name, "restored"], root);
            assert_eq!(code(&out), 204, "{}", stderr(&out));
            assert!(
                stderr(&out).contains("needs an identity"),
                "{}",
                stderr(&out)
            );
            assert!(!root.join("restored").exists());
        }
        for args in [
            &["verify"][..],
            &["list"][..],
            &["restore", "latest", "pgdata"][..],
        ] {
            let out = run(push_host(), args, root);
            assert_eq!(code(&out), 4, "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("needs an identity"),
                "{args:?}: {}",
                stderr(&out)
            );
        }

        // The restore host opens what the push-only host sealed.
        let out = run(restore_host(), &["wal-fetch", name, "restored"], root);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(std::fs::read(root.join("restored")).unwrap() == data);
        let out = run(restore_host(), &["verify", "--json"], root);
        assert_eq!(code(&out), 0, "{}", stdout(&out));
        // A master key does not open recipient-sealed objects.
        let key = root.join("master.key");
        run_ok(bare(&repo).args(["keygen", "-o"]).arg(&key));
        let out = run(
            {
                let mut c = bare(&repo);
                c.env("WALSEAL_KEY_FILE", &key);
                c
            },
            &["wal-fetch", name, "other"],
            root,
        );
        assert_eq!(code(&out), 204, "{}", stderr(&out));

        // The recipient is checked: one changed digit is refused before anything is sealed.
        let mut typo = recipient.clone().into_bytes();
        typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
        let out = run(
            {
                let mut c = bare(&repo);
                c.env("WALSEAL_RECIPIENT", String::from_utf8(typo).unwrap());
                c
            },
            &["wal-push", &path],
            root,
        );
        assert_eq!(code(&out), 3, "{}", stderr(&out));
        assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));

        // The repository holds no plaintext: the marker is nowhere in the raw objects, and the
        // plain identity copy holds only the identity record.
        let storage = repo.storage();
        block_on(async {
            for (key, _) in storage.list("").await.unwrap() {
                let bytes = storage.get_bytes(&key).await.unwrap().unwrap();
                assert!(!contains(&bytes, b"push-only marker"), "{key}");
                if key == "walseal.id.json" {
                    let text = String::from_utf8(bytes.to_vec()).unwrap();
                    assert!(text.contains(&SYSID.to_string()), "{text}");
                }
            }
        });
    }
}

/// Everything needed to archive into `repo` push-only from PostgreSQL's archive_command.
fn push_only_archive_setting(bin: &Path, repo: &RepoEnv, recipient: &str) -> String {
    let cmd = format!(
        "{} WALSEAL_RECIPIENT='{recipient}' WALSEAL_SIGNER_FILE='{}' {} wal-push %p",
        repo.shell_prefix(),
        test_signer().0.display(),
        bin.display()
    );
    format!("archive_command = '{}'", cmd.replace('\'', "''"))
}

#[test]
fn pg15_push_only_host_archives_and_backs_up_identity_host_restores_pitr() {
    let s = Setup::new(&Backend::Local);
    let identity: PathBuf = s.dir.path().join("identity");
    let recipient = keygen_recipient(as_pg(&s.bin), &identity);
    let pg = Pg::init(
        s.dir.path(),
        "primary",
        &[
            "archive_mode = on".into(),
            push_only_archive_setting(&s.bin, &s.repo, &recipient),
        ],
    );
    // The database host creates the repository (Setup made one under its master key, which
    // the restore host does not hold: start afresh, before PostgreSQL archives anything).
    block_on(async {
        let storage = s.repo.storage();
        storage.delete("walseal.repo").await.unwrap();
        storage.delete("walseal.repo.json").await.unwrap();
    });
    let out = s
        .walseal_as_pg()
        .env_remove("WALSEAL_KEY_FILE")
        .env("WALSEAL_RECIPIENT", &recipient)
        .env("WALSEAL_SIGNER_FILE", &test_signer().0)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    pg.start();
    // The database host: recipient only, no key file.
    let push_host = || {
        let mut c = s.walseal_as_pg();
        c.env_remove("WALSEAL_KEY_FILE")
            .env("WALSEAL_RECIPIENT", &recipient)
            .env("WALSEAL_SIGNER_FILE", &test_signer().0);
        c
    };
    let restore_host = || {
        let mut c = s.walseal_as_pg();
        c.env_remove("WALSEAL_KEY_FILE")
            .env("WALSEAL_IDENTITY_FILE", &identity)
            .env("WALSEAL_TRUSTED_SIGNERS", &test_signer().1);
        c
    };

    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE t(id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let mut load = pg.pgbench_background(2, 6);
    let out = push_host()
        .args(["backup", "--fast", "--json", "--pg"])
        .arg(format!("host=127.0.0.1 port={} user=postgres", pg.port))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "push-only backup: {}", stderr(&out));
    assert!(load.wait().unwrap().success());
    pg.psql("INSERT INTO t(id) SELECT generate_series(1, 50)");
    std::thread::sleep(Duration::from_millis(1100));
    let target = pg.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("INSERT INTO t(id) SELECT generate_series(51, 100)");
    pg.psql("DROP TABLE pgbench_history");
    pg.switch_and_wait_archived();
    let failed = pg.psql("SELECT failed_count FROM pg_stat_archiver");
    assert_eq!(
        failed,
        "0",
        "archive_command failed: {}",
        tail(&pg.log_text(), 20)
    );

    // `check` on the push-only host: archiving works, nothing is opened.
    let out = push_host()
        .args(["check", "--pg"])
        .arg(format!("host=127.0.0.1 port={} user=postgres", pg.port))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("push-only"), "{}", stdout(&out));
    pg.stop();

    // `status` on the push-only host counts backups from the listing; the identity host, from
    // the records: they agree.
    let status = |mut c: Command| -> serde_json::Value {
        let out = c.args(["status", "--json"]).output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let (p, r) = (status(push_host()), status(restore_host()));
    assert_eq!(p["push_only"], true);
    assert_eq!(r["push_only"], false);
    assert_eq!(p["backups"], 1);
    for field in [
        "backups",
        "newest_backup",
        "incomplete_backups",
        "newest_segment",
    ] {
        assert_eq!(p[field], r[field], "{field}");
    }

    // The push-only host cannot restore.
    let dest = s.dir.path().join("restored");
    let out = push_host()
        .args(["restore", "latest"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs an identity"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none());

    // The restore host, with the identity: verify, then PITR to the target.
    let out = restore_host().args(["verify", "--json"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let out = restore_host()
        .args([
            "restore",
            "latest",
            "--target-time",
            &target,
            "--target-action",
            "promote",
        ])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = s.start_restored(&pg_bin(), "restored");
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "50");
    assert_eq!(
        restored.psql("SELECT to_regclass('pgbench_history') IS NOT NULL"),
        "t"
    );
}

#[test]
fn mixed_repository_then_rekey_to_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("pg_wal")).unwrap();
    let repo = RepoEnv::local(&root.join("repo"));
    let key = root.join("master.key");
    run_ok(bare(&repo).args(["keygen", "-o"]).arg(&key));
    let identity = root.join("identity");
    let out = bare(&repo)
        .args(["keygen", "--recipient", "-o"])
        .arg(&identity)
        .output()
        .unwrap();
    let recipient = stdout(&out).trim().to_string();
    let recipient_id = stderr(&out)
        .split("wrote identity ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let with = |vars: &[(&str, &Path)], recipient: Option<&str>| {
        let mut c = bare(&repo);
        for (k, v) in vars {
            c.env(k, v);
        }
        if let Some(r) = recipient {
            c.env("WALSEAL_RECIPIENT", r);
        }
        c
    };
    let segs = ["000000010000000000000003", "000000010000000000000004"];
    let data: Vec<Vec<u8>> = segs
        .iter()
        .map(|n| synthetic_segment(n, SYSID, SEG, None))
        .collect();
    for (n, d) in segs.iter().zip(&data) {
        std::fs::write(root.join("pg_wal").join(n), d).unwrap();
    }
    let out = run(with(&[("WALSEAL_KEY_FILE", &key)], None), &["init"], root);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The first segment under the master key, the second from a push-only host.
    let out = run(
        with(&[("WALSEAL_KEY_FILE", &key)], None),
        &["wal-push", &format!("pg_wal/{}", segs[0])],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(
        with(&[], Some(&recipient)),
        &["wal-push", &format!("pg_wal/{}", segs[1])],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // A host with both opens both; with one of them, only its own objects open.
    let both = [
        ("WALSEAL_KEY_FILE", key.as_path()),
        ("WALSEAL_IDENTITY_FILE", identity.as_path()),
    ];
    let out = run(with(&both, None), &["verify", "--json"], root);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let out = run(
        with(&[("WALSEAL_IDENTITY_FILE", &identity)], None),
        &["wal-fetch", segs[0], "x"],
        root,
    );
    assert_eq!(code(&out), 204, "{}", stderr(&out));

    // Before the rekey, the push-only host cannot tell whether the master-key segment holds
    // the same content (no digest, cannot open): it refuses rather than claim success.
    let out = run(
        with(&[], Some(&recipient)),
        &["wal-push", &format!("pg_wal/{}", segs[0])],
        root,
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot tell"), "{}", stderr(&out));

    // Rekey everything to the recipient (the identity is needed to check each object).
    let out = run(
        with(&[("WALSEAL_KEY_FILE", &key)], None),
        &["rekey", "--to", &recipient_id],
        root,
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = run(
        with(&both, None),
        &["rekey", "--to", &recipient_id, "--json"],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Now the identity alone opens everything, byte for byte.
    let out = run(
        with(&[("WALSEAL_IDENTITY_FILE", &identity)], None),
        &["verify", "--json"],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    for (n, d) in segs.iter().zip(&data) {
        let dest = format!("fetched-{n}");
        let out = run(
            with(&[("WALSEAL_IDENTITY_FILE", &identity)], None),
            &["wal-fetch", n, &dest],
            root,
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(std::fs::read(root.join(&dest)).unwrap() == *d);
    }
    // Re-pushes from the push-only host now match by digest: its own segment kept its digest
    // (already under the recipient), and rekey gave the master-key segment one.
    for seg in segs {
        let out = run(
            with(&[], Some(&recipient)),
            &["wal-push", &format!("pg_wal/{seg}")],
            root,
        );
        assert_eq!(code(&out), 0, "{seg}: {}", stderr(&out));
    }

    // Escrow of an identity: export under a passphrase, import, and the copy opens everything.
    let export = root.join("identity.export");
    let mut c = with(&[("WALSEAL_IDENTITY_FILE", &identity)], None);
    c.env("WALSEAL_PASSPHRASE", "correct horse battery staple");
    let out = run(
        c,
        &[
            "key",
            "export",
            "--key-id",
            &recipient_id,
            "-o",
            export.to_str().unwrap(),
        ],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&export).unwrap();
    let secret = std::fs::read_to_string(&identity).unwrap();
    let secret = secret
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap();
    assert!(
        !text.contains(secret),
        "the export holds the identity in clear"
    );
    let copy = root.join("identity.copy");
    let mut c = bare(&repo);
    c.env("WALSEAL_PASSPHRASE", "correct horse battery staple");
    let out = run(
        c,
        &[
            "key",
            "import",
            "-i",
            export.to_str().unwrap(),
            "-o",
            copy.to_str().unwrap(),
        ],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), recipient_id);
    let out = run(
        with(&[("WALSEAL_IDENTITY_FILE", &copy)], None),
        &["verify"],
        root,
    );
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn push_only_audit_log_is_chained_and_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("pg_wal")).unwrap();
    let repo = RepoEnv::local(&root.join("repo"));
    let identity = root.join("identity");
    let recipient = keygen_recipient(bare(&repo), &identity);
    init_push_only(&repo, &recipient, root);
    let audit = root.join("audit.log");
    let push_host = || {
        let mut c = bare(&repo);
        c.env("WALSEAL_RECIPIENT", &recipient)
            .env("WALSEAL_AUDIT_LOG", &audit);
        c
    };
    let secret = std::fs::read_to_string(&identity).unwrap();
    let secret = secret
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    for n in ["000000010000000000000001", "000000010000000000000002"] {
        std::fs::write(
            root.join("pg_wal").join(n),
            synthetic_segment(n, SYSID, SEG, None),
        )
        .unwrap();
        let out = run(
            push_host(),
            &["wal-push", &format!("pg_wal/{n}"), "--log-level", "trace"],
            root,
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(!stderr(&out).contains(&secret));
    }
    let log = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.lines()
            .all(|l| l.contains("\"op\":\"wal-push\"") && !l.contains("\"mac\"")),
        "{log}"
    );
    assert!(!log.contains(&secret));
    let out = run(push_host(), &["audit", "verify"], root);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    // A removed line breaks the chain even without a MAC.
    let second = log.lines().nth(1).unwrap();
    std::fs::write(&audit, format!("{second}\n")).unwrap();
    let out = run(push_host(), &["audit", "verify"], root);
    assert_ne!(code(&out), 0, "{}", stdout(&out));
    // `audit seal` works push-only: the batch is sealed to the recipient.
    std::fs::write(&audit, &log).unwrap();
    let out = run(push_host(), &["audit", "seal"], root);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let sealed: Vec<_> = std::fs::read_dir(root.join("repo/audit"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .collect();
    assert_eq!(sealed.len(), 1);

    // A host that seals to the recipient but also holds a master key MACs its lines with
    // that key (named in mac_key_id); a stripped MAC is then detected.
    let key = root.join("master.key");
    run_ok(bare(&repo).args(["keygen", "-o"]).arg(&key));
    let audit2 = root.join("audit2.log");
    let both = || {
        let mut c = bare(&repo);
        c.env("WALSEAL_RECIPIENT", &recipient)
            .env("WALSEAL_KEY_FILE", &key)
            .env("WALSEAL_AUDIT_LOG", &audit2);
        c
    };
    let n = "000000010000000000000003";
    std::fs::write(
        root.join("pg_wal").join(n),
        synthetic_segment(n, SYSID, SEG, None),
    )
    .unwrap();
    let out = run(both(), &["wal-push", &format!("pg_wal/{n}")], root);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = std::fs::read_to_string(&audit2).unwrap();
    assert!(
        line.contains("\"mac_key_id\"") && line.contains("\"mac\""),
        "{line}"
    );
    let out = run(both(), &["audit", "verify"], root);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let stripped = line
        .split(",\"mac\":")
        .next()
        .map(|head| format!("{head}}}\n"))
        .unwrap();
    std::fs::write(&audit2, stripped).unwrap();
    let out = run(both(), &["audit", "verify"], root);
    assert_ne!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("MAC missing"), "{}", stdout(&out));
}

#[test]
fn verify_recomputes_content_digests() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("pg_wal")).unwrap();
    let repo = RepoEnv::local(&root.join("repo"));
    let identity = root.join("identity");
    let recipient = keygen_recipient(bare(&repo), &identity);
    init_push_only(&repo, &recipient, root);
    let good = "000000010000000000000001";
    std::fs::write(
        root.join("pg_wal").join(good),
        synthetic_segment(good, SYSID, SEG, None),
    )
    .unwrap();
    let mut c = bare(&repo);
    c.env("WALSEAL_RECIPIENT", &recipient);
    let out = run(c, &["wal-push", &format!("pg_wal/{good}")], root);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The next segment, sealed correctly but with a digest that does not match its content
    // (as a buggy or malicious writer holding the recipient could).
    let bad = "000000010000000000000002";
    let r = walseal::recipient::Recipient::parse(&recipient).unwrap();
    let key = format!("wal/00000001/{bad}");
    let plain = block_on(repo.storage().get_bytes("walseal.repo.json"))
        .unwrap()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    let mut repository = [0u8; 16];
    walseal::keys::hex_decode_into(record["repository_id"].as_str().unwrap(), &mut repository)
        .unwrap();
    let opts = walseal::seal::SealOptions {
        content_digest: Some([7u8; 32]),
        repository,
        signer: Some(std::sync::Arc::new(
            walseal::signer::load_signer_file(&test_signer().0).unwrap(),
        )),
        ..Default::default()
    };
    let mut w = walseal::seal::seal(Vec::new(), &r, &key, &opts).unwrap();
    w.write_all(&synthetic_segment(bad, SYSID, SEG, None))
        .unwrap();
    let sealed = w.finish().unwrap();
    block_on(repo.storage().put_new(&key, sealed.into())).unwrap();
    let mut c = bare(&repo);
    c.env("WALSEAL_IDENTITY_FILE", &identity);
    let out = run(c, &["verify", "--json"], root);
    assert_eq!(code(&out), 5, "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let failed = report["failed_objects"].to_string();
    assert!(
        failed.contains(&key) && failed.contains("content digest"),
        "{failed}"
    );
    assert!(!failed.contains(good), "{failed}");
}
