//! `walseal status`: what monitoring alerts on — newest archived segment and its age, archive
//! lag against the cluster (when it can connect), number and age of backups, repository size,
//! and the last verify result. As a table, JSON, or the Prometheus text format that
//! node_exporter's textfile collector reads.

use serde::Serialize;

use crate::backup::conn::Conn;
use crate::backup::conninfo;
use crate::catalog;
use crate::drill::report::{self, LastDrill};
use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::seal;
use crate::storage::Storage;
use crate::verify::LAST_VERIFY_KEY;
use crate::wal::{SegmentSize, WalFile};

/// The status snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The repository.
    pub repository: String,
    /// Newest archived segment.
    pub newest_segment: Option<String>,
    /// Seconds since it was archived.
    pub newest_segment_age_seconds: Option<f64>,
    /// The cluster's current segment (when connected).
    pub current_segment: Option<String>,
    /// Segments between the cluster's current one and the newest archived (when connected).
    pub archive_lag_segments: Option<i64>,
    /// Complete backups.
    pub backups: usize,
    /// Newest complete backup.
    pub newest_backup: Option<String>,
    /// Seconds since it ended.
    pub newest_backup_age_seconds: Option<f64>,
    /// Seconds since the newest complete full (not incremental) backup ended; `None` without
    /// one, or on a push-only host (which cannot open records).
    pub newest_full_backup_age_seconds: Option<f64>,
    /// Interrupted backups.
    pub incomplete_backups: usize,
    /// Objects stored.
    pub repository_objects: u64,
    /// Bytes stored.
    pub repository_bytes: u64,
    /// Whether the last verify found all well.
    pub last_verify_ok: Option<bool>,
    /// Seconds since the last verify.
    pub last_verify_age_seconds: Option<f64>,
    /// The last drill's id.
    pub last_drill: Option<String>,
    /// Whether the last drill passed (unknown on a push-only host).
    pub last_drill_ok: Option<bool>,
    /// Seconds since the last drill ended.
    pub last_drill_age_seconds: Option<f64>,
    /// The last drill's recovery time (restore start to a usable server).
    pub last_drill_recovery_seconds: Option<f64>,
    /// True on a push-only host: backups are counted from the listing (a backup with a record
    /// is complete, its record's upload time is its end) and the last verify result is unknown
    /// (its age comes from the listing).
    pub push_only: bool,
}

