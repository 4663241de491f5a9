//! `walseal retain`: remove backups beyond the retention policy and the WAL no kept backup
//! needs.
//!
//! Kept: the newest `--keep-full` complete full backups, with the incrementals built on them;
//! with `--keep-days D`, every backup that ended in the last D days plus the newest one that
//! ended before that (so any time in the window stays recoverable). A backup either policy
//! keeps is kept; the newest complete backup is always kept; and so is every backup a kept
//! incremental needs (its chain back to its full backup). WAL is removed only below the oldest kept backup's start segment, on every
//! timeline (LSNs only grow across timelines, so no recovery from a kept backup can need it);
//! `.history` files are never removed. Parts of interrupted backups older than the newest
//! complete backup are removed too.
//!
//! Order is safe if interrupted: a backup's record goes first (it is then no longer listed),
//! then its parts; WAL goes oldest first.

use serde::Serialize;

use crate::catalog::{self, BACKUPS};
use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repository;
use crate::storage::Storage;
use crate::wal::{SegmentSize, WalFile, WalKind};

/// Retention policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Keep this many newest complete full backups (with their incrementals).
    pub keep_full: Option<usize>,
    /// Keep what is needed to recover to any time in the last this many days.
    pub keep_days: Option<f64>,
}

/// What retain removes (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Backups kept, oldest first.
    pub kept: Vec<String>,
    /// Backups removed.
    pub removed_backups: Vec<String>,
    /// Interrupted backups whose parts are removed.
    pub removed_incomplete: Vec<String>,
    /// Staging files of killed writers removed (local repositories).
    pub removed_staging_files: u64,
    /// WAL objects removed, oldest first.
    pub removed_wal: Vec<String>,
    /// Objects removed in all.
    pub removed_objects: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
}

pub use crate::catalog::INCOMPLETE_GRACE_SECS;

/// Which backups the policy keeps (`backups` oldest first): the newest `keep_full` full
/// backups and every incremental built on them; with `keep_days`, every backup that ended
/// in the window and the newest before it; the newest backup always; and every backup a kept
/// one needs to be restored (its chain back to its full backup).
pub fn keep_flags(backups: &[catalog::BackupRecord], policy: Policy, now: f64) -> Vec<bool> {
    let n = backups.len();
    let mut keep = vec![false; n];
    let root_of = |i: usize| {
        catalog::chain(backups, &backups[i].id)
            .ok()
            .and_then(|c| c.first().map(|r| r.id.clone()))
    };
    if let Some(k) = policy.keep_full {
        let fulls: Vec<&str> = backups
            .iter()
            .filter(|b| !b.is_incremental())
            .map(|b| b.id.as_str())
            .collect();
        let kept_fulls = &fulls[fulls.len().saturating_sub(k)..];
        for (i, flag) in keep.iter_mut().enumerate() {
            if root_of(i).is_some_and(|r| kept_fulls.contains(&r.as_str())) {
                *flag = true;
            }
        }
    }
    if let Some(days) = policy.keep_days {
        let cutoff = now - days * 86_400.0;
        let mut newest_before: Option<usize> = None;
        for (i, b) in backups.iter().enumerate() {
            if b.stop_unix >= cutoff {
                keep[i] = true;
            } else {
                newest_before = Some(i);
            }
        }
        if let Some(i) = newest_before {
            keep[i] = true;
        }
    }
    if let Some(last) = keep.last_mut() {
        *last = true;
    }
    // A kept backup's chain is kept with it.
    for i in (0..n).rev() {
        if !keep[i] {
            continue;
        }
        let mut parent = backups[i].parent.clone();
        while let Some(p) = parent {
            match backups.iter().position(|b| b.id == p) {
                Some(j) => {
                    keep[j] = true;
                    parent = backups[j].parent.clone();
                }
                None => break,
            }
        }
    }
    keep
}

