//! The catalog: backup records, and what the repository holds (backups, WAL per timeline).
//!
//! A backup's record (`backups/<id>/backup.json`, sealed) is written last, after every part
//! and after the WAL the backup needs is archived; a backup without a record is incomplete and
//! is never listed or restored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::seal;
use crate::storage::Storage;
use crate::wal::{Lsn, WalFile, WalKind};

/// A backup with parts but no record counts as interrupted only once none of its parts was
/// written for this long (an older backup can still be running when a newer one completes;
/// a running backup writes a part at least every few minutes, and waits at most
/// `--wal-timeout` for its WAL): `retain` removes it then, `verify` reports it then.
pub const INCOMPLETE_GRACE_SECS: f64 = 6.0 * 3600.0;

/// Prefix of all backup objects.
pub const BACKUPS: &str = "backups";
/// Largest backup record walseal reads (a record lists every part: about 150 bytes each, so
/// this covers backups of a million parts).
pub const RECORD_MAX: u64 = 256 << 20;

/// Key of a backup's record.
pub fn record_key(id: &str) -> String {
    format!("{BACKUPS}/{id}/backup.json")
}

/// One sealed part of an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// Object key.
    pub key: String,
    /// Bytes before sealing.
    pub size: u64,
    /// Bytes stored.
    pub stored: u64,
    /// SHA-256 of the part's sealed payload chunks (the stored bytes after the header), hex:
    /// unchanged by key rotation, which rewrites only headers.
    pub sha256: String,
}

/// One archive of the BASE_BACKUP stream (a tablespace's tar, or the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Archive {
    /// `base.tar`, `<oid>.tar`, or `backup_manifest`.
    pub name: String,
    /// Tablespace OID (`None` for the data directory and the manifest).
    pub tablespace_oid: Option<u32>,
    /// Tablespace location on the source server (empty for the data directory).
    pub location: String,
    /// Total bytes before sealing.
    pub size: u64,
    /// Parts in order.
    pub parts: Vec<Part>,
}

/// A complete backup's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Record format version.
    pub format_version: u32,
    /// Backup id (UTC start time, `YYYYMMDDTHHMMSSZ`).
    pub id: String,
    /// The label given to the server.
    pub label: String,
    /// Database system identifier.
    pub system_identifier: String,
    /// Server version string (`server_version`).
    pub pg_version: String,
    /// Timeline at start.
    pub timeline: u32,
    /// Start LSN (from BASE_BACKUP).
    pub start_lsn: Lsn,
    /// Stop LSN.
    pub stop_lsn: Lsn,
    /// Timeline at stop.
    pub stop_timeline: u32,
    /// Start time, `YYYY-MM-DD HH:MM:SS.ffffff+00`.
    pub start_time: String,
    /// Stop time (after the needed WAL was archived), same form.
    pub stop_time: String,
    /// Stop time as Unix seconds (for comparisons).
    pub stop_unix: f64,
    /// WAL segment size (refused at decode unless PostgreSQL allows it).
    #[serde(deserialize_with = "crate::wal::deserialize_segment_size")]
    pub wal_segment_size: u64,
    /// Total bytes before compression and encryption.
    pub size: u64,
    /// Total bytes stored.
    pub stored: u64,
    /// The archives (tablespaces first, then `base.tar`, then `backup_manifest`).
    pub archives: Vec<Archive>,
    /// For an incremental backup (record format 2), the id of the backup it was taken against;
    /// `null` for a full backup.
    #[serde(default)]
    pub parent: Option<String>,
    /// For an incremental backup, SHA-256 (hex) of the parent's backup manifest as uploaded
    /// to the server: the chain is bound to that exact parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_manifest_sha256: Option<String>,
    /// The cluster's page size (`block_size`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Pages per relation segment file (`segment_size` / `block_size`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relseg_size: Option<u32>,
}

