//! `walseal retain`: remove backups beyond the retention policy and the WAL no kept backup
//! needs.
//!
//! Kept: the newest `--keep-full` complete backups; with `--keep-days D`, every backup that
//! ended in the last D days plus the newest one that ended before that (so any time in the
//! window stays recoverable). A backup either policy keeps is kept; the newest complete backup
//! is always kept. WAL is removed only below the oldest kept backup's start segment, on every
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
use crate::wal::{WalFile, WalKind};

/// Retention policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Keep this many newest complete backups.
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
    /// WAL objects removed, oldest first.
    pub removed_wal: Vec<String>,
    /// Objects removed in all.
    pub removed_objects: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
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
    let n = backups.len();
    let mut keep = vec![false; n];
    if let Some(k) = policy.keep_full {
        for flag in keep.iter_mut().skip(n.saturating_sub(k)) {
            *flag = true;
        }
    }
    if let Some(days) = policy.keep_days {
        let cutoff = crate::time::now() - days * 86_400.0;
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
        removed_wal: Vec::new(),
        removed_objects: 0,
        freed_bytes: 0,
    };
    if let Some(newest) = backups.last() {
        plan.removed_incomplete = listing
            .incomplete
            .iter()
            .filter(|id| id.as_str() < newest.id.as_str())
            .cloned()
            .collect();
    }
    let oldest_kept = backups.iter().zip(&keep).find(|(_, k)| **k).map(|(b, _)| b);
    if let Some(oldest) = oldest_kept {
        let seg_size = repository::load(storage, keyring)
            .await?
            .map_or(oldest.wal_segment_size, |i| i.wal_segment_size);
        let min_seg = oldest.start_lsn.0 / seg_size;
        let mut wal: Vec<(u64, String)> = objects
            .iter()
            .filter_map(|o| {
                let w = o.key.rsplit('/').next().and_then(WalFile::parse)?;
                let segno = match w.kind {
                    WalKind::History => return None,
                    WalKind::Segment | WalKind::Partial => w.segment_number(seg_size)?,
                    WalKind::Backup => WalFile::parse(&w.name[..24])?.segment_number(seg_size)?,
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
    Ok(plan)
}
