//! `cargo bench --bench seal`: single-core throughput of sealing and opening one 16 MiB WAL
//! segment, next to the building blocks it is made of (lz4_flex, zstd, ring's AES-256-GCM,
//! crc32fast), so that the cost of the format itself can be read off.
//!
//! Input: the file named by `WALSEAL_BENCH_WAL` (a real WAL segment, e.g. one that
//! `peer-bench.sh` collected; any size is accepted), else a synthetic WAL-like buffer of
//! 16 MiB (see [`synthetic_wal`]): 8 KiB pages with page headers; four pages in five are
//! heap-page images of pgbench_accounts tuples (consecutive aid, 84 blank filler bytes), the
//! rest small update and commit records with pseudo-random fields, and one page in eight ends
//! in a zero tail. It compresses like real pgbench WAL written after a checkpoint (lz4 ratio
//! 5.9 against 5.95 for the real segments of `../shared/bench/results/`; the sealed sizes are
//! printed at the start), but it is not real WAL: the numbers of a real segment are the ones to
//! quote.
//!
//! `seal/*` and `open/*` go through `seal_to_vec` / `open_to_vec`, which allocate a fresh output
//! buffer per call (as a small in-memory object does; the raw compressor rows do the same);
//! `seal-reuse/*` seals with `seal` into a buffer reused across iterations and `open-stream/*`
//! reads `open`'s reader out into `io::sink()`, i.e. without the cost of touching new memory,
//! like the streaming path of `wal-push` / `wal-fetch` with bounded buffers.
//!
//! Every benchmark runs on one thread (walseal seals one object on one core), and reports
//! throughput in bytes of the plaintext segment per second.
//!
//! `WALSEAL_BENCH_QUICK=1`: 2 s of measurement and 10 samples per benchmark (a quick check);
//! otherwise 8 s and 20 samples. At the end, if `openssl` is on PATH, the last line of
//! `openssl speed -evp aes-256-gcm -bytes 65536 -seconds 2` is printed for comparison with
//! `raw/aes-256-gcm-seal` (openssl counts 1000-byte "k"; criterion's MiB/s are 2^20 bytes).

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use walseal::keys::{Keyring, MasterKey};
use walseal::seal::{open, open_to_vec, seal, seal_to_vec, Compression, SealOptions};
use zeroize::Zeroizing;

const SEGMENT: usize = 16 * 1024 * 1024;
const PAGE: usize = 8192;
/// walseal's default payload chunk (`SealOptions::chunk_shift` 16).
const CHUNK: usize = 64 * 1024;
/// Percentage of synthetic pages that are full-page images (see [`synthetic_wal`]).
const FPI_PERCENT: usize = 80;
/// The object name a segment is sealed under (associated data of every chunk).
const NAME: &str = "wal/0000000100000000/000000010000000000000042";

