//! Prefetch: while PostgreSQL replays segment S, a background worker (this binary again,
//! detached) fetches, authenticates and decrypts S+1 … S+N into a spool inside `pg_wal`
//! (`pg_wal/.walseal/prefetch/`, owner-only), and `wal-fetch` serves the next calls from it
//! by rename.
//!
//! - A spool file is complete and authenticated before it gets its name: the worker streams
//!   the object into `.<name>.<pid>.tmp` exactly as a direct fetch does (every chunk
//!   authenticated, the segment's header checked against the repository's cluster),
//!   flushes it to disk, renames it, then writes the sidecar `<name>.ok`: the file's
//!   identity (device, inode, size, times) and the object name under the host's MAC
//!   ([`crate::pgwal`]).
//! - A call serves a spool file only for exactly the name PostgreSQL asked for, and only if
//!   the sidecar verifies for the very file in the spool: a file changed, replaced or
//!   planted since, a spool of another repository location or key, is removed and the
//!   segment is fetched from storage instead.
//! - The spool holds at most N segments: every call and the worker remove names that are not
//!   among the N after the last request (a timeline switch or a jump discards them). The
//!   first `wal-push` after recovery ended removes the spool ([`crate::archive::ahead`]).
//! - Killed at any moment, the worker leaves at most `.tmp` files in the spool, removed by the
//!   next call; nothing unauthenticated ever has a WAL name, in the spool or in `pg_wal`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::pgwal::{self, FileId, PgWal, StateKey};
use crate::repo::{Access, Repository};
use crate::wal::{segment_name, SegmentSize, WalFile, WalKind};

const KIND: &str = "prefetched";
const SUBDIR: &str = "prefetch";
/// The environment variable that makes a `wal-fetch` process the spool's worker (set only
/// by walseal itself when it starts one).
pub const WORKER_ENV: &str = "WALSEAL_INTERNAL_PREFETCH_WORKER";
/// Segments a worker fetches at once.
const WORKER_FETCHES: usize = 2;
/// A worker with nothing to do exits after this long.
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// Whether prefetch can apply to a `wal-fetch` into `dest`: it is on, and `dest` is
/// PostgreSQL's own recovery file, `pg_wal/RECOVERYXLOG` (not `pg_rewind`'s or a person's
/// fetch of a named file, which must not get a spool and a worker beside them).
pub fn applies(dest: &Path, cfg: &Config) -> bool {
    cfg.fetch_prefetch > 0
        && dest.file_name().is_some_and(|n| n == "RECOVERYXLOG")
        && PgWal::of_fetch_dest(dest).is_some()
}

/// The spool this process is the worker of: walseal sets [`WORKER_ENV`] to the spool of the
/// call that started it, and the variable counts only when it names exactly the spool of
/// `dest` (so a stray variable never turns PostgreSQL's call into a worker that answers
/// without a file, nor points the worker at another directory).
pub fn worker_dir(dest: &Path) -> Option<PathBuf> {
    let named = PathBuf::from(std::env::var_os(WORKER_ENV)?);
    let own = PgWal::of_fetch_dest(dest)?
        .existing_state_dir(SUBDIR)?
        .canonicalize()
        .ok()?;
    (named == own).then_some(own)
}

/// The prefetch spool of one `pg_wal`.
pub struct Spool {
    dir: PathBuf,
    key: StateKey,
    depth: usize,
}

impl Spool {
    /// The spool for a `wal-fetch` into `dest`, when prefetch is on, `dest` is in a
    /// `pg_wal`, and the host holds a secret for the sidecars' MAC.
    pub fn new(dest: &Path, cfg: &Config, keyring: &crate::keys::Keyring) -> Option<Spool> {
        if !applies(dest, cfg) {
            return None;
        }
        let pg_wal = PgWal::of_fetch_dest(dest)?;
        let key = StateKey::new(keyring, cfg.repo.as_deref().unwrap_or_default())?;
        let dir = pg_wal.state_dir(SUBDIR)?;
        Some(Spool {
            dir,
            key,
            depth: cfg.fetch_prefetch,
        })
    }

