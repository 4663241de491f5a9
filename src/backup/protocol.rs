//! The replication commands a backup uses and the PostgreSQL 15+ BASE_BACKUP stream:
//! IDENTIFY_SYSTEM, SHOW, the BASE_BACKUP command text, the start/stop position and tablespace
//! result sets, and the CopyData sub-messages (`n` new archive, `d` data, `p` progress,
//! `m` manifest). See `../shared/notes/POSTGRES-PROTOCOL.md` §2–§3.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};

use super::conn::{Conn, Row};
use crate::error::{Error, ErrorKind, Result};
use crate::wal::{Lsn, SegmentSize};

fn bad(what: &str) -> Error {
    Error::new(
        ErrorKind::Database,
        format!("unexpected reply from the server: {what}"),
    )
    .hint("walseal backup supports PostgreSQL 15 and later; check the server version")
}

/// IDENTIFY_SYSTEM's answer.
#[derive(Debug, Clone)]
pub struct SystemId {
    /// Database system identifier (decimal).
    pub system_identifier: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current flush position.
    pub xlogpos: Lsn,
}

fn cell<'a>(row: &'a Row, i: usize, what: &str) -> Result<&'a str> {
    row.get(i)
        .and_then(|c| c.as_deref())
        .ok_or_else(|| bad(what))
}

/// Runs IDENTIFY_SYSTEM.
///
/// # Errors
/// `Database` for errors or a malformed answer.
pub async fn identify_system(conn: &mut Conn) -> Result<SystemId> {
    let rows = conn.query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| bad("IDENTIFY_SYSTEM returned no row"))?;
    let sysid = cell(row, 0, "IDENTIFY_SYSTEM systemid")?;
    sysid
        .parse::<u64>()
        .map_err(|_| bad("IDENTIFY_SYSTEM systemid"))?;
    Ok(SystemId {
        system_identifier: sysid.to_string(),
        timeline: cell(row, 1, "IDENTIFY_SYSTEM timeline")?
            .parse()
            .map_err(|_| bad("IDENTIFY_SYSTEM timeline"))?,
        xlogpos: Lsn::parse(cell(row, 2, "IDENTIFY_SYSTEM xlogpos")?)
            .ok_or_else(|| bad("IDENTIFY_SYSTEM xlogpos"))?,
    })
}

/// `SHOW wal_segment_size` ("16MB" → 16 MiB), checked to be a size PostgreSQL allows.
///
/// # Errors
/// `Database` for errors, an unknown unit or an impossible size.
pub async fn wal_segment_size(conn: &mut Conn) -> Result<SegmentSize> {
    let rows = conn.query("SHOW wal_segment_size").await?;
    let text = rows
        .first()
        .map(|r| cell(r, 0, "SHOW wal_segment_size"))
        .transpose()?
        .unwrap_or_default();
    let bytes = parse_guc_size(text).ok_or_else(|| bad("SHOW wal_segment_size"))?;
    SegmentSize::new(bytes).map_err(|e| bad(&format!("SHOW wal_segment_size: {e}")))
}

/// The largest backend message walseal accepts. PostgreSQL sends BASE_BACKUP's archives and
/// manifest in CopyData chunks of at most 32 KiB (`SINK_BUFFER_LENGTH`), and every other reply
/// walseal reads is a few hundred bytes: 64 MiB leaves room for any server, and bounds what a
/// hostile one can make walseal hold.
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// The most cells a row walseal reads may have (IDENTIFY_SYSTEM has 4, `check`'s query 6).
pub const MAX_ROW_CELLS: usize = 64;

