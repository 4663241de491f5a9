//! PostgreSQL 17+ incremental files (`INCREMENTAL.<relfile>` in an incremental base backup)
//! and how a chain of backups rebuilds the full file from them.
//!
//! The file (server byte order, little-endian here; `src/include/backup/basebackup_incremental.h`,
//! `src/bin/pg_combinebackup/reconstruct.c`): `u32` magic `0xd3ae1f0d`, `u32` block count N,
//! `u32` truncation block length T, N `u32` block numbers (relative to the segment file),
//! zero padding to a multiple of the page size when N > 0, then the N pages in that order.
//!
//! What pg_combinebackup builds from a chain (full backup, incrementals 1..n), page `b` of a
//! file whose newest version is incremental: the newest incremental's own page if it has
//! one; else, for `b < T` of that newest incremental, the page from the newest older backup
//! that holds it (an older incremental's pages, or the full file's while `b` is within its
//! length; the walk stops at the first full file); else zeros. The file is
//! `max(T, highest page + 1)` pages long. Walseal applies the chain oldest first to the file
//! in place, which gives the same result: an older incremental writes its pages without
//! truncating anything; the newest one first truncates the file to `T` pages (dropping every
//! older page at or beyond `T`), then writes its pages (the gaps read as zeros).

/// `INCREMENTAL_MAGIC`.
pub const MAGIC: u32 = 0xd3ae_1f0d;

/// The prefix of an incremental file's name.
pub const PREFIX: &[u8] = b"INCREMENTAL.";

/// The cluster's page geometry, from the backup record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// `block_size` (BLCKSZ).
    pub block_size: u32,
    /// Pages per relation segment file (RELSEG_SIZE).
    pub relseg_size: u32,
}

/// An incremental file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Truncation block length T.
    pub truncation: u32,
    /// Block numbers of the pages that follow, in file order.
    pub blocks: Vec<u32>,
    /// Bytes before the first page (header and padding).
    pub header_len: u64,
}

/// The fixed part: magic, block count, truncation block length.
pub const FIXED_LEN: usize = 12;

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

/// Reads the block count from the fixed part, checked against the geometry, so that the
/// caller knows how many block numbers to read next.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn block_count(fixed: &[u8; FIXED_LEN], geo: Geometry) -> Result<u32, String> {
    let magic = u32_at(fixed, 0);
    if magic != MAGIC {
        return Err(format!(
            "it has a bad magic number 0x{magic:08x} (an incremental file starts with 0x{MAGIC:08x})"
        ));
    }
    let n = u32_at(fixed, 4);
    if n > geo.relseg_size {
        return Err(format!(
            "it claims {n} pages, more than a segment file holds ({})",
            geo.relseg_size
        ));
    }
    Ok(n)
}

/// Decodes a whole header (`bytes` = the fixed part and the block numbers) of a member of
/// `size` bytes, and checks it: truncation length and every block number within a segment
/// file, no block twice, and header, padding and pages adding up to exactly `size`. Pure:
/// a fuzz target.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn parse(bytes: &[u8], size: u64, geo: Geometry) -> Result<Header, String> {
    let fixed: &[u8; FIXED_LEN] = bytes
        .get(..FIXED_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or("it is shorter than an incremental file's header")?;
    let n = block_count(fixed, geo)?;
    let truncation = u32_at(bytes, 8);
    if truncation > geo.relseg_size {
        return Err(format!(
            "its truncation length {truncation} is beyond a segment file ({} pages)",
            geo.relseg_size
        ));
    }
    let n_usize = n as usize;
    if bytes.len() != FIXED_LEN + 4 * n_usize {
        return Err("its header is cut short".into());
    }
    // One bit per page of a segment file (at most `catalog::MAX_RELSEG_SIZE` / 8 bytes).
    let mut seen = vec![0u64; (geo.relseg_size as usize).div_ceil(64)];
    let mut blocks = Vec::with_capacity(n_usize);
    for i in 0..n_usize {
        let b = u32_at(bytes, FIXED_LEN + 4 * i);
        if b >= geo.relseg_size {
            return Err(format!(
                "it holds page {b}, beyond a segment file ({} pages)",
                geo.relseg_size
            ));
        }
        let (word, bit) = (b as usize / 64, 1u64 << (b % 64));
        if seen[word] & bit != 0 {
            return Err(format!("it holds page {b} twice"));
        }
        seen[word] |= bit;
        blocks.push(b);
    }
    let bs = u64::from(geo.block_size);
    let mut header_len = bytes.len() as u64;
    if n > 0 && !header_len.is_multiple_of(bs) {
        header_len += bs - header_len % bs;
    }
    let expected = header_len + u64::from(n) * bs;
    if expected != size {
        return Err(format!(
            "it is {size} bytes, but its header says {expected} ({n} pages of {bs})"
        ));
    }
    Ok(Header {
        truncation,
        blocks,
        header_len,
    })
}

