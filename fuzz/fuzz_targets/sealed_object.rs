//! The sealed-object reader on arbitrary bytes, with the keys of the test vectors (so the
//! seed corpus, `testdata/vectors`, opens and mutations go deep): it must never panic, and
//! whatever it returns as plaintext it returns only after the final chunk authenticated.
#![no_main]

use std::io::Read;


use libfuzzer_sys::fuzz_target;
use walseal::keys::{Keyring, MasterKey};
use walseal::recipient::Identity;
use walseal::signer::Signer;
use zeroize::Zeroizing;

/// The four keyrings (legacy allowed or not, bound or not), made once: key setup (X25519,
/// Ed25519) would otherwise dominate every run.
fn keyring(policy: u8) -> &'static Keyring {
    static RINGS: std::sync::OnceLock<Vec<Keyring>> = std::sync::OnceLock::new();
    &RINGS.get_or_init(|| (0..4).map(make).collect())[usize::from(policy & 3)]
}

fn make(policy: u8) -> Keyring {
    let master = MasterKey::from_bytes(Zeroizing::new(std::array::from_fn(|i| i as u8)));
    let identity = Identity::from_bytes(Zeroizing::new(std::array::from_fn(|i| 0x70 ^ i as u8)));
    let signer = Signer::from_seed(Zeroizing::new(std::array::from_fn(|i| 0x40 ^ i as u8)))
        .expect("a 32-byte seed");
    let mut ring = Keyring::with(vec![master], vec![identity], None)
        .expect("keys given")
        .trust([*signer.public()])
        .allowing_legacy(policy & 1 == 1);
    if policy & 2 == 2 {
        ring.bind(std::array::from_fn(|i| 0xa0 ^ i as u8));
    }
    ring
}

fuzz_target!(|data: &[u8]| {
    let Some((&policy, sealed)) = data.split_first() else {
        return;
    };
    let ring = keyring(policy);
    let name = if policy & 4 == 4 {
        "wal/00000001/000000010000000000000004"
    } else {
        "wal/00000001/000000010000000000000003"
    };
    if let Ok(mut reader) = walseal::seal::open(sealed, ring, name) {
        let mut out = Vec::new();
        // Plaintext is bounded by what LZ4 can expand an authenticated payload to; cap the
        // read so a (valid, authenticated) bomb cannot exhaust the fuzzer's memory.
        let _ = (&mut reader).take(64 << 20).read_to_end(&mut out);
    }
});
