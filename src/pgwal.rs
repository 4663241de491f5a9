//! The `pg_wal` directory PostgreSQL hands `%p` in, and walseal's own state beside the WAL:
//! `pg_wal/.walseal/` holds push-ahead records (`pushed/`) and the prefetch spool
//! (`prefetch/`).
//!
//! Why there: the state must be on the file system of `pg_wal` (the spool is renamed into
//! place), private to the cluster's OS user like the WAL itself, and out of base backups
//! (BASE_BACKUP sends only `archive_status` and `summaries` of `pg_wal`'s subdirectories);
//! PostgreSQL itself ignores names in `pg_wal` that are not WAL file names.
//!
//! Nothing here is trusted because of where it lies: every state file carries an HMAC under
//! a key derived from the host's secret ([`StateKey`]) over what it claims, including the
//! identity (device, inode, size, times) of the file it speaks for, so a file replaced,
//! changed or planted afterwards no longer matches and is ignored.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;

use crate::error::{local_io, Result};
use crate::keys::Keyring;

/// Name of walseal's state directory inside `pg_wal`.
pub const STATE_DIR: &str = ".walseal";

/// A `pg_wal` directory.
#[derive(Debug, Clone)]
pub struct PgWal {
    dir: PathBuf,
}

impl PgWal {
    /// The `pg_wal` of a `wal-push` path: `%p`'s directory when it holds `archive_status`.
    pub fn of_push_path(path: &Path) -> Option<PgWal> {
        let dir = parent_of(path);
        dir.join("archive_status").is_dir().then_some(PgWal { dir })
    }

    /// The `pg_wal` of a `wal-fetch` destination: `%p`'s directory when it is named `pg_wal`.
    pub fn of_fetch_dest(dest: &Path) -> Option<PgWal> {
        let dir = parent_of(dest);
        let named = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n == "pg_wal"))
            .unwrap_or(false)
            || dir.file_name().is_some_and(|n| n == "pg_wal");
        (named && dir.is_dir()).then_some(PgWal { dir })
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (lexically `pg_wal`'s parent: `pg_wal` may be a symlink).
    pub fn data_dir(&self) -> PathBuf {
        match self.dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Whether the cluster is in recovery: its data directory holds `recovery.signal` or
    /// `standby.signal` (PostgreSQL removes both when recovery ends).
    pub fn in_recovery(&self) -> bool {
        let data = self.data_dir();
        data.join("recovery.signal").exists() || data.join("standby.signal").exists()
    }

    /// `pg_wal/.walseal/<sub>`, created owner-only if missing. A state directory that is a
    /// symlink, or not ours, is refused (`None`): walseal then works without its state.
    pub fn state_dir(&self, sub: &str) -> Option<PathBuf> {
        let top = self.dir.join(STATE_DIR);
        let dir = top.join(sub);
        for d in [&top, &dir] {
            let _ = std::fs::DirBuilder::new().mode(0o700).create(d);
            let meta = std::fs::symlink_metadata(d).ok()?;
            if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
                tracing::warn!(
                    "ignoring {}: not a directory owned by this user",
                    d.display()
                );
                return None;
            }
        }
        Some(dir)
    }

    /// The state directory `pg_wal/.walseal/<sub>` if it exists (nothing is created).
    /// Both components must be real directories owned by this user: a planted
    /// `.walseal` symlink must not make the spool's removal reach outside `pg_wal`.
    pub fn existing_state_dir(&self, sub: &str) -> Option<PathBuf> {
        let top = self.dir.join(STATE_DIR);
        let dir = top.join(sub);
        let me = rustix::process::geteuid().as_raw();
        [&top, &dir]
            .iter()
            .all(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == me))
            .then_some(dir)
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What identifies one version of a file: a replaced or rewritten file differs in at least
/// one field (`ctime` changes on every write, rename and attribute change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    /// The identity of the file at `path` (not following a final symlink), if it is a
    /// regular file.
    pub fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::symlink_metadata(path).ok()?;
        m.is_file().then(|| FileId::from_meta(&m))
    }

    fn from_meta(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// The fields as text, for a MAC.
    fn text(&self, with_ctime: bool) -> String {
        let ctime = if with_ctime { self.ctime_ns } else { 0 };
        format!(
            "{} {} {} {} {}",
            self.dev, self.ino, self.size, self.mtime_ns, ctime
        )
    }
}

/// The MAC key of the state files, bound to the repository location (a spool or record made
/// for another repository or key does not verify).
pub struct StateKey(hmac::Key);

impl StateKey {
    /// The key for `keyring` and the configured repository URL; `None` on a host holding
    /// no secret.
    pub fn new(keyring: &Keyring, repo_url: &str) -> Option<StateKey> {
        keyring.local_state_key(repo_url.as_bytes()).map(StateKey)
    }

    fn tag(&self, kind: &str, fields: &str) -> String {
        let t = hmac::sign(&self.0, format!("{kind}\n{fields}").as_bytes());
        crate::secret::hex_encode(t.as_ref())
    }

    fn verify(&self, kind: &str, fields: &str, tag: &str) -> bool {
        let mut bytes = [0u8; 32];
        if crate::secret::hex_decode_into(tag, &mut bytes).is_none() {
            return false;
        }
        hmac::verify(&self.0, format!("{kind}\n{fields}").as_bytes(), &bytes).is_ok()
    }
}

