//! The tar extractor on arbitrary archives, into a scratch destination with a tablespace
//! location and an `outside` directory beside it: it must never panic, and nothing outside
//! the destination and the tablespace location may change.
//! (The body is `walseal::fuzzing::tar_archive`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::tar_archive(data));
