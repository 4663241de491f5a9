//! Restoring an incremental backup: its chain (the full backup it builds on, then each
//! incremental after it) applied oldest first, in place, into the destination.
//!
//! Before anything is written, [`check`] proves the chain is whole: every record opens, each
//! backup's parts are all in the repository at their recorded sizes, each manifest opens and
//! checks out, and each incremental's parent has exactly the manifest the incremental was
//! taken against (its SHA-256 is in the incremental's sealed record). Then the first (full)
//! backup is restored as usual and each later one is laid over it ([`tar::Layer::Over`]):
//! full files replace what was there, `INCREMENTAL.*` files are applied to the file they
//! rebuild (see [`tar::incremental`]), and what a later backup no longer holds (a dropped
//! table's files, a dropped database's directory) is removed. The newest backup's
//! `backup_label` loses its `INCREMENTAL FROM` lines (PostgreSQL refuses to start on an
//! incremental backup), and the cluster gets a `backup_manifest` describing the rebuilt files,
//! as pg_combinebackup writes one. Memory is bounded by the manifests' file lists, whatever
//! the size of the files; nothing of the older backups is kept on disk beyond the files
//! being rebuilt.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use super::manifest::{self, decode_manifest, ManifestFile, Rebuilt};
use super::tar::{incremental, Listing, Root};
use crate::catalog::{self, BackupRecord};
use crate::error::{local_io, Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::storage::Storage;

/// Reads and checks a backup's manifest; returns its bytes and the files it lists.
///
/// # Errors
/// `Integrity` for a missing or damaged manifest; storage errors.
pub async fn load_manifest(
    storage: &Storage,
    keyring: &Keyring,
    record: &BackupRecord,
) -> Result<(Vec<u8>, Listing<ManifestFile>)> {
    let bytes = catalog::read_manifest(storage, keyring, record).await?;
    let listing = decode_manifest(&bytes, &record.id, &record.system_identifier)?;
    Ok((bytes, listing))
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::keys::hex_encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Checks that `child` was taken against exactly this parent (whose manifest is
/// `parent_manifest`).
///
/// # Errors
/// `Integrity` if the digests differ.
pub fn check_binding(
    parent: &BackupRecord,
    parent_manifest: &[u8],
    child: &BackupRecord,
) -> Result<()> {
    if child.parent_manifest_sha256.as_deref() == Some(sha256_hex(parent_manifest).as_str()) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Integrity,
        format!(
            "backup {} cannot be restored: its parent {}'s manifest is not the one it was taken against",
            child.id, parent.id
        ),
    )
    .hint("the parent was altered or replaced: restore an older complete chain (`walseal list`), and take a new full backup"))
}

/// The page geometry an incremental backup's record gives.
///
/// # Errors
/// `Integrity` if the record lacks it.
pub fn geometry(record: &BackupRecord) -> Result<incremental::Geometry> {
    match (record.block_size, record.relseg_size) {
        (Some(block_size), Some(relseg_size)) => Ok(incremental::Geometry {
            block_size,
            relseg_size,
        }),
        _ => Err(Error::new(
            ErrorKind::Integrity,
            format!("backup {}: its record has no page geometry", record.id),
        )),
    }
}

/// Proves the chain whole before anything is written (see the module docs).
///
/// # Errors
/// `Integrity` naming the backup and what is wrong; storage and key errors.
pub async fn check(storage: &Storage, keyring: &Keyring, chain: &[BackupRecord]) -> Result<()> {
    let refs: Vec<&BackupRecord> = chain.iter().collect();
    catalog::parts_present(storage, &refs).await.map_err(|e| {
        let newest = chain.last().map_or("", |r| r.id.as_str());
        Error::new(
            ErrorKind::Integrity,
            format!("backup {newest} cannot be restored: {}", e.message()),
        )
        .hint("run `walseal verify`; restore an older complete backup")
    })?;
    for (i, record) in chain.iter().enumerate() {
        if chain.len() > 1 {
            let (bytes, _) = load_manifest(storage, keyring, record).await?;
            if let Some(child) = chain.get(i + 1) {
                check_binding(record, &bytes, child)?;
            }
            if i > 0 {
                geometry(record)?;
            }
        }
    }
    Ok(())
}

/// The destinations: the data directory and each tablespace location of the newest backup.
pub struct Roots {
    /// The data directory.
    pub data: Root,
    /// Tablespace locations by oid.
    pub tablespaces: BTreeMap<u32, Root>,
}

impl Roots {
    /// The root a manifest path lies under, and the path beneath it.
    pub fn locate<'k>(&self, key: &'k [u8]) -> (&Root, &'k [u8]) {
        if let Some(rest) = key.strip_prefix(b"pg_tblspc/".as_slice()) {
            if let Some(slash) = rest.iter().position(|b| *b == b'/') {
                let oid = super::tar::tablespace_oid(&rest[..slash]);
                if let Some(root) = oid.and_then(|o| self.tablespaces.get(&o)) {
                    return (root, &rest[slash + 1..]);
                }
            }
        }
        (&self.data, key)
    }
}

/// What the destinations hold after a backup of the chain was applied: its files (by the
/// path of the file they are or rebuild) and directories.
#[derive(Default)]
pub struct State {
    files: HashSet<Vec<u8>>,
    dirs: HashSet<Vec<u8>>,
}

