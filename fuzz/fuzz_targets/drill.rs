//! What a drill reads: its sealed reports once opened, the restored cluster's server log, a
//! `--check-sql` file: never a panic, and a decoded report round-trips.
//! (The body is `walseal::fuzzing::drill`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::drill(data));
