//! A strict ustar reader for the archives BASE_BACKUP produces, writing only beneath one open
//! directory handle.
//!
//! A base backup holds regular files, directories and, in base.tar only, the tablespace links
//! `pg_tblspc/<oid>`. Anything else is refused as malformed before anything is written for
//! it: other symbolic links, hard links, devices, FIFOs, names that are absolute or climb with
//! `..`, a file the backup manifest does not list or whose size differs from it, a file
//! written twice, a path under a listed file or under a tablespace link. A tablespace link's
//! target is never taken from the archive: it is the location the backup record gives for
//! that tablespace (after `--tablespace-map`). Every path is resolved beneath the destination
//! handle without following any symbolic link (see [`beneath`]), so neither a link in the
//! archive nor one already in the destination can redirect a write. The extractor is a pure
//! function of the bytes and the handle, so it can be fuzzed into a scratch directory.

mod beneath;
mod header;
pub mod incremental;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use self::beneath::{OutFile, DIRECT_ALIGN};
use self::header::{lossy, Header, Kind, BLOCK_LEN};
use crate::error::{local_io, Error, ErrorKind, Result};

/// A regular file written by [`extract`].
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// The path the backup manifest gives it (with the archive's prefix, lossily decoded).
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// CRC-32C of the content.
    pub crc32c: u32,
}

/// Why a member is refused; the text follows "backup archive NAME is malformed: ".
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("the header at byte {0} has a bad checksum")]
    Checksum(u64),
    #[error("member {0:?} has an unreadable {1} field")]
    Number(String, &'static str),
    #[error("member {0:?} is not a plain relative path ({1})")]
    Name(String, &'static str),
    #[error("member {0:?} is {1}, which a PostgreSQL base backup never holds")]
    Type(String, &'static str),
    #[error("member {0:?} is a symbolic link, which a PostgreSQL base backup holds only as pg_tblspc/<oid>")]
    Symlink(String),
    #[error("member {0:?} is a {1} with a size of {2} bytes")]
    Sized(String, &'static str, u64),
    #[error("member {0:?} is not a file the backup manifest lists")]
    Unlisted(String),
    #[error("member {0:?} is {1}, which a walseal backup never holds")]
    Forbidden(String, &'static str),
    #[error("member {0:?} appears twice")]
    Duplicate(String),
    #[error("member {0:?} is {1} bytes, the backup manifest says {2}")]
    Size(String, u64, u64),
    #[error("member {0:?} lies under {1:?}, which the backup manifest lists as a file")]
    UnderFile(String, String),
    #[error("member {0:?} is a directory, which the backup manifest lists as a file")]
    DirOverFile(String),
    #[error("member {0:?} lies where the link of tablespace {1} goes")]
    UnderLink(String, u32),
    #[error("it has no link pg_tblspc/{0} for tablespace {0}")]
    MissingLink(u32),
    #[error("it ends without its end-of-archive blocks")]
    NoEnd,
    #[error("incremental file {0:?} cannot be applied: {1}")]
    Incremental(String, String),
}

/// A destination directory (PGDATA or a tablespace location), opened once: everything the
/// extractor makes is made beneath this handle.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens directory `path`. Links in `path` itself are followed: where the destination is
    /// is the operator's choice (PGDATA) or the backup record's (a tablespace location).
    ///
    /// # Errors
    /// `LocalIo` if it cannot be opened as a directory.
    pub fn open(path: &Path) -> Result<Root> {
        let fd = rfs::open(path, beneath::DIR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| local_io(format!("cannot open {}", path.display()), &e.into()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Another handle on the same open directory.
    ///
    /// # Errors
    /// `LocalIo` if the descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<Root> {
        Ok(Root {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| local_io(format!("cannot open {}", self.path.display()), &e))?,
            path: self.path.clone(),
        })
    }

    /// The path the handle was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file, or with `dir` the empty directory, `rel` beneath the root without
    /// following any link; one already gone is fine.
    ///
    /// # Errors
    /// `LocalIo` (a directory that is not empty, a link on the way, the usual).
    pub fn remove(&self, rel: &[u8], dir: bool) -> Result<()> {
        let (parent, name) = split_last(rel);
        let what = || self.path.join(lossy(rel));
        let fail = |e: Errno| local_io(format!("cannot remove {}", what().display()), &e.into());
        let opened;
        let at = if parent.is_empty() {
            self.fd.as_fd()
        } else {
            match beneath::open(self.fd.as_fd(), parent, beneath::DIR, Mode::empty()) {
                Ok(fd) => {
                    opened = fd;
                    opened.as_fd()
                }
                Err(Errno::NOENT) => return Ok(()),
                Err(e) => return Err(fail(e)),
            }
        };
        let flags = if dir {
            rfs::AtFlags::REMOVEDIR
        } else {
            rfs::AtFlags::empty()
        };
        match rfs::unlinkat(at, name, flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    /// Opens the regular file `rel` beneath the root for reading, following no link.
    ///
    /// # Errors
    /// `LocalIo`.
    pub fn open_file(&self, rel: &[u8]) -> Result<std::fs::File> {
        beneath::open(self.fd.as_fd(), rel, OFlags::RDONLY, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|e| {
                local_io(
                    format!("cannot open {}", self.path.join(lossy(rel)).display()),
                    &e.into(),
                )
            })
    }

    /// Flushes everything written on the file system holding the root to stable storage.
    ///
    /// One `syncfs(2)` instead of pg_basebackup's fsync of each file and directory: it covers
    /// every file, directory entry and link the restore wrote on that file system (including
    /// the O_DIRECT writes' metadata) in one call, where a million-file cluster would cost a
    /// million fsyncs. Its price is flushing other dirty data on that file system too. Linux
    /// reports writeback errors through syncfs since 5.8.
    ///
    /// # Errors
    /// `LocalIo` if the kernel reports a write-back error.
    pub fn sync(&self) -> Result<()> {
        rfs::syncfs(&self.fd).map_err(|e| {
            local_io(
                format!("cannot sync the restored files in {}", self.path.display()),
                &e.into(),
            )
        })
    }
}

/// The regular files the backup manifest lists, by path (with each archive's prefix), each
/// with its size and the caller's data for it; marked as they are written.
#[derive(Debug)]
pub struct Listing<T> {
    files: HashMap<Vec<u8>, Listed<T>>,
}

#[derive(Debug)]
struct Listed<T> {
    size: u64,
    written: bool,
    data: T,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            files: HashMap::new(),
        }
    }
}

impl<T> Listing<T> {
    /// Lists `path` with `size`; `false` if it was listed already.
    pub fn insert(&mut self, path: Vec<u8>, size: u64, data: T) -> bool {
        let listed = Listed {
            size,
            written: false,
            data,
        };
        self.files.insert(path, listed).is_none()
    }

    /// How many files are listed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is listed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Every listed path.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.files.keys().map(Vec::as_slice)
    }

    /// The listed files no archive held so far.
    pub fn unwritten(&self) -> impl Iterator<Item = &[u8]> {
        self.files
            .iter()
            .filter(|(_, l)| !l.written)
            .map(|(p, _)| p.as_slice())
    }
}

/// What one archive may create beneath its [`Root`].
#[derive(Debug)]
pub struct Policy<'a, T> {
    /// The archive's name, for messages (`base.tar`, `16385.tar`).
    pub archive: &'a str,
    /// What the manifest puts before the archive's paths: empty for base.tar,
    /// `pg_tblspc/<oid>/` for a tablespace archive.
    pub prefix: &'a [u8],
    /// The manifest's files, shared by all archives of the backup.
    pub listing: &'a mut Listing<T>,
    /// For base.tar, the tablespace links it must hold, by oid, with the target each gets;
    /// empty for every other archive (which then may hold no link).
    pub links: &'a BTreeMap<u32, PathBuf>,
    /// Write large files with O_DIRECT.
    pub direct_io: bool,
    /// How the archive's files meet what earlier archives of a chain wrote.
    pub layer: Layer,
    /// Tablespace links the archive may hold but that are not made (tablespaces a rebuilt
    /// chain's newest backup no longer has).
    pub skip_links: &'a BTreeSet<u32>,
    /// Every directory the archive holds, by manifest path (filled by [`extract`]).
    pub dirs: &'a mut Vec<Vec<u8>>,
}

/// Where an archive goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Into an empty destination (a full backup, the first of a chain, or `restore --raw`):
    /// every member is new, and an `INCREMENTAL.*` file is written as it is.
    Fresh,
    /// Over the files of the chain's earlier backups: a full file replaces the earlier
    /// version, an `INCREMENTAL.<name>` file is applied to `<name>` (see [`incremental`]),
    /// and a tablespace link may already be there (pointing where the policy says).
    Over {
        /// The chain's newest backup (its incremental files set each file's length).
        newest: bool,
        /// The cluster's page geometry.
        geometry: incremental::Geometry,
    },
}

/// Bytes moved per read and write.
const BLOCK: usize = 1 << 20;

/// Extracts a tar stream beneath `root` as `policy` allows; `on_file` is called with every
/// regular file written and its listing data (e.g. to compare the CRC with the manifest).
/// Reads `r` to its end, so a sealed source authenticates its final chunk.
///
/// # Errors
/// `Integrity` for a malformed or refused member (see the module docs) or a path blocked by
/// a link or file in the destination; `LocalIo` for write failures; errors from `r`
/// (converted with `map_read`) and from `on_file`.
pub fn extract<R: Read, T>(
    mut r: R,
    root: &Root,
    policy: &mut Policy<'_, T>,
    on_file: &mut dyn FnMut(FileInfo, &T) -> Result<()>,
    map_read: &dyn Fn(io::Error) -> Error,
) -> Result<()> {
    let mut x = Extractor {
        root,
        direct: policy.direct_io,
        policy,
        offset: 0,
        parent: None,
        links_made: BTreeSet::new(),
    };
    let mut block = [0u8; BLOCK_LEN];
    // One 1 MiB block, aligned for O_DIRECT (were it not, O_DIRECT writes fail with EINVAL
    // and the restore goes on buffered).
    let mut backing = vec![0u8; BLOCK + DIRECT_ALIGN];
    let start = backing
        .as_ptr()
        .align_offset(DIRECT_ALIGN)
        .min(DIRECT_ALIGN);
    let buf = &mut backing[start..start + BLOCK];
    loop {
        if !read_block(&mut r, &mut block).map_err(map_read)? {
            return Err(x.malformed(Malformed::NoEnd));
        }
        if block.iter().all(|b| *b == 0) {
            // End of archive: drain the rest so the source is read (and authenticated) to its end.
            io::copy(&mut r, &mut io::sink()).map_err(map_read)?;
            return x.finish();
        }
        let h = Header::parse(&block, x.offset).map_err(|m| x.malformed(m))?;
        x.offset += BLOCK_LEN as u64;
        match h.kind {
            Kind::File => x.file(&h, &mut r, buf, on_file, map_read)?,
            Kind::Dir => x.dir(&h)?,
            Kind::Symlink => x.link(&h)?,
            Kind::Other(what) => return Err(x.malformed(Malformed::Type(lossy(&h.path), what))),
        }
    }
}

/// The state of one [`extract`] call.
struct Extractor<'r, 'p, 'a, T> {
    root: &'r Root,
    policy: &'p mut Policy<'a, T>,
    /// O_DIRECT still in use (a refusal turns it off for the rest of the archive).
    direct: bool,
    /// Bytes of the archive consumed.
    offset: u64,
    /// The directory the last file went into: PostgreSQL sends a directory's files together.
    parent: Option<(Vec<u8>, OwnedFd)>,
    links_made: BTreeSet<u32>,
}

