//! A backup record (`backups/<id>/backup.json`) as decoded after opening: never a panic.
//! (The body is `walseal::fuzzing::backup_record`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::backup_record(data));
