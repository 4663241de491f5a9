//! Round trips, tamper detection and the test vectors in `testdata/vectors/`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::*;
use crate::keys::{hex_decode_into, hex_encode, Keyring, MasterKey};

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes(Zeroizing::new([byte; 32]))
}

fn seal_bytes(k: &MasterKey, name: &str, data: &[u8], opts: &SealOptions) -> Vec<u8> {
    let mut w = seal(Vec::new(), k, name, opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn open_bytes(keys: &Keyring, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut r = open(sealed, keys, name)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(seal_error_from_io)?;
    Ok(out)
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 300) % 251) as u8).collect()
}

#[test]
fn round_trip_sizes_and_modes() {
    let k = key(1);
    let ring = Keyring::new(vec![key(1)]).unwrap();
    for compression in [Compression::None, Compression::Lz4] {
        for len in [0, 1, 4095, 4096, 4097, 8192, 100_000] {
            let opts = SealOptions {
                compression,
                chunk_shift: 12,
                fixed_secrets: None,
            };
            let data = sample(len);
            let sealed = seal_bytes(&k, "obj", &data, &opts);
            assert_eq!(
                open_bytes(&ring, "obj", &sealed).unwrap(),
                data,
                "{compression:?} {len}"
            );
        }
    }
}

#[test]
fn any_flipped_truncated_or_appended_byte_is_rejected() {
    let ring = Keyring::new(vec![key(1)]).unwrap();
    for compression in [Compression::None, Compression::Lz4] {
        let opts = SealOptions {
            compression,
            chunk_shift: 12,
            fixed_secrets: None,
        };
        let sealed = seal_bytes(&key(1), "n", &sample(9000), &opts);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open_bytes(&ring, "n", &bad).is_err(),
                "flip at {i} accepted"
            );
        }
        for len in 0..sealed.len() {
            assert!(
                open_bytes(&ring, "n", &sealed[..len]).is_err(),
                "truncation to {len} accepted"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open_bytes(&ring, "n", &longer).is_err());
    }
}

#[test]
fn renamed_object_and_unknown_key_fail_with_distinct_errors() {
    let sealed = seal_bytes(
        &key(1),
        "wal/00000001/000000010000000000000003",
        b"x",
        &SealOptions::default(),
    );
    let ring = Keyring::new(vec![key(1)]).unwrap();
    let err = open_bytes(&ring, "wal/00000001/000000010000000000000004", &sealed).unwrap_err();
    assert!(matches!(err, SealError::SlotAuth(_)), "{err}");
    let other = Keyring::new(vec![key(2)]).unwrap();
    let err = open_bytes(&other, "wal/00000001/000000010000000000000003", &sealed).unwrap_err();
    assert!(matches!(err, SealError::UnknownKey(_)), "{err}");
    // A keyring holding both keys opens it whatever the order.
    let both = Keyring::new(vec![key(2), key(1)]).unwrap();
    assert_eq!(
        open_bytes(&both, "wal/00000001/000000010000000000000003", &sealed).unwrap(),
        b"x"
    );
}

#[test]
fn sealing_is_randomized() {
    let a = seal_bytes(&key(1), "n", b"same", &SealOptions::default());
    let b = seal_bytes(&key(1), "n", b"same", &SealOptions::default());
    assert_ne!(a, b);
}

// ---- test vectors -------------------------------------------------------------------------

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/vectors")
}

fn error_name(e: &SealError) -> &'static str {
    match e {
        SealError::BadMagic => "bad magic",
        SealError::UnsupportedVersion(_) => "unsupported version",
        SealError::Malformed(_) => "malformed",
        SealError::UnknownKey(_) => "unknown key",
        SealError::SlotAuth(_) => "slot authentication",
        SealError::HeaderAuth => "header authentication",
        SealError::ChunkAuth(_) => "chunk authentication",
        SealError::Truncated => "truncated",
        SealError::Decompress(_) => "decompress",
        SealError::NameTooLong => "name too long",
        SealError::Io(_) => "io",
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let mut v = vec![0u8; s.len() / 2];
    hex_decode_into(s, &mut v).expect("vector hex");
    v
}

