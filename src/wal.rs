//! WAL file names and the WAL page header: pure parsing, no I/O.
//!
//! PostgreSQL hands `archive_command` four kinds of file (segments, `.partial` segments,
//! `.history` and `.backup` files) and asks `restore_command` for the same names. The first page
//! of a segment carries the system identifier and segment size, which is how we refuse a
//! segment from another cluster.

use std::fmt;

/// A file name PostgreSQL archives or restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    /// The file name as PostgreSQL gives it.
    pub name: String,
    /// The timeline it belongs to.
    pub timeline: u32,
    /// What kind of file it is.
    pub kind: WalKind,
}

/// The kinds of WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A full segment, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment,
    /// A segment left at a timeline switch, `<segment>.partial`.
    Partial,
    /// A timeline history file, `TTTTTTTT.history`.
    History,
    /// A backup history file, `<segment>.XXXXXXXX.backup`.
    Backup,
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalFile {
    /// Parses a WAL file name; `None` if it is not one.
    pub fn parse(name: &str) -> Option<WalFile> {
        let is_seg = |s: &str| s.len() == 24 && is_upper_hex(s);
        let tli = |s: &str| u32::from_str_radix(&s[..8], 16).ok();
        let (timeline, kind) = if is_seg(name) {
            (tli(name)?, WalKind::Segment)
        } else if let Some(seg) = name.strip_suffix(".partial").filter(|s| is_seg(s)) {
            (tli(seg)?, WalKind::Partial)
        } else if let Some(t) = name
            .strip_suffix(".history")
            .filter(|s| s.len() == 8 && is_upper_hex(s))
        {
            (tli(t)?, WalKind::History)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            if !(is_seg(seg) && off.len() == 8 && is_upper_hex(off)) {
                return None;
            }
            (tli(seg)?, WalKind::Backup)
        } else {
            return None;
        };
        if timeline == 0 {
            return None;
        }
        Some(WalFile {
            name: name.to_string(),
            timeline,
            kind,
        })
    }

    /// The object key of this file in the repository: `wal/<timeline>/<name>`.
    pub fn object_key(&self) -> String {
        format!("wal/{:08X}/{}", self.timeline, self.name)
    }

    /// Segment number within the timeline (`log * segments_per_log + seg`) for segment kinds;
    /// `None` for other kinds, for a size PostgreSQL does not allow, and for a name no server
    /// of that segment size writes (the low part must be below the segments per 4 GiB).
    pub fn segment_number(&self, segment_size: u64) -> Option<u64> {
        self.segment_in(SegmentSize::new(segment_size).ok()?)
    }

    /// [`WalFile::segment_number`] for a validated segment size.
    pub fn segment_in(&self, size: SegmentSize) -> Option<u64> {
        if !matches!(self.kind, WalKind::Segment | WalKind::Partial) {
            return None;
        }
        let log = u64::from_str_radix(self.name.get(8..16)?, 16).ok()?;
        let seg = u64::from_str_radix(self.name.get(16..24)?, 16).ok()?;
        if seg >= size.per_log() {
            return None;
        }
        log.checked_mul(size.per_log())?.checked_add(seg)
    }
}

/// A WAL segment size PostgreSQL allows: a power of two from 1 MiB to 1 GiB. Every size read
/// from the repository or the server becomes one before any arithmetic uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentSize(u64);

/// A segment size outside PostgreSQL's range (the value it had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSizeError(pub u64);

impl fmt::Display for SegmentSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WAL segment size {} is not a power of two between 1 MiB and 1 GiB",
            self.0
        )
    }
}

impl std::error::Error for SegmentSizeError {}

impl SegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    /// Validates a size in bytes.
    ///
    /// # Errors
    /// [`SegmentSizeError`] unless `bytes` is a power of two in 1 MiB..=1 GiB.
    pub fn new(bytes: u64) -> Result<Self, SegmentSizeError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(SegmentSize(bytes))
        } else {
            Err(SegmentSizeError(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB of WAL (the `XXXXXXXX` "log" part of a name): 4 to 4096.
    pub fn per_log(self) -> u64 {
        (1u64 << 32) / self.0
    }

    /// The number of the segment holding byte `lsn`.
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }
}

/// For `#[serde(deserialize_with)]` on a `wal_segment_size: u64` field of a record read from
/// the repository: refuses a size PostgreSQL does not allow at decode time.
///
/// # Errors
/// A serde error naming the bad size.
pub fn deserialize_segment_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let bytes = <u64 as serde::Deserialize>::deserialize(d)?;
    SegmentSize::new(bytes)
        .map(SegmentSize::bytes)
        .map_err(serde::de::Error::custom)
}

