//! `wal-fetch`: PostgreSQL's `restore_command`; [`base`]: `walseal restore` of a base backup.
//!
//! The object is streamed from storage, authenticated chunk by chunk, decompressed into a
//! temporary file beside the destination, and renamed into place only after the final chunk
//! authenticated. A failure removes the temporary file, so PostgreSQL never sees a partial or
//! unauthenticated file at `%p`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

pub mod base;
pub mod chain;
pub mod manifest;
pub mod prefetch;
pub mod tar;

use crate::config::Config;
use crate::error::{local_io, Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repo::{Access, Repository};
use crate::seal;
use crate::wal::{LongPageHeader, WalFile, WalKind, LONG_HEADER_LEN};

/// Restores WAL file `name` from the repository to `dest`.
///
/// # Errors
/// `NotFound` if the archive has no such file (exit 1); every other error must stop recovery.
pub async fn wal_fetch(cfg: &Config, name: &str, dest: &Path) -> Result<u64> {
    let wal = WalFile::parse(name).ok_or_else(|| {
        Error::new(ErrorKind::Usage, format!("{name:?} is not a WAL file name"))
            .hint("restore_command must be 'walseal wal-fetch %f %p'")
    })?;
    if let Some(dir) = prefetch::worker_dir(dest) {
        return prefetch::worker(cfg, &dir).await.map(|()| 0);
    }
    // A segment prefetched by an earlier call is served without asking the storage: the
    // spool's sidecar proves walseal authenticated exactly this file for this repository.
    // (The cheap conditions first: the keyring is loaded only where a spool can be.)
    let spool = match wal.kind {
        WalKind::Segment if prefetch::applies(dest, cfg) => {
            crate::repo::Repository::keyring_only(cfg)
                .ok()
                .and_then(|k| prefetch::Spool::new(dest, cfg, &k))
        }
        _ => None,
    };
    if let Some(sp) = &spool {
        if let Some(bytes) = sp.serve(&wal, dest, cfg.storage_timeout) {
            sp.request(&wal, bytes);
            tracing::info!(
                "served {name} from the prefetch spool to {}",
                dest.display()
            );
            return Ok(bytes);
        }
    }
    // Before looking for the object: "not found" (exit 1) would end recovery as if the
    // archive ended here, so a push-only host, or a location that holds no repository
    // (unmounted, mistyped), fails first.
    let repo = Repository::open(cfg, Access::Open, "wal-fetch").await?;
    let key = wal.object_key();
    // A segment is checked against the cluster the repository belongs to before PostgreSQL
    // sees it ("WAL file is from different database system" would end recovery early).
    let expect = match wal.kind {
        WalKind::Segment | WalKind::Partial => {
            let id = crate::repository::load(&repo.storage, &repo.keyring)
                .await?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Integrity,
                        format!(
                            "{} has WAL but no identity record (walseal.id)",
                            repo.storage.display()
                        ),
                    )
                    .hint("restore walseal.id from a copy of the repository")
                })?;
            Some(SegmentCheck {
                wal: wal.clone(),
                identity: id,
            })
        }
        _ => None,
    };
    let tmp = temp_path(dest)?;
    let Some(bytes) = fetch_into(&repo, &key, &tmp, expect, false).await? else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("{name} is not in the archive {}", repo.storage.display()),
        ));
    };
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        local_io(
            format!("cannot move restored file into place at {}", dest.display()),
            &e,
        )
    })?;
    tracing::info!("restored {name} ({bytes} bytes) to {}", dest.display());
    // Only once the segment exists: a probe for one not archived yet (a standby polling,
    // another timeline) leaves the spool and its worker alone.
    if let Some(sp) = &spool {
        sp.request(&wal, bytes);
    }
    Ok(bytes)
}