impl State {
    /// The files a backup's manifest lists, by the path of the file each is or rebuilds.
    pub fn files_of(listing: &Listing<ManifestFile>) -> HashSet<Vec<u8>> {
        listing.paths().map(incremental::rebuilt_path).collect()
    }

    /// The state one backup leaves: the files its manifest lists, and its directories.
    pub fn of(listing: &Listing<ManifestFile>, dirs: Vec<Vec<u8>>) -> State {
        State {
            files: Self::files_of(listing),
            dirs: dirs.into_iter().collect(),
        }
    }

    /// Removes the files this state holds and `next_files` does not.
    ///
    /// # Errors
    /// `LocalIo`.
    pub fn remove_gone_files(&self, next_files: &HashSet<Vec<u8>>, roots: &Roots) -> Result<()> {
        for f in self.files.iter().filter(|f| !next_files.contains(*f)) {
            let (root, rel) = roots.locate(f);
            root.remove(rel, false)?;
        }
        Ok(())
    }

    /// Removes the directories this state holds and `next` does not, deepest first.
    ///
    /// # Errors
    /// `LocalIo` (e.g. a directory that still holds something).
    pub fn remove_gone_dirs(&self, next: &State, roots: &Roots) -> Result<()> {
        let mut dirs: Vec<&Vec<u8>> = self
            .dirs
            .iter()
            .filter(|d| !next.dirs.contains(*d))
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.iter().filter(|b| **b == b'/').count()));
        for d in dirs {
            let (root, rel) = roots.locate(d);
            if !rel.is_empty() {
                root.remove(rel, true).map_err(|e| {
                    e.hint("a directory a later backup no longer holds still holds files: restore into an empty directory; if it was empty, the backup was altered")
                })?;
            }
        }
        Ok(())
    }
}

/// Streams a restored file through CRC-32C; returns its size and sum.
fn crc_of(root: &Root, rel: &[u8]) -> Result<(u64, u32)> {
    let mut f = root.open_file(rel)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let n = f.read(&mut buf).map_err(|e| {
            local_io(
                format!(
                    "cannot read {}",
                    root.path()
                        .join(String::from_utf8_lossy(rel).as_ref())
                        .display()
                ),
                &e,
            )
        })?;
        if n == 0 {
            return Ok((size, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
}

/// Drops the `INCREMENTAL FROM` lines of the newest backup's backup_label (PostgreSQL refuses
/// to start on an incremental backup's label, as pg_combinebackup's output drops them too).
fn fix_backup_label(pgdata: &Path) -> Result<()> {
    let path = pgdata.join("backup_label");
    // A label is a few hundred bytes; the server's says what it says, within reason.
    let size = std::fs::symlink_metadata(&path)
        .map_err(|e| local_io(format!("cannot read {}", path.display()), &e))?
        .len();
    if size > 1 << 20 {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{}: a backup_label of {size} bytes is no backup label",
                path.display()
            ),
        )
        .hint("the backup was altered; restore another backup"));
    }
    let text = std::fs::read(&path)
        .map_err(|e| local_io(format!("cannot read {}", path.display()), &e))?;
    let kept: Vec<&[u8]> = text
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| !l.starts_with(b"INCREMENTAL FROM "))
        .collect();
    let tmp = pgdata.join("backup_label.walseal-tmp");
    super::base::write_file(&tmp, &kept.concat())?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| local_io(format!("cannot replace {}", path.display()), &e))
}

/// After the newest backup of a chain was applied: the label fixed and the rebuilt cluster's
/// manifest made (every rebuilt file read once for its CRC-32C). Returns the manifest and
/// the rebuilt cluster's size in bytes.
///
/// # Errors
/// `LocalIo`; `Integrity` for a manifest that does not decode.
pub fn finish(
    pgdata: &Path,
    roots: &Roots,
    newest_manifest: &[u8],
    backup: &str,
) -> Result<(Vec<u8>, u64)> {
    fix_backup_label(pgdata)?;
    manifest::rebuilt_manifest(newest_manifest, backup, &mut |path| {
        let rebuilt = incremental::rebuilt_path(path);
        if rebuilt == path && path != b"backup_label" {
            return Ok(None);
        }
        let (root, rel) = roots.locate(&rebuilt);
        let (size, crc32c) = crc_of(root, rel)?;
        Ok(Some(Rebuilt {
            path: rebuilt,
            size,
            crc32c,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incremental_is_bound_to_its_parents_exact_manifest() {
        let parent = catalog::tests::link("20261128T081500Z", None, 1.0);
        let manifest = b"{ \"Files\": [] }\n".to_vec();
        let mut child = catalog::tests::link("20261128T081600Z", Some(&parent.id), 2.0);
        child.parent_manifest_sha256 = Some(sha256_hex(&manifest));
        check_binding(&parent, &manifest, &child).unwrap();
        let mut other = manifest.clone();
        other[3] ^= 1;
        let e = check_binding(&parent, &other, &child).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(
            e.to_string().contains("not the one it was taken against"),
            "{e}"
        );
        // Upper-case hex is another digest: the comparison is exact.
        child.parent_manifest_sha256 = Some(sha256_hex(&manifest).to_uppercase());
        assert!(check_binding(&parent, &manifest, &child).is_err());
    }
}
