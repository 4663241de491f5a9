//! The walseal binary on synthetic WAL files, against every backend (local directory and the
//! loopback S3, Azure and GCS servers): exit codes, messages, idempotence, refusals and tamper
//! detection.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const SYSID: u64 = 7_301_000_000_000_000_001;
const SEG: u32 = 16 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    key: PathBuf,
    repo: RepoEnv,
}

impl Fixture {
    fn new(repo: impl FnOnce(&Path) -> RepoEnv) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("pg_wal")).unwrap();
        let key = root.join("master.key");
        let out = std::process::Command::new(walseal_bin())
            .args(["keygen", "-o"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let repo = repo(&root);
        // The repository must be created before anything is pushed (`walseal init`); where
        // the storage is unreachable this fails, as the test then expects of every command.
        let _ = repo.walseal(&key).arg("init").output().unwrap();
        Fixture {
            _dir: dir,
            root,
            key,
            repo,
        }
    }

    fn write_wal(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.root.join("pg_wal").join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn push(&self, name: &str) -> Output {
        self.repo
            .walseal(&self.key)
            .arg("wal-push")
            .arg(format!("pg_wal/{name}"))
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    fn fetch(&self, name: &str, dest: &str) -> Output {
        self.repo
            .walseal(&self.key)
            .arg("wal-fetch")
            .arg(name)
            .arg(dest)
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    fn restore_dir_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("restore"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Runs `test` once per backend: local directory, then S3, Azure and GCS.
fn each_backend(test: impl Fn(&Fixture)) {
    test(&Fixture::new(|root| RepoEnv::local(&root.join("repo"))));
    for backend in bucket_backends() {
        test(&Fixture::new(|_| backend.bucket_repo("cli").unwrap()));
    }
}

#[test]
fn push_fetch_round_trip_and_idempotent_repush() {
    each_backend(|f| {
        let name = "000000010000000000000003";
        let data = synthetic_segment(name, SYSID, SEG, None);
        f.write_wal(name, &data);
        let out = f.push(name);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let again = f.push(name);
        assert_eq!(
            code(&again),
            0,
            "identical re-push must succeed: {}",
            stderr(&again)
        );
        std::fs::create_dir_all(f.root.join("restore")).unwrap();
        let out = f.fetch(name, "restore/RECOVERYXLOG");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            std::fs::read(f.root.join("restore/RECOVERYXLOG")).unwrap() == data,
            "restored bytes differ"
        );
        // The other kinds of WAL file PostgreSQL archives.
        let history = b"1\t0/3000000\tno recovery target specified\n";
        for (other, content) in [
            ("00000002.history", history.to_vec()),
            (
                "000000010000000000000003.00000028.backup",
                b"START WAL LOCATION: 0/3000028\n".to_vec(),
            ),
            (
                "000000010000000000000004.partial",
                synthetic_segment("000000010000000000000004", SYSID, SEG, None),
            ),
        ] {
            f.write_wal(other, &content);
            let out = f.push(other);
            assert_eq!(code(&out), 0, "{other}: {}", stderr(&out));
            let out = f.fetch(other, "restore/RECOVERYHISTORY");
            assert_eq!(code(&out), 0, "{other}: {}", stderr(&out));
            assert!(
                std::fs::read(f.root.join("restore/RECOVERYHISTORY")).unwrap() == content,
                "{other} differs"
            );
        }
    });
}

#[test]
fn different_content_under_an_archived_name_is_refused_and_nothing_overwritten() {
    each_backend(|f| {
        let name = "000000010000000000000005";
        let original = synthetic_segment(name, SYSID, SEG, None);
        f.write_wal(name, &original);
        assert_eq!(code(&f.push(name)), 0);
        let mut changed = original.clone();
        changed[SEG as usize - 1] ^= 0xff;
        f.write_wal(name, &changed);
        let out = f.push(name);
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("already archived with different content"),
            "{}",
            stderr(&out)
        );
        std::fs::create_dir_all(f.root.join("restore")).unwrap();
        assert_eq!(code(&f.fetch(name, "restore/X")), 0);
        assert!(
            std::fs::read(f.root.join("restore/X")).unwrap() == original,
            "archived copy was overwritten"
        );
    });
}

#[test]
fn segment_from_another_cluster_is_refused() {
    each_backend(|f| {
        f.write_wal(
            "000000010000000000000001",
            &synthetic_segment("000000010000000000000001", SYSID, SEG, None),
        );
        assert_eq!(code(&f.push("000000010000000000000001")), 0);
        let other = SYSID + 1;
        f.write_wal(
            "000000010000000000000002",
            &synthetic_segment("000000010000000000000002", other, SEG, None),
        );
        let out = f.push("000000010000000000000002");
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        let msg = stderr(&out);
        assert!(
            msg.contains(&format!(
                "belongs to system {SYSID}, this segment to {other}"
            )),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "one-line error expected: {msg}");
    });
}

#[test]
fn fetch_failures_stop_recovery_and_leave_no_file() {
    each_backend(|f| {
        let storage = f.repo.storage();
        for n in [
            "000000010000000000000010",
            "000000010000000000000011",
            "000000010000000000000012",
        ] {
            f.write_wal(n, &synthetic_segment(n, SYSID, SEG, None));
            assert_eq!(code(&f.push(n)), 0);
        }
        std::fs::create_dir_all(f.root.join("restore")).unwrap();
        let key = |n: &str| format!("wal/00000001/{n}");
        let replace = |n: &str, bytes: Vec<u8>| {
            block_on(async {
                storage.delete(&key(n)).await.unwrap();
                storage.put_new(&key(n), bytes.into()).await.unwrap();
            })
        };
        let original = block_on(storage.get_bytes(&key("000000010000000000000010")))
            .unwrap()
            .unwrap();

        // A flipped byte in the payload.
        let mut flipped = original.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        replace("000000010000000000000010", flipped);
        let out = f.fetch("000000010000000000000010", "restore/RECOVERYXLOG");
        assert_eq!(code(&out), 205, "flipped: {}", stderr(&out));
        assert!(
            stderr(&out).contains("failed authentication"),
            "{}",
            stderr(&out)
        );
        assert!(
            f.restore_dir_entries().is_empty(),
            "left behind: {:?}",
            f.restore_dir_entries()
        );

        // Truncated.
        replace(
            "000000010000000000000010",
            original[..original.len() - 100].to_vec(),
        );
        let out = f.fetch("000000010000000000000010", "restore/RECOVERYXLOG");
        assert_eq!(code(&out), 205, "truncated: {}", stderr(&out));
        assert!(f.restore_dir_entries().is_empty());

        // Another segment's object copied onto this name.
        let other = block_on(storage.get_bytes(&key("000000010000000000000011")))
            .unwrap()
            .unwrap();
        replace("000000010000000000000012", other);
        let out = f.fetch("000000010000000000000012", "restore/RECOVERYXLOG");
        assert_eq!(code(&out), 205, "swapped: {}", stderr(&out));
        assert!(f.restore_dir_entries().is_empty());

        // Wrong key.
        let wrong = f.root.join("wrong.key");
        assert!(std::process::Command::new(walseal_bin())
            .args(["keygen", "-o"])
            .arg(&wrong)
            .status()
            .unwrap()
            .success());
        let out = f
            .repo
            .walseal(&wrong)
            .args([
                "wal-fetch",
                "000000010000000000000011",
                "restore/RECOVERYXLOG",
            ])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 204, "wrong key: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not in the configured keyring"),
            "{}",
            stderr(&out)
        );
        assert!(f.restore_dir_entries().is_empty());

        // Missing key file.
        let out = f
            .repo
            .walseal(Path::new("/nonexistent/key"))
            .args([
                "wal-fetch",
                "000000010000000000000011",
                "restore/RECOVERYXLOG",
            ])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 203, "missing key: {}", stderr(&out));

        // A segment that is not in the archive: PostgreSQL's normal end of archive.
        let out = f.fetch("000000010000000000000099", "restore/RECOVERYXLOG");
        assert_eq!(code(&out), 1, "missing segment: {}", stderr(&out));
        assert!(f.restore_dir_entries().is_empty());

        // The untouched segment still restores.
        assert_eq!(
            code(&f.fetch("000000010000000000000011", "restore/RECOVERYXLOG")),
            0
        );
    });
}