/// A state file's text: `walseal-state 1`, the kind, the fields, and their MAC.
pub fn encode_state(
    key: &StateKey,
    kind: &str,
    fields: &[(&str, String)],
    id: &FileId,
    with_ctime: bool,
) -> String {
    let body = state_body(fields, id, with_ctime);
    format!(
        "walseal-state 1 {kind}\n{body}mac {}\n",
        key.tag(kind, &body)
    )
}

fn state_body(fields: &[(&str, String)], id: &FileId, with_ctime: bool) -> String {
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!("{k} {v}\n"));
    }
    body.push_str(&format!("file {}\n", id.text(with_ctime)));
    body
}

/// Checks a state file's text of `kind`: its MAC, that its fields are exactly `fields`
/// except those named in `take` (returned in order), and that it speaks for the file
/// identified by `id`. Pure: every input is untrusted.
pub fn decode_state(
    key: &StateKey,
    kind: &str,
    text: &str,
    expect: &[(&str, String)],
    take: &[&str],
    id: &FileId,
    with_ctime: bool,
) -> Option<Vec<String>> {
    let rest = text.strip_prefix(&format!("walseal-state 1 {kind}\n"))?;
    let (body, mac_line) = rest.rsplit_once("mac ")?;
    let tag = mac_line.strip_suffix('\n')?;
    if !key.verify(kind, body, tag) {
        return None;
    }
    let mut taken = Vec::new();
    let mut lines = body.lines();
    for (k, v) in expect {
        let (lk, lv) = lines.next()?.split_once(' ')?;
        if lk != *k {
            return None;
        }
        if take.contains(k) {
            taken.push(lv.to_string());
        } else if lv != v {
            return None;
        }
    }
    let (lk, lv) = lines.next()?.split_once(' ')?;
    if lk != "file" || lv != id.text(with_ctime) || lines.next().is_some() {
        return None;
    }
    Some(taken)
}

/// Writes `text` to `path` atomically (a temporary beside it, then rename), owner-only.
///
/// # Errors
/// `LocalIo`.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local_io(format!("cannot create {}", tmp.display()), &e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| local_io(format!("cannot write {}", tmp.display()), &e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        local_io(format!("cannot rename {}", tmp.display()), &e)
    })
}

/// A non-blocking exclusive lock on `path` (created owner-only), held while the returned
/// file is open; `None` if another process holds it.
pub fn try_lock(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(f)
}

/// Removes temporary files (`.<anything>.<pid>.tmp`) in `dir` whose process is gone.
pub fn remove_dead_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = temp_pid(name) {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The pid in a temporary file name `.<name>.<pid>.tmp`.
pub fn temp_pid(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    inner.rsplit_once('.')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn key(seed: u8) -> StateKey {
        let ring = Keyring::new(vec![MasterKey::from_bytes(zeroize::Zeroizing::new(
            [seed; 32],
        ))])
        .unwrap();
        StateKey::new(&ring, "file:///r").unwrap()
    }

    fn id() -> FileId {
        FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        }
    }

    #[test]
    fn state_files_verify_only_unchanged_and_for_the_same_file_and_key() {
        let k = key(1);
        let fields = [("name", "A".to_string()), ("len", "10".to_string())];
        let text = encode_state(&k, "pushed", &fields, &id(), true);
        assert_eq!(
            decode_state(&k, "pushed", &text, &fields, &["len"], &id(), true),
            Some(vec!["10".to_string()])
        );
        // another file, another key, another kind, another name, an edited field
        let other = FileId {
            ctime_ns: 6,
            ..id()
        };
        assert!(decode_state(&k, "pushed", &text, &fields, &[], &other, true).is_none());
        assert!(decode_state(&key(2), "pushed", &text, &fields, &[], &id(), true).is_none());
        assert!(decode_state(&k, "spool", &text, &fields, &[], &id(), true).is_none());
        let renamed = [("name", "B".to_string()), ("len", "10".to_string())];
        assert!(decode_state(&k, "pushed", &text, &renamed, &[], &id(), true).is_none());
        let edited = text.replace("len 10", "len 11");
        assert!(decode_state(&k, "pushed", &edited, &fields, &["len"], &id(), true).is_none());
        for cut in 0..text.len() {
            assert!(
                decode_state(&k, "pushed", &text[..cut], &fields, &["len"], &id(), true).is_none()
            );
        }
        // without ctime (a record that survives PostgreSQL's own renames of .ready files)
        let loose = encode_state(&k, "pushed", &fields, &id(), false);
        assert!(decode_state(&k, "pushed", &loose, &fields, &[], &other, false).is_some());
    }

    #[test]
    fn a_state_directory_behind_a_symlink_is_not_ours() {
        let base = tempfile::tempdir().unwrap();
        let pg_wal = base.path().join("pg_wal");
        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        std::fs::create_dir_all(elsewhere.join("prefetch")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pg_wal.join(STATE_DIR)).unwrap();
        let w = PgWal::of_push_path(&pg_wal.join("000000010000000000000001")).unwrap();
        assert!(w.existing_state_dir("prefetch").is_none());
        assert!(w.state_dir("prefetch").is_none());
        std::fs::remove_file(pg_wal.join(STATE_DIR)).unwrap();
        assert!(w.state_dir("prefetch").is_some());
        assert!(w.existing_state_dir("prefetch").is_some());
    }

    #[test]
    fn temp_names() {
        assert_eq!(temp_pid(".000000010000000000000001.123.tmp"), Some(123));
        assert_eq!(temp_pid(".x.tmp"), None);
        assert_eq!(temp_pid("000000010000000000000001"), None);
    }
}
