//! The fuzz targets' bodies (`fuzz/fuzz_targets/`), as plain functions: libFuzzer calls them
//! through `cargo fuzz` (`scripts/fuzz.sh`), and `cargo test` replays every seed corpus
//! (`testdata/fuzz/<target>/`) through them (`tests/fuzz_corpora.rs`), so the corpora and past
//! crash inputs are checked on every run without the nightly toolchain. Each function must
//! never panic except where it asserts an invariant of the code under test.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use zeroize::Zeroizing;

use crate::keys::{Keyring, MasterKey};
use crate::recipient::Identity;
use crate::restore::tar::{self, Listing, Policy, Root};
use crate::signer::Signer;
use crate::wal::{self, LongPageHeader, SegmentSize, WalFile};

/// The names of the targets, as in `fuzz/Cargo.toml` and `testdata/fuzz/`.
pub const TARGETS: &[&str] = &[
    "backup_record",
    "identity_record",
    "manifest",
    "replication",
    "sealed_object",
    "tar",
    "time_lsn",
    "wal_names",
    "drill",
];

/// Runs target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "backup_record" => backup_record(data),
        "identity_record" => identity_record(data),
        "manifest" => manifest(data),
        "replication" => replication(data),
        "sealed_object" => sealed_object(data),
        "tar" => tar_archive(data),
        "time_lsn" => time_lsn(data),
        "wal_names" => wal_names(data),
        "drill" => drill(data),
        _ => return false,
    }
    true
}

/// A backup record (`backups/<id>/backup.json`) as decoded after opening.
pub fn backup_record(data: &[u8]) {
    let _ = crate::catalog::decode_record("backups/x/backup.json", data);
}

/// The repository's records as read from the bucket: the repository record (`walseal.repo`,
/// also plain) and the cluster identity (`walseal.id`, also plain); a decoded identity has a
/// usable segment size.
pub fn identity_record(data: &[u8]) {
    let _ = crate::repo::Record::decode("walseal.repo.json", data);
    if let Ok(id) = crate::repository::parse("walseal.id.json", data) {
        let size = SegmentSize::new(id.wal_segment_size)
            .expect("decoded identities carry a valid segment size");
        assert!(size.per_log() > 0);
    }
}

/// The backup manifest parser and checksum check.
pub fn manifest(data: &[u8]) {
    let _ = crate::restore::manifest::decode_manifest(data, "fuzz", "7301000000000000001");
}

