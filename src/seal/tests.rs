//! Round trips, tamper detection and the test vectors in `testdata/vectors/`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::*;
use crate::keys::{hex_decode_into, hex_encode, Keyring, MasterKey, Sealer};
use crate::recipient::Identity;
use crate::signer::Signer;

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes(Zeroizing::new([byte; 32]))
}

fn test_signer() -> Signer {
    Signer::from_seed(Zeroizing::new([0x5e; 32])).unwrap()
}

/// Options that sign recipient-sealed objects with [`test_signer`].
fn signed() -> SealOptions {
    SealOptions {
        signer: Some(std::sync::Arc::new(test_signer())),
        ..SealOptions::default()
    }
}

/// A restore host: the identity, trusting [`test_signer`].
fn idring(byte: u8) -> Keyring {
    Keyring::with(vec![], vec![identity(byte)], None)
        .unwrap()
        .trust([*test_signer().public()])
}

fn seal_bytes(k: &MasterKey, name: &str, data: &[u8], opts: &SealOptions) -> Vec<u8> {
    seal_to(Sealer::Master(k), name, data, opts)
}

fn seal_to(to: Sealer<'_>, name: &str, data: &[u8], opts: &SealOptions) -> Vec<u8> {
    let mut w = seal(Vec::new(), to, name, opts).unwrap();
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
                ..SealOptions::default()
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
            ..SealOptions::default()
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
        SealError::PushOnly => "push-only",
        SealError::Legacy => "legacy",
        SealError::WrongRepository(_) => "wrong repository",
        SealError::Unsigned => "unsigned",
        SealError::UntrustedSigner(_) => "untrusted signer",
        SealError::BadSignature(_) => "bad signature",
        SealError::PayloadDigest => "payload digest",
        SealError::NeedSigner => "need signer",
        SealError::LegacyUnsigned => "legacy unsigned",
        SealError::Io(_) => "io",
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let mut v = vec![0u8; s.len() / 2];
    hex_decode_into(s, &mut v).expect("vector hex");
    v
}

fn identity_from_hex(s: &str) -> Identity {
    let mut k = Zeroizing::new([0u8; 32]);
    hex_decode_into(s, k.as_mut()).expect("vector identity");
    Identity::from_bytes(k)
}

fn repo_from_hex(s: &str) -> [u8; 16] {
    let mut r = [0u8; 16];
    hex_decode_into(s, &mut r).expect("vector repository");
    r
}