/// Streams object `key` into the new file `tmp`, authenticated chunk by chunk (and, with
/// `expect`, checked as that segment); `None` if there is no such object. With `sync`, the
/// file is flushed to disk. On failure `tmp` is removed.
async fn fetch_into(
    repo: &Repository,
    key: &str,
    tmp: &Path,
    expect: Option<SegmentCheck>,
    sync: bool,
) -> Result<Option<u64>> {
    let Some(object) = repo.storage.get(key).await? else {
        return Ok(None);
    };
    let keyring = repo.keyring.clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes>>(8);
    let writer = {
        let (tmp, key) = (tmp.to_path_buf(), key.to_string());
        tokio::task::spawn_blocking(move || {
            open_into(rx, &keyring, &key, &tmp, expect.as_ref(), sync)
        })
    };
    let mut stream = object.stream;
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break; // the writer stopped (and reports why), or the error was handed over
        }
    }
    drop(tx);
    let result = writer
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("restore task failed: {e}")))
        .and_then(|r| r);
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result.map(Some)
}

/// The exit status of a failed `wal-fetch` into `dest` (restore_command's `%p`).
///
/// Archive recovery must stop at a hole rather than promote past it, so every failure but
/// "not in the archive" is fatal to PostgreSQL ([`ErrorKind::fetch_exit_code`], above 125).
/// A standby is different: it retries restore_command every few seconds and streams from
/// its primary meanwhile, and it never promotes on its own. A fatal status there would shut
/// the standby down over a storage outage, so on a standby an unreachable storage (after the
/// retries) answers 1, "not available yet"; the caller logs it as a WARNING.
pub fn fetch_exit_code(kind: ErrorKind, dest: &Path) -> u8 {
    exit_code_for(kind, kind == ErrorKind::Storage && is_standby(dest))
}

/// Whether a failure of `kind` answers the standby's "not available yet" (1).
fn exit_code_for(kind: ErrorKind, standby: bool) -> u8 {
    match kind {
        ErrorKind::Storage if standby => 1,
        other => other.fetch_exit_code(),
    }
}

