//! The repository's records as read from the bucket: the repository record (`walseal.repo`,
//! also plain) and the cluster identity (`walseal.id`, also plain): never a panic, and a
//! decoded identity has a usable segment size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walseal::repo::Record::decode("walseal.repo.json", data);
    if let Ok(id) = walseal::repository::parse("walseal.id.json", data) {
        let size = walseal::wal::SegmentSize::new(id.wal_segment_size)
            .expect("decoded identities carry a valid segment size");
        assert!(size.per_log() > 0);
    }
});
