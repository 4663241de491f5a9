//! The audit trail: one JSON line per operation that uses a key (push, fetch, backup, restore,
//! verify, rekey, retain), appended to a local file (`WALSEAL_AUDIT_LOG` or `audit_log`).
//!
//! Each line carries `prev`, the SHA-256 of the previous line, so a removed or reordered line
//! breaks the chain, and `mac`, an HMAC-SHA256 of the rest of the line under a key derived from
//! the master key (`walseal/v1 audit`), so an edited line — the last one included — is detected
//! by anyone holding the key and cannot be forged without it. Lines hold times, host, operation,
//! object names, key ids, sizes and outcomes: never key material or plaintext. `verify` seals
//! the lines not yet sealed into the repository (`audit/<host>/<time>-<hash>.jsonl`).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ring::{digest, hkdf, hmac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{local_io, Error, ErrorKind, Result};
use crate::keys::{hex_encode, KeyId, Keyring, MasterKey};
use crate::storage::{PutOutcome, Storage};

const LABEL_AUDIT: &[u8] = b"walseal/v1 audit";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The active key's id, and the id and audit key of the master key that MACs the lines.
type Active = (KeyId, Option<(KeyId, Zeroizing<[u8; 32]>)>);
static ACTIVE: OnceLock<Active> = OnceLock::new();

/// The audit MAC key of a master key.
fn audit_key(master: &MasterKey) -> Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(master.secret());
    let okm = prk
        .expand(&[LABEL_AUDIT], hkdf::HKDF_SHA256)
        .expect("HKDF-SHA256 can expand 32 bytes");
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut()).expect("32 bytes fit");
    out
}

/// Remembers the active key's id, and the audit key of the first master key, for the lines
/// this process writes. A host without a master key (push-only, or identities only) holds no
/// symmetric secret to MAC with: its lines are chained only (and sealed into the repository
/// by `audit seal`).
pub fn remember(keyring: &Keyring) {
    let mac = keyring.first_master().map(|k| (k.id(), audit_key(k)));
    let _ = ACTIVE.set((keyring.active().id(), mac));
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// UTC time.
    pub time: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Operation (`wal-push`, `backup`, ...).
    pub op: String,
    /// The object, backup or repository concerned.
    pub object: String,
    /// The key id used (the active key).
    pub key_id: Option<String>,
    /// Bytes concerned.
    pub bytes: u64,
    /// `ok` or the error class.
    pub outcome: String,
    /// SHA-256 of the previous line.
    pub prev: String,
    /// The master key whose audit key made `mac`, when it is not `key_id` (e.g. new objects
    /// go to a recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key_id: Option<String>,
    /// HMAC-SHA256 of this line without `mac`, under the audit key of `mac_key_id` or else
    /// `key_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn mac_of(key: &[u8], entry: &Entry) -> String {
    let mut unsigned = entry.clone();
    unsigned.mac = None;
    let text = serde_json::to_string(&unsigned).unwrap_or_default();
    hex_encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text.as_bytes()).as_ref())
}

fn sha256_hex(line: &str) -> String {
    hex_encode(digest::digest(&digest::SHA256, line.as_bytes()).as_ref())
}

/// Appends one line to the audit log at `path` (if configured). Failures are reported on
/// stderr but never fail the operation itself.
pub fn append(path: Option<&Path>, op: &str, object: &str, bytes: u64, outcome: &str) {
    let Some(path) = path else { return };
    if let Err(e) = try_append(path, op, object, bytes, outcome) {
        tracing::warn!("audit log: {e}");
    }
}

fn try_append(path: &Path, op: &str, object: &str, bytes: u64, outcome: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| local_io(format!("cannot open audit log {}", path.display()), &e))?;
    file.lock()
        .map_err(|e| local_io(format!("cannot lock audit log {}", path.display()), &e))?;
    let prev = last_line(&mut file).map_or_else(|| GENESIS.to_string(), |l| sha256_hex(&l));
    let active = ACTIVE.get();
    let mut entry = Entry {
        time: crate::time::format_pg(crate::time::now()),
        host: hostname(),
        pid: std::process::id(),
        op: op.into(),
        object: object.into(),
        key_id: active.map(|(id, _)| id.to_string()),
        mac_key_id: active.and_then(|(id, mac)| {
            mac.as_ref()
                .filter(|(m, _)| m != id)
                .map(|(m, _)| m.to_string())
        }),
        bytes,
        outcome: outcome.into(),
        prev,
        mac: None,
    };
    if let Some((_, Some((_, key)))) = active {
        entry.mac = Some(mac_of(key.as_ref(), &entry));
    }
    let line = serde_json::to_string(&entry)
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| local_io(format!("cannot write audit log {}", path.display()), &e))
}

