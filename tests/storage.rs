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
