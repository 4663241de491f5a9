//! WAL files larger than the default segment (`initdb --wal-segsize` 32…1024 MiB) are sealed
//! into an unnamed spool file and uploaded in parts through a staging object, so memory stays
//! bounded: they round-trip byte for byte, a re-push is recognised (with the key and on a
//! push-only host), different content under the same name is refused with the stored copy
//! intact, and no staging object is left. (Peak memory is measured by
//! `scripts/bench-memory.sh`, not asserted here.)

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const SYSID: u64 = 7_301_000_000_000_000_064;
const SEG: u32 = 32 << 20;

fn run(mut c: Command, args: &[&str], dir: &Path) -> Output {
    c.args(args).current_dir(dir).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(code(out), 0, "{}", stderr(out));
    stdout(out)
}

/// walseal with `repo` and these variables only.
fn walseal(repo: &RepoEnv, vars: &[(&str, &str)]) -> Command {
    clean_walseal(repo, vars)
}

/// A 32 MiB segment whose pages after the first are incompressible, so the sealed object is
/// several parts long.
fn big_segment(name: &str, seed: u64) -> Vec<u8> {
    let mut seg = synthetic_segment(name, SYSID, SEG, None);
    let mut x = seed | 1;
    for b in seg[8192..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    seg
}

fn backends(root: &Path) -> Vec<RepoEnv> {
    let mut v = vec![RepoEnv::local(&root.join("repo"))];
    for backend in bucket_backends() {
        v.push(backend.bucket_repo("large").unwrap());
    }
    v
}

#[test]
fn large_segments_stream_through_a_staged_upload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("pg_wal")).unwrap();
    std::fs::create_dir_all(root.join("restore")).unwrap();
    let key_file = root.join("master.key");
    keygen(&[], &key_file);
    let identity = root.join("identity");
    let recipient = keygen(&["--recipient"], &identity);
    let signer = root.join("signer");
    let signer_pub = keygen(&["--signer"], &signer);
    let n = "000000010000000000000001";
    let m = "000000010000000000000002";
    let wal = root.join("pg_wal");
    for repo in backends(root) {
        let key = [("WALSEAL_KEY_FILE", key_file.to_str().unwrap())];
        let push_only = [
            ("WALSEAL_RECIPIENT", recipient.as_str()),
            ("WALSEAL_SIGNER_FILE", signer.to_str().unwrap()),
        ];
        let reader = [
            key[0],
            ("WALSEAL_IDENTITY_FILE", identity.to_str().unwrap()),
            ("WALSEAL_TRUSTED_SIGNERS", signer_pub.as_str()),
        ];
        ok(&run(walseal(&repo, &key), &["init"], root));
        // n under the master key, m from the push-only host.
        for (name, vars, seed) in [(n, &key[..], 1), (m, &push_only[..], 2)] {
            let original = big_segment(name, seed);
            std::fs::write(wal.join(name), &original).unwrap();
            let push = ["wal-push", &format!("pg_wal/{name}")];
            ok(&run(walseal(&repo, vars), &push, root));
            // The same file again: recognised as archived (PostgreSQL re-pushes after a crash).
            ok(&run(walseal(&repo, vars), &push, root));
            // Different content under the name: refused, the stored copy stays.
            let mut changed = original.clone();
            changed[SEG as usize - 1] ^= 1;
            std::fs::write(wal.join(name), &changed).unwrap();
            let out = run(walseal(&repo, vars), &push, root);
            assert_eq!(code(&out), 7, "{}", stderr(&out));
            assert!(
                stderr(&out).contains("different content"),
                "{}",
                stderr(&out)
            );
            let restored = root.join("restore").join(name);
            let fetch = ["wal-fetch", name, restored.to_str().unwrap()];
            let readers: &[(&str, &str)] = if vars == &key[..] { &key } else { &reader };
            ok(&run(walseal(&repo, readers), &fetch, root));
            assert!(
                std::fs::read(&restored).unwrap() == original,
                "{name} differs"
            );
            std::fs::remove_file(&restored).unwrap();
        }
        let storage = repo.storage();
        assert!(block_on(storage.list_meta("staging/")).unwrap().is_empty());
        // Really in several parts: the stored objects are larger than a part.
        let sizes = block_on(storage.list("wal/")).unwrap();
        assert!(
            sizes
                .iter()
                .all(|(_, s)| *s > walseal::storage::PART_SIZE as u64),
            "{sizes:?}"
        );
        let out = run(walseal(&repo, &reader), &["verify", "--json"], root);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

        // Rekey to a new master key goes through spool files and staged replaces: afterwards
        // both segments open under the new key alone, byte for byte.
        let new_key = root.join(format!("new-{}.key", unique("k")));
        keygen(&[], &new_key);
        let both = format!("{}:{}", new_key.display(), key_file.display());
        let rekeying = [
            ("WALSEAL_KEY_FILE", both.as_str()),
            ("WALSEAL_IDENTITY_FILE", identity.to_str().unwrap()),
            ("WALSEAL_TRUSTED_SIGNERS", signer_pub.as_str()),
        ];
        let out = ok(&run(walseal(&repo, &rekeying), &["rekey", "--json"], root));
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(report["rewrapped"].as_u64().unwrap() >= 3, "{report}");
        let only_new = [("WALSEAL_KEY_FILE", new_key.to_str().unwrap())];
        for (name, seed) in [(n, 1), (m, 2)] {
            let restored = root.join("restore").join(name);
            let fetch = ["wal-fetch", name, restored.to_str().unwrap()];
            ok(&run(walseal(&repo, &only_new), &fetch, root));
            assert!(std::fs::read(&restored).unwrap() == big_segment(name, seed));
            std::fs::remove_file(&restored).unwrap();
        }
        let out = run(walseal(&repo, &only_new), &["verify"], root);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        assert!(block_on(storage.list_meta("staging/")).unwrap().is_empty());
    }
}