impl BackupRecord {
    /// Whether this is an incremental backup (it names a parent).
    pub fn is_incremental(&self) -> bool {
        self.parent.is_some()
    }
}

/// The most pages per relation segment file a record may give (128 GiB segments of 8 KiB
/// pages; PostgreSQL's default is 131 072, 1 GiB): bounds what one incremental file's header
/// can make a restore hold (4 bytes a page for its block numbers, one bit a page to find
/// duplicates).
pub const MAX_RELSEG_SIZE: u32 = 1 << 24;

/// The longest chain walseal restores: a full backup and this many incrementals after it
/// (`--full-every` keeps chains short; each link costs a stream during restore).
pub const MAX_CHAIN: usize = 400;

/// The chain `id` restores from, oldest (the full backup) first, ending with `id` itself.
///
/// # Errors
/// `NotFound` if `id` is not among `backups`; `Integrity` if a parent is missing (removed or
/// never completed), is not older than its child, belongs to another system or block size,
/// or the chain is longer than [`MAX_CHAIN`].
pub fn chain<'a>(backups: &'a [BackupRecord], id: &str) -> Result<Vec<&'a BackupRecord>> {
    let find = |id: &str| backups.iter().find(|b| b.id == id);
    let mut cur = find(id).ok_or_else(|| {
        Error::new(ErrorKind::NotFound, format!("no complete backup {id:?}"))
            .hint("run `walseal list` to see the backups")
    })?;
    let mut out = vec![cur];
    while let Some(parent) = &cur.parent {
        let broken = |why: String| {
            Error::new(
                ErrorKind::Integrity,
                format!("backup {id} cannot be restored: its chain is broken: {why}"),
            )
            .hint("restore an older complete chain (`walseal list` shows each backup's parent), and take a new full backup")
        };
        let p = find(parent).ok_or_else(|| {
            broken(format!(
                "backup {}'s parent {parent} is not in the repository (removed, or never completed)",
                cur.id
            ))
        })?;
        if p.id >= cur.id || p.stop_unix > cur.stop_unix {
            return Err(broken(format!(
                "parent {parent} is not older than {}",
                cur.id
            )));
        }
        // (A full backup of an older walseal has no recorded block size.)
        let other_geometry = p.block_size.is_some_and(|b| Some(b) != cur.block_size)
            || p.relseg_size.is_some_and(|r| Some(r) != cur.relseg_size);
        if p.system_identifier != cur.system_identifier || other_geometry {
            return Err(broken(format!(
                "parent {parent} belongs to another cluster than {}",
                cur.id
            )));
        }
        if out.len() > MAX_CHAIN {
            return Err(broken(format!("it is longer than {MAX_CHAIN} backups")));
        }
        out.push(p);
        cur = p;
    }
    out.reverse();
    Ok(out)
}

/// Loads one backup's record.
///
/// # Errors
/// `NotFound` if there is no record (no such backup, or an incomplete one); `Integrity`/`Key`
/// if it does not open.
pub async fn load_record(storage: &Storage, keyring: &Keyring, id: &str) -> Result<BackupRecord> {
    let key = record_key(id);
    let Some(sealed) = storage.get_bytes_max(&key, RECORD_MAX).await? else {
        let parts = storage.list(&format!("{BACKUPS}/{id}/")).await?;
        let msg = if parts.is_empty() {
            format!("no backup {id:?} in {}", storage.display())
        } else {
            format!(
                "backup {id} in {} is incomplete (interrupted before its record was written)",
                storage.display()
            )
        };
        return Err(Error::new(ErrorKind::NotFound, msg)
            .hint("run `walseal list` to see the complete backups"));
    };
    let plain = seal::open_to_vec(keyring, &key, &sealed).map_err(|e| e.into_error(&key))?;
    decode_record(&key, &plain)
}

