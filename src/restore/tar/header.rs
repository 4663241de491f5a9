//! Decoding one 512-byte ustar header: a pure function of the block, so every field is bounded
//! and checked before the extractor acts on it (and it can be fuzzed on its own).
//!
//! What PostgreSQL's `tarCreateHeader` writes is what is accepted: the header checksum must
//! match, numbers are octal (or GNU base-256, which PostgreSQL uses for sizes of 8 GiB and
//! more), a name is at most the 100-byte name field plus, with the POSIX `ustar\0` magic, the
//! 155-byte prefix field, and it must be a plain relative path.

use super::Malformed;

/// The size of a tar block.
pub(super) const BLOCK_LEN: usize = 512;

/// The largest member size accepted: what a signed 64-bit `off_t` holds.
const MAX_SIZE: u64 = i64::MAX as u64;

/// A member's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    /// Anything else, with a description for the refusal ("a hard link").
    Other(&'static str),
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// The name as canonical components joined by `/`: no `.`, `..` or empty component.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits only (`0o777`): set-id and sticky bits are dropped.
    pub mode: u32,
    pub size: u64,
}

impl Header {
    /// Decodes `block`, the header found at byte `offset` of the archive.
    ///
    /// # Errors
    /// [`Malformed`] for a bad checksum, an unreadable number, a name that is not a plain
    /// relative path, or a size beyond [`MAX_SIZE`].
    pub(super) fn parse(block: &[u8; BLOCK_LEN], offset: u64) -> Result<Header, Malformed> {
        let stored = octal(&block[148..156]).ok_or(Malformed::Checksum(offset))?;
        if stored != checksum(block) {
            return Err(Malformed::Checksum(offset));
        }
        let raw_name = name(block).ok_or_else(|| {
            Malformed::Name(lossy(&block[..100]), "it has a NUL byte inside its name")
        })?;
        let shown = lossy(&raw_name);
        let path = canonical(&raw_name).map_err(|why| Malformed::Name(shown.clone(), why))?;
        let mode = octal(&block[100..108])
            .ok_or_else(|| Malformed::Number(shown.clone(), "mode"))?
            & 0o777;
        let size = size(&block[124..136]).ok_or(Malformed::Number(shown, "size"))?;
        let kind = match block[156] {
            b'0' | 0 => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::Other("a hard link"),
            b'3' => Kind::Other("a character device"),
            b'4' => Kind::Other("a block device"),
            b'6' => Kind::Other("a FIFO"),
            b'7' => Kind::Other("a contiguous file"),
            b'x' | b'g' => Kind::Other("a pax extended header"),
            b'L' | b'K' => Kind::Other("a GNU long-name header"),
            _ => Kind::Other("a member of unknown type"),
        };
        Ok(Header {
            path,
            kind,
            mode: u32::try_from(mode).unwrap_or(0),
            size,
        })
    }
}

/// The ustar checksum: the unsigned sum of the block's bytes, the checksum field counted as
/// eight spaces.
fn checksum(block: &[u8; BLOCK_LEN]) -> u64 {
    let sum: u64 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|b| u64::from(*b))
        .sum();
    sum + 8 * u64::from(b' ')
}

/// `field` up to its first NUL, or `None` if a non-NUL byte follows that NUL.
fn c_field(field: &[u8]) -> Option<&[u8]> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    field[end..]
        .iter()
        .all(|b| *b == 0)
        .then_some(&field[..end])
}

/// The member name: the name field, after the prefix field if the magic is POSIX ustar.
fn name(block: &[u8; BLOCK_LEN]) -> Option<Vec<u8>> {
    let name = c_field(&block[..100])?;
    let prefix = if &block[257..263] == b"ustar\0" {
        c_field(&block[345..500])?
    } else {
        &[]
    };
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    Some(full)
}

/// The canonical form of a member name (`./a//b/` is `a/b`), or why it is refused.
pub(super) fn canonical(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("it is an absolute path");
    }
    let mut out = Vec::with_capacity(name.len());
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("it has a \"..\" component"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    if out.is_empty() {
        return Err("it is empty");
    }
    Ok(out)
}