fn master_from_hex(s: &str) -> MasterKey {
    let mut k = Zeroizing::new([0u8; 32]);
    hex_decode_into(s, k.as_mut()).expect("vector key");
    MasterKey::from_bytes(k)
}

fn parse_vector(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn test_vectors_reproduce_and_open() {
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let v = parse_vector(&std::fs::read_to_string(&path).unwrap());
        let file = path.display();
        let master = master_from_hex(&v["master_key"]);
        let open_key = v
            .get("open_key")
            .map_or_else(|| master_from_hex(&v["master_key"]), |h| master_from_hex(h));
        let ring = Keyring::new(vec![open_key]).unwrap();
        let name = &v["name"];
        let open_name = v.get("open_name").unwrap_or(name);
        let sealed = unhex(&v["sealed"]);
        let plaintext = unhex(&v["plaintext"]);
        let result = open_bytes(&ring, open_name, &sealed);
        match v["expect"].as_str() {
            "ok" => {
                assert_eq!(result.unwrap(), plaintext, "{file}");
                let mut dek = [0u8; 32];
                dek.copy_from_slice(&unhex(&v["data_key"]));
                let mut salt = [0u8; 32];
                salt.copy_from_slice(&unhex(&v["salt"]));
                let opts = SealOptions {
                    compression: if v["compression"] == "lz4" {
                        Compression::Lz4
                    } else {
                        Compression::None
                    },
                    chunk_shift: v["chunk_shift"].parse().unwrap(),
                    fixed_secrets: Some((dek, salt)),
                };
                assert_eq!(
                    hex_encode(&seal_bytes(&master, name, &plaintext, &opts)),
                    v["sealed"],
                    "{file}: sealing does not reproduce"
                );
            }
            expected => {
                let err = result.expect_err(&format!("{file}: opened but must fail"));
                assert_eq!(error_name(&err), expected, "{file}: {err}");
            }
        }
        seen += 1;
    }
    assert!(
        seen >= 10,
        "expected the vector set in testdata/vectors, found {seen}"
    );
}