    fn fields(wal: &WalFile) -> [(&'static str, String); 2] {
        [("name", wal.name.clone()), ("object", wal.object_key())]
    }

    fn sidecar(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ok"))
    }

    /// Moves the spool's copy of `wal` to `dest` if it is there and checks out; returns its
    /// size. A copy that does not check out is removed. Waits for a worker that is fetching
    /// it right now (at most `wait`).
    pub fn serve(&self, wal: &WalFile, dest: &Path, wait: Duration) -> Option<u64> {
        let path = self.dir.join(&wal.name);
        self.wait_for_fetch(&wal.name, wait);
        let text = std::fs::read_to_string(self.sidecar(&wal.name)).ok();
        let id = FileId::of(&path);
        let good = match (&text, &id) {
            (Some(t), Some(id)) => {
                pgwal::decode_state(&self.key, KIND, t, &Self::fields(wal), &[], id, true).is_some()
            }
            _ => false,
        };
        if !good {
            if id.is_some() || text.is_some() {
                tracing::warn!(
                    "not serving the prefetched copy of {}: it is not the file walseal checked (changed, replaced or planted); fetching it from the archive",
                    wal.name
                );
            }
            self.remove(&wal.name);
            return None;
        }
        let size = id.map_or(0, |i| i.size);
        match std::fs::rename(&path, dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(self.sidecar(&wal.name));
                Some(size)
            }
            Err(e) => {
                tracing::warn!("cannot move the prefetched {} into place: {e}", wal.name);
                self.remove(&wal.name);
                None
            }
        }
    }

    /// Waits while a worker (it holds the spool's lock) has `name` in progress: its
    /// temporary exists, or the file is in place but its sidecar not yet written.
    fn wait_for_fetch(&self, name: &str, wait: Duration) {
        let started = Instant::now();
        let prefix = format!(".{name}.");
        while started.elapsed() < wait {
            let in_progress = std::fs::read_dir(&self.dir).ok().is_some_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            }) || (self.dir.join(name).exists() && !self.sidecar(name).exists());
            if !in_progress || pgwal::try_lock(&self.dir.join("lock")).is_some() {
                return; // nothing in progress, or no worker alive to finish it
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
        let _ = std::fs::remove_file(self.sidecar(name));
    }

    /// Records `wal` (of `segment_size`) as the last request, removes what will not be asked
    /// for next, and starts a worker if none runs.
    pub fn request(&self, wal: &WalFile, segment_size: u64) {
        let Ok(size) = SegmentSize::new(segment_size) else {
            return;
        };
        if pgwal::write_atomic(
            &self.dir.join("want"),
            &format!("{} {}\n", wal.name, size.bytes()),
        )
        .is_err()
        {
            return;
        }
        prune(&self.dir, &targets(wal, size, self.depth));
        if let Some(lock) = pgwal::try_lock(&self.dir.join("lock")) {
            drop(lock);
            spawn_worker(&self.dir);
        }
    }
}

/// The `depth` segment names after `wal` on its timeline.
fn targets(wal: &WalFile, size: SegmentSize, depth: usize) -> Vec<WalFile> {
    let Some(seg) = wal.segment_in(size) else {
        return Vec::new();
    };
    let tli = wal.timeline;
    (1..=depth as u64)
        .filter_map(|i| WalFile::parse(&segment_name(tli, seg.checked_add(i)?, size)))
        .collect()
}

