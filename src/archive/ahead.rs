//! Push-ahead: one `wal-push` call also archives up to `push_parallel` − 1 further segments
//! PostgreSQL has marked ready (`pg_wal/archive_status/<name>.ready`), and records each one
//! it stored durably in `pg_wal/.walseal/pushed/<name>`. PostgreSQL's later call for that
//! segment finds the record, confirms the object is in storage at its recorded size, and
//! returns at once.
//!
//! Correct if killed at any moment: a record is written only after its object is stored
//! (and, for a name that already existed, compared), so a missing record only means the
//! later call pushes the segment itself (and finds it identical). A record is believed only
//! for the very file it was made for (device, inode, size, modification time, under the
//! host's MAC, [`crate::pgwal`]); PostgreSQL never changes a segment it marked ready, and a
//! recycled or replaced file differs. PostgreSQL's own `.ready`/`.done` files are never
//! touched: the archiver alone decides what it considers archived, and only from exit
//! codes of calls for the segment itself.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::pgwal::{self, FileId, PgWal, StateKey};
use crate::repo::Repository;
use crate::repository::Identity;
use crate::storage::Storage;
use crate::wal::{WalFile, WalKind};

use super::{check_segment, push_file, PushOutcome};

const KIND: &str = "pushed";

/// The push-ahead state of one `pg_wal`.
pub struct State {
    pg_wal: PgWal,
    key: StateKey,
    dir: PathBuf,
}

/// Segments this call archives ahead, and the lock that keeps a second wal-push in the same
/// `pg_wal` (a manual one) from taking the same ones.
pub struct Claim {
    /// The segments' paths and names.
    pub files: Vec<(PathBuf, WalFile)>,
    _lock: Option<File>,
}

impl Claim {
    /// No push-ahead.
    pub fn none() -> Claim {
        Claim {
            files: Vec::new(),
            _lock: None,
        }
    }
}

impl State {
    /// The state for the segment at `path`, when it lies in a `pg_wal` (with
    /// `archive_status`) and the host holds a secret for the records' MAC.
    pub fn new(path: &Path, repo: &Repository, cfg: &Config) -> Option<State> {
        let pg_wal = PgWal::of_push_path(path)?;
        let key = StateKey::new(&repo.keyring, cfg.repo.as_deref().unwrap_or_default())?;
        let dir = pg_wal.state_dir(KIND)?;
        Some(State { pg_wal, key, dir })
    }

