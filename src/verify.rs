//! `walseal verify`: prove the repository is complete and authentic.
//!
//! Lists everything, opens and authenticates every object in parallel (plaintext is read and
//! dropped, never written), checks each backup's record against its parts (present, same size,
//! same SHA-256), and checks WAL continuity per timeline from the oldest backup's start to the
//! newest archived segment, following `.history` files across timeline switches. `--quick`
//! skips reading bodies (continuity and listing only; `.history` files are still read).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::catalog::{self, BackupRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repository;
use crate::seal::{self, seal_error_from_io, SealError};
use crate::storage::{ObjectInfo, Storage};
use crate::wal::{parse_history, segment_name, HistoryEntry, Lsn, SegmentSize, WalFile, WalKind};

/// Key of the sealed result of the last verify run (read by `status`).
pub const LAST_VERIFY_KEY: &str = "status/verify.json";

/// One problem, by object name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The object (or segment) concerned.
    pub object: String,
    /// What is wrong.
    pub reason: String,
}

/// The recoverable window of one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Backup id.
    pub backup: String,
    /// Whether the WAL from the backup's start to its stop is all archived.
    pub restorable: bool,
    /// Earliest time it can be restored to (the backup's end).
    pub earliest: String,
    /// The last archived segment reachable without a gap from the backup's start.
    pub latest_segment: Option<String>,
    /// Approximate latest time it can be restored to: when that segment was archived.
    pub latest: Option<String>,
}

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when nothing is wrong.
    pub ok: bool,
    /// The repository.
    pub repository: String,
    /// Whether bodies were read (`false` with `--quick`).
    pub authenticated: bool,
    /// Objects listed.
    pub objects: u64,
    /// Bytes listed.
    pub bytes: u64,
    /// Complete backups.
    pub backups: u64,
    /// Missing WAL segments, by name (at most 1000 listed).
    pub missing_segments: Vec<String>,
    /// Number of missing segments.
    pub missing_count: u64,
    /// Objects that failed to authenticate or are malformed.
    pub failed_objects: Vec<Problem>,
    /// Objects sealed under key ids not in the keyring.
    pub unknown_key_objects: Vec<Problem>,
    /// Backup records that do not match their parts.
    pub backup_problems: Vec<Problem>,
    /// Backups with parts but no record (interrupted).
    pub incomplete_backups: Vec<String>,
    /// Per backup: the window it can be restored to.
    pub windows: Vec<Window>,
}

