//! A minimal ustar reader for the archives BASE_BACKUP produces: regular files, directories
//! and symbolic links with names of at most 255 bytes. Every path is checked to stay inside
//! the destination; each regular file's size and CRC-32C are reported to the caller for the
//! manifest check.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{local_io, Error, ErrorKind, Result};

/// A regular file written by [`extract`].
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Path relative to the archive root (no `./`).
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// CRC-32C of the content.
    pub crc32c: u32,
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn corrupt(what: String) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("backup archive is malformed: {what}"),
    )
}

/// Normalises a member name and refuses one that would leave the destination.
fn safe_relative(name: &str) -> Result<String> {
    let trimmed = name.trim_start_matches("./").trim_end_matches('/');
    let p = Path::new(trimmed);
    if trimmed.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(corrupt(format!(
            "member name {name:?} is not a plain relative path"
        )));
    }
    Ok(trimmed.to_string())
}

/// Bytes moved per read and write.
const BLOCK: usize = 1 << 20;
/// Alignment of memory, file offsets and lengths for O_DIRECT (covers 512- and 4096-byte
/// logical blocks).
const DIRECT_ALIGN: usize = 4096;
/// Files smaller than this go through the page cache: O_DIRECT buys nothing for them.
const DIRECT_MIN: u64 = 64 * 1024;

/// A file being restored. Large files are written with O_DIRECT: a restore writes the whole
/// cluster once and reads none of it back, so the page cache only costs time (on VMs,
/// first-touch page-cache memory is several times slower than the disk). The unaligned tail
/// of a file goes through the page cache; a file system that refuses O_DIRECT turns it off
/// for the rest of the restore.
struct OutFile {
    file: fs::File,
    path: PathBuf,
    direct: bool,
    written: u64,
    /// The archive's mode, set at [`OutFile::finish`] when it lacks owner write (the file is
    /// created writable by its owner so the tail can be written through a second descriptor).
    mode: u32,
}

impl OutFile {
    fn create(path: &Path, mode: u32, size: u64, direct: &mut bool) -> Result<Self> {
        let open = |flags: i32| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode | 0o200)
                .custom_flags(flags)
                .open(path)
        };
        let cannot = |e: &io::Error| local_io(format!("cannot create {}", path.display()), e);
        if *direct && size >= DIRECT_MIN {
            match open(libc::O_DIRECT) {
                Ok(file) => {
                    return Ok(OutFile {
                        file,
                        path: path.to_path_buf(),
                        direct: true,
                        written: 0,
                        mode,
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Linux creates the file before it refuses O_DIRECT (EEXIST would have
                    // come first had it existed): remove ours and open it again, buffered.
                    tracing::debug!(
                        "O_DIRECT refused for {}: writing through the page cache",
                        path.display()
                    );
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(cannot(&e)),
                    }
                    *direct = false;
                }
                Err(e) => return Err(cannot(&e)),
            }
        }
        Ok(OutFile {
            file: open(0).map_err(|e| cannot(&e))?,
            path: path.to_path_buf(),
            direct: false,
            written: 0,
            mode,
        })
    }

    /// Gives the file its archive mode if creating it needed owner write.
    fn finish(self) -> Result<()> {
        if self.mode & 0o200 == 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(self.mode))
                .map_err(|e| local_io(format!("cannot chmod {}", self.path.display()), &e))?;
        }
        Ok(())
    }

    /// Appends `data`, which starts at an aligned address; every call but a file's last
    /// passes a multiple of [`DIRECT_ALIGN`] bytes.
    fn write(&mut self, data: &[u8], direct: &mut bool) -> Result<()> {
        let cannot =
            |path: &Path, e: &io::Error| local_io(format!("cannot write {}", path.display()), e);
        let mut rest = data;
        if self.direct {
            let aligned = data.len() - data.len() % DIRECT_ALIGN;
            match self.file.write_all(&data[..aligned]) {
                Ok(()) => {
                    self.written += aligned as u64;
                    rest = &data[aligned..];
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(
                        "O_DIRECT write refused for {}: writing through the page cache",
                        self.path.display()
                    );
                    *direct = false;
                }
                Err(e) => return Err(cannot(&self.path, &e)),
            }
            if !rest.is_empty() {
                // The tail (or everything, after a refusal) goes through the page cache, at
                // the offset reached so far.
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| cannot(&self.path, &e))?;
                io::Seek::seek(&mut file, io::SeekFrom::Start(self.written))
                    .map_err(|e| cannot(&self.path, &e))?;
                self.file = file;
                self.direct = false;
            }
        }
        self.file
            .write_all(rest)
            .map_err(|e| cannot(&self.path, &e))?;
        self.written += rest.len() as u64;
        Ok(())
    }
}