/// What a (hostile) server sends on the replication connection, fed in pieces as reads would
/// (the first byte is the piece size): messages, DataRows and the CopyData sub-messages of
/// BASE_BACKUP.
pub fn replication(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    // Longer inputs only repeat what shorter ones reach, byte by byte.
    let rest = &rest[..rest.len().min(4 << 10)];
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match crate::backup::protocol::parse_message(&mut buf) {
                Ok(Some(Message::DataRow(body))) => {
                    let _ = crate::backup::protocol::decode_row(&body);
                }
                Ok(Some(Message::CopyData(body))) => {
                    let _ = crate::backup::protocol::decode_copy_data(body.into_bytes());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The four keyrings of `sealed_object` (legacy allowed or not, bound or not), made once: key
/// setup (X25519, Ed25519) would otherwise dominate every run.
fn keyring(policy: u8) -> &'static Keyring {
    static RINGS: OnceLock<Vec<Keyring>> = OnceLock::new();
    &RINGS.get_or_init(|| (0..4).map(make_keyring).collect())[usize::from(policy & 3)]
}

/// The keys of the test vectors (`testdata/vectors`).
fn make_keyring(policy: u8) -> Keyring {
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

/// The sealed-object reader on arbitrary bytes (the first byte picks the keyring and the
/// name), with the keys of the test vectors, so the seed corpus opens and mutations go deep.
pub fn sealed_object(data: &[u8]) {
    let Some((&policy, sealed)) = data.split_first() else {
        return;
    };
    let ring = keyring(policy);
    let name = if policy & 4 == 4 {
        "wal/00000001/000000010000000000000004"
    } else {
        "wal/00000001/000000010000000000000003"
    };
    if let Ok(mut reader) = crate::seal::open(sealed, ring, name) {
        let mut out = Vec::new();
        // Plaintext is bounded by what LZ4 can expand an authenticated payload to; cap the
        // read so a (valid, authenticated) bomb cannot exhaust the fuzzer's memory.
        let _ = (&mut reader).take(64 << 20).read_to_end(&mut out);
    }
}

/// The scratch directories of `tar`: `dest`, `ts` (a tablespace location) and `outside`
/// (holding a sentinel), made once per process.
fn tar_scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // In memory where there is a tmpfs: the extractor's system calls are the cost.
        let tmp = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tmp.join(format!("walseal-fuzz-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["dest", "ts", "outside"] {
            std::fs::create_dir_all(dir.join(d)).expect("scratch dirs");
        }
        std::fs::write(dir.join("outside/sentinel"), b"keep").expect("sentinel");
        dir
    })
}

fn clear(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            // The archive may have set a mode without owner rwx.
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
            clear(&p);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn outside_intact(base: &Path) -> bool {
    let entries: Vec<_> = std::fs::read_dir(base.join("outside"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let top: Vec<_> = std::fs::read_dir(base)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    entries.len() == 1
        && std::fs::read(base.join("outside/sentinel")).ok().as_deref() == Some(&b"keep"[..])
        && top.len() == 3
}

/// The tar extractor on arbitrary archives, into a scratch destination with a tablespace
/// location and an `outside` directory beside it: nothing outside the destination and the
/// tablespace location may change.
pub fn tar_archive(data: &[u8]) {
    let data = &data[..data.len().min(64 << 10)];
    let base = tar_scratch();
    let root = Root::open(&base.join("dest")).expect("scratch root");
    let mut links = BTreeMap::new();
    links.insert(16384u32, base.join("ts"));
    let skip = std::collections::BTreeSet::from([16385u32]);
    let mut dirs = Vec::new();
    // Into the empty destination, then again over what that wrote, as a chain's next
    // (newest) backup.
    let over = tar::Layer::Over {
        newest: true,
        geometry: tar::incremental::Geometry {
            block_size: 8192,
            relseg_size: 131_072,
        },
    };
    for layer in [tar::Layer::Fresh, over] {
        let mut fresh: Listing<()> = Listing::default();
        for (path, size) in [
            ("a", 5u64),
            ("base/1/1", 0),
            ("global/pg_control", 8192),
            ("b/c", 3),
            ("base/1/INCREMENTAL.1", 16384),
            ("INCREMENTAL.a", 12),
        ] {
            fresh.insert(path.as_bytes().to_vec(), size, ());
        }
        let mut policy = Policy {
            archive: "base.tar",
            prefix: b"",
            listing: &mut fresh,
            links: &links,
            direct_io: false,
            layer,
            skip_links: &skip,
            dirs: &mut dirs,
        };
        let _ = tar::extract(data, &root, &mut policy, &mut |_, _| Ok(()), &|e| {
            crate::error::local_io("fuzz input", &e)
        });
    }
    assert!(
        outside_intact(base),
        "something outside the destination changed"
    );
    clear(&base.join("dest"));
    clear(&base.join("ts"));
}

/// Recovery-target times and LSNs as typed on the command line.
pub fn time_lsn(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = crate::time::parse(&text) {
        let _ = crate::time::format_pg(t);
    }
    let _ = crate::wal::Lsn::parse(&text);
}

/// WAL file names from listings and PostgreSQL, `.history` contents and page headers; a parsed
/// name's key parses back to the same file.
pub fn wal_names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(w) = WalFile::parse(&text) {
        let key = w.object_key();
        let back = key.rsplit('/').next().and_then(WalFile::parse);
        assert_eq!(back.as_ref(), Some(&w));
        for size in [1u64 << 20, 16 << 20, 1 << 30] {
            if let Ok(s) = SegmentSize::new(size) {
                let _ = w.segment_in(s);
            }
        }
    }
    let _ = wal::parse_history(&text);
    let _ = LongPageHeader::parse(data);
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let _ = SegmentSize::new(n);
    }
}

/// What a drill reads: its reports (`drills/<id>.json`, opened), the server log of a restored
/// cluster, a `--check-sql` file; a decoded report encodes and decodes to itself.
pub fn drill(data: &[u8]) {
    if let Ok(r) = crate::drill::report::decode("drills/x.json", data) {
        let again = serde_json::to_vec(&r).expect("a report encodes");
        assert_eq!(
            crate::drill::report::decode("drills/x.json", &again)
                .ok()
                .as_ref(),
            Some(&r)
        );
    }
    let text = String::from_utf8_lossy(data);
    let facts = crate::drill::server::log_facts(&text);
    assert!(facts
        .fatal
        .as_ref()
        .is_none_or(|f| f.chars().count() <= 300));
    if let Ok(queries) = crate::drill::checks::parse_check_sql(&text) {
        assert!(queries.iter().all(|q| !q.sql.is_empty() && q.line >= 1));
    }
}