#[test]
fn plaintext_never_reaches_the_repository() {
    each_backend(|f| {
        let marker = b"walseal-canary-7f3a9c-PLAINTEXT";
        let name = "000000010000000000000020";
        f.write_wal(name, &synthetic_segment(name, SYSID, SEG, Some(marker)));
        assert_eq!(code(&f.push(name)), 0);
        let storage = f.repo.storage();
        let objects = block_on(storage.list("")).unwrap();
        assert!(objects.len() >= 2, "{objects:?}");
        for (key, _) in objects {
            let raw = block_on(storage.get_bytes(&key)).unwrap().unwrap();
            assert!(!contains(&raw, marker), "plaintext marker found in {key}");
            assert!(
                !contains(&raw, &SYSID.to_le_bytes()),
                "system identifier in clear in {key}"
            );
        }
    });
}

#[test]
fn storage_unreachable_is_fatal_for_fetch_and_a_failure_for_push() {
    let f = Fixture::new(|_| {
        RepoEnv::s3(
            &format!("http://127.0.0.1:{}", free_port()),
            "nobucket",
            "x",
        )
    });
    let name = "000000010000000000000001";
    f.write_wal(name, &synthetic_segment(name, SYSID, SEG, None));
    let cfg = f.root.join("fast.toml");
    std::fs::write(&cfg, "storage_retries = 1\nstorage_timeout_secs = 5\n").unwrap();
    let out = f
        .repo
        .walseal(&f.key)
        .arg("--config")
        .arg(&cfg)
        .args(["wal-push", &format!("pg_wal/{name}")])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    let out = f
        .repo
        .walseal(&f.key)
        .arg("--config")
        .arg(&cfg)
        .args(["wal-fetch", name, "pg_wal/RECOVERYXLOG"])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 206, "{}", stderr(&out));
    assert!(!f.root.join("pg_wal/RECOVERYXLOG").exists());
}

