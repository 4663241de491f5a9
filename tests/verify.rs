//! `walseal verify` on a real repository (PostgreSQL 15, local and S3): all is well after
//! load and a backup; then, on copies of it, a deleted segment, a flipped byte in a backup
//! part and a missing part are each reported by name with a non-zero exit.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::*;

fn verify(s: &Setup, repo: &RepoEnv, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut c = s.walseal_as_pg();
    if s.config_file.is_none() {
        c.env("WALSEAL_REPO", &repo.url);
    }
    let out = c.args(["verify", "--json"]).args(extra).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

/// Copies every object of `from` into `to` (same relative keys, so they still open).
fn copy_repo(from: &RepoEnv, to: &RepoEnv) {
    let (a, b) = (from.storage(), to.storage());
    block_on(async {
        for (key, _) in a.list("").await.unwrap() {
            let bytes = a.get_bytes(&key).await.unwrap().unwrap();
            b.put_new(&key, bytes.into()).await.unwrap();
        }
    });
}

fn names(v: &serde_json::Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.get("object")
                .and_then(|o| o.as_str())
                .or(p.as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

fn scenario(backend: Backend) {
    let s = Setup::new(&backend);
    let pg = s.primary(&pg_bin(), &[]);
    pg.start();
    pg.pgbench(&["-i", "-s", "3", "-q"]);
    let out = s.backup(&pg, &["--part-size", "1MiB"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    pg.pgbench(&["-c", "2", "-T", "3"]);
    let last = pg.switch_and_wait_archived();
    pg.stop();

    let (out, v) = verify(&s, &s.repo, &[]);
    assert_eq!(code(&out), 0, "healthy repository: {v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["windows"][0]["restorable"], true, "{v}");
    assert_eq!(v["windows"][0]["latest_segment"], last.as_str(), "{v}");
    let (out, _) = verify(&s, &s.repo, &["--quick"]);
    assert_eq!(code(&out), 0);

    let copy = |tag: &str| -> RepoEnv {
        let to = backend
            .bucket_repo(tag)
            .unwrap_or_else(|| RepoEnv::local(&s.dir.path().join(tag)));
        copy_repo(&s.repo, &to);
        if let Some(dir) = &to.local_dir {
            chown_pg(dir);
        }
        to
    };
    let objects = block_on(s.repo.storage().list("")).unwrap();
    let segments: Vec<&String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("wal/00000001/") && k.len() == 37)
        .collect();
    let middle = segments[segments.len() - 3].clone();
    let part = objects
        .iter()
        .map(|(k, _)| k)
        .find(|k| k.contains("/base.tar.00002"))
        .unwrap()
        .clone();

    // Bucket setups read their repository from the config file: verify copies through a config of their own.
    let run = |repo: &RepoEnv, extra: &[&str]| -> (Output, serde_json::Value) {
        match &s.config_file {
            None => verify(&s, repo, extra),
            Some(cfg) => {
                let text = std::fs::read_to_string(cfg).unwrap();
                let own = s.dir.path().join(format!("{}.toml", unique("cfg")));
                let line = text
                    .lines()
                    .find(|l| l.starts_with("repo = "))
                    .unwrap()
                    .to_string();
                std::fs::write(
                    &own,
                    text.replace(&line, &format!("repo = \"{}\"", repo.url)),
                )
                .unwrap();
                chown_pg(&own);
                let out = std::process::Command::new("runuser")
                    .args(["-u", "postgres", "--preserve-environment", "--"])
                    .arg(&s.bin)
                    .arg("--config")
                    .arg(&own)
                    .args(["verify", "--json"])
                    .args(extra)
                    .current_dir("/")
                    .output()
                    .unwrap();
                let json = serde_json::from_slice(&out.stdout).unwrap();
                (out, json)
            }
        }
    };

    let gap = copy("gap");
    block_on(gap.storage().delete(&middle)).unwrap();
    for quick in [false, true] {
        let (out, v) = run(&gap, if quick { &["--quick"] } else { &[] });
        assert_eq!(code(&out), 5, "{v}");
        let missing = middle.rsplit('/').next().unwrap();
        assert!(
            names(&v, "missing_segments").iter().any(|m| m == missing),
            "quick={quick}: {missing} not reported: {v}"
        );
    }

    let flipped = copy("flipped");
    let st = flipped.storage();
    let mut bytes = block_on(st.get_bytes(&part)).unwrap().unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    block_on(async {
        st.delete(&part).await.unwrap();
        st.put_new(&part, bytes.into()).await.unwrap();
    });
    let (out, v) = run(&flipped, &[]);
    assert_eq!(code(&out), 5, "{v}");
    assert!(
        names(&v, "failed_objects").contains(&part),
        "{part} not reported as failing authentication: {v}"
    );

    let missing_part = copy("missing-part");
    block_on(missing_part.storage().delete(&part)).unwrap();
    let (out, v) = run(&missing_part, &[]);
    assert_eq!(code(&out), 5, "{v}");
    assert!(
        names(&v, "backup_problems").contains(&part),
        "{part} not reported missing: {v}"
    );
}

#[test]
fn pg15_verify_local() {
    scenario(Backend::Local);
}

#[test]
fn pg15_verify_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    scenario(Backend::S3 { endpoint, bucket });
}