/// Whether the data directory that `dest` belongs to holds `standby.signal`.
///
/// PostgreSQL runs restore_command in the data directory with `%p` = `pg_wal/RECOVERYXLOG`
/// (relative); `pg_wal` may be a symlink, so the data directory is found lexically (the
/// parent of `dest`'s `pg_wal`), else the current directory. Only a directory that holds
/// `PG_VERSION` counts: when in doubt this is not a standby, and a failure stays fatal.
pub fn is_standby(dest: &Path) -> bool {
    let beside_pg_wal = dest
        .parent()
        .filter(|wal| wal.file_name().is_some_and(|n| n == "pg_wal"))
        .map(|wal| match wal.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
    beside_pg_wal
        .into_iter()
        .chain(std::iter::once(PathBuf::from(".")))
        .find(|dir| dir.join("PG_VERSION").is_file())
        .is_some_and(|dir| dir.join("standby.signal").is_file())
}

/// A temporary name beside `dest`, in the same directory so the rename is atomic.
fn temp_path(dest: &Path) -> Result<PathBuf> {
    let file = dest.file_name().and_then(|f| f.to_str()).ok_or_else(|| {
        Error::new(
            ErrorKind::Usage,
            format!("destination {} has no file name", dest.display()),
        )
        .hint("restore_command must be 'walseal wal-fetch %f %p'")
    })?;
    let tmp = dest.with_file_name(format!(".{file}.walseal-{}.tmp", std::process::id()));
    remove_stale_temps(dest, file);
    Ok(tmp)
}

/// Removes temporary files an earlier, killed wal-fetch left beside `dest` (its process is
/// gone: PostgreSQL runs one restore_command at a time per cluster).
fn remove_stale_temps(dest: &Path, file: &str) {
    let prefix = format!(".{file}.walseal-");
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
        {
            let alive = Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Opens the sealed stream from `rx` and writes the plaintext to `tmp`; returns its length.
fn open_into(
    rx: mpsc::Receiver<Result<Bytes>>,
    keyring: &Keyring,
    key: &str,
    tmp: &Path,
    expect: Option<&SegmentCheck>,
    sync: bool,
) -> Result<u64> {
    let mut reader = seal::open(
        ChannelReader {
            rx,
            cur: Bytes::new(),
        },
        keyring,
        key,
    )
    .map_err(|e| e.into_error(key))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| local_io(format!("cannot create {}", tmp.display()), &e))?;
    let mut head = Vec::with_capacity(LONG_HEADER_LEN);
    let total = seal::for_each_block(&mut reader, key, |block| {
        if head.len() < LONG_HEADER_LEN {
            let n = (LONG_HEADER_LEN - head.len()).min(block.len());
            head.extend_from_slice(&block[..n]);
            if head.len() == LONG_HEADER_LEN {
                if let Some(check) = expect {
                    check.verify(key, &head)?;
                }
            }
        }
        write_all(&mut out, block, tmp)
    })?;
    if let Some(check) = expect {
        if head.len() < LONG_HEADER_LEN {
            check.verify(key, &head)?;
        }
    }
    if sync {
        out.sync_all()
            .map_err(|e| local_io(format!("cannot flush {}", tmp.display()), &e))?;
    }
    Ok(total)
}

/// What a fetched segment must be: of the repository's cluster and segment size, and the
/// segment its name says.
struct SegmentCheck {
    wal: WalFile,
    identity: crate::repository::Identity,
}

impl SegmentCheck {
    /// Checks a segment's long page header (its first 40 bytes).
    ///
    /// # Errors
    /// `Integrity` naming the object and what differs.
    fn verify(&self, key: &str, head: &[u8]) -> Result<()> {
        let bad = |why: String| {
            Error::new(ErrorKind::Integrity, format!("{key}: {why}"))
                .hint("do not use this object: the repository holds a segment of another cluster or another position under this name; restore it from a copy of the repository")
        };
        let h = LongPageHeader::parse(head).map_err(|e| bad(format!("not a WAL segment: {e}")))?;
        if h.system_identifier.to_string() != self.identity.system_identifier {
            return Err(bad(format!(
                "the segment belongs to database system {}, the repository to {}",
                h.system_identifier, self.identity.system_identifier
            )));
        }
        if u64::from(h.segment_size) != self.identity.wal_segment_size {
            return Err(bad(format!(
                "the segment is of {}-byte segments, the repository of {}",
                h.segment_size, self.identity.wal_segment_size
            )));
        }
        if self.wal.segment_number(u64::from(h.segment_size)) != Some(h.segment_number()) {
            return Err(bad("its first page belongs to another segment".into()));
        }
        Ok(())
    }
}

fn write_all(out: &mut File, data: &[u8], tmp: &Path) -> Result<()> {
    out.write_all(data)
        .map_err(|e| local_io(format!("cannot write {}", tmp.display()), &e))
}

/// A blocking `Read` over the byte chunks an async task sends.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = self.cur.len().min(out.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_outage_answers_not_available_on_a_standby_only() {
        assert_eq!(exit_code_for(ErrorKind::Storage, true), 1);
        assert_eq!(exit_code_for(ErrorKind::Storage, false), 206);
        assert_eq!(exit_code_for(ErrorKind::NotFound, false), 1);
        // Everything that is not an outage still stops a standby: a tampered object, a
        // wrong key, a missing repository must not be retried as if it would go away.
        for kind in [
            ErrorKind::Integrity,
            ErrorKind::Key,
            ErrorKind::Config,
            ErrorKind::NoRepository,
            ErrorKind::LocalIo,
        ] {
            assert!(exit_code_for(kind, true) > 125, "{kind:?}");
        }
    }

    #[test]
    fn standby_is_found_from_the_pg_wal_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("pg_wal")).expect("mkdir");
        let dest = data.join("pg_wal").join("RECOVERYXLOG");
        assert!(!is_standby(&dest), "no PG_VERSION, no standby.signal");
        std::fs::write(data.join("standby.signal"), "").expect("write");
        assert!(
            !is_standby(&dest),
            "not a data directory without PG_VERSION"
        );
        std::fs::write(data.join("PG_VERSION"), "15\n").expect("write");
        assert!(is_standby(&dest));
        std::fs::remove_file(data.join("standby.signal")).expect("rm");
        std::fs::write(data.join("recovery.signal"), "").expect("write");
        assert!(!is_standby(&dest), "recovery.signal is not a standby");
        // A path outside any pg_wal falls back to the current directory (the test's is not
        // a data directory).
        std::fs::write(data.join("standby.signal"), "").expect("write");
        assert!(!is_standby(&dir.path().join("elsewhere")));
    }
}
