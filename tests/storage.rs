//! The storage conformance suite against every backend we test.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use walseal::storage::{conformance, Storage};

#[test]
fn conformance_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let storage = RepoEnv::local(&dir.path().join("repo")).storage();
    block_on(conformance::run_all(&storage));
}

#[test]
fn conformance_in_memory() {
    let storage = Storage::from_store(
        Arc::new(object_store::memory::InMemory::new()),
        "prefix",
        "memory",
    );
    block_on(conformance::run_all(&storage));
}

#[test]
fn conformance_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    let storage = RepoEnv::s3(&endpoint, &bucket, &unique("conformance")).storage();
    block_on(conformance::run_all(&storage));
}

#[test]
fn conformance_azure() {
    let Some((endpoint, container)) = azure_endpoint() else {
        return;
    };
    let storage = RepoEnv::azure(&endpoint, &container, &unique("conformance")).storage();
    block_on(conformance::run_all(&storage));
}

#[test]
fn conformance_gcs() {
    let Some((endpoint, bucket)) = gcs_endpoint() else {
        return;
    };
    let storage = RepoEnv::gcs(&endpoint, &bucket, &unique("conformance")).storage();
    block_on(conformance::run_all(&storage));
}

/// The named gap behind `scripts/gcs-xml-shim.py`: fake-gcs-server itself does not take
/// object_store's XML-API write (README, "Storage backends"). When this starts failing, the
/// emulator has learnt the XML API: point the GCS tests at it directly and drop the shim.
#[test]
fn gcs_emulator_alone_refuses_object_store_writes() {
    let Some((_, bucket)) = gcs_endpoint() else {
        return;
    };
    let emulator = std::env::var("WALSEAL_TEST_GCS_EMULATOR")
        .expect("scripts/test.sh exports WALSEAL_TEST_GCS_EMULATOR with WALSEAL_TEST_GCS_ENDPOINT");
    let storage = RepoEnv::gcs(&emulator, &bucket, &unique("gap")).storage();
    let err = block_on(storage.put_new("x", bytes::Bytes::from_static(b"x")))
        .expect_err("fake-gcs-server accepted an XML-API PUT: the shim may no longer be needed");
    assert!(err.to_string().contains("invalid uploadType"), "{err}");
}

/// Staging files of killed writers (local backend only): old ones go, fresh ones stay (a
/// writer may be using them), objects are never touched, and empty directories are removed
/// only when asked.
#[test]
fn stale_staging_files_are_removed_from_local_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::RepoEnv::local(dir.path());
    let storage = repo.storage();
    block_on(storage.put_new("backups/x/base.tar.00000", b"part".to_vec().into())).unwrap();
    let d = dir.path().join("backups/x");
    std::fs::write(d.join("base.tar.00001#3"), b"half").unwrap();
    std::fs::write(d.join("base.tar.00002#4"), b"fresh").unwrap();
    std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(d.join("base.tar.00001#3"))
        .status()
        .unwrap();
    assert_eq!(
        storage
            .remove_stale_staging("backups/", 3600.0, false, true)
            .unwrap(),
        1
    );
    assert!(
        d.join("base.tar.00001#3").exists(),
        "dry run removed a file"
    );
    assert_eq!(
        storage
            .remove_stale_staging("backups/", 3600.0, false, false)
            .unwrap(),
        1
    );
    assert!(!d.join("base.tar.00001#3").exists());
    assert!(
        d.join("base.tar.00002#4").exists(),
        "a fresh staging file was removed"
    );
    block_on(storage.delete("backups/x/base.tar.00000")).unwrap();
    assert_eq!(
        storage
            .remove_stale_staging("backups/x/", 0.0, true, false)
            .unwrap(),
        1
    );
    assert!(!d.exists(), "the emptied backup directory remains");
    assert!(dir.path().join("backups").exists());
}