/// The fields of a segment's first-page (long) header we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: identifies the PostgreSQL major version.
    pub magic: u16,
    /// `xlp_tli`.
    pub timeline: u32,
    /// `xlp_pageaddr`: the LSN of the page.
    pub page_addr: u64,
    /// `xlp_sysid`: the database system identifier.
    pub system_identifier: u64,
    /// `xlp_seg_size`.
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`.
    pub block_size: u32,
}

/// Length of the long page header.
pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// Why a segment's first page is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageError {
    /// Fewer than 40 bytes.
    TooShort,
    /// The first page has no long header.
    NoLongHeader,
    /// A field out of range.
    Invalid(&'static str),
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageError::TooShort => f.write_str("shorter than a WAL page header"),
            PageError::NoLongHeader => {
                f.write_str("the first page has no long header (not a WAL segment start)")
            }
            PageError::Invalid(what) => write!(f, "invalid WAL page header: {what}"),
        }
    }
}

impl LongPageHeader {
    /// Parses the first 40 bytes of a segment (little-endian, as on every platform we support).
    ///
    /// # Errors
    /// A [`PageError`] naming what is wrong.
    pub fn parse(b: &[u8]) -> Result<Self, PageError> {
        if b.len() < LONG_HEADER_LEN {
            return Err(PageError::TooShort);
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PageError::NoLongHeader);
        }
        let h = LongPageHeader {
            magic: u16_at(0),
            timeline: u32_at(4),
            page_addr: u64_at(8),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        };
        if SegmentSize::new(u64::from(h.segment_size)).is_err() {
            return Err(PageError::Invalid(
                "segment size is not a power of two between 1 MiB and 1 GiB",
            ));
        }
        if !(h.block_size.is_power_of_two() && (1024..=65536).contains(&h.block_size)) {
            return Err(PageError::Invalid("block size out of range"));
        }
        Ok(h)
    }

    /// The PostgreSQL major version this page magic belongs to, if known.
    pub fn major_version(&self) -> Option<u32> {
        match self.magic {
            0xD106 => Some(13),
            0xD10D => Some(14),
            0xD110 => Some(15),
            0xD113 => Some(16),
            0xD116 => Some(17),
            0xD118 => Some(18),
            _ => None,
        }
    }

    /// The segment number implied by `xlp_pageaddr` (`u64::MAX`, matching no name, for a
    /// header whose segment size is 0: [`LongPageHeader::parse`] never returns one).
    pub fn segment_number(&self) -> u64 {
        self.page_addr
            .checked_div(u64::from(self.segment_size))
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_rejects_others() {
        let seg = WalFile::parse("000000010000000A000000FE").unwrap();
        assert_eq!((seg.timeline, seg.kind), (1, WalKind::Segment));
        assert_eq!(seg.object_key(), "wal/00000001/000000010000000A000000FE");
        assert_eq!(seg.segment_number(16 << 20), Some(0xA * 256 + 0xFE));
        assert_eq!(
            WalFile::parse("00000002.history").unwrap().kind,
            WalKind::History
        );
        assert_eq!(
            WalFile::parse("000000020000000000000003.partial")
                .unwrap()
                .kind,
            WalKind::Partial
        );
        let b = WalFile::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!((b.kind, b.timeline), (WalKind::Backup, 1));
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000100000000000000zz",
            "00000000.history",
            "000000010000000000000002.backup",
            "../00000001.history",
            "000000010000000000000002.0000002.backup",
        ] {
            assert!(WalFile::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn segment_numbers_refuse_sizes_and_names_postgres_never_makes() {
        let seg = WalFile::parse("000000010000000A000000FE").unwrap();
        for bad in [0, 1, 4096, 3 << 20, 2 << 30, u64::MAX] {
            assert_eq!(seg.segment_number(bad), None, "{bad}");
        }
        // With 16 MiB segments the low part stops at 0xFF; with 1 MiB at 0xFFF.
        let high = WalFile::parse("000000010000000000000100").unwrap();
        assert_eq!(high.segment_number(16 << 20), None);
        assert_eq!(high.segment_number(1 << 20), Some(0x100));
        let last = WalFile::parse("00000001FFFFFFFF00000FFF").unwrap();
        assert_eq!(
            last.segment_number(1 << 20),
            Some(0xFFFF_FFFF * 4096 + 0xFFF)
        );
        assert_eq!(last.segment_number(1 << 30), None);
    }

    #[test]
    fn segment_sizes_are_postgresql_s() {
        for bad in [
            0,
            1,
            (1 << 20) - 1,
            3 << 20,
            (1 << 30) + 1,
            2 << 30,
            u64::MAX,
        ] {
            assert_eq!(SegmentSize::new(bad), Err(SegmentSizeError(bad)));
        }
        for (bytes, per_log) in [(1u64 << 20, 4096), (16 << 20, 256), (1 << 30, 4)] {
            let size = SegmentSize::new(bytes).unwrap();
            assert_eq!((size.bytes(), size.per_log()), (bytes, per_log));
        }
        let gib = SegmentSize::new(1 << 30).unwrap();
        assert_eq!(segment_name(3, 9, gib), "000000030000000200000001");
        assert_eq!(gib.segment_of(Lsn(u64::MAX)), (1 << 34) - 1);
        assert_eq!(
            segment_name(
                1,
                SegmentSize::DEFAULT.segment_of(Lsn(u64::MAX)),
                SegmentSize::DEFAULT
            ),
            "00000001FFFFFFFF000000FF"
        );
    }

    #[test]
    fn long_page_header_fields() {
        let mut p = vec![0u8; 40];
        p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        p[2..4].copy_from_slice(&2u16.to_le_bytes());
        p[4..8].copy_from_slice(&1u32.to_le_bytes());
        p[8..16].copy_from_slice(&(3u64 << 24).to_le_bytes());
        p[24..32].copy_from_slice(&7301234567890123456u64.to_le_bytes());
        p[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        p[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = LongPageHeader::parse(&p).unwrap();
        assert_eq!(h.system_identifier, 7301234567890123456);
        assert_eq!(h.major_version(), Some(15));
        assert_eq!(h.segment_number(), 3);
        p[2] = 0;
        assert_eq!(LongPageHeader::parse(&p), Err(PageError::NoLongHeader));
    }
}

/// A WAL location (`XLogRecPtr`), written `%X/%X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `hi/lo`: one to eight hex digits each (no sign, no spaces inside).
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hex = |p: &str| -> Option<u64> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(p, 16).ok()
        };
        Some(Lsn((hex(hi)? << 32) | hex(lo)?))
    }

    /// The name of the segment that holds the byte just before this location (the segment a
    /// record ending here lives in), on `timeline`.
    pub fn prev_segment_name(self, timeline: u32, size: SegmentSize) -> String {
        segment_name(
            timeline,
            size.segment_of(Lsn(self.0.saturating_sub(1))),
            size,
        )
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid LSN {s:?}")))
    }
}