    /// When recovery has ended (no recovery.signal or standby.signal), the prefetch spool
    /// of that recovery is removed: archive_command runs only on a primary, or on a standby
    /// with archive_mode = always (still in recovery, so its spool stays).
    pub fn end_of_recovery_cleanup(&self) {
        if self.pg_wal.in_recovery() {
            return;
        }
        if let Some(spool) = self.pg_wal.existing_state_dir("prefetch") {
            match std::fs::remove_dir_all(&spool) {
                Ok(()) => tracing::info!("removed the prefetch spool {}", spool.display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", spool.display()),
            }
        }
    }

    fn record_path(&self, wal: &WalFile) -> PathBuf {
        self.dir.join(&wal.name)
    }

    fn fields(wal: &WalFile, sealed_len: u64) -> [(&'static str, String); 3] {
        [
            ("name", wal.name.clone()),
            ("object", wal.object_key()),
            ("sealed", sealed_len.to_string()),
        ]
    }

    /// Whether the segment at `path` was archived ahead by an earlier call: a record made
    /// for exactly this file, and its object in storage at the recorded size. The record is
    /// removed either way (a stale one is useless).
    ///
    /// # Errors
    /// `Storage` if the storage cannot be asked.
    pub async fn confirm(
        &self,
        storage: &Storage,
        wal: &WalFile,
        path: &Path,
    ) -> crate::error::Result<bool> {
        let record = self.record_path(wal);
        let Ok(text) = std::fs::read_to_string(&record) else {
            return Ok(false);
        };
        let _ = std::fs::remove_file(&record);
        let Some(id) = FileId::of(path) else {
            return Ok(false);
        };
        let Some(taken) = pgwal::decode_state(
            &self.key,
            KIND,
            &text,
            &Self::fields(wal, 0),
            &["sealed"],
            &id,
            true,
        ) else {
            tracing::warn!(
                "ignoring the push-ahead record of {}: it is not for this file",
                wal.name
            );
            return Ok(false);
        };
        let sealed: Option<u64> = taken.first().and_then(|t| t.parse().ok());
        let stored = storage.size_of(&wal.object_key()).await?;
        if stored.is_some() && stored == sealed {
            return Ok(true);
        }
        tracing::warn!(
            "{} was recorded as archived ahead, but its object is {}: archiving it again",
            wal.name,
            match stored {
                None => "gone".to_string(),
                Some(n) => format!("{n} bytes, not the recorded {}", sealed.unwrap_or(0)),
            }
        );
        Ok(false)
    }

    /// Up to `n` segments other than `wal` that PostgreSQL marked ready, lowest names
    /// first, each without a record yet; none if another wal-push holds the lock.
    pub fn claim_ready(&self, wal: &WalFile, n: usize) -> Claim {
        let Some(lock) = pgwal::try_lock(&self.dir.join(".lock")) else {
            return Claim::none();
        };
        pgwal::remove_dead_temps(&self.dir);
        self.remove_orphan_records();
        let status = self.pg_wal.dir().join("archive_status");
        let Ok(entries) = std::fs::read_dir(&status) else {
            return Claim::none();
        };
        let mut ready: Vec<WalFile> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let seg = name.to_str()?.strip_suffix(".ready")?;
                WalFile::parse(seg).filter(|w| w.kind == WalKind::Segment && w.name != wal.name)
            })
            .filter(|w| !self.record_path(w).exists())
            .collect();
        ready.sort_by(|a, b| a.name.cmp(&b.name));
        ready.truncate(n);
        Claim {
            files: ready
                .into_iter()
                .map(|w| (self.pg_wal.dir().join(&w.name), w))
                .collect(),
            _lock: Some(lock),
        }
    }

    /// Removes records of segments that are no longer in `pg_wal` (recycled or removed
    /// after PostgreSQL archived them another way).
    fn remove_orphan_records(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if WalFile::parse(name).is_some() && !self.pg_wal.dir().join(name).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Archives the ready segment at `path` ahead and records it. A failure only means
    /// PostgreSQL's own call for the segment archives it (and reports what is wrong).
    ///
    /// # Errors
    /// As [`push_file`].
    pub async fn push_ahead(
        &self,
        repo: &Repository,
        path: &Path,
        wal: &WalFile,
        id: &Identity,
        after: &tokio::sync::RwLock<()>,
    ) -> crate::error::Result<()> {
        let Some(before) = FileId::of(path) else {
            return Ok(()); // archived and removed meanwhile
        };
        let mut file = File::open(path)
            .map_err(|e| crate::error::local_io(format!("cannot open {}", path.display()), &e))?;
        let candidate = check_segment(&mut file, path, wal, before.size)?;
        drop(file);
        if candidate != *id {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Conflict,
                format!("{} is not of this repository's cluster", wal.name),
            ));
        }
        let started = std::time::Instant::now();
        let (outcome, sealed_len) = push_file(repo, path, wal, before.size, Some(after)).await?;
        // Recorded only for the file that was sealed, unchanged meanwhile.
        if FileId::of(path) != Some(before) {
            return Ok(());
        }
        let text = pgwal::encode_state(
            &self.key,
            KIND,
            &Self::fields(wal, sealed_len),
            &before,
            true,
        );
        pgwal::write_atomic(&self.record_path(wal), &text)?;
        match outcome {
            PushOutcome::Stored => tracing::info!(
                "archived {} ahead to {} ({} -> {} bytes) in {} ms",
                wal.name,
                wal.object_key(),
                before.size,
                sealed_len,
                started.elapsed().as_millis()
            ),
            PushOutcome::AlreadyArchived => tracing::info!(
                "{} (ahead) was already archived with identical content",
                wal.name
            ),
        }
        Ok(())
    }
}