/// A name for messages (`Debug` of it escapes control characters).
pub(super) fn lossy(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An octal number field: optional leading spaces, octal digits, then only NULs and spaces.
/// An empty field is zero.
fn octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
    let mut value: u64 = 0;
    let mut end = start;
    for b in &field[start..] {
        if !(b'0'..=b'7').contains(b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        end += 1;
    }
    field[end..]
        .iter()
        .all(|b| *b == 0 || *b == b' ')
        .then_some(value)
}

/// The size field: octal, or GNU base-256 (first byte 0x80, then big-endian) for sizes octal
/// cannot hold. Negative base-256 numbers and sizes above [`MAX_SIZE`] are refused.
fn size(field: &[u8]) -> Option<u64> {
    let value = match field.first() {
        Some(0x80) => {
            let (high, low) = field[1..].split_at(field.len().checked_sub(9)?);
            if high.iter().any(|b| *b != 0) {
                return None;
            }
            u64::from_be_bytes(low.try_into().ok()?)
        }
        Some(b) if b & 0x80 != 0 => return None,
        _ => octal(field)?,
    };
    (value <= MAX_SIZE).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with a correct checksum.
    pub(crate) fn block(name: &[u8], size_field: &[u8], kind: u8) -> [u8; BLOCK_LEN] {
        let mut h = [0u8; BLOCK_LEN];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000600\0");
        h[124..124 + size_field.len()].copy_from_slice(size_field);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        let sum = checksum(&h);
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn names_are_canonical_relative_paths() {
        assert_eq!(canonical(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(canonical(b"pg_tblspc/16384/").unwrap(), b"pg_tblspc/16384");
        for bad in [
            &b"/etc/x"[..],
            b"../x",
            b"a/../../x",
            b"a/..",
            b"",
            b"./",
            b"/",
        ] {
            assert!(canonical(bad).is_err(), "{:?}", lossy(bad));
        }
    }

    #[test]
    fn checksum_is_verified() {
        let mut h = block(b"base/1", b"00000000005\0", b'0');
        let got = Header::parse(&h, 0).unwrap();
        assert_eq!(
            (got.path.as_slice(), got.size, got.mode),
            (&b"base/1"[..], 5, 0o600)
        );
        h[0] = b'c';
        assert!(matches!(
            Header::parse(&h, 1024),
            Err(Malformed::Checksum(1024))
        ));
    }

    #[test]
    fn sizes_are_bounded() {
        let ok = |f: &[u8]| Header::parse(&block(b"f", f, b'0'), 0).map(|h| h.size);
        assert_eq!(ok(b"77777777777\0").unwrap(), 0o77777777777);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
        assert_eq!(
            ok(&big).unwrap(),
            9 << 30,
            "base-256, as PostgreSQL writes 8 GiB+"
        );
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        let negative = [0xffu8; 12];
        let mut over = [0u8; 12];
        over[0] = 0x80;
        over[4..].copy_from_slice(&u64::MAX.to_be_bytes());
        for bad in [
            &huge[..],
            &negative,
            &over,
            b"9999\0",
            b"12 34\0",
            b"0x10\0",
        ] {
            assert!(
                matches!(ok(bad), Err(Malformed::Number(_, "size"))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nul_inside_a_name_and_the_prefix_field() {
        assert!(matches!(
            Header::parse(&block(b"a\0b", b"0\0", b'0'), 0),
            Err(Malformed::Name(..))
        ));
        let mut h = block(b"1259", b"0\0", b'0');
        h[345..354].copy_from_slice(b"base/1234");
        let sum = checksum(&h);
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(Header::parse(&h, 0).unwrap().path, b"base/1234/1259");
    }

    #[test]
    fn parse_never_panics_on_noise() {
        // A deterministic walk over odd headers: random bytes with a fixed-up checksum.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut h = [0u8; BLOCK_LEN];
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 24) as u8;
            }
            let _ = Header::parse(&h, 0);
            let sum = checksum(&h);
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            let _ = Header::parse(&h, 0);
        }
    }
}