/// Removes spool files (and sidecars) whose names are not in `keep`, and dead temporaries.
fn prune(dir: &Path, keep: &[WalFile]) {
    pgwal::remove_dead_temps(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let base = name.strip_suffix(".ok").unwrap_or(name);
        // a temporary `.<name>.<pid>.tmp` of a name no longer wanted goes too
        let base = match pgwal::temp_pid(name) {
            Some(_) => name[1..].split('.').next().unwrap_or(base),
            None => base,
        };
        if WalFile::parse(base).is_some() && !keep.iter().any(|w| w.name == base) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Starts this binary again, detached, as the spool's worker (same arguments and
/// environment, so the same configuration and keys; no standard streams, its own process
/// group).
fn spawn_worker(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let r = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(WORKER_ENV, &dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = r {
        tracing::warn!("cannot start the prefetch worker: {e}");
    }
}

/// The worker: fetches the segments after the last request into the spool at `dir`, until
/// it has had nothing to do for [`IDLE_EXIT`]. One at a time per spool (its lock).
///
/// # Errors
/// As opening the repository; a failing fetch just ends the worker (the call for that
/// segment then fetches it itself and reports the error).
pub async fn worker(cfg: &Config, dir: &Path) -> Result<()> {
    let Some(lock) = pgwal::try_lock(&dir.join("lock")) else {
        return Ok(());
    };
    {
        let mut f = &lock;
        let _ = f.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
    }
    let repo = Repository::open(cfg, Access::Open, "wal-fetch").await?;
    let Some(key) = StateKey::new(&repo.keyring, cfg.repo.as_deref().unwrap_or_default()) else {
        return Ok(());
    };
    let identity = crate::repository::load(&repo.storage, &repo.keyring)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Integrity, "no identity record"))?;
    let mut last_want = String::new();
    let mut idle = Instant::now();
    while idle.elapsed() < IDLE_EXIT {
        let want = std::fs::read_to_string(dir.join("want")).unwrap_or_default();
        if want != last_want {
            last_want.clone_from(&want);
            idle = Instant::now();
        }
        let Some((wal, size)) = parse_want(&want) else {
            return Ok(());
        };
        let keep = targets(&wal, size, cfg.fetch_prefetch);
        prune(dir, &keep);
        // Two at a time: one opens (decrypts, decompresses) on each core while PostgreSQL
        // replays on whatever is left.
        let missing: Vec<&WalFile> = keep
            .iter()
            .filter(|w| !dir.join(&w.name).exists())
            .take(WORKER_FETCHES)
            .collect();
        if missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let fetched = futures::future::join_all(
            missing
                .iter()
                .map(|w| fetch_one(&repo, &identity, &key, dir, w)),
        )
        .await;
        // In order: the first segment not archived (yet) ends this round; look again later.
        let mut progress = false;
        for r in fetched {
            match r {
                Ok(true) => progress = true,
                Ok(false) => break,
                Err(_) => return Ok(()),
            }
        }
        if progress {
            idle = Instant::now();
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(lock);
    Ok(())
}

fn parse_want(text: &str) -> Option<(WalFile, SegmentSize)> {
    let (name, size) = text.trim().split_once(' ')?;
    let wal = WalFile::parse(name).filter(|w| w.kind == WalKind::Segment)?;
    let size = SegmentSize::new(size.parse().ok()?).ok()?;
    Some((wal, size))
}

/// Fetches `wal` into the spool; `false` if it is not in the archive.
async fn fetch_one(
    repo: &Repository,
    identity: &crate::repository::Identity,
    key: &StateKey,
    dir: &Path,
    wal: &WalFile,
) -> Result<bool> {
    let tmp = dir.join(format!(".{}.{}.tmp", wal.name, std::process::id()));
    let expect = super::SegmentCheck {
        wal: wal.clone(),
        identity: identity.clone(),
    };
    let fetched = super::fetch_into(repo, &wal.object_key(), &tmp, Some(expect), true).await;
    match fetched {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(false),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    let path = dir.join(&wal.name);
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::error::local_io("cannot rename a prefetched segment", &e)
    })?;
    let Some(id) = FileId::of(&path) else {
        return Ok(true);
    };
    let text = pgwal::encode_state(key, KIND, &Spool::fields(wal), &id, true);
    if let Err(e) = pgwal::write_atomic(&dir.join(format!("{}.ok", wal.name)), &text) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_timeline_across_log_boundaries() {
        let size = SegmentSize::new(16 << 20).unwrap();
        let w = WalFile::parse("0000000200000001000000FE").unwrap();
        let names: Vec<String> = targets(&w, size, 3).into_iter().map(|w| w.name).collect();
        assert_eq!(
            names,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        assert!(parse_want("0000000200000001000000FE 16777216\n").is_some());
        for bad in [
            "",
            "x 16777216",
            "0000000200000001000000FE 3",
            "00000002.history 16777216",
        ] {
            assert!(parse_want(bad).is_none(), "{bad}");
        }
    }
}
