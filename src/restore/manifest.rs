//! Backup manifests (`backup_manifest`, PostgreSQL's JSON list of the files a base backup
//! holds, with their sizes and checksums): decoding and checking one, and writing the one a
//! rebuilt chain gets (as pg_combinebackup does), which `pg_verifybackup` can check.

use serde::Deserialize;

use super::tar::{FileInfo, Listing};
use crate::error::{Error, ErrorKind, Result};

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "Files")]
    files: Vec<ManifestFile>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: Option<String>,
    /// Manifest version 2 (PostgreSQL 17+).
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
}

/// The manifest's own checksum, as `pg_verifybackup` checks it: SHA-256 of everything up to
/// and including the newline before the last line (which holds the checksum).
fn verify_manifest_checksum(bytes: &[u8], stated: Option<&str>, backup: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Integrity,
            format!("backup {backup}: backup manifest {why}"),
        )
        .hint("the backup is damaged: restore another one")
    };
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let (Some(&last), Some(&before)) = (newlines.last(), newlines.iter().rev().nth(1)) else {
        return Err(bad("has fewer than two lines"));
    };
    if last != bytes.len() - 1 {
        return Err(bad("does not end with a newline"));
    }
    let stated = stated.ok_or_else(|| bad("has no Manifest-Checksum"))?;
    let actual = ring::digest::digest(&ring::digest::SHA256, &bytes[..=before]);
    if !crate::keys::hex_encode(actual.as_ref()).eq_ignore_ascii_case(stated) {
        return Err(bad("does not match its Manifest-Checksum"));
    }
    Ok(())
}

/// One file a backup manifest lists.
#[derive(Debug, Deserialize)]
pub struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    pub(super) size: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// Decodes and checks a backup manifest (JSON, its own SHA-256 checksum, the system
/// identifier of version-2 manifests against `system_identifier`, each path once); returns
/// the files it lists. Pure: a fuzz target.
///
/// # Errors
/// `Integrity` naming what is wrong.
pub fn decode_manifest(
    bytes: &[u8],
    backup: &str,
    system_identifier: &str,
) -> Result<Listing<ManifestFile>> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!("backup {backup}: backup manifest is unreadable: {e}"),
        )
    })?;
    verify_manifest_checksum(bytes, manifest.checksum.as_deref(), backup)?;
    if let Some(sysid) = manifest.system_identifier {
        if sysid.to_string() != system_identifier {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "backup {backup}: its manifest names system {sysid}, its record {system_identifier}"
                ),
            ));
        }
    }
    listing(manifest.files, backup)
}

/// The manifest's files by path. PostgreSQL lists every regular file it sends, backup_label
/// and tablespace_map included; directories and the pg_tblspc links it does not list.
fn listing(files: Vec<ManifestFile>, backup: &str) -> Result<Listing<ManifestFile>> {
    let bad = |what: String| {
        Error::new(
            ErrorKind::Integrity,
            format!("backup {backup}: backup manifest {what}"),
        )
        .hint("the backup is damaged: restore another one")
    };
    let mut listing = Listing::default();
    for mut f in files {
        // The path moves into the key (a cluster may have millions of files).
        let path = match (f.path.take(), f.encoded_path.take()) {
            (Some(p), _) => p.into_bytes(),
            (None, Some(hex)) => {
                let mut raw = vec![0u8; hex.len() / 2];
                crate::keys::hex_decode_into(&hex, &mut raw)
                    .ok_or_else(|| bad(format!("has a bad Encoded-Path {hex:?}")))?;
                raw
            }
            _ => continue,
        };
        let size = f.size;
        let shown = String::from_utf8_lossy(&path).into_owned();
        if !listing.insert(path, size, f) {
            return Err(bad(format!("lists {shown:?} twice")));
        }
    }
    Ok(listing)
}

/// Compares a restored file with its manifest entry (size and, for CRC32C manifests, the sum).
pub(super) fn verify_file(f: &FileInfo, m: &ManifestFile) -> Result<()> {
    let path = &f.path;
    let bad = |what: &str| {
        Error::new(
            ErrorKind::Integrity,
            format!("restored file {path} does not match the backup manifest ({what})"),
        )
    };
    if f.size != m.size {
        return Err(bad(&format!("size {} instead of {}", f.size, m.size)));
    }
    if let (Some("CRC32C"), Some(sum)) = (m.algorithm.as_deref(), m.checksum.as_deref()) {
        // PostgreSQL writes the CRC's bytes in host order (little-endian here).
        if crate::keys::hex_encode(&f.crc32c.to_le_bytes()) != sum.to_ascii_lowercase() {
            return Err(bad("CRC-32C differs"));
        }
    }
    Ok(())
}

/// A file of a rebuilt cluster, for its manifest: the path, size and CRC-32C it has now.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// Path (relative to the data directory).
    pub path: Vec<u8>,
    /// Bytes.
    pub size: u64,
    /// CRC-32C of the content.
    pub crc32c: u32,
}

#[derive(Deserialize)]
struct WalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

