//! WAL file names from listings and PostgreSQL, `.history` contents and page headers: never a
//! panic, and a parsed name's key parses back to the same file.
//! (The body is `walseal::fuzzing::wal_names`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::wal_names(data));