/// Creates `dir` and its missing parents (mode 0700, as PostgreSQL wants its directories).
fn make_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| local_io(format!("cannot create {}", dir.display()), &e))
}

fn read_block<R: Read>(r: &mut R, block: &mut [u8; 512]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < 512 {
        match r.read(&mut block[filled..])? {
            0 if filled == 0 => return Ok(false),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tar block cut short",
                ))
            }
            n => filled += n,
        }
    }
    Ok(true)
}

/// Extracts a tar stream into `dest`; `link_target` may rewrite a symlink's target (tablespace
/// relocation); `on_file` is called for every regular file. Reads `r` to its end, so a sealed
/// source authenticates its final chunk.
///
/// # Errors
/// `Integrity` for a malformed archive; `LocalIo` for write failures; errors from `r`
/// (converted with `map_read`).
pub fn extract<R: Read>(
    mut r: R,
    dest: &Path,
    direct_io: bool,
    link_target: &dyn Fn(&str, &str) -> String,
    on_file: &mut dyn FnMut(FileInfo) -> Result<()>,
    map_read: &dyn Fn(io::Error) -> Error,
) -> Result<()> {
    let mut block = [0u8; 512];
    // One 1 MiB block, aligned for O_DIRECT.
    let mut backing = vec![0u8; BLOCK + DIRECT_ALIGN];
    let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut backing[start..start + BLOCK];
    let mut direct = direct_io;
    loop {
        if !read_block(&mut r, &mut block).map_err(map_read)? {
            return Err(corrupt(
                "archive ends without its end-of-archive blocks".into(),
            ));
        }
        if block.iter().all(|b| *b == 0) {
            // End of archive: drain the rest so the source is read (and authenticated) to its end.
            io::copy(&mut r, &mut io::sink()).map_err(map_read)?;
            return Ok(());
        }
        let mut name = cstr(&block[0..100]);
        if &block[257..262] == b"ustar" {
            let prefix = cstr(&block[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let mode = octal(&block[100..108])
            .ok_or_else(|| corrupt(format!("bad mode for {name:?}")))? as u32
            & 0o7777;
        let size =
            octal(&block[124..136]).ok_or_else(|| corrupt(format!("bad size for {name:?}")))?;
        let kind = block[156];
        let link = cstr(&block[157..257]);
        let rel = safe_relative(&name)?;
        let path: PathBuf = dest.join(&rel);
        match kind {
            b'0' | 0 => {
                if let Some(parent) = path.parent() {
                    make_dirs(parent)?;
                }
                let mut out = OutFile::create(&path, mode, size, &mut direct)?;
                let mut left = size;
                let mut crc = 0u32;
                while left > 0 {
                    let want = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
                    r.read_exact(&mut buf[..want]).map_err(map_read)?;
                    crc = crc32c::crc32c_append(crc, &buf[..want]);
                    out.write(&buf[..want], &mut direct)?;
                    left -= want as u64;
                }
                out.finish()?;
                let pad = (512 - (size % 512) as usize) % 512;
                r.read_exact(&mut buf[..pad]).map_err(map_read)?;
                on_file(FileInfo {
                    path: rel,
                    size,
                    crc32c: crc,
                })?;
            }
            b'5' => {
                make_dirs(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| local_io(format!("cannot chmod {}", path.display()), &e))?;
            }
            b'2' => {
                if let Some(parent) = path.parent() {
                    make_dirs(parent)?;
                }
                let target = link_target(&rel, &link);
                std::os::unix::fs::symlink(&target, &path).map_err(|e| {
                    local_io(format!("cannot create symlink {}", path.display()), &e)
                })?;
            }
            other => {
                return Err(corrupt(format!(
                    "unsupported member type {:?} for {name:?}",
                    char::from(other)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, kind: u8, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    #[test]
    fn extracts_files_dirs_links_and_reports_crc() {
        let mut tar = header("./pg_wal/", 0, b'5', "");
        tar.extend(header("base/1/1259", 5, b'0', ""));
        tar.extend(b"hello".iter().copied().chain(std::iter::repeat_n(0, 507)));
        tar.extend(header("pg_tblspc/16384", 0, b'2', "/old/ts"));
        tar.extend(vec![0u8; 1024]);
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        extract(
            &tar[..],
            dir.path(),
            false,
            &|_, l| l.replace("/old", "/new"),
            &mut |f| {
                files.push(f);
                Ok(())
            },
            &|e| local_io("read", &e),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("base/1/1259")).unwrap(),
            b"hello"
        );
        assert!(dir.path().join("pg_wal").is_dir());
        assert_eq!(
            std::fs::read_link(dir.path().join("pg_tblspc/16384")).unwrap(),
            PathBuf::from("/new/ts")
        );
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].crc32c, crc32c::crc32c(b"hello"));
    }

    #[test]
    fn direct_io_writes_aligned_bodies_and_unaligned_tails_exactly() {
        // Sizes around the O_DIRECT threshold, the alignment and the 1 MiB block.
        let sizes = [
            100u64,
            (BLOCK as u64) + 77, // read-only below: the tail is written through a second open
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            (BLOCK as u64) * 2,
            (BLOCK as u64) * 2 + 4096 * 3 + 100,
        ];
        let mut tar = Vec::new();
        let mut want = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 31 + i as u64) as u8).collect();
            let mut h = header(&format!("base/1/{i}"), *size, b'0', "");
            if i == 1 {
                h[100..108].copy_from_slice(b"0000400\0");
                let sum: u32 = h[..148]
                    .iter()
                    .chain(&[b' '; 8])
                    .chain(&h[156..])
                    .map(|b| u32::from(*b))
                    .sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
            tar.extend(h);
            tar.extend(&data);
            tar.extend(vec![0u8; ((512 - size % 512) % 512) as usize]);
            want.push(data);
        }
        tar.extend(vec![0u8; 1024]);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut files = Vec::new();
            extract(
                &tar[..],
                dir.path(),
                direct,
                &|_, l| l.to_string(),
                &mut |f| {
                    files.push(f);
                    Ok(())
                },
                &|e| local_io("read", &e),
            )
            .unwrap();
            for (i, data) in want.iter().enumerate() {
                let got = std::fs::read(dir.path().join(format!("base/1/{i}"))).unwrap();
                assert!(
                    got == *data,
                    "file {i} ({} bytes), direct {direct}",
                    data.len()
                );
                assert_eq!(files[i].crc32c, crc32c::crc32c(data));
            }
            let mode = std::fs::metadata(dir.path().join("base/1/1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o400, "the archive's read-only mode");
        }
    }

    #[test]
    fn refuses_escaping_paths_and_missing_end() {
        for bad in ["../x", "/etc/x", "a/../../x"] {
            let mut tar = header(bad, 0, b'0', "");
            tar.extend(vec![0u8; 1024]);
            let dir = tempfile::tempdir().unwrap();
            assert!(
                extract(
                    &tar[..],
                    dir.path(),
                    true,
                    &|_, l| l.to_string(),
                    &mut |_| Ok(()),
                    &|e| local_io("read", &e)
                )
                .is_err(),
                "{bad}"
            );
        }
        let tar = header("f", 0, b'0', "");
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(
            &tar[..],
            dir.path(),
            false,
            &|_, l| l.to_string(),
            &mut |_| Ok(()),
            &|e| local_io("read", &e)
        )
        .is_err());
    }
}
