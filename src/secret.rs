//! The bottom drawer of key handling: key ids, hex, and the secret files (key, identity,
//! signer) with their modes, sizes and line format. It imports nothing of walseal's but the
//! error type, so keys, recipients and signers all build on it without a cycle.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{local_io, Error, ErrorKind, Result};

/// Length of a secret in a secret file.
const SECRET_LEN: usize = 32;

/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 16;

/// The id of a master key: 16 bytes derived from the key, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A parsed secret file (key file or identity file): its one named field and its secret.
pub(crate) struct SecretText<'t> {
    /// The named field (`id:` or `recipient:`), if present.
    pub(crate) field: Option<&'t str>,
    /// The 32-byte secret.
    pub(crate) secret: Zeroizing<[u8; SECRET_LEN]>,
}

/// Parses the `name: value` lines of a secret file: `tag: 1`, `field: ...` and `secret:` (64
/// hex digits); `#` lines and blank lines are skipped, any other field is refused.
pub(crate) fn parse_secret_text<'t>(
    text: &'t str,
    tag: &str,
    field: &str,
    not_ours: &'static str,
) -> std::result::Result<SecretText<'t>, &'static str> {
    let (mut version, mut named, mut secret_hex) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or("a line is not `name: value`")?;
        match k.trim() {
            k if k == tag => version = Some(v.trim()),
            k if k == field => named = Some(v.trim()),
            "secret" => secret_hex = Some(v.trim()),
            _ => return Err("unknown field"),
        }
    }
    if version != Some("1") {
        return Err(not_ours);
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    hex_decode_into(secret_hex.ok_or("missing `secret:` line")?, secret.as_mut())
        .ok_or("`secret:` is not 64 hex digits")?;
    Ok(SecretText {
        field: named,
        secret,
    })
}

/// Writes a new secret file (a key or an identity: `what`) with mode 0600 and fsyncs it and
/// its directory. Never overwrites.
///
/// # Errors
/// `Conflict` if the file exists; `LocalIo` if it cannot be written.
pub(crate) fn write_secret_file(path: &Path, text: &str, what: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::Conflict,
                    format!("{} already exists; walseal keygen never overwrites a {what}", path.display()),
                )
                .hint(format!("choose another file name, or remove the old {what} only if nothing was sealed under it"))
            } else {
                local_io(format!("cannot create {what} file {}", path.display()), &e)
            }
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| local_io(format!("cannot write {what} file {}", path.display()), &e))?;
    sync_parent(path)
}

/// Reads a secret file (a key or an identity: `what`), refusing one that group or others can
/// access or that is too large to be one; `fix` says where the file should come from.
///
/// # Errors
/// `Config` for a missing, unreadable, too-open or too-large file.
pub(crate) fn read_secret_file(path: &Path, what: &str, fix: &str) -> Result<Zeroizing<String>> {
    let mut file = File::open(path).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot open {what} file {}: {e}", path.display()),
        )
        .hint(fix)
    })?;
    let meta = file.metadata().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot stat {what} file {}: {e}", path.display()),
        )
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{what} file {} is accessible by group or others (mode {mode:04o}); refusing to use it",
                path.display()
            ),
        )
        .hint(format!("chmod 600 {}", path.display())));
    }
    if meta.len() > 4096 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{} is not a walseal {what} file (too large)",
                path.display()
            ),
        ));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot read {what} file {}: {e}", path.display()),
        )
    })?;
    Ok(text)
}

/// Loads a secret file of kind `what` (key, identity, signer) with `parse`, naming the
/// setting to fix (`fix`) and the command that makes one (`made_by`) in errors.
///
/// # Errors
/// As [`read_secret_file`]; `Config` if `parse` refuses the text.
pub(crate) fn load_secret_file<T>(
    path: &Path,
    what: &str,
    fix: &str,
    made_by: &str,
    parse: impl FnOnce(&str) -> std::result::Result<T, &'static str>,
) -> Result<T> {
    let text = read_secret_file(path, what, fix)?;
    parse(&text).map_err(|why| {
        Error::new(
            ErrorKind::Config,
            format!("{what} file {} is invalid: {why}", path.display()),
        )
        .hint(format!("use a file written by `{made_by}`"))
    })
}

/// Decodes the text form of a public key, `prefix` ‖ 64 hex digits ‖ 8 hex digits of
/// checksum; returns the key and the checksum bytes, or why it is not one.
pub(crate) fn decode_public_text(
    text: &str,
    prefix: &str,
) -> std::result::Result<([u8; 32], [u8; 4]), String> {
    let text = text.trim();
    if !text.is_ascii() {
        return Err("it has characters other than letters and digits".into());
    }
    let hex = text
        .strip_prefix(prefix)
        .ok_or_else(|| format!("it does not start with `{prefix}`"))?;
    if hex.len() != 72 {
        return Err(format!("it has {} characters instead of 76", text.len()));
    }
    let mut public = [0u8; 32];
    let mut check = [0u8; 4];
    hex_decode_into(&hex[..64], &mut public)
        .and_then(|()| hex_decode_into(&hex[64..], &mut check))
        .ok_or_else(|| format!("it is not hex after `{prefix}`"))?;
    Ok((public, check))
}

/// Fsyncs the directory holding `path`, so a new file's name is durable.
///
/// # Errors
/// `LocalIo`.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| local_io(format!("cannot sync directory {}", dir.display()), &e))?;
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes hex (either case) into `out`, which must match its length exactly.
pub fn hex_decode_into(hex: &str, out: &mut [u8]) -> Option<()> {
    let hex = hex.as_bytes();
    if hex.len() != out.len() * 2 {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}
