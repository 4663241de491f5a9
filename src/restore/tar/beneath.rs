//! Opening and creating paths strictly beneath a directory handle.
//!
//! Every path is resolved relative to an open directory with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: a symbolic link anywhere on the path (one
//! planted in the destination beforehand, or the tablespace links the extractor itself makes)
//! fails the call with `ELOOP` instead of redirecting the write, and no path can climb out.
//! Kernels before 5.6 (or seccomp filters) without `openat2` get the same guarantee one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`. New entries are made with
//! `mkdirat`/`symlinkat` relative to such a handle, and modes are set with `fchmod` on the
//! opened descriptor, never by path. std has no `openat`; rustix gives these calls as safe
//! functions, so the crate stays `forbid(unsafe_code)`.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Set once `openat2` turned out to be missing: later calls walk components directly.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Flags that open a directory for `fchmod`, `mkdirat` and `fsync`.
pub(super) const DIR: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

/// Opens `rel` (components joined by `/`, none empty, `.` or `..`) beneath `dir`, resolving
/// no symbolic link. `O_CLOEXEC` and `O_NOFOLLOW` are always added.
///
/// # Errors
/// `ELOOP` for a symbolic link on the path, `EXDEV` for a path leaving `dir`, and the usual.
pub(super) fn open(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rfs::openat2(dir, rel, flags, mode, resolve) {
            // ENOSYS: a kernel before 5.6; EPERM: a seccomp filter that does not know it.
            Err(Errno::NOSYS | Errno::PERM) => {
                tracing::debug!("openat2 unavailable: resolving paths one component at a time");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    open_walk(dir, rel, flags, mode)
}

/// [`open`] without `openat2`: each directory on the way is opened with `O_NOFOLLOW |
/// O_DIRECTORY` relative to the previous one, so a symbolic link fails with `ELOOP` or
/// `ENOTDIR`.
pub(super) fn open_walk(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let mut parts = rel.split(|b| *b == b'/').peekable();
    let mut cur: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        if matches!(part, b"" | b"." | b"..") {
            return Err(Errno::XDEV);
        }
        let at = cur.as_ref().map_or(dir, AsFd::as_fd);
        let last = parts.peek().is_none();
        let (f, m) = if last {
            (flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode)
        } else {
            (DIR | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        };
        cur = Some(rfs::openat(at, part, f, m)?);
    }
    cur.ok_or(Errno::INVAL)
}

/// Opens directory `rel` beneath `dir`, first creating what is missing of it (mode 0700, as
/// PostgreSQL wants its directories).
///
/// # Errors
/// As [`open`]; `ENOTDIR` if a component is not a directory.
pub(super) fn make_dirs(dir: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, Errno> {
    match open(dir, rel, DIR, Mode::empty()) {
        Err(Errno::NOENT) => {}
        other => return other,
    }
    let mut cur: Option<OwnedFd> = None;
    for part in rel.split(|b| *b == b'/') {
        let at = cur.as_ref().map_or(dir, AsFd::as_fd);
        cur = Some(make_dir(at, part)?);
    }
    cur.ok_or(Errno::INVAL)
}

/// Creates directory `name` in `parent` unless it exists, and opens it (not through a link).
///
/// # Errors
/// As [`open`].
pub(super) fn make_dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    match rfs::mkdirat(parent, name, Mode::from(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    open(parent, name, DIR, Mode::empty())
}

/// Alignment of memory, file offsets and lengths for O_DIRECT (covers 512- and 4096-byte
/// logical blocks).
pub(super) const DIRECT_ALIGN: usize = 4096;
/// Files smaller than this go through the page cache: O_DIRECT buys nothing for them.
pub(super) const DIRECT_MIN: u64 = 64 * 1024;

/// A file being restored. Large files are written with O_DIRECT: a restore writes the whole
/// cluster once and reads none of it back, so the page cache only costs time (on VMs,
/// first-touch page-cache memory is several times slower than the disk). The unaligned tail
/// of a file goes through the page cache (O_DIRECT cleared on the same descriptor with
/// `fcntl`); a file system that refuses O_DIRECT turns it off for the rest of the restore.
pub(super) struct OutFile {
    file: File,
    direct: bool,
    written: u64,
    /// The archive's mode, set at [`OutFile::finish`] when it lacks owner write (the file is
    /// created writable by its owner so that it can be written).
    mode: u32,
}

impl OutFile {
    /// Creates `name` (which must not exist) in `parent`.
    ///
    /// # Errors
    /// `EEXIST` if it exists, and what [`open`] returns.
    pub(super) fn create(
        parent: BorrowedFd<'_>,
        name: &[u8],
        mode: u32,
        size: u64,
        direct: &mut bool,
    ) -> io::Result<Self> {
        let create = |extra: OFlags| {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | extra;
            open(parent, name, flags, Mode::from(mode | 0o200))
        };
        let out = |fd: OwnedFd, direct: bool| OutFile {
            file: File::from(fd),
            direct,
            written: 0,
            mode,
        };
        if *direct && size >= DIRECT_MIN {
            match create(OFlags::DIRECT) {
                Ok(fd) => return Ok(out(fd, true)),
                Err(Errno::INVAL) => {
                    // Linux creates the file before it refuses O_DIRECT (EEXIST would have
                    // come first had it existed): remove ours and open it again, buffered.
                    tracing::debug!("O_DIRECT refused: writing through the page cache");
                    match rfs::unlinkat(parent, name, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                    *direct = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out(create(OFlags::empty())?, false))
    }

    /// Appends `data`, which starts at an aligned address; every call but a file's last
    /// passes a multiple of [`DIRECT_ALIGN`] bytes.
    ///
    /// # Errors
    /// Write failures.
    pub(super) fn write(&mut self, data: &[u8], direct: &mut bool) -> io::Result<()> {
        let mut rest = data;
        if self.direct {
            let aligned = data.len() - data.len() % DIRECT_ALIGN;
            match self.file.write_all(&data[..aligned]) {
                Ok(()) => {
                    self.written += aligned as u64;
                    rest = &data[aligned..];
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("O_DIRECT write refused: writing through the page cache");
                    *direct = false;
                    // A partial write may have moved the offset: write it all again.
                    self.file.seek(io::SeekFrom::Start(self.written))?;
                }
                Err(e) => return Err(e),
            }
            if !rest.is_empty() {
                // The tail (or everything, after a refusal) goes through the page cache, at
                // the offset reached so far.
                let flags = rfs::fcntl_getfl(&self.file)?;
                rfs::fcntl_setfl(&self.file, flags.difference(OFlags::DIRECT))?;
                self.direct = false;
            }
        }
        self.file.write_all(rest)?;
        self.written += rest.len() as u64;
        Ok(())
    }

    /// Gives the file its archive mode if creating it needed owner write, and closes it.
    ///
    /// # Errors
    /// `fchmod` failures.
    pub(super) fn finish(self) -> io::Result<()> {
        if self.mode & 0o200 == 0 {
            rfs::fchmod(&self.file, Mode::from(self.mode))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_and_openat2_refuse_symlinks_on_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let dir = File::open(&root).unwrap();
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        for opener in [open, open_walk] {
            let got = opener(dir.as_fd(), b"evil/x", create, Mode::from(0o600));
            assert!(matches!(got, Err(Errno::LOOP | Errno::NOTDIR)), "{got:?}");
            let got = opener(dir.as_fd(), b"evil", DIR, Mode::empty());
            assert!(matches!(got, Err(Errno::LOOP | Errno::NOTDIR)), "{got:?}");
            assert!(opener(dir.as_fd(), b"../outside/x", create, Mode::from(0o600)).is_err());
            opener(dir.as_fd(), b"d", DIR, Mode::empty()).unwrap();
        }
        assert!(matches!(
            make_dirs(dir.as_fd(), b"evil/sub"),
            Err(Errno::LOOP | Errno::NOTDIR)
        ));
        make_dirs(dir.as_fd(), b"d/e/f").unwrap();
        assert!(root.join("d/e/f").is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