/// Decodes and checks a backup record's plaintext (`key` names it in errors).
///
/// # Errors
/// `Integrity` if it is not a backup record walseal could have written.
pub fn decode_record(key: &str, bytes: &[u8]) -> Result<BackupRecord> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::Integrity,
            format!("{key}: unreadable backup record: {why}"),
        )
    };
    let record: BackupRecord = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if record.timeline == 0 || record.stop_timeline == 0 {
        return Err(bad("timeline 0 does not exist".into()));
    }
    match (record.format_version, record.parent.is_some()) {
        (1, false) | (2, true) => {}
        (1 | 2, _) => {
            return Err(bad(format!(
                "format {} does not match its parent field",
                record.format_version
            )))
        }
        (v, _) => {
            return Err(bad(format!(
                "record format {v} is newer than this walseal reads"
            ))
            .hint("upgrade walseal"))
        }
    }
    if record.is_incremental()
        && (record.parent_manifest_sha256.is_none()
            || !record
                .block_size
                .is_some_and(|b| b.is_power_of_two() && (1024..=32768).contains(&b))
            || !record
                .relseg_size
                .is_some_and(|r| r > 0 && r <= MAX_RELSEG_SIZE))
    {
        return Err(bad("an incremental backup without its parent's manifest digest, block size or segment size".into()));
    }
    Ok(record)
}

/// What the repository holds.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Complete backups, oldest first.
    pub backups: Vec<BackupRecord>,
    /// Ids of incomplete backups (parts without a record).
    pub incomplete: Vec<String>,
    /// Archived WAL per timeline.
    pub wal: Vec<TimelineWal>,
    /// The newest archived segment (highest timeline, then highest position).
    pub newest_segment: Option<String>,
}

/// Archived WAL on one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineWal {
    /// Timeline.
    pub timeline: u32,
    /// Oldest archived segment.
    pub first: String,
    /// Newest archived segment.
    pub last: String,
    /// Number of segments.
    pub segments: u64,
    /// Whether the timeline's `.history` file is archived (timeline 1 has none).
    pub history: bool,
}

/// Lists backups and WAL.
///
/// # Errors
/// Storage errors; records that do not open.
pub async fn list(storage: &Storage, keyring: &Keyring) -> Result<Listing> {
    let objects = storage.list(&format!("{BACKUPS}/")).await?;
    let mut ids: BTreeMap<String, bool> = BTreeMap::new();
    for (key, _) in &objects {
        let mut it = key.split('/');
        if let (Some(_), Some(id), Some(file)) = (it.next(), it.next(), it.next()) {
            let complete = ids.entry(id.to_string()).or_insert(false);
            *complete |= file == "backup.json";
        }
    }
    let mut backups = Vec::new();
    let mut incomplete = Vec::new();
    for (id, complete) in ids {
        if complete {
            backups.push(load_record(storage, keyring, &id).await?);
        } else {
            incomplete.push(id);
        }
    }
    backups.sort_by(|a, b| a.stop_unix.total_cmp(&b.stop_unix));
    let mut per_tl: BTreeMap<u32, TimelineWal> = BTreeMap::new();
    for (key, _) in storage.list("wal/").await? {
        let Some(wal) = key.rsplit('/').next().and_then(WalFile::parse) else {
            continue;
        };
        let entry = per_tl.entry(wal.timeline).or_insert_with(|| TimelineWal {
            timeline: wal.timeline,
            first: String::new(),
            last: String::new(),
            segments: 0,
            history: false,
        });
        match wal.kind {
            WalKind::Segment => {
                if entry.first.is_empty() || wal.name < entry.first {
                    entry.first.clone_from(&wal.name);
                }
                if wal.name > entry.last {
                    entry.last.clone_from(&wal.name);
                }
                entry.segments += 1;
            }
            WalKind::History => entry.history = true,
            _ => {}
        }
    }
    let wal: Vec<TimelineWal> = per_tl.into_values().collect();
    let newest_segment = wal
        .iter()
        .filter(|t| !t.last.is_empty())
        .map(|t| t.last.clone())
        .max();
    Ok(Listing {
        backups,
        incomplete,
        wal,
        newest_segment,
    })
}