/// The last non-blank line of the log (as `str::lines` gives it), read from the end: the
/// window grows until the line starts inside it, and bytes are split before they are decoded,
/// so a window starting inside a character does no harm.
fn last_line(file: &mut std::fs::File) -> Option<String> {
    let len = file.metadata().ok()?.len();
    let mut window = 8192u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        (&mut *file).take(window).read_to_end(&mut tail).ok()?;
        match tail.iter().rposition(|b| !b.is_ascii_whitespace()) {
            None if start == 0 => return None,
            None => {}
            Some(last) => {
                let line_start = tail[..last].iter().rposition(|&b| b == b'\n');
                if line_start.is_some() || start == 0 {
                    let from = line_start.map_or(0, |i| i + 1);
                    let to = tail[last..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(tail.len(), |i| last + i);
                    let line = tail.get(from..to)?;
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    return String::from_utf8(line.to_vec()).ok();
                }
            }
        }
        window = window.checked_mul(2)?;
    }
}

/// Result of `walseal audit verify`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Lines read.
    pub lines: u64,
    /// True when the chain and every MAC we can check hold.
    pub ok: bool,
    /// Problems by line number (1-based).
    pub problems: Vec<String>,
}

/// Checks the chain (`prev`) of every line and the MAC of every line sealed under a key in
/// `keyring`.
///
/// # Errors
/// `LocalIo` if the file cannot be read.
pub fn verify_file(path: &Path, keyring: &Keyring) -> Result<AuditReport> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| local_io(format!("cannot read audit log {}", path.display()), &e))?;
    let mut report = AuditReport {
        lines: 0,
        ok: true,
        problems: Vec::new(),
    };
    let mut prev_hash = GENESIS.to_string();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        report.lines += 1;
        match serde_json::from_str::<Entry>(line) {
            Err(e) => report
                .problems
                .push(format!("line {n}: not an audit entry ({e})")),
            Ok(entry) => {
                if entry.prev != prev_hash {
                    report.problems.push(format!("line {n}: chain broken (a line before it was removed, reordered or edited)"));
                }
                let mac_id = entry.mac_key_id.as_ref().or(entry.key_id.as_ref());
                match (mac_id.and_then(|id| keyring_key(keyring, id)), &entry.mac) {
                    (Some(key), Some(mac)) => {
                        if mac_of(audit_key(key).as_ref(), &entry) != *mac {
                            report.problems.push(format!(
                                "line {n}: MAC does not match (the line was edited)"
                            ));
                        }
                    }
                    // Written under a master key we hold, which always MACs: the MAC was
                    // stripped.
                    (Some(_), None) => report.problems.push(format!(
                        "line {n}: MAC missing although its key is a master key (the line was edited)"
                    )),
                    (None, _) => {}
                }
            }
        }
        prev_hash = sha256_hex(line);
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn keyring_key<'a>(keyring: &'a Keyring, id: &str) -> Option<&'a MasterKey> {
    let mut raw = [0u8; crate::keys::KEY_ID_LEN];
    crate::keys::hex_decode_into(id, &mut raw)?;
    keyring.get(&KeyId(raw))
}

/// The lines of `text` after the first `done` bytes (the mark of the last seal), if any.
///
/// The mark is a byte offset read from a file: one beyond the end (the log was replaced) seals
/// the whole log, and one inside a line or a character seals from the start of that line (a
/// line sealed twice is better than one never sealed). Never slices inside a character.
fn pending(text: &str, done: usize) -> Option<&str> {
    let done = if done > text.len() { 0 } else { done };
    let start = text
        .as_bytes()
        .get(..done)?
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..).filter(|rest| !rest.is_empty())
}

/// Seals the lines appended since the last call into the repository as one object.
///
/// # Errors
/// Local and storage errors.
pub async fn seal_pending(
    path: &Path,
    storage: &Storage,
    keyring: &Keyring,
) -> Result<Option<String>> {
    let mark: PathBuf = PathBuf::from(format!("{}.sealed", path.display()));
    let done: usize = std::fs::read_to_string(&mark)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let Some(batch) = pending(&text, done) else {
        return Ok(None);
    };
    let key = format!(
        "audit/{}/{}-{}.jsonl",
        hostname(),
        crate::time::format_id(crate::time::now()),
        &sha256_hex(batch)[..12]
    );
    let sealed = keyring.seal_to_vec(&key, batch.as_bytes())?;
    if storage.put_new(&key, sealed.into()).await? == PutOutcome::Created {
        std::fs::write(&mark, text.len().to_string())
            .map_err(|e| local_io(format!("cannot write {}", mark.display()), &e))?;
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_inside_a_character_or_line_seals_from_that_line() {
        let text = "{\"a\":\"é\"}\n{\"b\":\"€\"}\n";
        let second = text.find("{\"b").unwrap();
        for done in 0..text.len() {
            let batch = pending(text, done).unwrap();
            let want = if done < second { text } else { &text[second..] };
            assert_eq!(batch, want, "mark {done}");
        }
        assert_eq!(pending(text, text.len()), None);
        // A mark beyond the end (the log was replaced): everything.
        assert_eq!(pending(text, text.len() + 5), Some(text));
    }

    #[test]
    fn the_last_line_is_found_when_the_tail_starts_inside_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let first = format!("a{}", "é".repeat(4500));
        std::fs::write(&path, format!("{first}\n{{\"x\":1}}\n")).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(last_line(&mut f).as_deref(), Some("{\"x\":1}"));
        std::fs::write(&path, format!("{first}\n")).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(last_line(&mut f), Some(first));
    }
}