fn quick() -> bool {
    std::env::var("WALSEAL_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// A small deterministic generator (xorshift64*), so that every run benchmarks the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn put(buf: &mut [u8], pos: &mut usize, bytes: &[u8]) {
    let n = bytes.len().min(buf.len().saturating_sub(*pos));
    buf[*pos..*pos + n].copy_from_slice(&bytes[..n]);
    *pos += n;
}

/// A 16 MiB WAL-like buffer (see the module comment). Layout of each 8 KiB page:
/// - a page header as PostgreSQL 15 writes it: magic 0xD110, info, timeline 1, the page's
///   address, the remaining length of a continued record (the first page: a 40-byte long
///   header with a system identifier, segment size and block size);
/// - then either (FPI_PERCENT of the pages) a heap-page image: a 24-byte record header with a
///   pseudo-random CRC and up to ~60 pgbench_accounts tuples of 128 bytes each (23-byte
///   tuple header with xmin and ctid, aid, bid, an abalance that is zero in three tuples of
///   four, an 85-byte char(84) filler of blanks), or records until the page is full: commit
///   records (header + timestamp, one in six) and heap updates (header, block reference,
///   tuple header fragment, xid, new abalance: 68 bytes); records are 8-byte aligned (zero
///   padding) and cut at the page end (continuations are not modelled);
/// - one page in eight stops at a random point in its second half: the rest is zeros.
fn synthetic_wal() -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = vec![0u8; SEGMENT];
    let seg_base: u64 = 0x42 * SEGMENT as u64;
    let mut aid: u32 = 1;
    let mut xid: u32 = 5000;
    let mut prev: u64 = seg_base;
    let mut ts: u64 = 784_000_000_000_000;
    for (i, page) in out.chunks_mut(PAGE).enumerate() {
        let mut pos = 0;
        let addr = seg_base + (i * PAGE) as u64;
        put(page, &mut pos, &0xD110u16.to_le_bytes());
        put(
            page,
            &mut pos,
            &(if i == 0 { 2u16 } else { 1 }).to_le_bytes(),
        );
        put(page, &mut pos, &1u32.to_le_bytes());
        put(page, &mut pos, &addr.to_le_bytes());
        put(page, &mut pos, &(rng.below(200) as u32).to_le_bytes());
        pos += 4;
        if i == 0 {
            put(page, &mut pos, &7_301_234_567_890_123_456u64.to_le_bytes());
            put(page, &mut pos, &(SEGMENT as u32).to_le_bytes());
            put(page, &mut pos, &(PAGE as u32).to_le_bytes());
        }
        let end = if rng.below(8) == 0 {
            PAGE - rng.below(PAGE / 2)
        } else {
            PAGE
        };
        let page = &mut page[..end];
        let record_header = |page: &mut [u8],
                             pos: &mut usize,
                             rng: &mut Rng,
                             len: u32,
                             xid: u32,
                             prev: u64,
                             rmid: u8| {
            put(page, pos, &len.to_le_bytes());
            put(page, pos, &xid.to_le_bytes());
            put(page, pos, &prev.to_le_bytes());
            put(page, pos, &[0x10, rmid, 0, 0]);
            put(page, pos, &(rng.next() as u32).to_le_bytes());
        };
        if rng.below(100) < FPI_PERCENT {
            // a full-page image of a pgbench_accounts heap page
            record_header(page, &mut pos, &mut rng, 8192, xid, prev, 10);
            let blk = aid / 61;
            let mut off: u16 = 1;
            while pos + 128 <= page.len() {
                put(page, &mut pos, &(xid - rng.below(3) as u32).to_le_bytes()); // t_xmin
                put(page, &mut pos, &0u32.to_le_bytes()); // t_xmax
                put(page, &mut pos, &0u32.to_le_bytes()); // t_cid
                put(page, &mut pos, &blk.to_le_bytes()); // t_ctid block
                put(page, &mut pos, &off.to_le_bytes()); // t_ctid offset
                put(page, &mut pos, &4u16.to_le_bytes()); // t_infomask2
                put(page, &mut pos, &0x0902u16.to_le_bytes()); // t_infomask
                put(page, &mut pos, &[24, 0]); // t_hoff, padding
                put(page, &mut pos, &aid.to_le_bytes());
                put(page, &mut pos, &(aid / 100_000 + 1).to_le_bytes());
                let abalance: i32 = if rng.below(4) == 0 {
                    rng.below(10_001) as i32 - 5000
                } else {
                    0
                };
                put(page, &mut pos, &abalance.to_le_bytes());
                put(page, &mut pos, &[0xAB]); // 1-byte varlena header of char(84)
                put(page, &mut pos, &[b' '; 84]);
                pos = (pos + 7) & !7;
                aid += 1;
                off += 1;
            }
            prev = addr + pos as u64;
        } else {
            while pos + 24 < page.len() {
                if rng.below(6) == 0 {
                    // commit: header + timestamp
                    record_header(page, &mut pos, &mut rng, 34, xid, prev, 1);
                    put(page, &mut pos, &ts.to_le_bytes());
                    ts += 1000 + rng.below(3000) as u64;
                    xid += 1;
                } else {
                    // a heap update on the same page (prefix/suffix-compressed new tuple):
                    // block reference, offsets, a tuple header fragment and the new abalance
                    record_header(page, &mut pos, &mut rng, 68, xid, prev, 10);
                    put(page, &mut pos, &[0, 0x20, 20, 0]);
                    put(page, &mut pos, &1663u32.to_le_bytes());
                    put(page, &mut pos, &5u32.to_le_bytes());
                    put(page, &mut pos, &(16384 + rng.below(4) as u32).to_le_bytes());
                    put(page, &mut pos, &(rng.below(82_000) as u32).to_le_bytes());
                    put(page, &mut pos, &(rng.below(61) as u16 + 1).to_le_bytes());
                    put(page, &mut pos, &[0x10, 0, 0x04, 0x80, 0x02, 0x29, 24, 0]);
                    put(page, &mut pos, &xid.to_le_bytes());
                    put(
                        page,
                        &mut pos,
                        &(rng.below(10_001) as i32 - 5000).to_le_bytes(),
                    );
                }
                pos = (pos + 7) & !7;
                prev = addr + pos as u64;
            }
        }
    }
    out
}

