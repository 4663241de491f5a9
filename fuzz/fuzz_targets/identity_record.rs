//! The repository's records as read from the bucket: the repository record (`walseal.repo`,
//! also plain) and the cluster identity (`walseal.id`, also plain): never a panic, and a
//! decoded identity has a usable segment size.
//! (The body is `walseal::fuzzing::identity_record`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::identity_record(data));
