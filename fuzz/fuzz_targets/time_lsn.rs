//! Recovery-target times and LSNs as typed on the command line: never a panic.
//! (The body is `walseal::fuzzing::time_lsn`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::time_lsn(data));