/// Regenerates `testdata/vectors/` (run with `cargo test -- --ignored write_test_vectors`).
#[test]
#[ignore]
fn write_test_vectors() {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mk = |b: u8| [b; 32];
    let master_hex = hex_encode(&(0u8..32).collect::<Vec<_>>());
    let master = master_from_hex(&master_hex);
    let dek: [u8; 32] = std::array::from_fn(|i| 0xd0 ^ i as u8);
    let salt: [u8; 32] = std::array::from_fn(|i| 0x50 ^ i as u8);
    let name = "wal/00000001/000000010000000000000003";
    let write = |file: &str,
                 desc: &str,
                 extra: &[(&str, String)],
                 compression: &str,
                 shift: u8,
                 plain: &[u8],
                 sealed: &[u8],
                 expect: &str| {
        let mut t = format!("# walseal sealed-object test vector, see docs/FORMAT.md section 7\ndescription: {desc}\nmaster_key: {master_hex}\n");
        t += &format!("name: {name}\ndata_key: {}\nsalt: {}\ncompression: {compression}\nchunk_shift: {shift}\n", hex_encode(&dek), hex_encode(&salt));
        for (k, v) in extra {
            t += &format!("{k}: {v}\n");
        }
        t += &format!(
            "plaintext: {}\nexpect: {expect}\nsealed: {}\n",
            hex_encode(plain),
            hex_encode(sealed)
        );
        std::fs::write(dir.join(file), t).unwrap();
    };
    let opts = |c: Compression, shift: u8| SealOptions {
        compression: c,
        chunk_shift: shift,
        fixed_secrets: Some((dek, salt)),
    };
    let hello = b"hello, walseal".to_vec();
    let multi = sample(10_000);
    let exact = sample(8192);
    let wal = sample(20_000);
    let s_hello = seal_bytes(&master, name, &hello, &opts(Compression::None, 12));
    let s_multi = seal_bytes(&master, name, &multi, &opts(Compression::None, 12));
    write(
        "ok_empty_lz4",
        "empty payload, lz4",
        &[],
        "lz4",
        16,
        b"",
        &seal_bytes(&master, name, b"", &opts(Compression::Lz4, 16)),
        "ok",
    );
    write(
        "ok_small_none",
        "one short chunk, no compression",
        &[],
        "none",
        12,
        &hello,
        &s_hello,
        "ok",
    );
    write(
        "ok_three_chunks_none",
        "10000 bytes in 4096-byte chunks: 4096, 4096, 1808",
        &[],
        "none",
        12,
        &multi,
        &s_multi,
        "ok",
    );
    write(
        "ok_exact_two_chunks_none",
        "8192 bytes: the final chunk is full",
        &[],
        "none",
        12,
        &exact,
        &seal_bytes(&master, name, &exact, &opts(Compression::None, 12)),
        "ok",
    );
    write(
        "ok_lz4_chunked",
        "20000 compressible bytes, lz4, 4096-byte chunks",
        &[],
        "lz4",
        12,
        &wal,
        &seal_bytes(&master, name, &wal, &opts(Compression::Lz4, 12)),
        "ok",
    );
    let header_len = 12 + 19 + 80 + 32;
    let flip = |s: &[u8], at: usize| {
        let mut b = s.to_vec();
        b[at] ^= 0x80;
        b
    };
    write(
        "bad_payload_byte_flipped",
        "one payload bit flipped",
        &[],
        "none",
        12,
        &multi,
        &flip(&s_multi, header_len + 5000),
        "chunk authentication",
    );
    write(
        "bad_salt_byte_flipped",
        "one bit of the slot salt flipped",
        &[],
        "none",
        12,
        &multi,
        &flip(&s_multi, 12 + 19 + 3),
        "slot authentication",
    );
    write(
        "bad_mac_byte_flipped",
        "one bit of the header MAC flipped",
        &[],
        "none",
        12,
        &multi,
        &flip(&s_multi, header_len - 1),
        "header authentication",
    );
    write(
        "bad_magic",
        "first byte changed",
        &[],
        "none",
        12,
        &multi,
        &flip(&s_multi, 0),
        "bad magic",
    );
    let mut v2 = s_multi.clone();
    v2[8] = 2;
    write(
        "bad_version",
        "format version 2",
        &[],
        "none",
        12,
        &multi,
        &v2,
        "unsupported version",
    );
    let chunk_ct = 4096 + 16;
    write(
        "bad_truncated_at_chunk_boundary",
        "the final chunk removed",
        &[],
        "none",
        12,
        &multi,
        &s_multi[..header_len + 2 * chunk_ct],
        "chunk authentication",
    );
    write(
        "bad_truncated_mid_chunk",
        "cut inside the second chunk",
        &[],
        "none",
        12,
        &multi,
        &s_multi[..header_len + chunk_ct + 100],
        "chunk authentication",
    );
    write(
        "bad_truncated_header",
        "cut inside the header",
        &[],
        "none",
        12,
        &multi,
        &s_multi[..40],
        "truncated",
    );
    let mut appended = s_multi.clone();
    appended.push(0);
    write(
        "bad_trailing_byte",
        "one byte appended",
        &[],
        "none",
        12,
        &multi,
        &appended,
        "chunk authentication",
    );
    let mut swapped = s_multi[..header_len].to_vec();
    swapped.extend_from_slice(&s_multi[header_len + chunk_ct..header_len + 2 * chunk_ct]);
    swapped.extend_from_slice(&s_multi[header_len..header_len + chunk_ct]);
    swapped.extend_from_slice(&s_multi[header_len + 2 * chunk_ct..]);
    write(
        "bad_chunks_swapped",
        "first two chunks swapped",
        &[],
        "none",
        12,
        &multi,
        &swapped,
        "chunk authentication",
    );
    write(
        "bad_renamed",
        "opened under another object name",
        &[("open_name", "wal/00000001/000000010000000000000004".into())],
        "none",
        12,
        &hello,
        &s_hello,
        "slot authentication",
    );
    write(
        "bad_unknown_key",
        "opened with a keyring that lacks the key",
        &[("open_key", hex_encode(&mk(9)))],
        "none",
        12,
        &hello,
        &s_hello,
        "unknown key",
    );
}
