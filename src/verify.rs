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

/// A run of consecutive missing segments on one timeline (or a missing `.history` file).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gap {
    /// The timeline.
    pub timeline: u32,
    /// The first missing segment (or the `.history` file).
    pub first: String,
    /// The last missing segment of the run.
    pub last: String,
    /// How many segments are missing in the run.
    pub count: u64,
}

/// The recoverable window of one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Backup id.
    pub backup: String,
    /// The backups a restore of it reads, oldest (its full backup) first, ending with it;
    /// empty if its chain is broken.
    pub chain: Vec<String>,
    /// Whether its chain is whole and the WAL from its start to its stop is all archived.
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
    /// Missing WAL as runs of consecutive segments (at most 1000 listed).
    pub missing_ranges: Vec<Gap>,
    /// Number of missing segments.
    pub missing_count: u64,
    /// Objects that failed to authenticate or are malformed.
    pub failed_objects: Vec<Problem>,
    /// Objects sealed under key ids not in the keyring.
    pub unknown_key_objects: Vec<Problem>,
    /// Backup records that do not match their parts.
    pub backup_problems: Vec<Problem>,
    /// Objects in format 1 (bound to no repository, unsigned), read because allow_legacy is
    /// set; `walseal rekey` converts them. Listed, not counted as problems.
    pub legacy_objects: Vec<String>,
    /// Backups with parts but no record, untouched for 6 hours (interrupted).
    pub incomplete_backups: Vec<String>,
    /// Backups with parts but no record whose last part is recent: running, most likely
    /// (`retain` leaves them alone too). Listed, not counted as problems.
    pub backups_in_progress: Vec<String>,
    /// Per backup: the window it can be restored to.
    pub windows: Vec<Window>,
}

impl Report {
    /// A report with nothing found yet.
    fn empty(repository: &str, authenticated: bool) -> Report {
        Report {
            ok: true,
            repository: repository.to_string(),
            authenticated,
            objects: 0,
            bytes: 0,
            backups: 0,
            missing_segments: Vec::new(),
            missing_ranges: Vec::new(),
            missing_count: 0,
            failed_objects: Vec::new(),
            unknown_key_objects: Vec::new(),
            backup_problems: Vec::new(),
            legacy_objects: Vec::new(),
            incomplete_backups: Vec::new(),
            backups_in_progress: Vec::new(),
            windows: Vec::new(),
        }
    }
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
    let mut report = Report::empty(storage.display(), !quick);
    report.objects = objects.len() as u64;
    report.bytes = objects.iter().map(|o| o.size).sum();
    report.backups = listing.backups.len() as u64;
    // A backup running now has parts and no record yet: not a problem until it is quiet.
    let now = crate::time::now();
    for id in &listing.incomplete {
        let prefix = format!("{}/{id}/", catalog::BACKUPS);
        let newest = objects
            .iter()
            .filter(|o| o.key.starts_with(&prefix))
            .map(|o| o.modified)
            .fold(f64::MIN, f64::max);
        // Its id is its start time, bound into every part's name: a part whose modification
        // time a bucket writer refreshes cannot keep a leftover "running" for more than a day.
        let started = id_start(id).filter(|t| now - t < MAX_RUNNING_SECS && *t <= now + 300.0);
        if now - newest < catalog::INCOMPLETE_GRACE_SECS && started.is_some() {
            report.backups_in_progress.push(id.clone());
        } else {
            report.incomplete_backups.push(id.clone());
        }
    }