/// Runs verify.
///
/// # Errors
/// Storage and configuration errors; problems found are in the report, not errors.
pub async fn verify(
    storage: &Storage,
    keyring: Arc<Keyring>,
    quick: bool,
    jobs: usize,
) -> Result<Report> {
    keyring.require_open("verify")?;
    let objects = storage.list_meta("").await?;
    let identity = repository::load(storage, &keyring).await?;
    let mut plain_identity_problem = None;
    if let Some(id) = &identity {
        // The plain copy push-only hosts check against must say the same (and exist).
        let plain = match repository::load_plain(storage).await {
            Ok(Some(p)) => Some(p),
            Ok(None) => Some(repository::ensure_plain(storage, id).await?),
            Err(e) => {
                plain_identity_problem = Some(e.to_string());
                None
            }
        };
        if plain.is_some_and(|p| p != *id) {
            plain_identity_problem = Some(format!(
                "{} disagrees with {}: push-only hosts check against a wrong identity",
                repository::PLAIN_IDENTITY_KEY,
                repository::IDENTITY_KEY
            ));
        }
    }
    let seg_size = match &identity {
        Some(i) => SegmentSize::new(i.wal_segment_size)
            .map_err(|e| Error::new(ErrorKind::Integrity, e.to_string()))?,
        None => SegmentSize::DEFAULT,
    };
    let listing = catalog::list(storage, &keyring).await?;
    let mut report = Report {
        ok: true,
        repository: storage.display().to_string(),
        authenticated: !quick,
        objects: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
        backups: listing.backups.len() as u64,
        missing_segments: Vec::new(),
        missing_count: 0,
        failed_objects: Vec::new(),
        unknown_key_objects: Vec::new(),
        backup_problems: Vec::new(),
        incomplete_backups: listing.incomplete.clone(),
        windows: Vec::new(),
    };

    // Authenticate every object (or, with --quick, only the history files we need).
    let by_key: HashMap<&str, &ObjectInfo> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let to_read: Vec<String> = objects
        .iter()
        .filter(|o| !o.key.starts_with("status/") || !quick)
        .filter(|o| o.key != repository::PLAIN_IDENTITY_KEY)
        .filter(|o| !quick || o.key.ends_with(".history"))
        .map(|o| o.key.clone())
        .collect();
    let results: Vec<(String, std::result::Result<Opened, SealError>)> =
        futures::stream::iter(to_read)
            .map(|key| {
                let storage = storage.clone();
                let keyring = keyring.clone();
                async move {
                    let r = open_object(&storage, keyring, &key).await;
                    r.map(|r| (key, r))
                }
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
    let mut digests: HashMap<String, String> = HashMap::new();
    let mut histories: BTreeMap<u32, Vec<HistoryEntry>> = BTreeMap::new();
    for (key, r) in results {
        match r {
            Ok(opened) => {
                if let Some(w) = key
                    .rsplit('/')
                    .next()
                    .and_then(WalFile::parse)
                    .filter(|w| w.kind == WalKind::History)
                {
                    histories.insert(
                        w.timeline,
                        parse_history(&String::from_utf8_lossy(&opened.history)),
                    );
                }
                digests.insert(key, opened.sha256);
            }
            Err(SealError::UnknownKey(ids)) => report.unknown_key_objects.push(Problem {
                object: key,
                reason: format!("sealed under key id {ids}, not in the keyring"),
            }),
            Err(e) => report.failed_objects.push(Problem {
                object: key,
                reason: e.to_string(),
            }),
        }
    }

    if let Some(reason) = plain_identity_problem {
        report.failed_objects.push(Problem {
            object: repository::PLAIN_IDENTITY_KEY.into(),
            reason,
        });
    }

    // Backup records against their parts (and the repository's identity).
    for b in &listing.backups {
        if let Some(id) = &identity {
            if id.system_identifier != b.system_identifier {
                report.backup_problems.push(Problem {
                    object: catalog::record_key(&b.id),
                    reason: format!(
                        "backup of system {}, but the repository belongs to system {}",
                        b.system_identifier, id.system_identifier
                    ),
                });
            }
        }
        for part in b.archives.iter().flat_map(|a| &a.parts) {
            match by_key.get(part.key.as_str()) {
                None => report.backup_problems.push(Problem {
                    object: part.key.clone(),
                    reason: format!("part of backup {} is missing", b.id),
                }),
                Some(o) if o.size != part.stored => report.backup_problems.push(Problem {
                    object: part.key.clone(),
                    reason: format!(
                        "part of backup {} has {} bytes, the record says {}",
                        b.id, o.size, part.stored
                    ),
                }),
                Some(_) => {
                    if let Some(d) = digests.get(&part.key) {
                        if *d != part.sha256 {
                            report.backup_problems.push(Problem { object: part.key.clone(), reason: format!("part of backup {} is not the part its record names (SHA-256 differs)", b.id) });
                        }
                    }
                }
            }
        }
    }

    continuity(
        &objects,
        &listing.backups,
        &histories,
        seg_size,
        &mut report,
    );
    report.ok = report.missing_count == 0
        && report.failed_objects.is_empty()
        && report.unknown_key_objects.is_empty()
        && report.backup_problems.is_empty()
        && report.incomplete_backups.is_empty();
    Ok(report)
}

struct Opened {
    sha256: String,
    history: Vec<u8>,
}

/// Fetches and authenticates one object to its end, keeping only its SHA-256 (and the content
/// of `.history` files).
async fn open_object(
    storage: &Storage,
    keyring: Arc<Keyring>,
    key: &str,
) -> Result<std::result::Result<Opened, SealError>> {
    let Some(sealed) = storage.get_bytes(key).await? else {
        return Ok(Err(SealError::Truncated));
    };
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let sha256 = match seal::payload_digest(&sealed) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let mut reader = match seal::open(&sealed[..], &keyring, &key) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let keep = key.ends_with(".history");
        // A content digest (push-only hosts compare re-pushes with it) must match the content.
        let mut digest = reader
            .header()
            .slots
            .iter()
            .filter(|s| s.kind == seal::SlotKind::ContentDigest as u8)
            .find_map(|s| match keyring.sealer(&s.key_id) {
                Some(crate::keys::Sealer::Recipient(r)) => {
                    Some((s.body.clone(), r.content_digest()))
                }
                _ => None,
            });
        let mut history = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if keep {
                        history.extend_from_slice(&buf[..n]);
                    }
                    if let Some((_, d)) = digest.as_mut() {
                        d.update(&buf[..n]);
                    }
                }
                Err(e) => return Ok(Err(seal_error_from_io(e))),
            }
        }
        if let Some((stated, d)) = digest {
            if d.finish()[..] != stated[..] {
                return Ok(Err(SealError::Malformed(
                    "its content digest does not match its content",
                )));
            }
        }
        Ok(Ok(Opened { sha256, history }))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("verify task failed: {e}")))?
}