/// The longest archive name accepted in an `n` sub-message (`<oid>.tar` is at most 14 bytes).
const MAX_ARCHIVE_NAME: usize = 255;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses the next backend message from `buf`; `Ok(None)` means "need more bytes". The
/// length a message declares is checked before anything is reserved for it, and nothing is
/// reserved: the caller's reads fill the buffer as the bytes arrive.
///
/// # Errors
/// `InvalidData` for a malformed message or one longer than [`MAX_MESSAGE_LEN`].
pub fn parse_message(buf: &mut BytesMut) -> io::Result<Option<Message>> {
    let Some(&[_, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if len < 4 {
        return Err(invalid(format!("invalid message length {len}")));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(invalid(format!(
            "the server announced a {len}-byte message; walseal accepts at most {MAX_MESSAGE_LEN}"
        )));
    }
    if buf.len() <= len {
        return Ok(None);
    }
    Message::parse(buf)
}

/// One DataRow as text cells.
///
/// # Errors
/// `InvalidData` if the row's cells do not add up to its length, or it has more than
/// [`MAX_ROW_CELLS`].
pub fn decode_row(body: &DataRowBody) -> io::Result<Row> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Row::new();
    while let Some(r) = ranges.next()? {
        if row.len() == MAX_ROW_CELLS {
            return Err(invalid(format!(
                "a row with more than {MAX_ROW_CELLS} cells"
            )));
        }
        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
    }
    Ok(row)
}

/// Parses a size GUC as shown by SHOW (`16MB`, `1GB`, `8192kB`); `None` for anything else,
/// including a size beyond `u64`.
pub fn parse_guc_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s.get(..split)?.parse().ok()?;
    let mult = match s.get(split..)? {
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// BASE_BACKUP options walseal sets.
#[derive(Debug, Clone)]
pub struct StartOptions<'a> {
    /// Backup label.
    pub label: &'a str,
    /// Fast checkpoint.
    pub fast: bool,
    /// Incremental against the manifest uploaded before (PostgreSQL 17+).
    pub incremental: bool,
    /// Verify page checksums while reading (the server's default when the cluster has them).
    pub verify_checksums: bool,
}

/// Quotes a string literal for a replication command.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The BASE_BACKUP command (PostgreSQL 15+ syntax). WAIT is off: walseal itself waits for the
/// WAL to reach its repository.
pub fn base_backup_command(o: &StartOptions<'_>) -> String {
    format!(
        "BASE_BACKUP (LABEL {}, PROGRESS, CHECKPOINT '{}', WAIT false, MANIFEST 'yes', TARGET 'client'{}{})",
        quote(o.label),
        if o.fast { "fast" } else { "spread" },
        if o.incremental { ", INCREMENTAL" } else { "" },
        if o.verify_checksums { "" } else { ", VERIFY_CHECKSUMS false" }
    )
}

/// `SHOW name` on the replication connection: the setting's text.
///
/// # Errors
/// `Database` for errors (an unknown setting) or an empty answer.
pub async fn show(conn: &mut Conn, name: &str) -> Result<String> {
    let rows = conn.query(&format!("SHOW {name}")).await?;
    rows.first()
        .map(|r| cell(r, 0, name).map(str::to_string))
        .transpose()?
        .ok_or_else(|| bad(&format!("SHOW {name}")))
}

/// A WAL position with its timeline (start and end of BASE_BACKUP).
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// Location.
    pub lsn: Lsn,
    /// Timeline.
    pub timeline: u32,
}

/// Reads the one-row `recptr, tli` result set.
///
/// # Errors
/// `Database` for server errors or a malformed answer.
pub async fn read_position(conn: &mut Conn) -> Result<Position> {
    let rows = conn.read_result_set().await?;
    let row = rows.first().ok_or_else(|| bad("no backup position"))?;
    Ok(Position {
        lsn: Lsn::parse(cell(row, 0, "backup position")?).ok_or_else(|| bad("backup position"))?,
        timeline: cell(row, 1, "backup timeline")?
            .parse()
            .map_err(|_| bad("backup timeline"))?,
    })
}

/// One row of the tablespace list.
#[derive(Debug, Clone)]
pub struct Tablespace {
    /// OID (`None` for the data directory).
    pub oid: Option<u32>,
    /// Location (`None` for the data directory).
    pub location: Option<String>,
    /// Size estimate in kB (with PROGRESS).
    pub size_kb: Option<u64>,
}