impl Header {
    /// The rebuilt file's length in pages when this is the newest version.
    pub fn final_pages(&self) -> u32 {
        self.blocks
            .iter()
            .map(|b| b + 1)
            .fold(self.truncation, u32::max)
    }
}

/// The name without `INCREMENTAL.` if `name` (a path's last component) is an incremental
/// file's.
pub fn base_name(name: &[u8]) -> Option<&[u8]> {
    name.strip_prefix(PREFIX).filter(|n| !n.is_empty())
}

/// Whether files in directory `dir` (a manifest path) can be incremental: as for
/// pg_combinebackup, `global`, database directories under `base/`, and everything in a
/// tablespace; a user's `INCREMENTAL.notes` anywhere else is an ordinary file.
pub fn in_incremental_dir(dir: &[u8]) -> bool {
    dir == b"global" || dir.starts_with(b"base/") || dir.starts_with(b"pg_tblspc/")
}

/// The name without `INCREMENTAL.` if `path` (a manifest path) is an incremental file.
pub fn incremental_base(path: &[u8]) -> Option<&[u8]> {
    let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    base_name(name).filter(|_| in_incremental_dir(dir))
}

/// A manifest path of an incremental file mapped to the file it rebuilds; any other path
/// as it is.
pub fn rebuilt_path(path: &[u8]) -> Vec<u8> {
    match incremental_base(path) {
        Some(base) => [&path[..path.len() - PREFIX.len() - base.len()], base].concat(),
        None => path.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        block_size: 8192,
        relseg_size: 131_072,
    };

    fn header(n: u32, t: u32, blocks: &[u32]) -> Vec<u8> {
        let mut v = MAGIC.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        v.extend(t.to_le_bytes());
        for b in blocks {
            v.extend(b.to_le_bytes());
        }
        v
    }

    #[test]
    fn headers_are_checked_against_the_geometry_and_the_member_size() {
        let h = parse(&header(2, 5, &[7, 1]), 8192 * 3, GEO).unwrap();
        assert_eq!((h.truncation, h.header_len, h.final_pages()), (5, 8192, 8));
        assert_eq!(h.blocks, vec![7, 1]);
        // No pages: no padding.
        let h = parse(&header(0, 3, &[]), 12, GEO).unwrap();
        assert_eq!((h.header_len, h.final_pages()), (12, 3));
        for (bytes, size) in [
            (header(2, 5, &[7, 1]), 8192 * 3 - 1),
            (header(2, 5, &[7, 7]), 8192 * 3),
            (header(1, 5, &[131_072]), 8192 * 2),
            (header(0, 131_073, &[]), 12),
            (header(131_073, 0, &[]), 12),
            (header(2, 5, &[7]), 8192 * 3),
            (header(0, 3, &[])[..11].to_vec(), 11),
        ] {
            assert!(parse(&bytes, size, GEO).is_err(), "{bytes:?} {size}");
        }
        let mut bad = header(0, 0, &[]);
        bad[0] ^= 1;
        assert!(parse(&bad, 12, GEO).unwrap_err().contains("magic"));
    }

    #[test]
    fn incremental_names_map_to_the_file_they_rebuild() {
        assert_eq!(rebuilt_path(b"base/5/INCREMENTAL.16384"), b"base/5/16384");
        assert_eq!(
            rebuilt_path(b"base/5/INCREMENTAL.16384.1"),
            b"base/5/16384.1"
        );
        assert_eq!(rebuilt_path(b"global/INCREMENTAL.1262"), b"global/1262");
        assert_eq!(
            rebuilt_path(b"pg_tblspc/16385/PG_18_1/5/INCREMENTAL.7"),
            b"pg_tblspc/16385/PG_18_1/5/7"
        );
        // Elsewhere, as in pg_combinebackup, an ordinary file.
        assert_eq!(rebuilt_path(b"INCREMENTAL.x"), b"INCREMENTAL.x");
        assert_eq!(
            rebuilt_path(b"pg_stat/INCREMENTAL.x"),
            b"pg_stat/INCREMENTAL.x"
        );
        assert_eq!(rebuilt_path(b"base/INCREMENTAL.x"), b"base/INCREMENTAL.x");
        assert_eq!(rebuilt_path(b"base/5/16384"), b"base/5/16384");
        assert_eq!(rebuilt_path(b"base/5/INCREMENTAL."), b"base/5/INCREMENTAL.");
    }
}