/// Checks every part of every backup in `records` is in the repository at its recorded size
/// (one listing per backup).
///
/// # Errors
/// `Integrity` naming the first part missing or of another size; storage errors.
pub async fn parts_present(storage: &Storage, records: &[&BackupRecord]) -> Result<()> {
    for record in records {
        let present: std::collections::HashMap<String, u64> = storage
            .list(&format!("{BACKUPS}/{}/", record.id))
            .await?
            .into_iter()
            .collect();
        for part in record.archives.iter().flat_map(|a| &a.parts) {
            if present.get(&part.key) != Some(&part.stored) {
                let what = if present.contains_key(&part.key) {
                    "has another size than its record says"
                } else {
                    "is missing"
                };
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("part {} of backup {} {what}", part.key, record.id),
                )
                .hint("run `walseal verify`; restore an older complete backup"));
            }
        }
    }
    Ok(())
}

/// Reads a backup's manifest (its `backup_manifest` archive) into memory, unchecked.
///
/// # Errors
/// `Integrity` if the record lists no manifest; as [`read_archive`].
pub async fn read_manifest(
    storage: &Storage,
    keyring: &Keyring,
    record: &BackupRecord,
) -> Result<Vec<u8>> {
    let archive = record
        .archives
        .iter()
        .find(|a| a.name == "backup_manifest")
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!("backup {} has no manifest", record.id),
            )
        })?;
    read_archive(storage, keyring, archive).await
}

/// Reads a whole (small) archive into memory, e.g. the manifest.
///
/// # Errors
/// As [`fetch_part`]; `Integrity`/`Key` for parts that do not open.
pub async fn read_archive(
    storage: &Storage,
    keyring: &Keyring,
    archive: &Archive,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(archive.size).unwrap_or(0));
    for part in &archive.parts {
        let sealed = fetch_part(storage, part).await?;
        out.extend(
            seal::open_to_vec(keyring, &part.key, &sealed).map_err(|e| e.into_error(&part.key))?,
        );
    }
    Ok(out)
}