/// Reads the tablespace list.
///
/// # Errors
/// `Database` for server errors or a malformed answer.
pub async fn read_tablespaces(conn: &mut Conn) -> Result<Vec<Tablespace>> {
    conn.read_result_set()
        .await?
        .into_iter()
        .map(|r| {
            Ok(Tablespace {
                oid: r
                    .first()
                    .cloned()
                    .flatten()
                    .map(|s| s.parse().map_err(|_| bad("tablespace oid")))
                    .transpose()?,
                location: r.get(1).cloned().flatten(),
                size_kb: r.get(2).cloned().flatten().and_then(|s| s.parse().ok()),
            })
        })
        .collect()
}

/// Waits for CopyOutResponse.
///
/// # Errors
/// `Database` if something else arrives.
pub async fn expect_copy_out(conn: &mut Conn) -> Result<()> {
    match conn.next().await? {
        Message::CopyOutResponse(_) => Ok(()),
        _ => Err(bad("expected CopyOutResponse")),
    }
}

/// A message inside the BASE_BACKUP COPY stream.
#[derive(Debug)]
pub enum CopyMessage {
    /// `n`: a new archive begins.
    NewArchive {
        /// `base.tar` or `<oid>.tar`.
        name: String,
        /// Tablespace location, empty for the data directory.
        location: String,
    },
    /// `m`: the manifest begins.
    Manifest,
    /// `d`: archive or manifest bytes.
    Data(Bytes),
    /// `p`: bytes done so far, across archives.
    Progress(u64),
    /// CopyDone.
    Done,
}

/// Decodes one CopyData payload.
///
/// # Errors
/// `Database` for an unknown or malformed sub-message.
pub fn decode_copy_data(mut data: Bytes) -> Result<CopyMessage> {
    if data.is_empty() {
        return Err(bad("empty CopyData"));
    }
    let kind = data.get_u8();
    match kind {
        b'd' => Ok(CopyMessage::Data(data)),
        b'p' if data.len() == 8 => Ok(CopyMessage::Progress(data.get_u64())),
        b'm' => Ok(CopyMessage::Manifest),
        b'n' => {
            let mut fields = data.split(|b| *b == 0);
            let name = fields
                .next()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .ok_or_else(|| bad("archive name"))?;
            let location = fields
                .next()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .unwrap_or_default();
            if name.is_empty() || name.len() > MAX_ARCHIVE_NAME || name.contains('/') {
                return Err(bad("archive name"));
            }
            Ok(CopyMessage::NewArchive { name, location })
        }
        other => Err(bad(&format!(
            "CopyData sub-message {:?}",
            char::from(other)
        ))),
    }
}

