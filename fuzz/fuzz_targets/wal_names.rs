//! WAL file names from listings and PostgreSQL, `.history` contents and page headers: never a
//! panic, and a parsed name's key parses back to the same file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walseal::wal::{self, LongPageHeader, SegmentSize, WalFile};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(w) = WalFile::parse(&text) {
        let key = w.object_key();
        let back = key.rsplit('/').next().and_then(WalFile::parse);
        assert_eq!(back.as_ref(), Some(&w));
        for size in [1u64 << 20, 16 << 20, 1 << 30] {
            if let Ok(s) = SegmentSize::new(size) {
                let _ = w.segment_in(s);
            }
        }
    }
    let _ = wal::parse_history(&text);
    let _ = LongPageHeader::parse(data);
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let _ = SegmentSize::new(n);
    }
});
