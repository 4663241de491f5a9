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
    link_target: &dyn Fn(&str, &str) -> String,
    on_file: &mut dyn FnMut(FileInfo) -> Result<()>,
    map_read: &dyn Fn(io::Error) -> Error,
) -> Result<()> {
    let mut block = [0u8; 512];
    let mut buf = vec![0u8; 1 << 20];
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
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| local_io(format!("cannot create {}", parent.display()), &e))?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|e| local_io(format!("cannot create {}", path.display()), &e))?;
                let mut left = size;
                let mut crc = 0u32;
                while left > 0 {
                    let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                    r.read_exact(&mut buf[..want]).map_err(map_read)?;
                    crc = crc32c::crc32c_append(crc, &buf[..want]);
                    out.write_all(&buf[..want])
                        .map_err(|e| local_io(format!("cannot write {}", path.display()), &e))?;
                    left -= want as u64;
                }
                let pad = (512 - (size % 512) as usize) % 512;
                r.read_exact(&mut buf[..pad]).map_err(map_read)?;
                on_file(FileInfo {
                    path: rel,
                    size,
                    crc32c: crc,
                })?;
            }
            b'5' => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| local_io(format!("cannot create {}", path.display()), &e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| local_io(format!("cannot chmod {}", path.display()), &e))?;
            }
            b'2' => {
                if let Some(parent) = path.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| local_io(format!("cannot create {}", parent.display()), &e))?;
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
    fn refuses_escaping_paths_and_missing_end() {
        for bad in ["../x", "/etc/x", "a/../../x"] {
            let mut tar = header(bad, 0, b'0', "");
            tar.extend(vec![0u8; 1024]);
            let dir = tempfile::tempdir().unwrap();
            assert!(
                extract(
                    &tar[..],
                    dir.path(),
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
            &|_, l| l.to_string(),
            &mut |_| Ok(()),
            &|e| local_io("read", &e)
        )
        .is_err());
    }
}
