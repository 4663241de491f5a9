//! Recovery-target times and LSNs as typed on the command line: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = walseal::time::parse(&text) {
        let _ = walseal::time::format_pg(t);
    }
    let _ = walseal::wal::Lsn::parse(&text);
});