#[derive(Deserialize)]
struct FullManifest {
    #[serde(rename = "Files")]
    files: Vec<ManifestFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<WalRange>,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The manifest of a cluster rebuilt from a chain, as pg_combinebackup writes one: the
/// newest backup's manifest (`bytes`, already checked with [`decode_manifest`]) with every
/// file `fix` returns a [`Rebuilt`] for (its `INCREMENTAL.*` files, which become the files
/// they rebuild, and backup_label) described as it is now, CRC-32C; every other entry and
/// the WAL ranges as they were; a new Manifest-Checksum.
///
/// # Errors
/// `Integrity` if `bytes` does not decode; errors from `fix`.
pub fn rebuilt_manifest(
    bytes: &[u8],
    backup: &str,
    fix: &mut dyn FnMut(&[u8]) -> Result<Option<Rebuilt>>,
) -> Result<(Vec<u8>, u64)> {
    let m: FullManifest = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!("backup {backup}: backup manifest is unreadable: {e}"),
        )
    })?;
    let mut out = String::with_capacity(bytes.len());
    match m.system_identifier {
        Some(id) => {
            out += "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n";
            out += &format!("\"System-Identifier\": {id},\n");
        }
        None => out += "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n",
    }
    out += "\"Files\": [";
    let mut first = true;
    let mut total = 0u64;
    for f in m.files {
        let encoded = f.path.is_none();
        let path = match (f.path, &f.encoded_path) {
            (Some(p), _) => p.into_bytes(),
            (None, Some(hex)) => {
                let mut raw = vec![0u8; hex.len() / 2];
                crate::keys::hex_decode_into(hex, &mut raw).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Integrity,
                        format!("backup {backup}: backup manifest has a bad Encoded-Path"),
                    )
                })?;
                raw
            }
            (None, None) => continue,
        };
        let (path, size, algorithm, checksum) = match fix(&path)? {
            Some(r) => (
                r.path,
                r.size,
                Some("CRC32C".to_string()),
                Some(crate::keys::hex_encode(&r.crc32c.to_le_bytes())),
            ),
            None => (path, f.size, f.algorithm, f.checksum),
        };
        out += if first { "\n" } else { ",\n" };
        first = false;
        match std::str::from_utf8(&path) {
            Ok(p) if !encoded => out += &format!("{{ \"Path\": {}", json_str(p)),
            _ => {
                out += &format!(
                    "{{ \"Encoded-Path\": \"{}\"",
                    crate::keys::hex_encode(&path)
                )
            }
        }
        total = total.saturating_add(size);
        out += &format!(", \"Size\": {size}");
        if let Some(t) = &f.last_modified {
            out += &format!(", \"Last-Modified\": {}", json_str(t));
        }
        if let (Some(a), Some(c)) = (algorithm, checksum) {
            out += &format!(
                ", \"Checksum-Algorithm\": {}, \"Checksum\": {}",
                json_str(&a),
                json_str(&c)
            );
        }
        out += " }";
    }
    out += " ],\n\"WAL-Ranges\": [";
    for (i, w) in m.wal_ranges.iter().enumerate() {
        out += if i == 0 { "\n" } else { ",\n" };
        out += &format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": {}, \"End-LSN\": {} }}",
            w.timeline,
            json_str(&w.start),
            json_str(&w.end)
        );
    }
    out += " ],\n";
    let sum = ring::digest::digest(&ring::digest::SHA256, out.as_bytes());
    out += &format!(
        "\"Manifest-Checksum\": \"{}\"}}\n",
        crate::keys::hex_encode(sum.as_ref())
    );
    Ok((out.into_bytes(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_checksum_covers_all_but_the_last_line() {
        let body = b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [],\n";
        let sum =
            crate::keys::hex_encode(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        let mut m = body.to_vec();
        m.extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
        verify_manifest_checksum(&m, Some(&sum), "b").unwrap();
        let mut edited = m.clone();
        edited[5] ^= 1;
        assert!(verify_manifest_checksum(&edited, Some(&sum), "b").is_err());
        assert!(verify_manifest_checksum(&m[..m.len() - 1], Some(&sum), "b").is_err());
        assert!(verify_manifest_checksum(&m, None, "b").is_err());
    }

    #[test]
    fn a_rebuilt_manifest_describes_the_rebuilt_files_and_checks_out() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7301000000000000001,\n\"Files\": [\n{ \"Path\": \"backup_label\", \"Size\": 5, \"Last-Modified\": \"2026-12-01 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" },\n{ \"Path\": \"base/5/INCREMENTAL.16384\", \"Size\": 12, \"Last-Modified\": \"2026-12-01 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"11111111\" },\n{ \"Encoded-Path\": \"ff\", \"Size\": 1, \"Last-Modified\": \"2026-12-01 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"22222222\" } ],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" } ],\n";
        let sum = crate::keys::hex_encode(
            ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref(),
        );
        let old = format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n");
        decode_manifest(old.as_bytes(), "b", "7301000000000000001").unwrap();
        let (new, total) = rebuilt_manifest(old.as_bytes(), "b", &mut |p| {
            Ok((p == b"base/5/INCREMENTAL.16384").then(|| Rebuilt {
                path: b"base/5/16384".to_vec(),
                size: 8192,
                crc32c: 0x0403_0201,
            }))
        })
        .unwrap();
        assert_eq!(total, 5 + 8192 + 1);
        let listing = decode_manifest(&new, "b", "7301000000000000001").unwrap();
        let mut paths: Vec<_> = listing.paths().map(<[u8]>::to_vec).collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                b"backup_label".to_vec(),
                b"base/5/16384".to_vec(),
                vec![0xff]
            ]
        );
        let text = String::from_utf8_lossy(&new);
        assert!(text.contains("\"Path\": \"base/5/16384\", \"Size\": 8192, \"Last-Modified\": \"2026-12-01 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"01020304\""), "{text}");
        assert!(text.contains("\"Encoded-Path\": \"ff\""), "{text}");
        assert!(text.contains("\"Start-LSN\": \"0/2000028\""), "{text}");
    }
}
