//! The storage conformance suite: one set of checks run against every backend we test
//! (local directory, in-memory, and the loopback S3, Azure and GCS emulators). Called from
//! `tests/storage.rs`; what an emulator cannot do is listed in the README ("Storage backends").

use bytes::Bytes;

use super::{PutOutcome, Storage};

/// Runs every check; panics with the failing check's name.
pub async fn run_all(s: &Storage) {
    put_get_list_delete(s).await;
    put_new_never_overwrites(s).await;
    missing_objects(s).await;
    large_object_round_trips(s).await;
    replace_if_unchanged_never_resurrects(s).await;
    is_empty_except_sees_any_object(s).await;
    staged_put_never_overwrites(s).await;
    stale_uploads_are_hidden_and_removed(s).await;
    racing_creates_store_one_object(s).await;
    replace_overwrites(s).await;
    list_prefix_is_a_directory(s).await;
}

/// A staging object a killed writer left is in no listing of the repository, and
/// `remove_stale_uploads` removes it once old enough (not in a dry run).
pub async fn stale_uploads_are_hidden_and_removed(s: &Storage) {
    let key = "staging/conformance/left.0123456789abcdef";
    s.delete(key).await.expect("delete before test");
    s.put_new(key, Bytes::from_static(b"partial"))
        .await
        .expect("put");
    assert!(s
        .list_meta("")
        .await
        .expect("list")
        .iter()
        .all(|o| o.key != key));
    let staged = s.list_meta(super::STAGING).await.expect("list staging");
    assert!(staged.iter().any(|o| o.key == key), "{staged:?}");
    assert_eq!(s.remove_stale_uploads(1e9, false).await.expect("young"), 0);
    assert!(s.remove_stale_uploads(0.0, true).await.expect("dry run") >= 1);
    assert!(s.exists(key).await.expect("exists"));
    assert!(s.remove_stale_uploads(0.0, false).await.expect("remove") >= 1);
    assert!(!s.exists(key).await.expect("exists"));
}