/// Collects the status; `conninfo` (if any) is used to measure the archive lag.
///
/// # Errors
/// Storage errors and records that do not open; a failed database connection only leaves the
/// lag empty.
pub async fn status(
    storage: &Storage,
    keyring: &Keyring,
    conninfo: Option<&str>,
) -> Result<Status> {
    let now = crate::time::now();
    let objects = storage.list_meta("").await?;
    // Push-only, or sealing to a recipient whose identity is elsewhere: records do not open.
    let push_only = !keyring.opens_own();
    // (backup count, newest id, its end as unix time, incomplete count)
    let mut newest_full_end = None;
    let backups = if push_only {
        from_listing(&objects)
    } else {
        let listing = catalog::list(storage, keyring).await?;
        newest_full_end = listing
            .backups
            .iter()
            .rev()
            .find(|b| !b.is_incremental())
            .map(|b| b.stop_unix);
        let newest = listing.backups.last();
        (
            listing.backups.len(),
            newest.map(|b| b.id.clone()),
            newest.map(|b| b.stop_unix),
            listing.incomplete.len(),
        )
    };
    let newest = objects
        .iter()
        .filter_map(|o| {
            o.key
                .rsplit('/')
                .next()
                .and_then(WalFile::parse)
                .filter(|w| w.kind == crate::wal::WalKind::Segment)
                .map(|w| (w.name, o.modified))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    let identity = crate::repository::load_any(storage, keyring).await?;
    let seg_size = match identity {
        Some(i) => SegmentSize::new(i.wal_segment_size)
            .map_err(|e| Error::new(ErrorKind::Integrity, e.to_string()))?,
        None => SegmentSize::DEFAULT,
    };
    let mut last_verify_ok = None;
    let mut last_verify_age_seconds = None;
    if push_only {
        last_verify_age_seconds = objects
            .iter()
            .find(|o| o.key == LAST_VERIFY_KEY)
            .map(|o| (now - o.modified).max(0.0));
    } else if let Some(sealed) = storage
        .get_bytes_max(LAST_VERIFY_KEY, crate::repo::RECORD_MAX)
        .await?
    {
        let plain = seal::open_to_vec(keyring, LAST_VERIFY_KEY, &sealed)
            .map_err(|e| e.into_error(LAST_VERIFY_KEY))?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&plain) {
            last_verify_ok = v["ok"].as_bool();
            last_verify_age_seconds = v["time_unix"].as_f64().map(|t| now - t);
        }
    }
    let (last_drill, drill) = last_drill(storage, keyring, &objects, push_only, now).await;
    let mut current_segment = None;
    let mut archive_lag_segments = None;
    if conninfo.is_some() || std::env::var_os("PGHOST").is_some() {
        if let Ok(mut params) = conninfo::resolve(conninfo) {
            params.replication = false;
            match Conn::connect(&params).await {
                Ok(mut conn) => {
                    if let Ok(rows) = conn
                        .query("SELECT pg_walfile_name(pg_current_wal_lsn())")
                        .await
                    {
                        current_segment = rows.first().and_then(|r| r.first().cloned().flatten());
                    }
                    conn.close().await;
                }
                Err(e) => tracing::warn!("status: cannot measure the archive lag: {e}"),
            }
        }
        if let (Some(cur), Some((new, _))) = (&current_segment, &newest) {
            let (c, n) = (WalFile::parse(cur), WalFile::parse(new));
            if let (Some(c), Some(n)) = (c, n) {
                if c.timeline == n.timeline {
                    archive_lag_segments = match (c.segment_in(seg_size), n.segment_in(seg_size)) {
                        (Some(a), Some(b)) => {
                            i64::try_from(a.saturating_sub(b).saturating_sub(1)).ok()
                        }
                        _ => None,
                    };
                }
            }
        }
    }
    let (backup_count, newest_backup, newest_backup_end, incomplete_backups) = backups;
    Ok(Status {
        repository: storage.display().to_string(),
        newest_segment: newest.as_ref().map(|n| n.0.clone()),
        newest_segment_age_seconds: newest.as_ref().map(|n| (now - n.1).max(0.0)),
        current_segment,
        archive_lag_segments,
        backups: backup_count,
        newest_backup,
        newest_backup_age_seconds: newest_backup_end.map(|t| (now - t).max(0.0)),
        newest_full_backup_age_seconds: newest_full_end.map(|t| (now - t).max(0.0)),
        incomplete_backups,
        repository_objects: objects.len() as u64,
        repository_bytes: objects.iter().map(|o| o.size).sum(),
        last_verify_ok,
        last_verify_age_seconds,
        last_drill,
        last_drill_ok: drill.ok,
        last_drill_age_seconds: drill.age_seconds,
        last_drill_recovery_seconds: drill.recovery_seconds,
        push_only,
    })
}

/// The newest drill report's id and figures. A push-only host has only the age (from the
/// listing: a report is written when its drill ends); a report that does not open is logged
/// and counts as a failed drill.
async fn last_drill(
    storage: &Storage,
    keyring: &Keyring,
    objects: &[crate::storage::ObjectInfo],
    push_only: bool,
    now: f64,
) -> (Option<String>, LastDrill) {
    let newest = objects
        .iter()
        .filter(|o| report::id_of(&o.key).is_some())
        .max_by(|a, b| a.key.cmp(&b.key));
    let Some(o) = newest else {
        return (None, LastDrill::default());
    };
    let id = report::id_of(&o.key).map(str::to_string);
    if push_only {
        let drill = LastDrill {
            age_seconds: Some((now - o.modified).max(0.0)),
            ..LastDrill::default()
        };
        return (id, drill);
    }
    match crate::drill::last_report(storage, keyring, objects).await {
        Ok(Some(r)) => (
            Some(r.id.clone()),
            LastDrill::of(&r, (now - r.finished_unix).max(0.0)),
        ),
        Ok(None) => (None, LastDrill::default()),
        Err(e) => {
            tracing::warn!("status: the last drill report does not open: {e}");
            let drill = LastDrill {
                ok: Some(false),
                age_seconds: Some((now - o.modified).max(0.0)),
                recovery_seconds: None,
            };
            (id, drill)
        }
    }
}

/// Backups from the listing alone (push-only hosts cannot open records): an id with a record
/// is complete, and the record, written last, was uploaded when the backup ended.
fn from_listing(
    objects: &[crate::storage::ObjectInfo],
) -> (usize, Option<String>, Option<f64>, usize) {
    let mut ids: std::collections::BTreeMap<&str, Option<f64>> = std::collections::BTreeMap::new();
    for o in objects {
        let Some(rest) = o.key.strip_prefix(&format!("{}/", catalog::BACKUPS)) else {
            continue;
        };
        let Some((id, _)) = rest.split_once('/') else {
            continue;
        };
        let entry = ids.entry(id).or_insert(None);
        if o.key == catalog::record_key(id) {
            *entry = Some(o.modified);
        }
    }
    let complete: Vec<(&str, f64)> = ids
        .iter()
        .filter_map(|(id, end)| end.map(|t| (*id, t)))
        .collect();
    let newest = complete.last();
    (
        complete.len(),
        newest.map(|(id, _)| (*id).to_string()),
        newest.map(|(_, t)| *t),
        ids.len() - complete.len(),
    )
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition format (for node_exporter's textfile collector).
pub fn prometheus(s: &Status) -> String {
    let repo = label(&s.repository);
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out += &format!("# HELP walseal_{name} {help}\n# TYPE walseal_{name} gauge\nwalseal_{name}{{repository=\"{repo}\"}} {v}\n");
        }
    };
    metric("up", "1 if the repository could be read.", Some(1.0));
    metric(
        "newest_segment_age_seconds",
        "Seconds since the newest WAL segment was archived.",
        s.newest_segment_age_seconds,
    );
    metric(
        "archive_lag_segments",
        "WAL segments the cluster has completed but not yet archived.",
        s.archive_lag_segments.map(|v| v as f64),
    );
    metric(
        "backups",
        "Complete base backups in the repository.",
        Some(s.backups as f64),
    );
    metric(
        "incomplete_backups",
        "Interrupted base backups (parts without a record).",
        Some(s.incomplete_backups as f64),
    );
    metric(
        "newest_backup_age_seconds",
        "Seconds since the newest complete backup ended.",
        s.newest_backup_age_seconds,
    );
    metric(
        "newest_full_backup_age_seconds",
        "Seconds since the newest complete full (not incremental) backup ended.",
        s.newest_full_backup_age_seconds,
    );
    metric(
        "repository_bytes",
        "Bytes stored in the repository.",
        Some(s.repository_bytes as f64),
    );
    metric(
        "repository_objects",
        "Objects stored in the repository.",
        Some(s.repository_objects as f64),
    );
    metric(
        "last_verify_ok",
        "1 if the last walseal verify found all well, 0 if not.",
        s.last_verify_ok.map(|b| if b { 1.0 } else { 0.0 }),
    );
    metric(
        "last_verify_age_seconds",
        "Seconds since the last walseal verify.",
        s.last_verify_age_seconds,
    );
    out += &report::prometheus(
        &s.repository,
        &LastDrill {
            ok: s.last_drill_ok,
            age_seconds: s.last_drill_age_seconds,
            recovery_seconds: s.last_drill_recovery_seconds,
        },
    );
    out
}
