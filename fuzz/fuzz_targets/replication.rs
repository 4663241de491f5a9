//! What a (hostile) server sends on the replication connection, fed in pieces as reads would:
//! messages, DataRows and the CopyData sub-messages of BASE_BACKUP. Never a panic, and no
//! message larger than the bound is accepted.
//! (The body is `walseal::fuzzing::replication`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::replication(data));