/// Plans and (unless `dry_run`) applies the policy.
///
/// # Errors
/// `Usage` without a policy; storage errors.
pub async fn retain(
    storage: &Storage,
    keyring: &Keyring,
    policy: Policy,
    dry_run: bool,
) -> Result<Plan> {
    if policy.keep_full.is_none() && policy.keep_days.is_none() {
        return Err(Error::new(ErrorKind::Usage, "no retention policy given")
            .hint("pass --keep-full N and/or --keep-days D"));
    }
    if policy.keep_full == Some(0) {
        return Err(Error::new(
            ErrorKind::Usage,
            "--keep-full must be at least 1",
        ));
    }
    let listing = catalog::list(storage, keyring).await?;
    let backups = &listing.backups;
    let keep = keep_flags(backups, policy, crate::time::now());
    let objects = storage.list_meta("").await?;
    let size_of = |key: &str| objects.iter().find(|o| o.key == key).map_or(0, |o| o.size);
    let mut plan = Plan {
        dry_run,
        kept: backups
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(b, _)| b.id.clone())
            .collect(),
        removed_backups: backups
            .iter()
            .zip(&keep)
            .filter(|(_, k)| !**k)
            .map(|(b, _)| b.id.clone())
            .collect(),
        removed_incomplete: Vec::new(),
        removed_staging_files: 0,
        removed_wal: Vec::new(),
        removed_objects: 0,
        freed_bytes: 0,
    };
    if let Some(newest) = backups.last() {
        // An older backup may still be running (a slow one overtaken by a fast one): leave an
        // interrupted backup alone until none of its objects was written for a while.
        let now = crate::time::now();
        let last_write = |id: &str| {
            let prefix = format!("{BACKUPS}/{id}/");
            objects
                .iter()
                .filter(|o| o.key.starts_with(&prefix))
                .map(|o| o.modified)
                .fold(f64::MIN, f64::max)
        };
        plan.removed_incomplete = listing
            .incomplete
            .iter()
            .filter(|id| id.as_str() < newest.id.as_str())
            .filter(|id| now - last_write(id) > INCOMPLETE_GRACE_SECS)
            .cloned()
            .collect();
    }
    let oldest_kept = backups.iter().zip(&keep).find(|(_, k)| **k).map(|(b, _)| b);
    if let Some(oldest) = oldest_kept {
        let seg_size = repository::load(storage, keyring)
            .await?
            .map_or(oldest.wal_segment_size, |i| i.wal_segment_size);
        let seg_size = SegmentSize::new(seg_size)
            .map_err(|e| Error::new(ErrorKind::Integrity, e.to_string()))?;
        let min_seg = seg_size.segment_of(oldest.start_lsn);
        let mut wal: Vec<(u64, String)> = objects
            .iter()
            .filter_map(|o| {
                let w = o.key.rsplit('/').next().and_then(WalFile::parse)?;
                let segno = match w.kind {
                    WalKind::History => return None,
                    WalKind::Segment | WalKind::Partial => w.segment_in(seg_size)?,
                    WalKind::Backup => WalFile::parse(w.name.get(..24)?)?.segment_in(seg_size)?,
                };
                (segno < min_seg).then(|| (segno, o.key.clone()))
            })
            .collect();
        wal.sort();
        plan.removed_wal = wal.into_iter().map(|(_, k)| k).collect();
    }

    // Apply: records first, then parts; leftovers; WAL oldest first.
    let mut doomed: Vec<String> = Vec::new();
    for id in plan.removed_backups.iter().chain(&plan.removed_incomplete) {
        let record = catalog::record_key(id);
        if objects.iter().any(|o| o.key == record) {
            doomed.push(record.clone());
        }
        doomed.extend(
            objects
                .iter()
                .filter(|o| o.key.starts_with(&format!("{BACKUPS}/{id}/")) && o.key != record)
                .map(|o| o.key.clone()),
        );
    }
    doomed.extend(plan.removed_wal.iter().cloned());
    plan.removed_objects = doomed.len() as u64;
    plan.freed_bytes = doomed.iter().map(|k| size_of(k)).sum();
    if !dry_run {
        for key in &doomed {
            storage.delete(key).await?;
        }
    }
    // Local repositories: staging files of writers killed mid-write (never listed). In a
    // removed backup's directory all of them; elsewhere only old ones, as a running wal-push
    // or backup may be writing the newest.
    for id in plan.removed_backups.iter().chain(&plan.removed_incomplete) {
        plan.removed_staging_files +=
            storage.remove_stale_staging(&format!("{BACKUPS}/{id}/"), 0.0, true, dry_run)?;
    }
    for prefix in ["wal/", "backups/"] {
        plan.removed_staging_files +=
            storage.remove_stale_staging(prefix, INCOMPLETE_GRACE_SECS, false, dry_run)?;
    }
    // The local backend's part files of an interrupted staged upload (`…#N`, never listed).
    plan.removed_staging_files += storage.remove_stale_staging(
        crate::storage::STAGING,
        INCOMPLETE_GRACE_SECS,
        false,
        dry_run,
    )?;
    // Staged uploads of large objects that a killed writer left (every backend).
    plan.removed_staging_files += storage
        .remove_stale_uploads(INCOMPLETE_GRACE_SECS, dry_run)
        .await?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackupRecord;

    fn record(id: &str, stop_unix: f64, parent: Option<&str>) -> BackupRecord {
        crate::catalog::tests::link(id, parent, stop_unix)
    }

    #[test]
    fn chains_are_kept_whole_and_keep_full_counts_full_backups() {
        let day = 86_400.0;
        let b = vec![
            record("20261101T000000Z", 1.0 * day, None),
            record("20261102T000000Z", 2.0 * day, Some("20261101T000000Z")),
            record("20261103T000000Z", 3.0 * day, Some("20261102T000000Z")),
            record("20261108T000000Z", 8.0 * day, None),
            record("20261109T000000Z", 9.0 * day, Some("20261108T000000Z")),
        ];
        let keep = |p: Policy, now: f64| keep_flags(&b, p, now);
        let full = |k| Policy {
            keep_full: Some(k),
            keep_days: None,
        };
        assert_eq!(keep(full(1), 10.0 * day), [false, false, false, true, true]);
        assert_eq!(keep(full(2), 10.0 * day), [true; 5]);
        // The window reaches into the first chain's second incremental: its whole chain stays.
        let days = Policy {
            keep_full: None,
            keep_days: Some(6.5),
        };
        assert_eq!(keep(days, 9.0 * day), [true, true, true, true, true]);
        let days = Policy {
            keep_full: None,
            keep_days: Some(0.5),
        };
        // Only the newest backup ended in the window; the newest before it is the full one.
        assert_eq!(keep(days, 9.2 * day), [false, false, false, true, true]);
    }
}
