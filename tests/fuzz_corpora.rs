//! Every fuzz target's seed corpus (`testdata/fuzz/<target>/`, which also keeps the inputs of
//! past crashes) through the target's body (`walseal::fuzzing`), in the normal test build: a
//! panic or a broken invariant fails here without the nightly toolchain. The libFuzzer runs
//! themselves are `scripts/fuzz.sh` (counts in docs/fuzzing.md).

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_seed_corpus_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = walseal::fuzzing::TARGETS
        .iter()
        .map(|t| t.to_string())
        .collect();
    targets.sort();
    assert_eq!(dirs, targets, "a corpus per target, a target per corpus");
    let declared =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    for t in &targets {
        assert!(
            declared.contains(&format!("name = \"{t}\"")),
            "{t} is not in fuzz/Cargo.toml"
        );
        let mut n = 0;
        for e in std::fs::read_dir(root.join(t)).unwrap().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            assert!(walseal::fuzzing::run(t, &data), "unknown target {t}");
            n += 1;
        }
        assert!(n > 0, "the {t} corpus is empty");
        eprintln!("{t}: {n} inputs");
    }
    assert!(!walseal::fuzzing::run("no such target", b""));
}
