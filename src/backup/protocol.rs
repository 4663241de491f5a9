//! The replication commands a backup uses and the PostgreSQL 15+ BASE_BACKUP stream:
//! IDENTIFY_SYSTEM, SHOW, the BASE_BACKUP command text, the start/stop position and tablespace
//! result sets, and the CopyData sub-messages (`n` new archive, `d` data, `p` progress,
//! `m` manifest). See `../shared/notes/POSTGRES-PROTOCOL.md` §2–§3.

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;

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

/// Parses a size GUC as shown by SHOW (`16MB`, `1GB`, `8192kB`).
pub fn parse_guc_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    let mult = match &s[split..] {
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    Some(n * mult)
}

/// BASE_BACKUP options walseal sets.
#[derive(Debug, Clone)]
pub struct StartOptions<'a> {
    /// Backup label.
    pub label: &'a str,
    /// Fast checkpoint.
    pub fast: bool,
}

/// Quotes a string literal for a replication command.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The BASE_BACKUP command (PostgreSQL 15+ syntax). WAIT is off: walseal itself waits for the
/// WAL to reach its repository.
pub fn base_backup_command(o: &StartOptions<'_>) -> String {
    format!(
        "BASE_BACKUP (LABEL {}, PROGRESS, CHECKPOINT '{}', WAIT false, MANIFEST 'yes', TARGET 'client')",
        quote(o.label),
        if o.fast { "fast" } else { "spread" }
    )
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
            if name.is_empty() || name.contains('/') {
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
    }

    #[test]
    fn command_and_sizes() {
        let c = base_backup_command(&StartOptions {
            label: "it's",
            fast: true,
        });
        assert_eq!(c, "BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TARGET 'client')");
        assert_eq!(parse_guc_size("16MB"), Some(16 << 20));
        assert_eq!(parse_guc_size("1GB"), Some(1 << 30));
        assert_eq!(parse_guc_size("x"), None);
    }
}