#[test]
fn plain_http_endpoint_is_refused_unless_allowed() {
    let mut emulator = RepoEnv::azure("https://127.0.0.1:9/devstoreaccount1", "c", "p");
    emulator
        .vars
        .push(("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()));
    for repo in [
        RepoEnv::s3("http://127.0.0.1:9", "b", "p"),
        RepoEnv::azure("http://127.0.0.1:9/devstoreaccount1", "c", "p"),
        emulator,
        RepoEnv::gcs("http://127.0.0.1:9", "b", "p"),
    ] {
        let f = Fixture::new(|_| repo);
        let name = "000000010000000000000001";
        f.write_wal(name, &synthetic_segment(name, SYSID, SEG, None));
        let out = f
            .repo
            .walseal(&f.key)
            .env_remove("WALSEAL_ALLOW_HTTP")
            .args(["wal-push", &format!("pg_wal/{name}")])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 3, "{}: {}", f.repo.url, stderr(&out));
        assert!(
            stderr(&out).contains("WALSEAL_ALLOW_HTTP=1"),
            "{}: {}",
            f.repo.url,
            stderr(&out)
        );
    }
}

#[test]
fn key_file_readable_by_others_is_refused_with_chmod_hint() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo")));
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = "000000010000000000000001";
    f.write_wal(name, &synthetic_segment(name, SYSID, SEG, None));
    let out = f.push(name);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("chmod 600 {}", f.key.display())),
        "{}",
        stderr(&out)
    );
    let out = f.fetch(name, "pg_wal/RECOVERYXLOG");
    assert_eq!(code(&out), 203, "{}", stderr(&out));
}

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = std::process::Command::new(walseal_bin())
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "key id on stdout: {id:?}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let out = std::process::Command::new(walseal_bin())
        .args(["keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // The secret never appears on stdout or stderr.
    let text = String::from_utf8_lossy(&before).into_owned();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(secret) && !stderr(&out).contains(secret)
    );
}