/// Reads the next message of the COPY stream.
///
/// # Errors
/// `Database` for server errors (e.g. checksum failures) or protocol errors.
pub async fn next_copy(conn: &mut Conn) -> Result<CopyMessage> {
    match conn.next().await? {
        Message::CopyData(body) => decode_copy_data(body.into_bytes()),
        Message::CopyDone => Ok(CopyMessage::Done),
        _ => Err(bad("unexpected message inside the backup stream")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sub_messages() {
        let m = decode_copy_data(Bytes::from_static(b"nbase.tar\0\0")).unwrap();
        assert!(
            matches!(m, CopyMessage::NewArchive { ref name, ref location } if name == "base.tar" && location.is_empty())
        );
        let m = decode_copy_data(Bytes::from_static(b"n16384.tar\0/srv/ts1\0")).unwrap();
        assert!(
            matches!(m, CopyMessage::NewArchive { ref location, .. } if location == "/srv/ts1")
        );
        assert!(
            matches!(decode_copy_data(Bytes::from_static(b"dxyz")).unwrap(), CopyMessage::Data(d) if &d[..] == b"xyz")
        );
        let mut p = b"p".to_vec();
        p.extend_from_slice(&1234u64.to_be_bytes());
        assert!(matches!(
            decode_copy_data(Bytes::from(p)).unwrap(),
            CopyMessage::Progress(1234)
        ));
        assert!(matches!(
            decode_copy_data(Bytes::from_static(b"m")).unwrap(),
            CopyMessage::Manifest
        ));
        assert!(decode_copy_data(Bytes::from_static(b"x")).is_err());
        assert!(decode_copy_data(Bytes::from_static(b"n../x\0\0")).is_err());
        let long = format!("n{}.tar\0\0", "1".repeat(300));
        assert!(decode_copy_data(Bytes::from(long.into_bytes())).is_err());
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn declared_lengths_are_bounded_before_anything_is_reserved() {
        let mut huge = BytesMut::from(&[b'd', 0xFF, 0xFF, 0xFF, 0xF0][..]);
        assert!(parse_message(&mut huge).is_err());
        assert!(huge.capacity() < 1 << 20, "{}", huge.capacity());
        // Within the limit but not there yet: wait, without reserving what is announced.
        let mut big = BytesMut::from(&[b'd', 0, 0x10, 0, 0, b'd'][..]);
        assert!(parse_message(&mut big).unwrap().is_none());
        assert!(big.capacity() < 1 << 20, "{}", big.capacity());
        let mut short = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(parse_message(&mut short).is_err());
    }

    #[test]
    fn messages_fed_one_byte_at_a_time() {
        let mut stream = frame(b'd', b"dtar bytes");
        stream.extend(frame(b'd', b"p\0\0\0\0\0\0\x04\xd2"));
        stream.extend(frame(b'c', b""));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in stream {
            buf.extend_from_slice(&[b]);
            while let Some(m) = parse_message(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 3);
        let mut copy = got.into_iter().filter_map(|m| match m {
            Message::CopyData(b) => Some(decode_copy_data(b.into_bytes()).unwrap()),
            Message::CopyDone => None,
            _ => panic!("unexpected message"),
        });
        assert!(matches!(copy.next(), Some(CopyMessage::Data(d)) if &d[..] == b"tar bytes"));
        assert!(matches!(copy.next(), Some(CopyMessage::Progress(1234))));
    }

    #[test]
    fn rows_with_more_cells_than_any_reply_has_are_refused() {
        let row = |cells: u16| {
            let mut body = cells.to_be_bytes().to_vec();
            for _ in 0..cells {
                body.extend_from_slice(&(-1i32).to_be_bytes());
            }
            let mut buf = BytesMut::from(&frame(b'D', &body)[..]);
            match parse_message(&mut buf).unwrap() {
                Some(Message::DataRow(r)) => decode_row(&r),
                _ => panic!("not a DataRow"),
            }
        };
        assert!(row(1000).is_err());
        assert_eq!(row(2).unwrap(), vec![None, None]);
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        let mut buf = BytesMut::from(&frame(b'D', &body)[..]);
        let Some(Message::DataRow(r)) = parse_message(&mut buf).unwrap() else {
            panic!("not a DataRow")
        };
        assert_eq!(decode_row(&r).unwrap(), vec![Some("ab".to_string())]);
    }

    #[test]
    fn sizes_from_the_server_do_not_overflow() {
        assert_eq!(parse_guc_size("18446744073709551615GB"), None);
        assert_eq!(parse_guc_size("17179869184GB"), None);
        assert_eq!(parse_guc_size("é"), None);
        assert_eq!(parse_guc_size("16é"), None);
    }

    #[test]
    fn command_and_sizes() {
        let c = base_backup_command(&StartOptions {
            label: "it's",
            fast: true,
            incremental: false,
            verify_checksums: true,
        });
        assert_eq!(c, "BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TARGET 'client')");
        let c = base_backup_command(&StartOptions {
            label: "l",
            fast: false,
            incremental: true,
            verify_checksums: false,
        });
        assert_eq!(c, "BASE_BACKUP (LABEL 'l', PROGRESS, CHECKPOINT 'spread', WAIT false, MANIFEST 'yes', TARGET 'client', INCREMENTAL, VERIFY_CHECKSUMS false)");
        assert_eq!(parse_guc_size("16MB"), Some(16 << 20));
        assert_eq!(parse_guc_size("1GB"), Some(1 << 30));
        assert_eq!(parse_guc_size("x"), None);
    }
}