impl<T> Extractor<'_, '_, '_, T> {
    fn malformed(&self, m: Malformed) -> Error {
        Error::new(
            ErrorKind::Integrity,
            format!("backup archive {} is malformed: {m}", self.policy.archive),
        )
        .hint("the backup was altered; restore another backup")
    }

    /// The error for a failed call on `rel`: a path blocked by a link, a non-directory or an
    /// existing entry is a refusal (`Integrity`), anything else a local I/O error.
    fn fs_error(&self, what: &str, rel: &[u8], e: io::Error) -> Error {
        let shown = self.root.path.join(lossy(rel));
        let blocked = [Errno::LOOP, Errno::XDEV, Errno::NOTDIR, Errno::EXIST]
            .iter()
            .any(|b| e.raw_os_error() == Some(b.raw_os_error()));
        if blocked {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "backup archive {}: cannot {what} {}: a symbolic link, file or directory is in the way ({e})",
                    self.policy.archive,
                    shown.display()
                ),
            )
            .hint("restore into an empty directory; if it was empty, the backup was altered")
        } else {
            local_io(format!("cannot {what} {}", shown.display()), &e)
        }
    }

    /// The member's path as the manifest names it.
    fn key(&self, path: &[u8]) -> Vec<u8> {
        [self.policy.prefix, path].concat()
    }

    /// Refuses a file or directory under a tablespace link or under a listed file.
    fn check_placement(&self, h: &Header, key: &[u8]) -> Result<()> {
        let mut parts = h.path.splitn(3, |b| *b == b'/');
        if let (Some(b"pg_tblspc"), Some(oid)) = (parts.next(), parts.next()) {
            if let Some(oid) = tablespace_oid(oid).filter(|o| self.policy.links.contains_key(o)) {
                return Err(self.malformed(Malformed::UnderLink(lossy(&h.path), oid)));
            }
        }
        for (i, _) in key.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if self.policy.listing.files.contains_key(&key[..i]) {
                let m = Malformed::UnderFile(lossy(&h.path), lossy(&key[..i]));
                return Err(self.malformed(m));
            }
        }
        Ok(())
    }

    /// Opens (and caches) the parent directory `rel`, creating what is missing of it; the
    /// root for an empty `rel`.
    fn open_parent(&mut self, rel: &[u8]) -> Result<BorrowedFd<'_>> {
        if rel.is_empty() {
            return Ok(self.root.fd.as_fd());
        }
        if self.parent.as_ref().is_none_or(|(p, _)| p != rel) {
            let fd = beneath::make_dirs(self.root.fd.as_fd(), rel)
                .map_err(|e| self.fs_error("create directory", rel, e.into()))?;
            self.parent = Some((rel.to_vec(), fd));
        }
        match &self.parent {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Error::new(ErrorKind::Internal, "parent directory not open")),
        }
    }

    /// Checks a regular file against the manifest, writes it, and reports it to `on_file`.
    fn file<R: Read>(
        &mut self,
        h: &Header,
        r: &mut R,
        buf: &mut [u8],
        on_file: &mut dyn FnMut(FileInfo, &T) -> Result<()>,
        map_read: &dyn Fn(io::Error) -> Error,
    ) -> Result<()> {
        let key = self.key(&h.path);
        self.check_placement(h, &key)?;
        if let Some(why) = forbidden(&key) {
            return Err(self.malformed(Malformed::Forbidden(lossy(&h.path), why)));
        }
        let refusal = match self.policy.listing.files.get_mut(&key) {
            None => Some(Malformed::Unlisted(lossy(&h.path))),
            Some(l) if l.written => Some(Malformed::Duplicate(lossy(&h.path))),
            Some(l) if l.size != h.size => Some(Malformed::Size(lossy(&h.path), h.size, l.size)),
            Some(l) => {
                l.written = true;
                None
            }
        };
        if let Some(m) = refusal {
            return Err(self.malformed(m));
        }
        let (dir, name) = split_last(&h.path);
        let base = incremental::incremental_base(&key).map(|b| &name[name.len() - b.len()..]);
        let crc = match (self.policy.layer, base) {
            (Layer::Over { newest, geometry }, Some(base)) => {
                self.apply_incremental(h, dir, base, r, buf, map_read, (newest, geometry))?
            }
            (Layer::Over { .. }, None) => {
                self.remove_earlier(h, dir, name)?;
                self.write_file(h, dir, name, r, buf, map_read)?
            }
            (Layer::Fresh, _) => self.write_file(h, dir, name, r, buf, map_read)?,
        };
        let pad = (BLOCK_LEN as u64 - h.size % BLOCK_LEN as u64) % BLOCK_LEN as u64;
        r.read_exact(&mut buf[..pad as usize]).map_err(map_read)?;
        self.offset += h.size + pad;
        let info = FileInfo {
            path: lossy(&key),
            size: h.size,
            crc32c: crc,
        };
        match self.policy.listing.files.get(&key) {
            Some(l) => on_file(info, &l.data),
            None => Err(Error::new(ErrorKind::Internal, "listed file vanished")),
        }
    }

    /// Creates `name` in directory `dir` and copies the member's content into it; returns
    /// the content's CRC-32C.
    fn write_file<R: Read>(
        &mut self,
        h: &Header,
        dir: &[u8],
        name: &[u8],
        r: &mut R,
        buf: &mut [u8],
        map_read: &dyn Fn(io::Error) -> Error,
    ) -> Result<u32> {
        let mut direct = self.direct;
        let created = {
            let parent = self.open_parent(dir)?;
            OutFile::create(parent, name, h.mode, h.size, &mut direct)
        };
        self.direct = direct;
        let mut out = created.map_err(|e| self.fs_error("create", &h.path, e))?;
        let mut left = h.size;
        let mut crc = 0u32;
        while left > 0 {
            let want = usize::try_from(left).map_or(BLOCK, |l| l.min(BLOCK));
            r.read_exact(&mut buf[..want]).map_err(map_read)?;
            crc = crc32c::crc32c_append(crc, &buf[..want]);
            out.write(&buf[..want], &mut self.direct)
                .map_err(|e| self.fs_error("write", &h.path, e))?;
            left -= want as u64;
        }
        out.finish()
            .map_err(|e| self.fs_error("set the mode of", &h.path, e))?;
        Ok(crc)
    }

    /// Removes the earlier version of a file a chain's later backup holds in full.
    fn remove_earlier(&mut self, h: &Header, dir: &[u8], name: &[u8]) -> Result<()> {
        let parent = self.open_parent(dir)?;
        match rfs::unlinkat(parent, name, rfs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.fs_error("replace", &h.path, e.into())),
        }
    }

    /// Applies an incremental member to the file `base` in `dir`, which an earlier backup of
    /// the chain wrote; returns the member's CRC-32C (the manifest's is the member's).
    #[allow(clippy::too_many_arguments)]
    fn apply_incremental<R: Read>(
        &mut self,
        h: &Header,
        dir: &[u8],
        base: &[u8],
        r: &mut R,
        buf: &mut [u8],
        map_read: &dyn Fn(io::Error) -> Error,
        (newest, geo): (bool, incremental::Geometry),
    ) -> Result<u32> {
        let bad = |x: &Self, why: String| x.malformed(Malformed::Incremental(lossy(&h.path), why));
        let mut fixed = [0u8; incremental::FIXED_LEN];
        if h.size < fixed.len() as u64 {
            return Err(bad(
                self,
                "it is shorter than an incremental file's header".into(),
            ));
        }
        r.read_exact(&mut fixed).map_err(map_read)?;
        let n = incremental::block_count(&fixed, geo).map_err(|w| bad(self, w))?;
        if h.size < fixed.len() as u64 + 4 * u64::from(n) {
            return Err(bad(self, "its header is cut short".into()));
        }
        let mut head = fixed.to_vec();
        head.resize(fixed.len() + 4 * n as usize, 0);
        r.read_exact(&mut head[fixed.len()..]).map_err(map_read)?;
        let parsed = incremental::parse(&head, h.size, geo).map_err(|w| bad(self, w))?;
        let mut crc = crc32c::crc32c(&head);
        let pad = usize::try_from(parsed.header_len - head.len() as u64).unwrap_or(0);
        r.read_exact(&mut buf[..pad]).map_err(map_read)?;
        crc = crc32c::crc32c_append(crc, &buf[..pad]);
        let target = [dir, b"/".as_slice(), base].concat();
        let target = if dir.is_empty() {
            base.to_vec()
        } else {
            target
        };
        let opened = {
            let parent = self.open_parent(dir)?;
            beneath::open(parent, base, OFlags::RDWR, Mode::empty())
        };
        let file = match opened {
            Ok(fd) => std::fs::File::from(fd),
            Err(Errno::NOENT) => {
                let why = format!(
                    "no earlier backup of the chain holds {:?} for it to apply to",
                    lossy(&target)
                );
                return Err(bad(self, why));
            }
            Err(e) => return Err(self.fs_error("open", &target, e.into())),
        };
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(bad(
                self,
                format!("{:?} is not a regular file", lossy(&target)),
            ));
        }
        let bs = u64::from(geo.block_size);
        let io_err = |x: &Self, what: &str, e: io::Error| x.fs_error(what, &target, e);
        // Only whole pages of an earlier version count (pg_combinebackup reads a full file's
        // length in whole pages); the newest version drops every page from T on.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if !len.is_multiple_of(bs) {
            file.set_len(len - len % bs)
                .map_err(|e| io_err(self, "truncate", e))?;
        }
        if newest {
            file.set_len(u64::from(parsed.truncation) * bs)
                .map_err(|e| io_err(self, "truncate", e))?;
        }
        // Runs of consecutive pages (the server sends them in order) go out in one write of
        // up to the buffer's size.
        let page = usize::try_from(bs).unwrap_or(8192);
        let per_write = (buf.len() / page).max(1);
        let mut i = 0;
        while i < parsed.blocks.len() {
            let first = parsed.blocks[i];
            let mut run = 1;
            while run < per_write
                && i + run < parsed.blocks.len()
                && u64::from(parsed.blocks[i + run]) == u64::from(first) + run as u64
            {
                run += 1;
            }
            let bytes = &mut buf[..run * page];
            r.read_exact(bytes).map_err(map_read)?;
            crc = crc32c::crc32c_append(crc, bytes);
            std::os::unix::fs::FileExt::write_all_at(&file, bytes, u64::from(first) * bs)
                .map_err(|e| io_err(self, "write", e))?;
            i += run;
        }
        if newest {
            let want = u64::from(parsed.final_pages()) * bs;
            if file.metadata().map(|m| m.len()).unwrap_or(0) < want {
                file.set_len(want).map_err(|e| io_err(self, "extend", e))?;
            }
        }
        Ok(crc)
    }

    /// Makes a directory (owner rwx always: PostgreSQL needs it, and so do its files).
    fn dir(&mut self, h: &Header) -> Result<()> {
        if h.size != 0 {
            return Err(self.malformed(Malformed::Sized(lossy(&h.path), "directory", h.size)));
        }
        let key = self.key(&h.path);
        self.check_placement(h, &key)?;
        if self.policy.listing.files.contains_key(&key) {
            return Err(self.malformed(Malformed::DirOverFile(lossy(&h.path))));
        }
        self.policy.dirs.push(key);
        let (parent, name) = split_last(&h.path);
        let made = beneath::make_dir(self.open_parent(parent)?, name);
        let fd = made.map_err(|e| self.fs_error("create directory", &h.path, e.into()))?;
        rfs::fchmod(&fd, Mode::from(h.mode | 0o700))
            .map_err(|e| self.fs_error("set the mode of", &h.path, e.into()))
    }

    /// Makes a tablespace link, pointing where the policy says (the archive's target is
    /// ignored).
    fn link(&mut self, h: &Header) -> Result<()> {
        let links: &BTreeMap<u32, PathBuf> = self.policy.links;
        let oid = match h.path.strip_prefix(b"pg_tblspc/") {
            Some(digits) => tablespace_oid(digits),
            None => None,
        };
        if oid.is_some_and(|o| self.policy.skip_links.contains(&o)) && h.size == 0 {
            return Ok(());
        }
        let Some((oid, target)) = oid.and_then(|o| links.get_key_value(&o)) else {
            return Err(self.malformed(Malformed::Symlink(lossy(&h.path))));
        };
        if h.size != 0 {
            let m = Malformed::Sized(lossy(&h.path), "symbolic link", h.size);
            return Err(self.malformed(m));
        }
        if !self.links_made.insert(*oid) {
            return Err(self.malformed(Malformed::Duplicate(lossy(&h.path))));
        }
        let layer = self.policy.layer;
        let parent = self.open_parent(b"pg_tblspc")?;
        if layer != Layer::Fresh {
            // An earlier backup of the chain made it: it must point where this one says.
            match rfs::readlinkat(parent, oid.to_string(), Vec::new()) {
                Ok(t) if t.as_bytes() == target.as_os_str().as_encoded_bytes() => return Ok(()),
                Ok(_) => {
                    let e = io::Error::from_raw_os_error(Errno::EXIST.raw_os_error());
                    return Err(self.fs_error("create link", &h.path, e));
                }
                Err(_) => {}
            }
        }
        let parent = self.open_parent(b"pg_tblspc")?;
        rfs::symlinkat(target, parent, oid.to_string())
            .map_err(|e| self.fs_error("create link", &h.path, e.into()))
    }

    /// At the end of the archive: every tablespace link was made.
    fn finish(&self) -> Result<()> {
        match self
            .policy
            .links
            .keys()
            .find(|o| !self.links_made.contains(o))
        {
            Some(oid) => Err(self.malformed(Malformed::MissingLink(*oid))),
            None => Ok(()),
        }
    }
}