/// An object larger than a part goes up through a staging object and is copied into place
/// create-only: it arrives whole, a second one under the same name is refused and leaves the
/// first intact, and no staging object remains or is listed.
pub async fn staged_put_never_overwrites(s: &Storage) {
    use std::io::Write;
    let key = "conformance/staged/object";
    s.delete(key).await.expect("delete before test");
    let len = 2 * super::PART_SIZE + 12_345;
    let content = |seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let spool = |data: &[u8]| {
        let path = std::env::temp_dir().join(format!(
            "walseal-conformance-{}-{}",
            std::process::id(),
            super::random_suffix().expect("random")
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("spool file");
        std::fs::remove_file(&path).expect("unlink spool file");
        f.write_all(data).expect("write spool file");
        f
    };
    let first = content(1);
    assert_eq!(
        s.put_new_file(key, spool(&first), len as u64)
            .await
            .expect("staged put"),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_new_file(key, spool(&content(2)), len as u64)
            .await
            .expect("second staged put"),
        PutOutcome::AlreadyExists
    );
    assert!(s.get_bytes(key).await.expect("get").expect("exists") == first);
    assert!(
        s.list_meta(super::STAGING)
            .await
            .expect("list staging")
            .is_empty(),
        "staging objects left behind"
    );
    assert!(s
        .list_meta("")
        .await
        .expect("list")
        .iter()
        .all(|o| !o.key.starts_with(super::STAGING)));
    s.delete(key).await.expect("delete");
}

/// A conditional replace (rekey's) writes only over the version it read: never over an
/// object deleted meanwhile (a backup `retain` removed must not come back) or rewritten.
pub async fn replace_if_unchanged_never_resurrects(s: &Storage) {
    let key = "conformance/cond/object";
    s.delete(key).await.expect("delete before test");
    s.put_new(key, Bytes::from_static(b"v1"))
        .await
        .expect("put");
    let (_, v1) = s.get_versioned(key).await.expect("get").expect("exists");
    assert!(s
        .replace_if_unchanged(key, Bytes::from_static(b"v2"), &v1)
        .await
        .expect("replace unchanged"));
    assert_eq!(
        s.get_bytes(key).await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    // v1 is stale now: a replace based on it changes nothing.
    assert!(!s
        .replace_if_unchanged(key, Bytes::from_static(b"v3"), &v1)
        .await
        .expect("replace stale"));
    assert_eq!(
        s.get_bytes(key).await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    let (_, v2) = s.get_versioned(key).await.expect("get").expect("exists");
    s.delete(key).await.expect("delete");
    assert!(!s
        .replace_if_unchanged(key, Bytes::from_static(b"v4"), &v2)
        .await
        .expect("replace deleted"));
    assert!(
        s.get(key).await.expect("get").is_none(),
        "a deleted object came back"
    );
}

/// `init` refuses a location holding anything: `is_empty_except` must see any object.
pub async fn is_empty_except_sees_any_object(s: &Storage) {
    let key = "conformance/empty/x";
    s.delete(key).await.expect("delete before test");
    s.put_new(key, Bytes::from_static(b"x")).await.expect("put");
    assert!(!s.is_empty_except("walseal.repo.json").await.expect("list"));
    s.delete(key).await.expect("delete");
}

/// Write, read back, list under a prefix, delete.
pub async fn put_get_list_delete(s: &Storage) {
    let key = "conformance/a/b/object-1";
    s.delete(key).await.expect("delete before test");
    assert_eq!(
        s.put_new(key, Bytes::from_static(b"one"))
            .await
            .expect("put"),
        PutOutcome::Created
    );
    assert_eq!(
        s.get_bytes(key).await.expect("get").as_deref(),
        Some(&b"one"[..])
    );
    let listed = s.list("conformance/a").await.expect("list");
    assert!(listed.contains(&(key.to_string(), 3)), "list: {listed:?}");
    assert!(s
        .list("conformance/zzz")
        .await
        .expect("list empty")
        .is_empty());
    s.delete(key).await.expect("delete");
    assert!(s.get(key).await.expect("get after delete").is_none());
}

/// `put_new` on an existing key reports it and leaves the first content.
pub async fn put_new_never_overwrites(s: &Storage) {
    let key = "conformance/create-only";
    s.delete(key).await.expect("delete before test");
    assert_eq!(
        s.put_new(key, Bytes::from_static(b"first"))
            .await
            .expect("put"),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_new(key, Bytes::from_static(b"second"))
            .await
            .expect("second put"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        s.get_bytes(key).await.expect("get").as_deref(),
        Some(&b"first"[..]),
        "overwritten"
    );
    s.delete(key).await.expect("delete");
}

/// Reading, deleting a missing key.
pub async fn missing_objects(s: &Storage) {
    assert!(s
        .get("conformance/never-written")
        .await
        .expect("get missing")
        .is_none());
    assert!(s
        .get_bytes("conformance/never-written")
        .await
        .expect("get_bytes missing")
        .is_none());
    s.delete("conformance/never-written")
        .await
        .expect("delete missing");
}

/// A multi-megabyte object comes back byte for byte, streamed in pieces.
pub async fn large_object_round_trips(s: &Storage) {
    let key = "conformance/large";
    s.delete(key).await.expect("delete before test");
    let data: Vec<u8> = (0..(12u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(
        s.put_new(key, Bytes::from(data.clone()))
            .await
            .expect("put large"),
        PutOutcome::Created
    );
    let obj = s.get(key).await.expect("get large").expect("exists");
    assert_eq!(obj.size, data.len() as u64);
    assert!(
        s.get_bytes(key).await.expect("bytes").as_deref() == Some(&data[..]),
        "large object differs"
    );
    s.delete(key).await.expect("delete");
}

/// Two archivers pushing the same key at once: exactly one write wins and the stored bytes are
/// the winner's (the create-only condition is checked atomically by the backend).
pub async fn racing_creates_store_one_object(s: &Storage) {
    let key = "conformance/race";
    s.delete(key).await.expect("delete before test");
    let writes = (0u8..8).map(|i| async move {
        let out = s
            .put_new(key, Bytes::from(vec![i; 4096]))
            .await
            .expect("racing put");
        (i, out)
    });
    let outcomes = futures::future::join_all(writes).await;
    let winners: Vec<u8> = outcomes
        .iter()
        .filter(|(_, o)| *o == PutOutcome::Created)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "racing creates: {outcomes:?}");
    assert_eq!(
        s.get_bytes(key).await.expect("get"),
        Some(vec![winners[0]; 4096]),
        "the stored object is not the winner's"
    );
    s.delete(key).await.expect("delete");
}

/// `replace` (rekey's unconditional rewrite) overwrites; `exists` sees the object.
pub async fn replace_overwrites(s: &Storage) {
    let key = "conformance/replace";
    s.delete(key).await.expect("delete before test");
    assert!(!s.exists(key).await.expect("exists missing"));
    s.replace(key, Bytes::from_static(b"one"))
        .await
        .expect("replace new");
    s.replace(key, Bytes::from_static(b"two"))
        .await
        .expect("replace existing");
    assert!(s.exists(key).await.expect("exists"));
    assert_eq!(
        s.get_bytes(key).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    s.delete(key).await.expect("delete");
}

/// Listing `a` lists the keys under `a/`, never a sibling `ab/...`, with sizes and a
/// modification time close to now.
pub async fn list_prefix_is_a_directory(s: &Storage) {
    let (inside, sibling) = ("conformance/dir/a/x", "conformance/dir/ab/y");
    for k in [inside, sibling] {
        s.delete(k).await.expect("delete before test");
        s.put_new(k, Bytes::from_static(b"12345"))
            .await
            .expect("put");
    }
    let listed = s.list_meta("conformance/dir/a").await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, [inside], "list of a prefix");
    assert_eq!(listed[0].size, 5);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64();
    assert!(
        (listed[0].modified - now).abs() < 600.0,
        "modification time {} is not close to now {now}",
        listed[0].modified
    );
    for k in [inside, sibling] {
        s.delete(k).await.expect("delete");
    }
}
