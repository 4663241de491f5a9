//! The backup manifest parser and checksum check: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walseal::restore::base::decode_manifest(data, "fuzz", "7301000000000000001");
});