#[test]
fn config_file_and_env_both_configure_the_repository() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo-env")));
    let name = "000000010000000000000001";
    f.write_wal(name, &synthetic_segment(name, SYSID, SEG, None));
    let cfg = f.root.join("walseal.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"file://{}/repo-cfg\"\nkey_file = \"{}\"\n",
            f.root.display(),
            f.key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(walseal_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("init")
        .env_remove("WALSEAL_REPO")
        .env_remove("WALSEAL_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = std::process::Command::new(walseal_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["wal-push", &format!("pg_wal/{name}")])
        .env_remove("WALSEAL_REPO")
        .env_remove("WALSEAL_KEY_FILE")
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(f.root.join("repo-cfg/wal/00000001").join(name).exists());
    // The environment overrides the file.
    let out = std::process::Command::new(walseal_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["wal-push", &format!("pg_wal/{name}")])
        .env(
            "WALSEAL_REPO",
            format!("file://{}/repo-env", f.root.display()),
        )
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(f.root.join("repo-env/wal/00000001").join(name).exists());
    // An unknown key in the file is a config error naming the file.
    std::fs::write(&cfg, "repository = \"x\"\n").unwrap();
    let out = std::process::Command::new(walseal_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["wal-push", &format!("pg_wal/{name}")])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}

#[test]
fn bad_usage_has_documented_codes() {
    let run = |args: &[&str]| {
        std::process::Command::new(walseal_bin())
            .args(args)
            .env_remove("WALSEAL_REPO")
            .output()
            .unwrap()
    };
    assert_eq!(code(&run(&["wal-push"])), 2);
    assert_eq!(code(&run(&["no-such-command"])), 2);
    // restore_command misconfigured must stop recovery rather than look like end of archive.
    assert_eq!(code(&run(&["wal-fetch", "000000010000000000000001"])), 202);
    let out = run(&["wal-fetch", "not-a-wal-name", "/tmp/x"]);
    assert_eq!(code(&out), 202, "{}", stderr(&out));
    let out = run(&["wal-push", "/etc/passwd"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a WAL file name"));
    // A part size out of range (or overflowing) is refused by the flag parser.
    for size in ["2GiB", "18446744073709551615GiB", "512KiB"] {
        let out = run(&["backup", "--part-size", size]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("--part-size") && stderr(&out).contains("1MiB to 1GiB"),
            "{}",
            stderr(&out)
        );
    }
    for cmd in ["keygen", "wal-push", "wal-fetch"] {
        let out = run(&[cmd, "--help"]);
        assert_eq!(code(&out), 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: walseal"));
    }
}

#[test]
fn key_command_and_environment_key_sources() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo")));
    let name = "000000010000000000000001";
    f.write_wal(name, &synthetic_segment(name, SYSID, SEG, None));
    let key_text = std::fs::read_to_string(&f.key).unwrap();
    let secret = key_text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    let cfg = f.root.join("keys.toml");
    let run = |keys: &str, args: &[&str]| {
        std::fs::write(&cfg, format!("repo = \"{}\"\n{keys}", f.repo.url)).unwrap();
        std::process::Command::new(walseal_bin())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_remove("WALSEAL_REPO")
            .env_remove("WALSEAL_KEY_FILE")
            .env("MY_WALSEAL_KEY", &secret)
            .current_dir(&f.root)
            .output()
            .unwrap()
    };
    let push = ["wal-push", "pg_wal/000000010000000000000001"];
    // A command printing the key file, and one printing the bare hex secret.
    let out = run(
        &format!("[[keys]]\ncommand = \"cat {}\"\n", f.key.display()),
        &push,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(
        &format!("[[keys]]\ncommand = \"echo {secret}\"\n"),
        &["wal-fetch", name, "pg_wal/RECOVERYXLOG"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // An environment variable.
    let out = run("[[keys]]\nenv = \"MY_WALSEAL_KEY\"\n", &push);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A failing command: its first stderr line, and the fix.
    let out = run(
        "[[keys]]\ncommand = \"echo 'vault: permission denied' >&2; exit 3\"\n",
        &push,
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("vault: permission denied"),
        "{}",
        stderr(&out)
    );
    // A hanging command is stopped at its timeout.
    let started = std::time::Instant::now();
    let out = run(
        "[[keys]]\ncommand = \"sleep 30\"\ntimeout_secs = 1\n",
        &push,
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within 1 s"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Malformed output is refused without being echoed.
    let out = run(
        "[[keys]]\ncommand = \"printf 's3%s' cr3t-not-a-key\"\n",
        &push,
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a walseal key") && !stderr(&out).contains("s3cr3t"),
        "{}",
        stderr(&out)
    );
    // A wrong id in the config.
    let out = run(
        &format!(
            "[[keys]]\nid = \"00000000000000000000000000000000\"\ncommand = \"echo {secret}\"\n"
        ),
        &push,
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // wal-fetch with a broken key source must stop recovery, not look like end of archive.
    let out = run(
        "[[keys]]\ncommand = \"exit 1\"\n",
        &["wal-fetch", name, "pg_wal/X"],
    );
    assert_eq!(code(&out), 203, "{}", stderr(&out));
    // The secret never reaches stderr.
    assert!(!stderr(&out).contains(&secret));
}

#[test]
fn passphrase_key_source() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo")));
    let name = "000000010000000000000001";
    let data = synthetic_segment(name, SYSID, SEG, None);
    f.write_wal(name, &data);
    let phrase = "correct horse battery staple walseal";
    let out = std::process::Command::new(walseal_bin())
        .args(["keygen", "--passphrase"])
        .env("WALSEAL_PASSPHRASE", phrase)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let entry = stdout(&out);
    assert!(
        entry.contains("[[keys]]") && entry.contains("iterations = ") && !entry.contains(phrase),
        "{entry}"
    );
    let cfg = f.root.join("pass.toml");
    // A repository of its own, created with the passphrase key (a host must open its
    // repository's record with a key it holds).
    let url = format!("file://{}", f.root.join("repo-pass").display());
    std::fs::write(&cfg, format!("repo = \"{url}\"\n{entry}")).unwrap();
    let run = |pass: &str, args: &[&str]| {
        std::process::Command::new(walseal_bin())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_remove("WALSEAL_REPO")
            .env_remove("WALSEAL_KEY_FILE")
            .env("WALSEAL_PASSPHRASE", pass)
            .current_dir(&f.root)
            .output()
            .unwrap()
    };
    let out = run(phrase, &["init"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(phrase, &["wal-push", &format!("pg_wal/{name}")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(phrase, &["wal-fetch", name, "pg_wal/RECOVERYXLOG"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read(f.root.join("pg_wal/RECOVERYXLOG")).unwrap() == data);
    let out = run(
        "not the passphrase at all",
        &["wal-fetch", name, "pg_wal/X"],
    );
    assert_eq!(code(&out), 203, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(phrase));
}

#[test]
fn rekey_rotates_to_a_new_key_and_the_old_one_can_be_retired() {
    each_backend(|f| {
        let key_b = f.root.join("b.key");
        assert!(std::process::Command::new(walseal_bin())
            .args(["keygen", "-o"])
            .arg(&key_b)
            .output()
            .unwrap()
            .status
            .success());
        let both = std::ffi::OsString::from(format!("{}:{}", key_b.display(), f.key.display()));
        let seg = |n: u32| format!("0000000100000000000000{n:02X}");
        // Generation A, then generation B (B active, A still configured).
        f.write_wal(&seg(1), &synthetic_segment(&seg(1), SYSID, SEG, None));
        assert_eq!(code(&f.push(&seg(1))), 0);
        f.write_wal(&seg(2), &synthetic_segment(&seg(2), SYSID, SEG, None));
        let out = f
            .repo
            .walseal(Path::new(&both))
            .args(["wal-push", &format!("pg_wal/{}", seg(2))])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let storage = f.repo.storage();
        let before = block_on(storage.get_bytes(&format!("wal/00000001/{}", seg(1))))
            .unwrap()
            .unwrap();

        let out = f
            .repo
            .walseal(Path::new(&both))
            .args(["rekey", "--json"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["rewrapped"], 3,
            "segment 1, walseal.id and walseal.repo: {report}"
        );
        // Only the header changed: the payload is not re-encrypted.
        let after = block_on(storage.get_bytes(&format!("wal/00000001/{}", seg(1))))
            .unwrap()
            .unwrap();
        let header = 28 + 19 + 80 + 32; // format 2: the repository id follows the slot count
        assert_eq!(after.len(), before.len());
        assert!(after[header..] == before[header..] && after[..header] != before[..header]);
        // Running it again finds nothing to do.
        let out = f
            .repo
            .walseal(Path::new(&both))
            .args(["rekey", "--json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["rewrapped"], 0, "{report}");

        // Key A retired: everything opens with B alone, nothing with A alone.
        std::fs::create_dir_all(f.root.join("restore")).unwrap();
        for n in [1, 2] {
            let out = f
                .repo
                .walseal(&key_b)
                .args(["wal-fetch", &seg(n), "restore/X"])
                .current_dir(&f.root)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            std::fs::remove_file(f.root.join("restore/X")).unwrap();
        }
        let out = f.fetch(&seg(1), "restore/X");
        assert_eq!(code(&out), 204, "{}", stderr(&out));
        let out = f
            .repo
            .walseal(&key_b)
            .args(["verify", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["unknown_key_objects"].as_array().unwrap().is_empty()
                && v["failed_objects"].as_array().unwrap().is_empty(),
            "{v}"
        );
    });
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn audit_log_detects_edits_removals_reordering_and_holds_no_secrets() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo")));
    let log = f.root.join("audit.log");
    let mut all_stderr = String::new();
    for n in 1..=3u32 {
        let name = format!("0000000100000000000000{n:02X}");
        f.write_wal(&name, &synthetic_segment(&name, SYSID, SEG, None));
        let out = f
            .repo
            .walseal(&f.key)
            .env("WALSEAL_AUDIT_LOG", &log)
            .env("WALSEAL_LOG", "trace")
            .args(["wal-push", &format!("pg_wal/{name}")])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        all_stderr += &stderr(&out);
    }
    let out = f
        .repo
        .walseal(&f.key)
        .env("WALSEAL_AUDIT_LOG", &log)
        .env("WALSEAL_LOG", "trace")
        .args([
            "wal-fetch",
            "000000010000000000000002",
            "pg_wal/RECOVERYXLOG",
        ])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    all_stderr += &stderr(&out);
    // PostgreSQL's probes for files that are not archived use no key: no line.
    let out = f
        .repo
        .walseal(&f.key)
        .env("WALSEAL_AUDIT_LOG", &log)
        .args(["wal-fetch", "00000002.history", "pg_wal/RECOVERYHISTORY"])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = f
        .repo
        .walseal(&f.key)
        .env("WALSEAL_AUDIT_LOG", &log)
        .args(["verify"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].contains("\"op\":\"wal-push\"") && lines[3].contains("\"op\":\"wal-fetch\""),
        "{text}"
    );
    let audit = |file: &Path| {
        f.repo
            .walseal(&f.key)
            .args(["audit", "verify"])
            .arg(file)
            .output()
            .unwrap()
    };
    assert_eq!(code(&audit(&log)), 0, "{}", stdout(&audit(&log)));
    // verify sealed the log into the repository.
    let sealed = block_on(f.repo.storage().list("audit/")).unwrap();
    assert_eq!(sealed.len(), 1, "{sealed:?}");

    let tamper = |tag: &str, new: Vec<String>| {
        let p = f.root.join(format!("audit-{tag}.log"));
        std::fs::write(&p, new.join("\n") + "\n").unwrap();
        let out = audit(&p);
        assert_eq!(code(&out), 5, "{tag} not detected: {}", stdout(&out));
        stdout(&out)
    };
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut edited = owned.clone();
    edited[1] = edited[1].replace("\"bytes\":16777216", "\"bytes\":16777217");
    assert_ne!(edited[1], owned[1]);
    assert!(tamper("edited", edited).contains("line 2"));
    let mut last = owned.clone();
    last[4] = last[4].replace("\"outcome\":\"ok\"", "\"outcome\":\"error 5\"");
    assert!(tamper("last-edited", last).contains("line 5"));
    let mut removed = owned.clone();
    removed.remove(1);
    tamper("removed", removed);
    let mut reordered = owned.clone();
    reordered.swap(0, 1);
    tamper("reordered", reordered);

    // No key material anywhere: audit log, trace-level stderr, repository.
    let key_text = std::fs::read_to_string(&f.key).unwrap();
    let hex = key_text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    let mut raw = [0u8; 32];
    walseal::keys::hex_decode_into(&hex, &mut raw).unwrap();
    let b64 = base64(&raw);
    let mut repo_bytes = Vec::new();
    for (key, _) in block_on(f.repo.storage().list("")).unwrap() {
        repo_bytes.extend(block_on(f.repo.storage().get_bytes(&key)).unwrap().unwrap());
    }
    for needle in [hex.as_str(), &hex.to_uppercase(), b64.as_str(), &b64[..20]] {
        assert!(!text.contains(needle), "key in the audit log");
        assert!(!all_stderr.contains(needle), "key on stderr");
        assert!(
            !contains(&repo_bytes, needle.as_bytes()),
            "key in the repository"
        );
    }
    assert!(
        !contains(&repo_bytes, &raw),
        "raw key bytes in the repository"
    );
    assert!(
        all_stderr.contains("archived"),
        "trace logging was not on: {all_stderr}"
    );
}

#[test]
fn key_export_and_import_round_trip_under_a_passphrase() {
    let f = Fixture::new(|root| RepoEnv::local(&root.join("repo")));
    let phrase = "an escrow passphrase of several words";
    let export = f.root.join("key.export");
    let out = f
        .repo
        .walseal(&f.key)
        .args(["key", "export", "-o"])
        .arg(&export)
        .env("WALSEAL_PASSPHRASE", phrase)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&export).unwrap();
    let key_text = std::fs::read_to_string(&f.key).unwrap();
    let secret = key_text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap();
    assert!(!text.contains(secret), "the export holds the key in clear");
    let imported = f.root.join("imported.key");
    let out = std::process::Command::new(walseal_bin())
        .args(["key", "import", "-i"])
        .arg(&export)
        .arg("-o")
        .arg(&imported)
        .env("WALSEAL_PASSPHRASE", phrase)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&imported).unwrap(),
        key_text,
        "imported key differs"
    );
    assert_eq!(
        std::fs::metadata(&imported).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = std::process::Command::new(walseal_bin())
        .args(["key", "import", "-i"])
        .arg(&export)
        .arg("-o")
        .arg(f.root.join("x.key"))
        .env("WALSEAL_PASSPHRASE", "the wrong passphrase entirely")
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!f.root.join("x.key").exists());
}
