//! A backup record (`backups/<id>/backup.json`) as decoded after opening: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walseal::catalog::decode_record("backups/x/backup.json", data);
});