/// Why a data-directory file is refused even when the manifest lists it: walseal asks
/// `BASE_BACKUP` for neither WAL nor a tablespace map, so a backup holding them was forged.
/// A `tablespace_map` would make PostgreSQL re-point the tablespace links at startup, to any
/// directory; WAL files in `pg_wal` would be replayed without `wal-fetch` authenticating them.
fn forbidden(key: &[u8]) -> Option<&'static str> {
    if key == b"tablespace_map" {
        Some("a tablespace map (PostgreSQL would re-point the tablespace links to what it lists)")
    } else if key.starts_with(b"pg_wal/") {
        Some("a file in pg_wal (WAL comes from the archive, authenticated by wal-fetch)")
    } else {
        None
    }
}

/// The oid a `pg_tblspc/` entry names: canonical decimal digits only (`016384` is not 16384).
pub fn tablespace_oid(digits: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(digits).ok()?;
    let oid: u32 = text.parse().ok()?;
    (text.bytes().all(|b| b.is_ascii_digit()) && oid.to_string() == text).then_some(oid)
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn read_block<R: Read>(r: &mut R, block: &mut [u8; BLOCK_LEN]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < BLOCK_LEN {
        match r.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tar block cut short",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The tablespace the tests' base.tar links to.
    const TS: u32 = 16384;

    fn fix_checksum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h[..512].iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn header(name: &[u8], size: u64, kind: u8, link: &[u8], mode: u32) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        fix_checksum(&mut h);
        h
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    }

    /// A tar being built, and what its manifest lists (path with prefix, size).
    #[derive(Default, Clone)]
    struct Tar {
        bytes: Vec<u8>,
        listed: Vec<(Vec<u8>, u64)>,
    }

    impl Tar {
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.bytes.extend_from_slice(bytes);
            self
        }
        fn dir(self, name: &str, mode: u32) -> Self {
            self.raw(&header(name.as_bytes(), 0, b'5', b"", mode))
        }
        /// A listed file (under `prefix` in the manifest).
        fn file_in(mut self, prefix: &str, name: &str, data: &[u8], mode: u32) -> Self {
            let key = format!("{prefix}{}", name.trim_start_matches("./"));
            self.listed.push((key.into_bytes(), data.len() as u64));
            self.unlisted(name, data, mode)
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.file_in("", name, data, 0o600)
        }
        fn unlisted(self, name: &str, data: &[u8], mode: u32) -> Self {
            let h = header(name.as_bytes(), data.len() as u64, b'0', b"", mode);
            self.raw(&h).raw(&padded(data))
        }
        fn member(self, name: &str, kind: u8, link: &str) -> Self {
            self.raw(&header(name.as_bytes(), 0, kind, link.as_bytes(), 0o777))
        }
        fn end(self) -> Self {
            self.raw(&[0u8; 1024])
        }
    }

    /// A scratch directory: `dest` to extract into, `ts` (the record's tablespace location)
    /// and `outside` with a sentinel file; what lies outside `dest` is snapshotted.
    struct Scene {
        tmp: tempfile::TempDir,
        before: Vec<String>,
    }

    impl Scene {
        fn new() -> Scene {
            let tmp = tempfile::tempdir().unwrap();
            for d in ["dest", "ts", "outside"] {
                std::fs::create_dir(tmp.path().join(d)).unwrap();
            }
            let outside = tmp.path().join("outside");
            std::fs::write(outside.join("sentinel"), b"keep").unwrap();
            std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut s = Scene {
                tmp,
                before: Vec::new(),
            };
            s.before = s.outside_snapshot();
            s
        }
        fn dest(&self) -> PathBuf {
            self.tmp.path().join("dest")
        }
        fn ts(&self) -> PathBuf {
            self.tmp.path().join("ts")
        }
        fn outside(&self) -> PathBuf {
            self.tmp.path().join("outside")
        }
        /// Everything in the scratch directory but `dest`: names, types, modes, contents.
        fn outside_snapshot(&self) -> Vec<String> {
            let mut out = tree(self.tmp.path());
            out.retain(|l| !l.starts_with("dest/") && !l.starts_with("dest "));
            out
        }
        fn assert_outside_unchanged(&self) {
            assert_eq!(self.outside_snapshot(), self.before, "outside dest changed");
        }
        fn links(&self) -> BTreeMap<u32, PathBuf> {
            BTreeMap::from([(TS, self.ts())])
        }
        /// Extracts `tar` as base.tar (with the tablespace link allowed if `links`).
        fn run(&self, tar: &Tar, links: bool, direct: bool) -> Result<Vec<FileInfo>> {
            let mut listing = listing(tar);
            let links = if links { self.links() } else { BTreeMap::new() };
            run_into(&self.dest(), tar, &mut listing, &links, "", direct)
        }
    }

    fn listing(tar: &Tar) -> Listing<()> {
        let mut l = Listing::default();
        for (p, size) in &tar.listed {
            l.insert(p.clone(), *size, ());
        }
        l
    }

    fn run_into(
        dest: &Path,
        tar: &Tar,
        listing: &mut Listing<()>,
        links: &BTreeMap<u32, PathBuf>,
        prefix: &str,
        direct: bool,
    ) -> Result<Vec<FileInfo>> {
        run_layer(dest, tar, listing, links, prefix, direct, Layer::Fresh)
    }

    fn run_layer(
        dest: &Path,
        tar: &Tar,
        listing: &mut Listing<()>,
        links: &BTreeMap<u32, PathBuf>,
        prefix: &str,
        direct: bool,
        layer: Layer,
    ) -> Result<Vec<FileInfo>> {
        let root = Root::open(dest)?;
        let skip = BTreeSet::new();
        let mut dirs = Vec::new();
        let mut policy = Policy {
            archive: if prefix.is_empty() {
                "base.tar"
            } else {
                "16384.tar"
            },
            prefix: prefix.as_bytes(),
            listing,
            links,
            direct_io: direct,
            layer,
            skip_links: &skip,
            dirs: &mut dirs,
        };
        let mut files = Vec::new();
        extract(
            &tar.bytes[..],
            &root,
            &mut policy,
            &mut |f, _| {
                files.push(f);
                Ok(())
            },
            &|e| local_io("read", &e),
        )?;
        Ok(files)
    }

    /// `dir`'s tree, one line per entry: path, type, mode, content or link target.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
                let e = e.unwrap();
                let rel = rel.join(e.file_name());
                let p = dir.join(&rel);
                let m = std::fs::symlink_metadata(&p).unwrap();
                let mode = m.permissions().mode() & 0o7777;
                let what = if m.file_type().is_symlink() {
                    format!("-> {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(rel.clone());
                    format!("dir {mode:o}")
                } else {
                    let data = std::fs::read(&p).unwrap();
                    format!("file {mode:o} {:08x}", crc32c::crc32c(&data))
                };
                out.push(format!("{} {what}", rel.display()));
            }
        }
        out.sort();
        out
    }

    /// The extraction was refused as malformed (or blocked), with `needle` in the message.
    fn assert_refused<T: std::fmt::Debug>(got: Result<T>, needle: &str) {
        let e = got.expect_err("extraction must fail");
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }

    fn normal_tar() -> Tar {
        let big: Vec<u8> = (0..beneath::DIRECT_MIN * 2 + 100)
            .map(|i| (i * 7) as u8)
            .collect();
        Tar::default()
            .file("backup_label", b"START WAL LOCATION: 0/2000028\n")
            .dir("./pg_wal/", 0o700)
            .dir("base", 0o700)
            .dir("base/1", 0o750)
            .file("base/1/1259", b"hello")
            .file_in("", "base/1/big", &big, 0o400)
            .dir("pg_tblspc", 0o700)
            .member(&format!("pg_tblspc/{TS}/"), b'2', "/old/ts")
            .file("global/pg_control", b"control")
            .end()
    }

    #[test]
    fn a_normal_backup_restores_identically_with_and_without_direct_io() {
        let mut trees = Vec::new();
        for direct in [true, false] {
            let s = Scene::new();
            let base = normal_tar();
            let prefix = format!("pg_tblspc/{TS}/");
            let ts = Tar::default()
                .dir("PG_15_202209061", 0o700)
                .dir("PG_15_202209061/5", 0o700)
                .file_in(&prefix, "PG_15_202209061/5/16385", &[9u8; 70_000], 0o600)
                .end();
            let mut listing = listing(&base);
            for (p, size) in &ts.listed {
                listing.insert(p.clone(), *size, ());
            }
            let files = run_into(&s.dest(), &base, &mut listing, &s.links(), "", direct).unwrap();
            let ts_files = run_into(
                &s.ts(),
                &ts,
                &mut listing,
                &BTreeMap::new(),
                &prefix,
                direct,
            )
            .unwrap();
            assert_eq!(listing.unwritten().count(), 0);
            assert_eq!(files.len(), 4);
            assert_eq!(files[1].path, "base/1/1259");
            assert_eq!(files[1].crc32c, crc32c::crc32c(b"hello"));
            assert_eq!(ts_files[0].path, format!("{prefix}PG_15_202209061/5/16385"));
            let dest = s.dest();
            assert_eq!(std::fs::read(dest.join("base/1/1259")).unwrap(), b"hello");
            assert_eq!(
                std::fs::read_link(dest.join("pg_tblspc/16384")).unwrap(),
                s.ts(),
                "the record's location, not the archive's /old/ts"
            );
            let mode = |p: &str| {
                std::fs::metadata(dest.join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!((mode("base/1"), mode("base/1/big")), (0o750, 0o400));
            assert!(dest.join("pg_wal").is_dir());
            let tmp = s.tmp.path().display().to_string();
            let strip = |t: Vec<String>| -> Vec<String> {
                t.into_iter().map(|l| l.replace(&tmp, "$TMP")).collect()
            };
            trees.push((strip(tree(&dest)), strip(tree(&s.ts()))));
        }
        assert_eq!(trees[0], trees[1], "direct I/O on and off restore the same");
    }

    #[test]
    fn direct_io_writes_aligned_bodies_and_unaligned_tails_exactly() {
        // Sizes around the O_DIRECT threshold, the alignment and the 1 MiB block.
        let sizes = [
            100u64,
            (BLOCK as u64) + 77, // read-only: the tail is written after O_DIRECT is cleared
            beneath::DIRECT_MIN - 1,
            beneath::DIRECT_MIN,
            beneath::DIRECT_MIN + 1,
            (BLOCK as u64) * 2,
            (BLOCK as u64) * 2 + 4096 * 3 + 100,
        ];
        let mut tar = Tar::default();
        let mut want = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 31 + i as u64) as u8).collect();
            let mode = if i == 1 { 0o400 } else { 0o600 };
            tar = tar.file_in("", &format!("base/1/{i}"), &data, mode);
            want.push(data);
        }
        let tar = tar.end();
        for direct in [true, false] {
            let s = Scene::new();
            let files = s.run(&tar, false, direct).unwrap();
            for (i, data) in want.iter().enumerate() {
                let got = std::fs::read(s.dest().join(format!("base/1/{i}"))).unwrap();
                assert!(
                    got == *data,
                    "file {i} ({} bytes), direct {direct}",
                    data.len()
                );
                assert_eq!(files[i].crc32c, crc32c::crc32c(data));
            }
            let mode = std::fs::metadata(s.dest().join("base/1/1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o400, "the archive's read-only mode");
        }
    }

    #[test]
    fn sync_flushes_the_file_system_of_a_restored_root() {
        let s = Scene::new();
        let root = Root::open(&s.dest()).unwrap();
        s.run(&normal_tar(), true, true).unwrap();
        root.sync().unwrap();
        root.try_clone().unwrap().sync().unwrap();
        assert!(
            Root::open(&s.dest().join("base/1/1259")).is_err(),
            "a file is no root"
        );
    }

    #[test]
    fn a_symlink_then_a_directory_then_a_file_through_it_is_refused() {
        for links in [false, true] {
            let s = Scene::new();
            let tar = Tar::default()
                .member("a", b'2', "../outside")
                .dir("a", 0o777)
                .file("a/x", b"pwned")
                .end();
            assert_refused(s.run(&tar, links, true), "member \"a\" is a symbolic link");
            s.assert_outside_unchanged();
            assert!(tree(&s.dest()).is_empty());
        }
    }

    #[test]
    fn a_symlink_then_a_file_through_it_is_refused() {
        let s = Scene::new();
        let target = s.outside().display().to_string();
        let tar = Tar::default()
            .member("l", b'2', &target)
            .file("l/sentinel", b"pwned")
            .end();
        assert_refused(s.run(&tar, true, false), "symbolic link");
        s.assert_outside_unchanged();
        assert!(tree(&s.dest()).is_empty());
    }

    #[test]
    fn a_symlink_already_in_the_destination_is_not_followed() {
        let cases = [
            Tar::default().file("evil/x", b"pwned").end(),
            Tar::default()
                .dir("evil", 0o777)
                .file("evil/x", b"pwned")
                .end(),
            Tar::default().file("evil/deeper/x", b"pwned").end(),
            Tar::default()
                .file_in("", "evil/big", &[1u8; 100_000], 0o600)
                .end(),
        ];
        for tar in cases {
            let s = Scene::new();
            std::os::unix::fs::symlink("../outside", s.dest().join("evil")).unwrap();
            assert_refused(s.run(&tar, false, true), "in the way");
            s.assert_outside_unchanged();
        }
    }

    #[test]
    fn absolute_and_climbing_names_are_refused() {
        let s = Scene::new();
        let absolute = format!("{}/x", s.outside().display());
        for name in [
            absolute.as_str(),
            "/tmp/walseal-x",
            "../x",
            "a/../../x",
            "../outside/x",
        ] {
            for tar in [
                Tar::default().file(name, b"pwned").end(),
                Tar::default().dir(name, 0o777).end(),
                Tar::default().member(name, b'2', "/etc").end(),
            ] {
                assert_refused(s.run(&tar, true, false), "not a plain relative path");
            }
        }
        s.assert_outside_unchanged();
        assert!(tree(&s.dest()).is_empty());
        assert!(!Path::new("/tmp/walseal-x").exists());
    }

    #[test]
    fn hard_links_devices_and_fifos_are_refused() {
        let s = Scene::new();
        let sentinel = s.outside().join("sentinel").display().to_string();
        for (kind, what) in [
            (b'1', "a hard link"),
            (b'3', "a character device"),
            (b'4', "a block device"),
            (b'6', "a FIFO"),
            (b'x', "a pax extended header"),
            (b'L', "a GNU long-name header"),
            (b'Z', "a member of unknown type"),
        ] {
            let tar = Tar::default().member("base/x", kind, &sentinel).end();
            assert_refused(s.run(&tar, true, true), what);
        }
        s.assert_outside_unchanged();
        assert!(tree(&s.dest()).is_empty());
    }

    #[test]
    fn a_file_the_manifest_does_not_list_is_refused_before_it_is_written() {
        let s = Scene::new();
        let tar = Tar::default()
            .dir("base", 0o700)
            .unlisted("base/evil", b"pwned", 0o600)
            .end();
        assert_refused(
            s.run(&tar, false, false),
            "not a file the backup manifest lists",
        );
        assert!(!s.dest().join("base/evil").exists());
        s.assert_outside_unchanged();
    }

    #[test]
    fn a_file_whose_size_differs_from_the_manifest_is_refused_before_it_is_written() {
        let s = Scene::new();
        let mut tar = Tar::default().file("f", b"hello").end();
        tar.listed[0].1 = 4;
        assert_refused(
            s.run(&tar, false, false),
            "5 bytes, the backup manifest says 4",
        );
        assert!(!s.dest().join("f").exists());
    }

    #[test]
    fn a_tablespace_map_and_wal_files_are_refused_even_when_listed() {
        for (name, needle) in [
            ("tablespace_map", "tablespace map"),
            ("pg_wal/000000FF.history", "file in pg_wal"),
            ("pg_wal/000000010000000000000009", "file in pg_wal"),
        ] {
            let s = Scene::new();
            let tar = Tar::default()
                .file("PG_VERSION", b"15\n")
                .file(name, b"16384 /etc\n")
                .end();
            assert_refused(s.run(&tar, false, true), needle);
            s.assert_outside_unchanged();
        }
    }

    #[test]
    fn a_second_member_for_the_same_file_is_refused() {
        let s = Scene::new();
        let mut tar = Tar::default()
            .file("base/f", b"one")
            .file("./base//f", b"two")
            .end();
        tar.listed.pop();
        assert_refused(s.run(&tar, false, true), "appears twice");
        assert_eq!(std::fs::read(s.dest().join("base/f")).unwrap(), b"one");
    }

    #[test]
    fn nothing_goes_under_a_listed_file() {
        for second in [
            Tar::default().file("a/b", b"x"),
            Tar::default().dir("a/b", 0o700),
            Tar::default().dir("a", 0o700),
        ] {
            let s = Scene::new();
            let mut tar = Tar::default().file("a", b"file");
            tar.bytes.extend(second.bytes);
            tar.listed.extend(second.listed);
            let tar = tar.end();
            let got = s.run(&tar, false, false);
            let e = got.expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
            assert!(e.to_string().contains("lists as a file"), "{e}");
            assert_eq!(std::fs::read(s.dest().join("a")).unwrap(), b"file");
        }
    }

    #[test]
    fn a_tablespace_link_points_at_the_record_location_and_is_never_written_through() {
        let s = Scene::new();
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .member(&format!("pg_tblspc/{TS}"), b'2', "/etc")
            .end();
        s.run(&tar, true, true).unwrap();
        assert_eq!(
            std::fs::read_link(s.dest().join("pg_tblspc/16384")).unwrap(),
            s.ts()
        );
        // Content under the link, before or after it, is refused: it belongs to 16384.tar.
        let link = format!("pg_tblspc/{TS}");
        let under = format!("pg_tblspc/{TS}/PG_15_202209061/x");
        for tar in [
            Tar::default()
                .member(&link, b'2', "/etc")
                .file(&under, b"pwned"),
            Tar::default()
                .file(&under, b"pwned")
                .member(&link, b'2', "/etc"),
            Tar::default()
                .member(&link, b'2', "/etc")
                .dir(&under, 0o777),
            Tar::default().dir(&link, 0o777),
        ] {
            let s = Scene::new();
            assert_refused(
                s.run(&tar.end(), true, false),
                "where the link of tablespace 16384 goes",
            );
            assert!(
                tree(&s.ts()).is_empty(),
                "nothing written in the tablespace"
            );
            s.assert_outside_unchanged();
        }
    }

    #[test]
    fn only_the_record_tablespace_links_are_made() {
        let cases = [
            (
                Tar::default().member("pg_tblspc/16385", b'2', "/etc"),
                true,
                "symbolic link",
            ),
            (
                Tar::default().member("pg_tblspc/016384", b'2', "/etc"),
                true,
                "symbolic link",
            ),
            (
                Tar::default().member("pg_tblspc/16384", b'2', "/etc"),
                false,
                "symbolic link",
            ),
            (
                Tar::default()
                    .member("pg_tblspc/16384", b'2', "/etc")
                    .member("pg_tblspc/16384", b'2', "/etc"),
                true,
                "appears twice",
            ),
            (
                Tar::default().file("PG_VERSION", b"15\n"),
                true,
                "no link pg_tblspc/16384",
            ),
        ];
        for (tar, links, needle) in cases {
            let s = Scene::new();
            assert_refused(s.run(&tar.end(), links, false), needle);
            s.assert_outside_unchanged();
        }
    }

    #[test]
    fn a_bad_header_checksum_is_refused() {
        let s = Scene::new();
        let mut tar = Tar::default().file("f", b"x").file("g", b"y").end();
        tar.bytes[1024] = b'h'; // g's name, checksum left as it was
        assert_refused(
            s.run(&tar, false, false),
            "the header at byte 1024 has a bad checksum",
        );
        assert!(!s.dest().join("h").exists() && !s.dest().join("g").exists());
    }

    #[test]
    fn size_fields_that_overflow_or_lie_are_refused() {
        let s = Scene::new();
        let mut huge = header(b"f", 0, b'0', b"", 0o600);
        huge[124] = 0x80;
        huge[125..136].fill(0xff);
        fix_checksum(&mut huge);
        let mut negative = huge.clone();
        negative[124] = 0xff;
        fix_checksum(&mut negative);
        let mut garbage = header(b"f", 0, b'0', b"", 0o600);
        garbage[124..136].copy_from_slice(b"99999999999\0");
        fix_checksum(&mut garbage);
        for h in [huge, negative, garbage] {
            let tar = Tar::default().raw(&h).end();
            assert_refused(s.run(&tar, false, false), "unreadable size field");
        }
        // The largest octal size, far beyond the stream: refused by the manifest's size.
        let mut tar = Tar::default().raw(&header(b"f", 0o77777777777, b'0', b"", 0o600));
        tar.listed.push((b"f".to_vec(), 1));
        assert_refused(
            s.run(&tar.end(), false, false),
            "the backup manifest says 1",
        );
        assert!(tree(&s.dest()).is_empty());
    }

    #[test]
    fn nul_inside_a_name_and_empty_names_are_refused() {
        let s = Scene::new();
        let tar = Tar::default()
            .raw(&header(b"a\0b", 0, b'5', b"", 0o700))
            .end();
        assert_refused(s.run(&tar, false, false), "NUL byte");
        for name in ["./", ".", "/"] {
            let tar = Tar::default().dir(name, 0o700).end();
            assert_refused(s.run(&tar, false, false), "not a plain relative path");
        }
        let tar = Tar::default()
            .dir("d", 0o700)
            .raw(&header(b"d", 3, b'5', b"", 0o700));
        assert_refused(
            s.run(&tar.end(), false, false),
            "a directory with a size of 3 bytes",
        );
    }

    #[test]
    fn a_truncated_archive_is_refused() {
        let s = Scene::new();
        let tar = Tar::default().file("f", b"x");
        let e = s.run(&tar, false, false).expect_err("no end blocks");
        assert!(e.to_string().contains("end-of-archive"), "{e}");
        let mut cut = Tar::default().file("g", &[1u8; 2000]).end();
        cut.bytes.truncate(1000);
        assert!(s.run(&cut, false, false).is_err());
    }

    /// Mutated archives (bytes flipped, checksums fixed up or not, truncated) into fresh
    /// directories: the extractor never panics, and nothing outside the destination changes.
    #[test]
    fn mutated_archives_never_escape_or_panic() {
        let s = Scene::new();
        let seed = Tar::default()
            .dir("pg_tblspc", 0o700)
            .member("pg_tblspc/16384", b'2', "/etc")
            .member("a", b'2', "../../outside")
            .dir("a", 0o777)
            .file("a/x", b"pwned")
            .dir("base", 0o700)
            .file("base/1", b"data")
            .file_in("", "base/2", &[7u8; 5000], 0o600)
            .end();
        let headers: Vec<usize> = (0..seed.bytes.len() / 512)
            .filter(|i| seed.bytes[i * 512 + 257..i * 512 + 262] == *b"ustar")
            .collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..300 {
            let mut tar = seed.clone();
            for _ in 0..1 + next() % 6 {
                let at = (next() as usize) % tar.bytes.len().min(4096);
                tar.bytes[at] = next() as u8;
            }
            if next() % 3 > 0 {
                for h in &headers {
                    fix_checksum(&mut tar.bytes[h * 512..h * 512 + 512]);
                }
            }
            if next() % 5 == 0 {
                let len = (next() as usize) % tar.bytes.len();
                tar.bytes.truncate(len);
            }
            let dest = s.dest().join(i.to_string());
            std::fs::create_dir(&dest).unwrap();
            let mut listing = listing(&tar);
            let _ = run_into(&dest, &tar, &mut listing, &s.links(), "", i % 2 == 0);
            for line in tree(&dest) {
                assert!(
                    !line.contains(" -> ") || line.starts_with("pg_tblspc/16384 -> "),
                    "{line}"
                );
            }
        }
        s.assert_outside_unchanged();
        assert!(tree(&s.ts()).is_empty());
    }

    /// An incremental member: header, padding, then the pages (each filled with its tag).
    fn incremental_member(bs: usize, truncation: u32, pages: &[(u32, u8)]) -> Vec<u8> {
        let mut v = incremental::MAGIC.to_le_bytes().to_vec();
        v.extend((pages.len() as u32).to_le_bytes());
        v.extend(truncation.to_le_bytes());
        for (b, _) in pages {
            v.extend(b.to_le_bytes());
        }
        if !pages.is_empty() {
            v.resize(v.len().div_ceil(bs) * bs, 0);
        }
        for (_, tag) in pages {
            v.extend(std::iter::repeat_n(*tag, bs));
        }
        v
    }

    #[test]
    fn a_chain_is_applied_in_place_as_pg_combinebackup_rebuilds_it() {
        let s = Scene::new();
        let geo = incremental::Geometry {
            block_size: 1024,
            relseg_size: 16,
        };
        let page = |tag: u8| vec![tag; 1024];
        let full: Vec<u8> = [page(b'a'), page(b'b'), page(b'c'), page(b'd')].concat();
        let links = s.links();
        let base = Tar::default()
            .dir("base/1", 0o700)
            .file("base/1/16384", &full)
            .file("base/1/2", b"old")
            .member("pg_tblspc/16384", b'2', "/anywhere")
            .end();
        run_into(&s.dest(), &base, &mut listing(&base), &links, "", false).unwrap();
        // Incremental 1: page 6 (beyond the file) and page 1 changed; T = 4.
        let inc1 = Tar::default()
            .dir("base/1", 0o700)
            .file(
                "base/1/INCREMENTAL.16384",
                &incremental_member(1024, 4, &[(6, b'x'), (1, b'y')]),
            )
            .file("base/1/2", b"newer")
            .member("pg_tblspc/16384", b'2', "/anywhere")
            .end();
        let over = |newest| Layer::Over {
            newest,
            geometry: geo,
        };
        run_layer(
            &s.dest(),
            &inc1,
            &mut listing(&inc1),
            &links,
            "",
            false,
            over(false),
        )
        .unwrap();
        // Incremental 2 (newest): truncated to 3 pages, page 2 rewritten, then page 5 added.
        let inc2 = Tar::default()
            .dir("base/1", 0o700)
            .file(
                "base/1/INCREMENTAL.16384",
                &incremental_member(1024, 3, &[(2, b'z'), (5, b'w')]),
            )
            .member("pg_tblspc/16384", b'2', "/anywhere")
            .end();
        run_layer(
            &s.dest(),
            &inc2,
            &mut listing(&inc2),
            &links,
            "",
            false,
            over(true),
        )
        .unwrap();
        let got = std::fs::read(s.dest().join("base/1/16384")).unwrap();
        // Page 0 from the full backup, 1 from incremental 1, 2 from incremental 2; pages 3
        // and 4 are at or beyond T = 3 and not in the newest: zeros (the full backup's page
        // 3 and incremental 1's page 6 are dropped); page 5 from incremental 2.
        let want: Vec<u8> = [
            page(b'a'),
            page(b'y'),
            page(b'z'),
            page(0),
            page(0),
            page(b'w'),
        ]
        .concat();
        assert!(got == want, "rebuilt file differs");
        assert_eq!(std::fs::read(s.dest().join("base/1/2")).unwrap(), b"newer");
        s.assert_outside_unchanged();

        // An incremental file for a file no earlier backup holds is refused.
        let orphan = Tar::default()
            .file("base/1/INCREMENTAL.999", &incremental_member(1024, 1, &[]))
            .end();
        let e = run_layer(
            &s.dest(),
            &orphan,
            &mut listing(&orphan),
            &links,
            "",
            false,
            over(true),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("no earlier backup"), "{e}");
        // One whose header disagrees with its size is refused.
        let mut member = incremental_member(1024, 1, &[(0, b'q')]);
        member.pop();
        let short = Tar::default()
            .file("base/1/INCREMENTAL.16384", &member)
            .end();
        let e = run_layer(
            &s.dest(),
            &short,
            &mut listing(&short),
            &links,
            "",
            false,
            over(true),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        // A link an earlier backup made must point where the record says.
        let other = BTreeMap::from([(TS, s.outside())]);
        let relinked = Tar::default().member("pg_tblspc/16384", b'2', "/x").end();
        let e = run_layer(
            &s.dest(),
            &relinked,
            &mut listing(&relinked),
            &other,
            "",
            false,
            over(false),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        s.assert_outside_unchanged();
    }
}

#[cfg(test)]
mod remove_tests {
    use super::*;

    #[test]
    fn removals_resolve_no_link_and_stay_beneath_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        std::fs::create_dir_all(dest.join("base/1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x"), b"keep").unwrap();
        std::fs::write(dest.join("base/1/f"), b"gone").unwrap();
        // A link planted where a removed file's directory would be, and one as the file.
        std::os::unix::fs::symlink(&outside, dest.join("base/2")).unwrap();
        std::os::unix::fs::symlink(outside.join("x"), dest.join("base/1/l")).unwrap();
        let root = Root::open(&dest).unwrap();
        root.remove(b"base/1/f", false).unwrap();
        assert!(!dest.join("base/1/f").exists());
        // Through the link: refused, nothing outside touched.
        assert!(root.remove(b"base/2/x", false).is_err());
        assert!(root.remove(b"base/2", true).is_err());
        // The link itself is removed, never its target.
        root.remove(b"base/1/l", false).unwrap();
        assert_eq!(std::fs::read(outside.join("x")).unwrap(), b"keep");
        // A directory with something left in it is not removed; an empty one is; a missing
        // one is fine.
        std::fs::write(dest.join("base/1/g"), b"").unwrap();
        assert!(root.remove(b"base/1", true).is_err());
        std::fs::remove_file(dest.join("base/1/g")).unwrap();
        root.remove(b"base/1", true).unwrap();
        root.remove(b"base/9", true).unwrap();
        assert!(!dest.join("base/1").exists());
        assert_eq!(std::fs::read(outside.join("x")).unwrap(), b"keep");
    }
}