/// Segment numbers per timeline, and WAL continuity checks.
fn continuity(
    objects: &[ObjectInfo],
    backups: &[BackupRecord],
    histories: &BTreeMap<u32, Vec<HistoryEntry>>,
    size: SegmentSize,
    report: &mut Report,
) {
    let seg_size = size.bytes();
    let mut segs: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut modified: HashMap<(u32, u64), f64> = HashMap::new();
    for o in objects {
        if let Some(w) = o.key.rsplit('/').next().and_then(WalFile::parse) {
            if w.kind == WalKind::Segment {
                if let Some(n) = w.segment_in(size) {
                    segs.entry(w.timeline).or_default().insert(n);
                    modified.insert((w.timeline, n), o.modified);
                }
            }
        }
    }
    let Some(oldest) = backups.first() else {
        return;
    };
    // Where each timeline must start: the oldest backup's start on its own timeline; a child
    // timeline starts at its switch point. Where each must reach: the newest segment on it, and
    // at least up to the segment before a child's switch point.
    let mut required: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let start_seg = oldest.start_lsn.0 / seg_size;
    let newest_tl = segs
        .keys()
        .copied()
        .max()
        .unwrap_or(oldest.timeline)
        .max(oldest.timeline);
    for (&tl, set) in &segs {
        if tl < oldest.timeline {
            continue;
        }
        let first = if tl == oldest.timeline {
            start_seg
        } else {
            match histories.get(&tl).and_then(|h| h.last()) {
                Some(e) => e.switch.0 / seg_size,
                None => {
                    report.missing_segments.push(format!("{tl:08X}.history"));
                    report.missing_count += 1;
                    *set.iter().next().unwrap_or(&0)
                }
            }
        };
        let last = set.iter().next_back().copied().unwrap_or(first);
        required.insert(tl, (first, last));
    }
    for (&child, entries) in histories {
        if child > newest_tl {
            continue;
        }
        if let Some(e) = entries.last() {
            let need = (e.switch.0.saturating_sub(1)) / seg_size;
            let parent_needs_to = if e.switch.0 % seg_size == 0 {
                need
            } else {
                (e.switch.0 / seg_size).saturating_sub(1)
            };
            if e.parent >= oldest.timeline {
                let entry = required.entry(e.parent).or_insert((
                    if e.parent == oldest.timeline {
                        start_seg
                    } else {
                        parent_needs_to
                    },
                    parent_needs_to,
                ));
                entry.1 = entry.1.max(parent_needs_to);
            }
        }
    }
    for (&tl, &(first, last)) in &required {
        let have = segs.get(&tl);
        for n in first..=last {
            if !have.is_some_and(|s| s.contains(&n)) {
                report.missing_count += 1;
                if report.missing_segments.len() < 1000 {
                    report.missing_segments.push(segment_name(tl, n, size));
                }
            }
        }
    }
    for b in backups {
        let set = segs.get(&b.timeline);
        let first = b.start_lsn.0 / seg_size;
        let stop = Lsn(b.stop_lsn.0).0.saturating_sub(1) / seg_size;
        let mut n = first;
        while set.is_some_and(|s| s.contains(&n)) {
            n += 1;
        }
        let reached = (n > first).then(|| n - 1);
        report.windows.push(Window {
            backup: b.id.clone(),
            restorable: reached.is_some_and(|r| r >= stop),
            earliest: b.stop_time.clone(),
            latest_segment: reached.map(|r| segment_name(b.timeline, r, size)),
            latest: reached
                .and_then(|r| modified.get(&(b.timeline, r)))
                .map(|t| crate::time::format_pg(*t)),
        });
    }
}