    // Authenticate every object (or, with --quick, only the history files we need).
    let by_key: HashMap<&str, &ObjectInfo> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let to_read: Vec<String> = objects
        .iter()
        .filter(|o| !o.key.starts_with("status/") || !quick)
        .filter(|o| {
            o.key != repository::PLAIN_IDENTITY_KEY && o.key != crate::repo::PLAIN_RECORD_KEY
        })
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
                if opened.legacy {
                    report.legacy_objects.push(key.clone());
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

    // Chains: every parent there, and (unless --quick) each one the very parent its
    // incremental was taken against.
    for b in &listing.backups {
        let parent = match catalog::chain(&listing.backups, &b.id) {
            Err(e) => {
                report.backup_problems.push(Problem {
                    object: catalog::record_key(&b.id),
                    reason: e.to_string(),
                });
                continue;
            }
            Ok(c) if c.len() > 1 && !quick => c[c.len() - 2],
            Ok(_) => continue,
        };
        let bytes = catalog::read_manifest(storage, &keyring, parent).await.ok();
        let bound = bytes.is_some_and(|bytes| {
            let sum = ring::digest::digest(&ring::digest::SHA256, &bytes);
            b.parent_manifest_sha256.as_deref()
                == Some(crate::keys::hex_encode(sum.as_ref()).as_str())
        });
        if !bound {
            report.backup_problems.push(Problem {
                object: catalog::record_key(&b.id),
                reason: format!(
                    "incremental backup {}: its parent {}'s manifest does not open or is not the one it was taken against",
                    b.id, parent.id
                ),
            });
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
    /// Format 1 (opened because allow_legacy is set).
    legacy: bool,
}

/// Fetches and authenticates one object to its end, keeping only its SHA-256 (and the content
/// of `.history` files).
async fn open_object(
    storage: &Storage,
    keyring: Arc<Keyring>,
    key: &str,
) -> Result<std::result::Result<Opened, SealError>> {
    let Some(object) = storage.get(key).await? else {
        return Ok(Err(SealError::Truncated));
    };
    // Streamed: an object of any size costs a chunk and a read buffer of memory.
    let mut source = object.into_blocking_reader();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let r = authenticate(&mut source, &keyring, &key);
        // A storage failure mid-read is the storage's, not damage to the object.
        match source.take_error() {
            Some(e) => Err(e),
            None => Ok(r),
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("verify task failed: {e}")))?
}

/// Reads one object to its end through the keyring; see [`open_object`].
fn authenticate(
    source: &mut impl Read,
    keyring: &Keyring,
    key: &str,
) -> std::result::Result<Opened, SealError> {
    let mut reader = seal::open(source, keyring, key)?.digesting_payload();
    let keep = key.ends_with(".history");
    let legacy = reader.header().version == seal::VERSION_1;
    // A content digest (push-only hosts compare re-pushes with it) must match the content.
    let mut digest = reader
        .header()
        .slots
        .iter()
        .filter(|s| s.kind == seal::SlotKind::ContentDigest as u8)
        .find_map(|s| match keyring.sealer(&s.key_id) {
            Some(crate::keys::Sealer::Recipient(r)) => Some((s.body.clone(), r.content_digest())),
            _ => None,
        });
    let mut history = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(seal_error_from_io)?;
        if n == 0 {
            break;
        }
        if keep {
            if history.len() + n > MAX_HISTORY {
                return Err(SealError::Malformed(
                    "a timeline history file larger than PostgreSQL writes",
                ));
            }
            history.extend_from_slice(&buf[..n]);
        }
        if let Some((_, d)) = digest.as_mut() {
            d.update(&buf[..n]);
        }
    }
    if let Some((stated, d)) = digest {
        if d.finish()[..] != stated[..] {
            return Err(SealError::Malformed(
                "its content digest does not match its content",
            ));
        }
    }
    let sha256 = reader
        .payload_sha256()
        .map(|d| crate::keys::hex_encode(&d))
        .ok_or(SealError::Truncated)?;
    Ok(Opened {
        sha256,
        history,
        legacy,
    })
}

/// No backup runs longer than this: a record-less backup started earlier is interrupted.
const MAX_RUNNING_SECS: f64 = 24.0 * 3600.0;

/// The start time (Unix seconds) of a backup id `YYYYMMDDTHHMMSSZ`.
fn id_start(id: &str) -> Option<f64> {
    let b = id.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !id.is_ascii() {
        return None;
    }
    crate::time::parse(&format!(
        "{}-{}-{} {}:{}:{}",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    ))
}

/// A `.history` file is a line per earlier timeline: 16 MiB is far more than any holds.
const MAX_HISTORY: usize = 16 << 20;

/// At most this many missing segments (and ranges) are listed by name.
const MAX_LISTED: usize = 1000;

/// Checks one object key under `wal/` (`<timeline>/<file>`, the prefix removed) against the
/// names PostgreSQL writes for `size`-byte segments: `Some((timeline, segment number))` for a
/// full segment, `None` for the other kinds.
///
/// # Errors
/// Why the name is not one walseal stores.
pub fn listed_wal(key: &str, size: SegmentSize) -> std::result::Result<Option<(u32, u64)>, String> {
    let (dir, name) = key
        .split_once('/')
        .ok_or_else(|| "not under a timeline directory".to_string())?;
    let w = WalFile::parse(name).ok_or_else(|| "not a WAL file name".to_string())?;
    if dir != format!("{:08X}", w.timeline) {
        return Err(format!(
            "a file of timeline {} stored under wal/{dir}/",
            w.timeline
        ));
    }
    let segment = match w.kind {
        WalKind::History => return Ok(None),
        WalKind::Segment | WalKind::Partial => w.segment_in(size),
        WalKind::Backup => name
            .get(..24)
            .and_then(WalFile::parse)
            .and_then(|s| s.segment_in(size)),
    };
    let n = segment.ok_or_else(|| {
        format!(
            "not a segment name a server with {}-byte segments writes",
            size.bytes()
        )
    })?;
    Ok((w.kind == WalKind::Segment).then_some((w.timeline, n)))
}

/// The runs of segment numbers in `first..=last` that are not in `present`, as inclusive
/// ranges. Costs one step per present segment, whatever the distance between them.
pub fn gaps(present: Option<&BTreeSet<u64>>, first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    let mut next = first;
    for &n in present.into_iter().flat_map(|s| s.range(first..=last)) {
        if n > next {
            out.push((next, n - 1));
        }
        match n.checked_add(1) {
            Some(m) => next = m,
            None => return out,
        }
    }
    if next <= last {
        out.push((next, last));
    }
    out
}

/// The last segment of the unbroken run starting at `first`, if `first` is there.
fn reached(present: Option<&BTreeSet<u64>>, first: u64) -> Option<u64> {
    let mut last = None;
    let mut expect = Some(first);
    for &n in present.into_iter().flat_map(|s| s.range(first..)) {
        if Some(n) != expect {
            break;
        }
        last = Some(n);
        expect = n.checked_add(1);
    }
    last
}

type Segments = (BTreeMap<u32, BTreeSet<u64>>, HashMap<(u32, u64), f64>);

/// Segment numbers per timeline and when each was written; names walseal would not have
/// stored are reported as problems and left out.
fn archived_segments(objects: &[ObjectInfo], size: SegmentSize, report: &mut Report) -> Segments {
    let mut segs: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut modified = HashMap::new();
    for o in objects {
        let Some(rest) = o.key.strip_prefix("wal/") else {
            continue;
        };
        match listed_wal(rest, size) {
            Ok(Some((tl, n))) => {
                segs.entry(tl).or_default().insert(n);
                modified.insert((tl, n), o.modified);
            }
            Ok(None) => {}
            Err(reason) => report.failed_objects.push(Problem {
                object: o.key.clone(),
                reason,
            }),
        }
    }
    (segs, modified)
}

/// Counts the segments missing from `first..=last` on `tl`, listing the first of them.
fn report_gaps(
    tl: u32,
    present: Option<&BTreeSet<u64>>,
    (first, last): (u64, u64),
    size: SegmentSize,
    report: &mut Report,
) {
    for (a, b) in gaps(present, first, last) {
        let count = (b - a).saturating_add(1);
        report.missing_count = report.missing_count.saturating_add(count);
        if report.missing_ranges.len() < MAX_LISTED {
            report.missing_ranges.push(Gap {
                timeline: tl,
                first: segment_name(tl, a, size),
                last: segment_name(tl, b, size),
                count,
            });
        }
        let room = MAX_LISTED.saturating_sub(report.missing_segments.len()) as u64;
        if room > 0 {
            let end = b.min(a.saturating_add(room - 1));
            for n in a..=end {
                report.missing_segments.push(segment_name(tl, n, size));
            }
        }
    }
}

/// Where each timeline must start and reach: the oldest backup's start on its own timeline;
/// a child timeline starts at its switch point; each reaches its newest segment, and a parent
/// at least the segment before its child's switch point.
fn required_ranges(
    segs: &BTreeMap<u32, BTreeSet<u64>>,
    oldest: &BackupRecord,
    histories: &BTreeMap<u32, Vec<HistoryEntry>>,
    size: SegmentSize,
    report: &mut Report,
) -> BTreeMap<u32, (u64, u64)> {
    let mut required: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let start_seg = size.segment_of(oldest.start_lsn);
    let newest_tl = segs
        .keys()
        .copied()
        .max()
        .unwrap_or(oldest.timeline)
        .max(oldest.timeline);
    for (&tl, set) in segs.range(oldest.timeline..) {
        let first = if tl == oldest.timeline {
            start_seg
        } else if let Some(e) = histories.get(&tl).and_then(|h| h.last()) {
            size.segment_of(e.switch)
        } else {
            let name = format!("{tl:08X}.history");
            report.missing_count = report.missing_count.saturating_add(1);
            report.missing_segments.push(name.clone());
            report.missing_ranges.push(Gap {
                timeline: tl,
                first: name.clone(),
                last: name,
                count: 1,
            });
            set.first().copied().unwrap_or(0)
        };
        let last = set.last().copied().unwrap_or(first);
        required.insert(tl, (first, last));
    }
    for (&child, entries) in histories.range(..=newest_tl) {
        let Some(e) = entries.last() else { continue };
        let parent_needs_to = if e.switch.0 % size.bytes() == 0 {
            size.segment_of(Lsn(e.switch.0.saturating_sub(1)))
        } else {
            size.segment_of(e.switch).saturating_sub(1)
        };
        if e.parent >= oldest.timeline && e.parent != child {
            let from = if e.parent == oldest.timeline {
                start_seg
            } else {
                parent_needs_to
            };
            let entry = required.entry(e.parent).or_insert((from, parent_needs_to));
            entry.1 = entry.1.max(parent_needs_to);
        }
    }
    required
}

/// WAL continuity per timeline, and each backup's recoverable window.
fn continuity(
    objects: &[ObjectInfo],
    backups: &[BackupRecord],
    histories: &BTreeMap<u32, Vec<HistoryEntry>>,
    size: SegmentSize,
    report: &mut Report,
) {
    let (segs, modified) = archived_segments(objects, size, report);
    let Some(oldest) = backups.first() else {
        return;
    };
    for (tl, range) in required_ranges(&segs, oldest, histories, size, report) {
        report_gaps(tl, segs.get(&tl), range, size, report);
    }
    for b in backups {
        let set = segs.get(&b.timeline);
        let first = size.segment_of(b.start_lsn);
        let stop = size.segment_of(Lsn(b.stop_lsn.0.saturating_sub(1)));
        let reached = reached(set, first);
        let chain: Vec<String> = catalog::chain(backups, &b.id)
            .map(|c| c.iter().map(|r| r.id.clone()).collect())
            .unwrap_or_default();
        report.windows.push(Window {
            backup: b.id.clone(),
            restorable: reached.is_some_and(|r| r >= stop) && !chain.is_empty(),
            chain,
            earliest: b.stop_time.clone(),
            latest_segment: reached.map(|r| segment_name(b.timeline, r, size)),
            latest: reached
                .and_then(|r| modified.get(&(b.timeline, r)))
                .map(|t| crate::time::format_pg(*t)),
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backup_ids_give_their_start_time() {
        let t = super::id_start("20261201T120000Z").unwrap();
        assert_eq!(crate::time::format_id(t), "20261201T120000Z");
        assert!(super::id_start("2026120xT120000Z").is_none());
        assert!(super::id_start("20261201T1200é0Z").is_none());
        assert!(super::id_start("").is_none());
    }

    use super::*;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 0,
            modified: 0.0,
        }
    }

    #[test]
    fn gaps_are_ranges() {
        let set: BTreeSet<u64> = [2, 3, 7, 9].into();
        assert_eq!(
            gaps(Some(&set), 0, 10),
            vec![(0, 1), (4, 6), (8, 8), (10, 10)]
        );
        assert_eq!(gaps(Some(&set), 2, 3), vec![]);
        assert_eq!(gaps(Some(&set), 5, 4), vec![]);
        assert_eq!(gaps(None, 0, u64::MAX), vec![(0, u64::MAX)]);
        let top: BTreeSet<u64> = [u64::MAX].into();
        assert_eq!(
            gaps(Some(&top), u64::MAX - 2, u64::MAX),
            vec![(u64::MAX - 2, u64::MAX - 1)]
        );
        assert_eq!(reached(Some(&set), 2), Some(3));
        assert_eq!(reached(Some(&set), 4), None);
        assert_eq!(reached(Some(&top), u64::MAX), Some(u64::MAX));
    }

    #[test]
    fn far_and_bogus_segment_names_are_counted_not_walked() {
        let record: BackupRecord =
            serde_json::from_str(&crate::catalog::tests::record_json(16 << 20, 1)).unwrap();
        let bogus = [
            // Not names a 16 MiB server writes (low part above 0xFF).
            "wal/0000FFFF/0000FFFF0000FFFF0000FFFF",
            "wal/00000001/00000001FFFFFFFFFFFFFFFF",
            // Under another timeline's directory.
            "wal/00000002/000000010000000000000003",
            "wal/00000001/not-a-wal-file",
        ];
        let mut objects = vec![
            obj("wal/00000001/000000010000000000000002"),
            obj("wal/00000001/000000010000000000000004"),
            // The very last segment of the 64-bit WAL space.
            obj("wal/00000001/00000001FFFFFFFF000000FF"),
        ];
        objects.extend(bogus.iter().map(|k| obj(k)));
        let mut report = Report::empty("test", true);
        let started = std::time::Instant::now();
        continuity(
            &objects,
            &[record],
            &BTreeMap::new(),
            SegmentSize::DEFAULT,
            &mut report,
        );
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        let last = 0xFFFF_FFFFu64 * 256 + 0xFF;
        // 3 is missing, and everything from 5 to the one before the last.
        assert_eq!(report.missing_count, 1 + (last - 5));
        assert_eq!(report.missing_segments.len(), 1000);
        assert_eq!(report.missing_segments[0], "000000010000000000000003");
        assert_eq!(report.missing_segments[1], "000000010000000000000005");
        for b in bogus {
            assert!(
                report.failed_objects.iter().any(|p| p.object == b),
                "{b} not reported: {:?}",
                report.failed_objects
            );
        }
        assert_eq!(
            report.windows[0].latest_segment.as_deref(),
            Some("000000010000000000000002")
        );
        let ranges: Vec<(&str, &str, u64)> = report
            .missing_ranges
            .iter()
            .map(|g| (g.first.as_str(), g.last.as_str(), g.count))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("000000010000000000000003", "000000010000000000000003", 1),
                (
                    "000000010000000000000005",
                    "00000001FFFFFFFF000000FE",
                    last - 5
                ),
            ]
        );
    }
}