/// Downloads a backup part and checks it is the one the record names (payload SHA-256).
///
/// # Errors
/// `Integrity` if it is missing or another part; storage errors.
pub async fn fetch_part(storage: &Storage, part: &Part) -> Result<Vec<u8>> {
    let sealed = storage
        .get_bytes_max(&part.key, part.stored.saturating_add(seal::MAX_HEADER_LEN))
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!("backup part {} is missing from the repository", part.key),
            )
        })?;
    let sha = seal::payload_digest(&sealed).map_err(|e| e.into_error(&part.key))?;
    if sha != part.sha256 {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "backup part {} is not the part the backup record names (SHA-256 differs)",
                part.key
            ),
        ));
    }
    Ok(sealed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record as `walseal backup` writes it, with `wal_segment_size` and `timeline` given.
    pub(crate) fn record_json(size: u64, timeline: u32) -> String {
        format!(
            r#"{{"format_version":1,"id":"20261128T081500Z","label":"walseal 20261128T081500Z","system_identifier":"7301234567890123456","pg_version":"17.2","timeline":{timeline},"start_lsn":"0/2000028","stop_lsn":"0/2000138","stop_timeline":{timeline},"start_time":"2026-11-28 08:15:00.000000+00","stop_time":"2026-11-28 08:15:02.000000+00","stop_unix":1795853702.0,"wal_segment_size":{size},"size":1000,"stored":900,"archives":[{{"name":"base.tar","tablespace_oid":null,"location":"","size":1000,"parts":[{{"key":"backups/20261128T081500Z/base.tar.00000","size":1000,"stored":900,"sha256":"00"}}]}}]}}"#
        )
    }

    /// `record_json` made a chain link: `id`, its `parent` (format 2) or none (format 1).
    pub(crate) fn link(id: &str, parent: Option<&str>, stop_unix: f64) -> BackupRecord {
        let mut v: serde_json::Value = serde_json::from_str(&record_json(16 << 20, 1)).unwrap();
        v["id"] = id.into();
        v["stop_unix"] = stop_unix.into();
        if let Some(p) = parent {
            v["format_version"] = 2.into();
            v["parent"] = p.into();
            v["parent_manifest_sha256"] = "00".into();
            v["block_size"] = 8192.into();
            v["relseg_size"] = 131_072.into();
        }
        decode_record("k", v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn incremental_records_need_their_parent_fields_and_no_other_format_decodes() {
        let inc = serde_json::to_string(&link("20261128T081600Z", Some("20261128T081500Z"), 1.0))
            .unwrap();
        decode_record("k", inc.as_bytes()).unwrap();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&inc).unwrap();
            f(&mut v);
            decode_record("k", v.to_string().as_bytes()).map(|_| ())
        };
        assert!(edit(&|v| v["format_version"] = 1.into()).is_err());
        assert!(edit(&|v| v["format_version"] = 3.into()).is_err());
        assert!(edit(&|v| v["parent"] = serde_json::Value::Null).is_err());
        assert!(edit(&|v| v["parent_manifest_sha256"] = serde_json::Value::Null).is_err());
        assert!(edit(&|v| v["block_size"] = 1000.into()).is_err());
        assert!(edit(&|v| v["relseg_size"] = 0.into()).is_err());
        assert!(edit(&|v| v["relseg_size"] = (MAX_RELSEG_SIZE + 1).into()).is_err());
        edit(&|v| v["relseg_size"] = MAX_RELSEG_SIZE.into()).unwrap();
        // A format-1 record (full backup) with a parent is refused too.
        let mut full: serde_json::Value = serde_json::from_str(&record_json(16 << 20, 1)).unwrap();
        full["parent"] = "20261128T081400Z".into();
        assert!(decode_record("k", full.to_string().as_bytes()).is_err());
    }

    #[test]
    fn chains_end_at_a_full_backup_older_than_each_link() {
        let f = link("20261128T081500Z", None, 1.0);
        let a = link("20261128T081600Z", Some("20261128T081500Z"), 2.0);
        let b = link("20261128T081700Z", Some("20261128T081600Z"), 3.0);
        let all = vec![f.clone(), a.clone(), b.clone()];
        let ids: Vec<&str> = chain(&all, &b.id)
            .unwrap()
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(ids, [f.id.as_str(), a.id.as_str(), b.id.as_str()]);
        // The middle link removed: broken, naming it.
        let gap = vec![f.clone(), b.clone()];
        let e = chain(&gap, &b.id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("20261128T081600Z"), "{e}");
        // A parent that is not older (a forged loop) is refused.
        let newer = link("20261128T081800Z", Some("20261128T081700Z"), 4.0);
        let looped = link("20261128T081700Z", Some("20261128T081800Z"), 3.0);
        let e = chain(&[newer, looped.clone()], &looped.id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        // A parent of another cluster is refused.
        let mut other = f.clone();
        other.system_identifier = "1".into();
        assert!(chain(&[other, a.clone()], &a.id).is_err());
        assert_eq!(chain(&all, "nope").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn records_with_impossible_values_are_refused_at_decode() {
        let key = record_key("20261128T081500Z");
        for (size, tl) in [(0u64, 1u32), (3 << 20, 1), (2 << 30, 1), (16 << 20, 0)] {
            let e = decode_record(&key, record_json(size, tl).as_bytes()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{size} {tl}");
        }
        let r = decode_record(&key, record_json(16 << 20, 1).as_bytes()).unwrap();
        assert_eq!((r.wal_segment_size, r.timeline), (16 << 20, 1));
    }
}