fn signer_from_hex(s: &str) -> Signer {
    let mut k = Zeroizing::new([0u8; 32]);
    hex_decode_into(s, k.as_mut()).expect("vector signer");
    Signer::from_seed(k).unwrap()
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
        // Sealed under `master_key`, or to the recipient of `identity` (docs/FORMAT.md §7).
        let identity = v.get("identity").map(|h| identity_from_hex(h));
        let master = v.get("master_key").map(|h| master_from_hex(h));
        let ring = match (&identity, v.get("open_with").map(String::as_str)) {
            (Some(_), Some("recipient")) => Keyring::with(
                vec![],
                vec![],
                Some(*identity.as_ref().unwrap().recipient()),
            )
            .unwrap(),
            (Some(_), Some(other)) => {
                Keyring::with(vec![], vec![identity_from_hex(other)], None).unwrap()
            }
            (Some(id), None) => {
                let k =
                    Keyring::with(vec![], vec![identity_from_hex(&v["identity"])], None).unwrap();
                assert_eq!(k.active().id(), id.recipient().id());
                k
            }
            (None, _) => Keyring::new(vec![v
                .get("open_key")
                .map_or_else(|| master_from_hex(&v["master_key"]), |h| master_from_hex(h))])
            .unwrap(),
        };
        let name = &v["name"];
        let open_name = v.get("open_name").unwrap_or(name);
        let sealed = unhex(&v["sealed"]);
        let plaintext = unhex(&v["plaintext"]);
        // Version-1 vectors are read with allow_legacy (unless the vector says not to);
        // version-2 readers are bound to `open_repository` (default `repository`) and trust
        // `trusted` (default: the signer's public key; `none`: nobody).
        let legacy = sealed.get(8) == Some(&VERSION_1);
        let allow = legacy && v.get("allow_legacy").map(String::as_str) != Some("no");
        let mut ring = ring.allowing_legacy(allow);
        if let Some(r) = v.get("open_repository").or(v.get("repository")) {
            ring.bind(repo_from_hex(r));
        }
        let ring = match v.get("trusted").or(v.get("signer")).map(String::as_str) {
            None | Some("none") => ring,
            Some(seed) => ring.trust([*signer_from_hex(seed).public()]),
        };
        let result = open_bytes(&ring, open_name, &sealed);
        match v["expect"].as_str() {
            "ok" if legacy => {
                assert_eq!(result.unwrap(), plaintext, "{file}");
                // Without allow_legacy, the same object is refused; the writer makes only
                // version 2, so version-1 vectors are for reading.
                let strict = ring.allowing_legacy(false);
                let err = open_bytes(&strict, open_name, &sealed).unwrap_err();
                assert_eq!(error_name(&err), "legacy", "{file}");
            }
            "ok" => {
                assert_eq!(result.unwrap(), plaintext, "{file}");
                let mut dek = [0u8; 32];
                dek.copy_from_slice(&unhex(&v["data_key"]));
                let mut salt = [0u8; 32];
                salt.copy_from_slice(&unhex(&v["salt"]));
                let opts = SealOptions {
                    compression: match v["compression"].as_str() {
                        "lz4" => Compression::Lz4,
                        "zstd" => Compression::Zstd,
                        _ => Compression::None,
                    },
                    zstd_level: v.get("zstd_level").map_or(3, |l| l.parse().unwrap()),
                    chunk_shift: v["chunk_shift"].parse().unwrap(),
                    content_digest: v.get("content_digest").map(|h| {
                        let mut d = [0u8; 32];
                        d.copy_from_slice(&unhex(h));
                        d
                    }),
                    repository: v.get("repository").map_or([0u8; 16], |r| repo_from_hex(r)),
                    signer: v
                        .get("signer")
                        .map(|h| std::sync::Arc::new(signer_from_hex(h))),
                    fixed_secrets: Some((dek, salt)),
                };
                let to: Sealer<'_> = match (&identity, &master) {
                    (Some(i), _) => Sealer::Recipient(i.recipient()),
                    (None, Some(m)) => Sealer::Master(m),
                    (None, None) => panic!("{file}: neither master_key nor identity"),
                };
                if let (Some(i), Some(d)) = (&identity, v.get("content_digest")) {
                    let mut cd = i.recipient().content_digest();
                    cd.update(&plaintext);
                    assert_eq!(hex_encode(&cd.finish()), *d, "{file}: content digest");
                }
                assert_eq!(
                    hex_encode(&seal_to(to, name, &plaintext, &opts)),
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

/// Writes the zstd vectors (compression 0x02, added without a version change) into
/// `testdata/vectors/` (run with `cargo test --lib -- --ignored write_zstd_vectors`).
#[test]
#[ignore]
fn write_zstd_vectors() {
    let dir = vectors_dir();
    let master_hex = hex_encode(&(0u8..32).collect::<Vec<_>>());
    let master = master_from_hex(&master_hex);
    let dek: [u8; 32] = std::array::from_fn(|i| 0xd0 ^ i as u8);
    let salt: [u8; 32] = std::array::from_fn(|i| 0x50 ^ i as u8);
    let name = "wal/00000001/000000010000000000000003";
    let repo: [u8; 16] = std::array::from_fn(|i| 0xa0 ^ i as u8);
    let opts = |c: Compression, level: i32| SealOptions {
        compression: c,
        zstd_level: level,
        chunk_shift: 12,
        content_digest: None,
        repository: repo,
        signer: None,
        fixed_secrets: Some((dek, salt)),
    };
    let write = |file: &str, desc: &str, level: i32, plain: &[u8], sealed: &[u8], expect: &str| {
        let mut t = format!("# walseal sealed-object test vector, see docs/FORMAT.md section 7\ndescription: {desc}\nmaster_key: {master_hex}\n");
        t += &format!("name: {name}\nrepository: {}\ndata_key: {}\nsalt: {}\ncompression: zstd\nzstd_level: {level}\nchunk_shift: 12\n", hex_encode(&repo), hex_encode(&dek), hex_encode(&salt));
        t += &format!(
            "plaintext: {}\nexpect: {expect}\nsealed: {}\n",
            hex_encode(plain),
            hex_encode(sealed)
        );
        std::fs::write(dir.join(format!("v2_{file}")), t).unwrap();
    };
    // A header that says zstd over a payload sealed as is: the chunks authenticate (their
    // key and associated data do not depend on the header), the frame inside does not decode.
    let rehead = |payload: &[u8]| -> Vec<u8> {
        let raw = seal_bytes(&master, name, payload, &opts(Compression::None, 3));
        let h = Header::read(&mut &raw[..]).unwrap();
        let key = super::header::DataKey(Zeroizing::new(dek));
        let mut out = Header::new(
            Compression::Zstd,
            12,
            repo,
            h.slots.clone(),
            &key,
            name.as_bytes(),
        )
        .to_bytes();
        out.extend_from_slice(&raw[h.len()..]);
        out
    };
    let wal = sample(20_000);
    write(
        "ok_empty_zstd",
        "empty payload, zstd level 3",
        3,
        b"",
        &seal_bytes(&master, name, b"", &opts(Compression::Zstd, 3)),
        "ok",
    );
    let s_wal = seal_bytes(&master, name, &wal, &opts(Compression::Zstd, 3));
    write(
        "ok_zstd_chunked",
        "20000 compressible bytes, zstd level 3, 4096-byte chunks",
        3,
        &wal,
        &s_wal,
        "ok",
    );
    write(
        "ok_zstd_level_19",
        "20000 compressible bytes, zstd level 19",
        19,
        &wal,
        &seal_bytes(&master, name, &wal, &opts(Compression::Zstd, 19)),
        "ok",
    );
    let mut flipped = s_wal.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 0x01;
    write(
        "bad_zstd_payload_byte_flipped",
        "zstd object with one payload bit flipped",
        3,
        &wal,
        &flipped,
        "chunk authentication",
    );
    write(
        "bad_zstd_not_a_frame",
        "header says zstd, the authenticated payload is not a zstd frame",
        3,
        b"hello, walseal",
        &rehead(b"hello, walseal"),
        "decompress",
    );
    // A valid frame whose window (2^27) is larger than readers accept (2^23).
    let mut big = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    big.window_log(27).unwrap();
    big.long_distance_matching(true).unwrap();
    big.include_contentsize(false).unwrap();
    big.write_all(&wal).unwrap();
    let frame = big.finish().unwrap();
    write(
        "bad_zstd_window_too_large",
        "header says zstd, the payload is a valid zstd frame that needs a 128 MiB window",
        3,
        &wal,
        &rehead(&frame),
        "decompress",
    );
    let mut tail = seal_bytes(&master, name, b"", &opts(Compression::Zstd, 3));
    let payload = {
        let mut p = zstd::stream::encode_all(&wal[..], 3).unwrap();
        p.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        p
    };
    tail.clear();
    tail.extend_from_slice(&rehead(&payload));
    write(
        "bad_zstd_truncated_frame",
        "header says zstd, the payload is a frame followed by the start of another",
        3,
        &wal,
        &tail,
        "decompress",
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
    let repo: [u8; 16] = std::array::from_fn(|i| 0xa0 ^ i as u8);
    let write = |file: &str,
                 desc: &str,
                 extra: &[(&str, String)],
                 compression: &str,
                 shift: u8,
                 plain: &[u8],
                 sealed: &[u8],
                 expect: &str| {
        let file = format!("v2_{file}");
        let mut t = format!("# walseal sealed-object test vector, see docs/FORMAT.md section 7\ndescription: {desc}\nmaster_key: {master_hex}\n");
        t += &format!("name: {name}\nrepository: {}\ndata_key: {}\nsalt: {}\ncompression: {compression}\nchunk_shift: {shift}\n", hex_encode(&repo), hex_encode(&dek), hex_encode(&salt));
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
        zstd_level: 3,
        chunk_shift: shift,
        content_digest: None,
        repository: repo,
        signer: None,
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
    let header_len = 28 + 19 + 80 + 32;
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
        &flip(&s_multi, 28 + 19 + 3),
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
    let mut v3 = s_multi.clone();
    v3[8] = 3;
    write(
        "bad_version",
        "format version 3",
        &[],
        "none",
        12,
        &multi,
        &v3,
        "unsupported version",
    );
    write(
        "bad_other_repository",
        "opened by a reader bound to another repository (an object copied between repositories sealed under one key)",
        &[("open_repository", hex_encode(&[0x11u8; 16]))],
        "none",
        12,
        &hello,
        &s_hello,
        "wrong repository",
    );
    let mut repo_flipped = s_hello.clone();
    repo_flipped[12] ^= 0x01;
    write(
        "bad_repository_byte_flipped",
        "one bit of the repository id flipped (the reader is bound to the original)",
        &[],
        "none",
        12,
        &hello,
        &repo_flipped,
        "wrong repository",
    );
    let v1 = std::fs::read_to_string(dir.join("ok_small_none")).unwrap();
    let v1_sealed = parse_vector(&v1)["sealed"].clone();
    let mut t = format!("# walseal sealed-object test vector, see docs/FORMAT.md section 7\ndescription: a version-1 object, read by a reader without allow_legacy\nmaster_key: {master_hex}\n");
    t += &format!("name: {name}\ndata_key: {}\nsalt: {}\ncompression: none\nchunk_shift: 12\nallow_legacy: no\nplaintext: {}\nexpect: legacy\nsealed: {v1_sealed}\n", hex_encode(&dek), hex_encode(&salt), hex_encode(&hello));
    std::fs::write(dir.join("v1_bad_legacy_refused"), t).unwrap();
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

// ---- public-key mode (slot kinds 0x02 and 0x03) ------------------------------------------

fn identity(byte: u8) -> Identity {
    Identity::from_bytes(Zeroizing::new([byte; 32]))
}

#[test]
fn recipient_sealed_objects_open_only_with_the_identity() {
    let alice = identity(0x31);
    let name = "wal/00000001/000000010000000000000003";
    let data = sample(200_000);
    let mut cd = alice.recipient().content_digest();
    cd.update(&data);
    let digest = cd.finish();
    let opts = SealOptions {
        content_digest: Some(digest),
        ..signed()
    };
    let sealed = seal_to(Sealer::Recipient(alice.recipient()), name, &data, &opts);
    let header = Header::read(&mut &sealed[..]).unwrap();
    assert_eq!(header.key_ids(), vec![alice.recipient().id()]);
    assert_eq!(header.content_digest(&alice.recipient().id()), Some(digest));

    let restore_host = idring(0x31);
    assert_eq!(open_bytes(&restore_host, name, &sealed).unwrap(), data);
    // The push-only host: seals, cannot open, and the error says so.
    let push_only = Keyring::with(vec![], vec![], Some(*alice.recipient())).unwrap();
    assert!(!push_only.can_open());
    assert!(matches!(
        open_bytes(&push_only, name, &sealed),
        Err(SealError::PushOnly)
    ));
    let msg = SealError::PushOnly.into_error(name).to_string();
    assert!(msg.contains("needs an identity"), "{msg}");
    // Another identity, or a master key: unknown key.
    let other = Keyring::with(vec![key(1)], vec![identity(0x32)], None).unwrap();
    assert!(matches!(
        open_bytes(&other, name, &sealed),
        Err(SealError::UnknownKey(_))
    ));
    // Renamed: the slot's wrap key binds the name.
    assert!(matches!(
        open_bytes(
            &restore_host,
            "wal/00000001/000000010000000000000004",
            &sealed
        ),
        Err(SealError::SlotAuth(_))
    ));
    // Sealing is randomized (fresh ephemeral key and data key).
    assert_ne!(
        sealed,
        seal_to(Sealer::Recipient(alice.recipient()), name, &data, &opts)
    );
}

#[test]
fn every_recipient_slot_and_digest_byte_is_authenticated() {
    let alice = identity(0x41);
    let ring = idring(0x41);
    let opts = SealOptions {
        content_digest: Some([7u8; 32]),
        ..signed()
    };
    let sealed = seal_to(Sealer::Recipient(alice.recipient()), "n", b"data", &opts);
    let header_len = Header::read(&mut &sealed[..]).unwrap().len();
    for i in 0..header_len {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(open_bytes(&ring, "n", &bad).is_err(), "header byte {i}");
    }
}

#[test]
fn sealed_key_opens_what_this_process_sealed() {
    let alice = identity(0x51);
    let mut w = seal(Vec::new(), alice.recipient(), "n", &signed()).unwrap();
    w.write_all(b"payload").unwrap();
    let (sealed, k) = w.finish_with_key().unwrap();
    let mut out = Vec::new();
    open_with_key(&sealed[..], &k, "n")
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"payload");
    assert!(open_with_key(&sealed[..], &k, "m").is_err());
    assert_eq!(format!("{k:?}"), "SealedKey(..)");
}

#[test]
fn rewrap_moves_between_master_keys_and_recipients() {
    let alice = identity(0x61);
    let mut both = Keyring::with(vec![key(1)], vec![identity(0x61)], None)
        .unwrap()
        .with_signer(test_signer());
    both.bind([0u8; 16]);
    let name = "backups/x/base.tar.00000";
    let data = sample(70_000);
    let sealed = seal_bytes(&key(1), name, &data, &SealOptions::default());
    let to_recipient = rewrap(
        &sealed,
        &both,
        Sealer::Recipient(alice.recipient()),
        name,
        None,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        payload_digest(&to_recipient).unwrap(),
        payload_digest(&sealed).unwrap()
    );
    let only_identity = idring(0x61);
    assert_eq!(
        open_bytes(&only_identity, name, &to_recipient).unwrap(),
        data
    );
    assert!(rewrap(
        &to_recipient,
        &both,
        Sealer::Recipient(alice.recipient()),
        name,
        None
    )
    .unwrap()
    .is_none());
    // With a digest, the same recipient gets one added (and the payload stays).
    let with_digest = rewrap(
        &to_recipient,
        &both,
        Sealer::Recipient(alice.recipient()),
        name,
        Some([3u8; 32]),
    )
    .unwrap()
    .unwrap();
    let h = Header::read(&mut &with_digest[..]).unwrap();
    assert_eq!(h.content_digest(&alice.recipient().id()), Some([3u8; 32]));
    assert_eq!(
        open_bytes(&only_identity, name, &with_digest).unwrap(),
        data
    );
    let k1 = key(1);
    let back = rewrap(&to_recipient, &both, Sealer::Master(&k1), name, None)
        .unwrap()
        .unwrap();
    assert_eq!(
        open_bytes(&Keyring::new(vec![key(1)]).unwrap(), name, &back).unwrap(),
        data
    );
}

/// Writes the public-key vectors (`x25519_*`) into `testdata/vectors/`, leaving the others
/// untouched (run with `cargo test -- --ignored write_recipient_test_vectors`).
#[test]
#[ignore]
fn write_recipient_test_vectors() {
    let dir = vectors_dir();
    let secret: [u8; 32] = std::array::from_fn(|i| 0x70 ^ i as u8);
    let other: [u8; 32] = std::array::from_fn(|i| 0x90 ^ i as u8);
    let id = Identity::from_bytes(Zeroizing::new(secret));
    let dek: [u8; 32] = std::array::from_fn(|i| 0xd0 ^ i as u8);
    let eph: [u8; 32] = std::array::from_fn(|i| 0xe0 ^ i as u8);
    let name = "wal/00000001/000000010000000000000003";
    let wal = sample(20_000);
    let hello = b"hello, walseal".to_vec();
    let mut cd = id.recipient().content_digest();
    cd.update(&wal);
    let digest = cd.finish();
    let repo: [u8; 16] = std::array::from_fn(|i| 0xa0 ^ i as u8);
    let seed: [u8; 32] = std::array::from_fn(|i| 0x40 ^ i as u8);
    let other_seed: [u8; 32] = std::array::from_fn(|i| 0x20 ^ i as u8);
    let signer = std::sync::Arc::new(Signer::from_seed(Zeroizing::new(seed)).unwrap());
    let with_digest = SealOptions {
        compression: Compression::Lz4,
        zstd_level: 3,
        chunk_shift: 16,
        content_digest: Some(digest),
        repository: repo,
        signer: Some(signer.clone()),
        fixed_secrets: Some((dek, eph)),
    };
    let plain = SealOptions {
        compression: Compression::None,
        zstd_level: 3,
        chunk_shift: 12,
        content_digest: None,
        repository: repo,
        signer: Some(signer.clone()),
        fixed_secrets: Some((dek, eph)),
    };
    let unsigned = SealOptions {
        signer: None,
        ..plain.clone()
    };
    let s_wal = seal_to(Sealer::Recipient(id.recipient()), name, &wal, &with_digest);
    let s_hello = seal_to(Sealer::Recipient(id.recipient()), name, &hello, &plain);
    let header_len = Header::read(&mut &s_wal[..]).unwrap().len();
    let write = |file: &str,
                 desc: &str,
                 extra: &[(&str, String)],
                 opts: &SealOptions,
                 plain: &[u8],
                 sealed: &[u8],
                 expect: &str| {
        let file = format!("v2_{file}");
        let mut t = format!("# walseal sealed-object test vector, see docs/FORMAT.md section 7\ndescription: {desc}\nidentity: {}\nrecipient: {}\n", hex_encode(&secret), id.recipient());
        if opts.signer.is_some() {
            t += &format!("signer: {}\n", hex_encode(&seed));
        }
        t += &format!(
            "name: {name}\nrepository: {}\ndata_key: {}\nsalt: {}\ncompression: {}\nchunk_shift: {}\n",
            hex_encode(&repo),
            hex_encode(&dek),
            hex_encode(&eph),
            if opts.compression == Compression::Lz4 {
                "lz4"
            } else {
                "none"
            },
            opts.chunk_shift
        );
        if let Some(d) = opts.content_digest {
            t += &format!("content_digest: {}\n", hex_encode(&d));
        }
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
    write(
        "x25519_ok_lz4_digest",
        "X25519 recipient slot plus content-digest slot, lz4",
        &[],
        &with_digest,
        &wal,
        &s_wal,
        "ok",
    );
    write(
        "x25519_ok_small_none",
        "X25519 recipient slot only, no compression",
        &[],
        &plain,
        &hello,
        &s_hello,
        "ok",
    );
    write(
        "x25519_bad_push_only",
        "the reader holds only the recipient (push-only host)",
        &[("open_with", "recipient".into())],
        &plain,
        &hello,
        &s_hello,
        "push-only",
    );
    write(
        "x25519_bad_other_identity",
        "the reader holds another identity",
        &[("open_with", hex_encode(&other))],
        &plain,
        &hello,
        &s_hello,
        "unknown key",
    );
    let mut flipped = s_hello.clone();
    flipped[28 + 19] ^= 0x01; // first byte of the ephemeral public key
    write(
        "x25519_bad_ephemeral_flipped",
        "one bit of the ephemeral public key flipped",
        &[],
        &plain,
        &hello,
        &flipped,
        "slot authentication",
    );
    let _ = header_len;
    let mut flipped = s_wal.clone();
    flipped[28 + 99 + 19 + 31] ^= 0x01; // last byte of the content digest
    write(
        "x25519_bad_digest_flipped",
        "one bit of the content digest flipped",
        &[],
        &with_digest,
        &wal,
        &flipped,
        "header authentication",
    );
    // Forgeries from the recipient alone (it is public): no signature, or another signer's.
    let s_unsigned = seal_to(Sealer::Recipient(id.recipient()), name, &hello, &unsigned);
    write(
        "x25519_bad_unsigned",
        "sealed to the recipient without a signature (what anyone holding the recipient can make)",
        &[],
        &unsigned,
        &hello,
        &s_unsigned,
        "unsigned",
    );
    write(
        "x25519_bad_untrusted_signer",
        "signed by a signer the reader does not trust",
        &[("trusted", hex_encode(&other_seed))],
        &plain,
        &hello,
        &s_hello,
        "untrusted signer",
    );
    // A real signature (of s_hello) replayed onto an object with another data key: the
    // header MAC is recomputed (the forger knows its own data key), the signature no longer
    // covers the data key.
    let dek2: [u8; 32] = std::array::from_fn(|i| 0xc0 ^ i as u8);
    let forged_opts = SealOptions {
        fixed_secrets: Some((dek2, eph)),
        ..unsigned.clone()
    };
    let forged = seal_to(
        Sealer::Recipient(id.recipient()),
        name,
        &hello,
        &forged_opts,
    );
    let honest = Header::read(&mut &s_hello[..]).unwrap();
    let forged_header = Header::read(&mut &forged[..]).unwrap();
    let mut slots = forged_header.slots.clone();
    slots.extend(
        honest
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Signature as u8)
            .cloned(),
    );
    let key2 = super::header::DataKey(Zeroizing::new(dek2));
    let mut replayed =
        Header::new(Compression::None, 12, repo, slots, &key2, name.as_bytes()).to_bytes();
    replayed.extend_from_slice(&forged[forged_header.len()..]);
    write(
        "x25519_bad_signature_replayed",
        "a trusted signer's signature of another object (same name) spliced onto a forgery, header MAC recomputed",
        &[],
        &plain,
        &hello,
        &replayed,
        "bad signature",
    );
    // The data key's holder (a restore host) re-encrypts other content under the same data
    // key and keeps the signed header: the payload's SHA-256 no longer matches.
    let other_text = b"HELLO, WALSEAL".to_vec();
    let s_other = seal_to(Sealer::Recipient(id.recipient()), name, &other_text, &plain);
    let mut swapped = s_hello[..honest.len()].to_vec();
    swapped.extend_from_slice(&s_other[honest.len()..]);
    write(
        "x25519_bad_payload_swapped",
        "the signed header of one object with the payload of another under the same data key",
        &[],
        &plain,
        &hello,
        &swapped,
        "payload digest",
    );
}

#[test]
fn a_digest_filled_in_at_finish_authenticates_like_one_given_up_front() {
    let alice = identity(0x71);
    let ring = idring(0x71);
    let data = sample(50_000);
    let placeholder = SealOptions {
        content_digest: Some([0u8; 32]),
        ..signed()
    };
    let mut w = seal(Vec::new(), alice.recipient(), "n", &placeholder).unwrap();
    w.write_all(&data).unwrap();
    let (sealed, _) = w.finish_with_digest([9u8; 32]).unwrap();
    let header = Header::read(&mut &sealed[..]).unwrap();
    assert_eq!(
        header.content_digest(&alice.recipient().id()),
        Some([9u8; 32])
    );
    assert_eq!(open_bytes(&ring, "n", &sealed).unwrap(), data);
    // Without a slot to fill, finishing with a digest is refused.
    let mut w = seal(Vec::new(), alice.recipient(), "n", &SealOptions::default()).unwrap();
    w.write_all(b"x").unwrap();
    assert!(w.finish_with_digest([9u8; 32]).is_err());
}

// ---- properties -----------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn options() -> impl Strategy<Value = (Compression, u8)> {
        (
            prop_oneof![Just(Compression::None), Just(Compression::Lz4)],
            12u8..=14,
        )
    }

    fn bound_ring(repo: [u8; 16]) -> Keyring {
        let mut ring = Keyring::new(vec![key(1)])
            .unwrap()
            .with_signer(test_signer());
        ring.bind(repo);
        ring
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_then_open_gives_the_content(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            (compression, chunk_shift) in options(),
            repo in any::<[u8; 16]>(),
            name in "[a-z0-9/._]{1,64}",
        ) {
            let opts = SealOptions { compression, chunk_shift, repository: repo, ..SealOptions::default() };
            let sealed = seal_bytes(&key(1), &name, &data, &opts);
            prop_assert_eq!(open_bytes(&bound_ring(repo), &name, &sealed).unwrap(), data);
        }

        #[test]
        fn any_change_truncation_or_extension_is_refused(
            data in proptest::collection::vec(any::<u8>(), 0..12_000),
            (compression, chunk_shift) in options(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..64),
            recipient in any::<bool>(),
        ) {
            let alice = identity(0x33);
            let mut opts = SealOptions { compression, chunk_shift, repository: [7; 16], ..signed() };
            let (sealed, ring) = if recipient {
                opts.content_digest = Some([1; 32]);
                let mut ring = idring(0x33);
                ring.bind([7; 16]);
                (seal_to(Sealer::Recipient(alice.recipient()), "n", &data, &opts), ring)
            } else {
                (seal_bytes(&key(1), "n", &data, &opts), bound_ring([7; 16]))
            };
            prop_assert!(open_bytes(&ring, "n", &sealed).is_ok());
            let mut changed = sealed.clone();
            changed[at.index(sealed.len())] ^= flip;
            prop_assert!(open_bytes(&ring, "n", &changed).is_err());
            let len = cut.index(sealed.len());
            prop_assert!(open_bytes(&ring, "n", &sealed[..len]).is_err());
            let mut longer = sealed.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(open_bytes(&ring, "n", &longer).is_err());
        }
    }
}