fn load_input() -> (Vec<u8>, String) {
    match std::env::var_os("WALSEAL_BENCH_WAL") {
        Some(path) => {
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("WALSEAL_BENCH_WAL={}: {e}", path.to_string_lossy()));
            assert!(!data.is_empty(), "WALSEAL_BENCH_WAL is an empty file");
            let what = format!("{} ({} bytes)", path.to_string_lossy(), data.len());
            (data, what)
        }
        None => (
            synthetic_wal(),
            format!("synthetic WAL-like buffer ({SEGMENT} bytes; set WALSEAL_BENCH_WAL to use a real segment)"),
        ),
    }
}

fn lz4_info() -> FrameInfo {
    // what walseal's sealer writes (src/seal/stream.rs)
    FrameInfo::new()
        .block_size(BlockSize::Max256KB)
        .block_mode(BlockMode::Linked)
}

fn lz4_compress(data: &[u8]) -> Vec<u8> {
    let mut enc = FrameEncoder::with_frame_info(lz4_info(), Vec::with_capacity(data.len() / 2));
    enc.write_all(data).expect("lz4 write");
    enc.finish().expect("lz4 finish")
}

fn lz4_decompress(frame: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    FrameDecoder::new(frame)
        .read_to_end(&mut out)
        .expect("lz4 decode");
    out
}

fn master_key() -> MasterKey {
    MasterKey::from_bytes(Zeroizing::new([0x5A; 32]))
}

fn options(compression: Compression, zstd_level: i32) -> SealOptions {
    SealOptions {
        compression,
        zstd_level,
        repository: [0x11; 16],
        ..SealOptions::default()
    }
}