/// The file name of segment number `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, size: SegmentSize) -> String {
    let per_log = size.per_log();
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

#[cfg(test)]
mod lsn_tests {
    use super::*;

    #[test]
    fn lsn_parse_display_and_segments() {
        let l = Lsn::parse("1/2000028").unwrap();
        assert_eq!(l.0, 0x1_0200_0028);
        assert_eq!(l.to_string(), "1/2000028");
        assert_eq!(
            l.prev_segment_name(1, SegmentSize::DEFAULT),
            "000000010000000100000002"
        );
        assert_eq!(
            Lsn::parse("0/3000000")
                .unwrap()
                .prev_segment_name(2, SegmentSize::DEFAULT),
            "000000020000000000000002"
        );
        assert!(Lsn::parse("zz").is_none());
    }

    #[test]
    fn lsn_parse_is_strict_and_never_panics() {
        for bad in [
            "+1/1",
            "1/+1",
            "-1/1",
            "1/ 1",
            "1//1",
            "é/1",
            "1/é",
            "1é/1",
            "123456789/1",
            "/",
            "1/",
            "0x1/1",
        ] {
            assert!(Lsn::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Lsn::parse("FFFFFFFF/FFFFFFFF"), Some(Lsn(u64::MAX)));
        assert_eq!(Lsn::parse(" 0/1 \n"), Some(Lsn(1)));
    }
}

/// One line of a timeline history file: the parent timeline and where the child branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: u32,
    /// The first LSN of the next timeline (the switch point).
    pub switch: Lsn,
}

/// Parses a `.history` file (`parentTLI<TAB>switchpoint<TAB>reason`); comments and blank lines
/// are skipped; malformed lines are ignored.
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let parent = f.next()?.parse().ok()?;
            let switch = Lsn::parse(f.next()?)?;
            Some(HistoryEntry { parent, switch })
        })
        .collect()
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn history_lines() {
        let h = parse_history(
            "1\t0/3000000\tno recovery target specified\n\n# c\n2\t0/5000A8\tbefore 2026-11-28\n",
        );
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    parent: 1,
                    switch: Lsn(0x300_0000)
                },
                HistoryEntry {
                    parent: 2,
                    switch: Lsn(0x50_00A8)
                }
            ]
        );
    }
}
