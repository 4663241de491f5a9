//! The backup manifest parser and checksum check: never a panic.
//! (The body is `walseal::fuzzing::manifest`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::manifest(data));
