//! The sealed-object reader on arbitrary bytes, with the keys of the test vectors (so the
//! seed corpus, `testdata/vectors`, opens and mutations go deep): it must never panic, and
//! whatever it returns as plaintext it returns only after the final chunk authenticated.
//! (The body is `walseal::fuzzing::sealed_object`, which `cargo test` also runs on the seed corpus.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walseal::fuzzing::sealed_object(data));