fn gcm_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x33; 32]).expect("aes key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn benches(c: &mut Criterion, data: &[u8]) {
    let key = master_key();
    let keyring = Keyring::new(vec![master_key()]).expect("keyring");
    let lz4 = options(Compression::Lz4, 3);
    let none = options(Compression::None, 3);
    let zstd1 = options(Compression::Zstd, 1);
    let zstd3 = options(Compression::Zstd, 3);

    let sealed_lz4 = seal_to_vec(&key, NAME, data, &lz4).expect("seal lz4");
    let sealed_none = seal_to_vec(&key, NAME, data, &none).expect("seal none");
    let sealed_zstd1 = seal_to_vec(&key, NAME, data, &zstd1).expect("seal zstd 1");
    let sealed_zstd3 = seal_to_vec(&key, NAME, data, &zstd3).expect("seal zstd 3");
    for sealed in [&sealed_lz4, &sealed_none, &sealed_zstd1, &sealed_zstd3] {
        assert_eq!(
            open_to_vec(&keyring, NAME, sealed).expect("open"),
            data,
            "a sealed object did not open to the input"
        );
    }
    let raw_lz4 = lz4_compress(data);
    let raw_zstd3 = zstd::bulk::compress(data, 3).expect("zstd");
    let ratio = |n: usize| data.len() as f64 / n as f64;
    println!(
        "sealed sizes: lz4 {} (ratio {:.2}), zstd-1 {} ({:.2}), zstd-3 {} ({:.2}), none {}; raw lz4 frame {} ({:.2})",
        sealed_lz4.len(),
        ratio(sealed_lz4.len()),
        sealed_zstd1.len(),
        ratio(sealed_zstd1.len()),
        sealed_zstd3.len(),
        ratio(sealed_zstd3.len()),
        sealed_none.len(),
        raw_lz4.len(),
        ratio(raw_lz4.len()),
    );

    let mut g = c.benchmark_group("walseal");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("seal/lz4", |b| {
        b.iter(|| seal_to_vec(&key, NAME, black_box(data), &lz4).expect("seal"));
    });
    g.bench_function("open/lz4", |b| {
        b.iter(|| open_to_vec(&keyring, NAME, black_box(&sealed_lz4)).expect("open"));
    });
    g.bench_function("seal+open/lz4", |b| {
        b.iter(|| {
            let s = seal_to_vec(&key, NAME, black_box(data), &lz4).expect("seal");
            open_to_vec(&keyring, NAME, &s).expect("open")
        });
    });
    g.bench_function("seal/none", |b| {
        b.iter(|| seal_to_vec(&key, NAME, black_box(data), &none).expect("seal"));
    });
    g.bench_function("open/none", |b| {
        b.iter(|| open_to_vec(&keyring, NAME, black_box(&sealed_none)).expect("open"));
    });
    let mut reuse = Some(vec![0u8; data.len() + data.len() / 8 + 4096]);
    for (label, opts) in [("seal-reuse/lz4", &lz4), ("seal-reuse/none", &none)] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut v = reuse.take().expect("buffer");
                v.clear();
                let mut w = seal(v, &key, NAME, opts).expect("seal");
                w.write_all(black_box(data)).expect("write");
                reuse = Some(w.finish().expect("finish"));
            });
        });
    }
    for (label, sealed) in [
        ("open-stream/lz4", &sealed_lz4),
        ("open-stream/none", &sealed_none),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut r = open(black_box(&sealed[..]), &keyring, NAME).expect("open");
                std::io::copy(&mut r, &mut std::io::sink()).expect("read")
            });
        });
    }
    g.bench_function("seal/zstd-1", |b| {
        b.iter(|| seal_to_vec(&key, NAME, black_box(data), &zstd1).expect("seal"));
    });
    g.bench_function("seal/zstd-3", |b| {
        b.iter(|| seal_to_vec(&key, NAME, black_box(data), &zstd3).expect("seal"));
    });
    g.bench_function("open/zstd-3", |b| {
        b.iter(|| open_to_vec(&keyring, NAME, black_box(&sealed_zstd3)).expect("open"));
    });
    g.finish();

    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("lz4_flex-compress", |b| {
        b.iter(|| lz4_compress(black_box(data)));
    });
    g.bench_function("lz4_flex-decompress", |b| {
        b.iter(|| lz4_decompress(black_box(&raw_lz4), data.len()));
    });
    g.bench_function("zstd-1-compress", |b| {
        b.iter(|| zstd::bulk::compress(black_box(data), 1).expect("zstd"));
    });
    g.bench_function("zstd-3-compress", |b| {
        b.iter(|| zstd::bulk::compress(black_box(data), 3).expect("zstd"));
    });
    g.bench_function("zstd-decompress", |b| {
        b.iter(|| zstd::bulk::decompress(black_box(&raw_zstd3), data.len()).expect("zstd"));
    });
    let gcm = gcm_key();
    let mut buf = data.to_vec();
    g.bench_function("aes-256-gcm-seal", |b| {
        // in place, 64 KiB chunks with a counter nonce, the name as associated data: what
        // the payload encryption does, without compression and framing
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
                let tag = gcm
                    .seal_in_place_separate_tag(nonce(i as u64), Aad::from(NAME.as_bytes()), chunk)
                    .expect("seal");
                black_box(tag.as_ref()[0]);
            }
        });
    });
    // ciphertext||tag per chunk, as sealed objects lay them out
    let mut sealed_chunks = Vec::with_capacity(data.len() + data.len() / CHUNK * 16 + 16);
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let mut c = chunk.to_vec();
        gcm.seal_in_place_append_tag(nonce(i as u64), Aad::from(NAME.as_bytes()), &mut c)
            .expect("seal");
        sealed_chunks.extend_from_slice(&c);
    }
    g.bench_function("aes-256-gcm-open", |b| {
        b.iter_batched_ref(
            || sealed_chunks.clone(),
            |ct| {
                for (i, chunk) in ct.chunks_mut(CHUNK + 16).enumerate() {
                    let plain = gcm
                        .open_in_place(nonce(i as u64), Aad::from(NAME.as_bytes()), chunk)
                        .expect("open");
                    black_box(plain);
                }
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("crc32fast", |b| {
        b.iter(|| crc32fast::hash(black_box(data)));
    });
    g.finish();
}

fn openssl_reference() {
    let args = [
        "speed",
        "-evp",
        "aes-256-gcm",
        "-bytes",
        "65536",
        "-seconds",
        "2",
    ];
    let Ok(out) = std::process::Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return;
    };
    if !out.status.success() {
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return;
    };
    println!("openssl {}: {}", args.join(" "), last.trim());
    // "AES-256-GCM  4567890.12k": thousands of bytes per second
    if let Some(k) = last
        .split_whitespace()
        .last()
        .and_then(|v| v.strip_suffix('k'))
        .and_then(|v| v.parse::<f64>().ok())
    {
        println!(
            "  = {:.1} MiB/s ({:.1} MB/s), one core, 64 KiB blocks; compare raw/aes-256-gcm-seal",
            k * 1000.0 / 1_048_576.0,
            k / 1000.0
        );
    }
}

fn main() {
    let (data, what) = load_input();
    println!("input: {what}");
    let mut c = Criterion::default();
    c = if quick() {
        c.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(10)
    } else {
        c.measurement_time(Duration::from_secs(8))
            .warm_up_time(Duration::from_secs(2))
            .sample_size(20)
    };
    let mut c = c.configure_from_args();
    benches(&mut c, &data);
    c.final_summary();
    openssl_reference();
}
