//! The sealed object format (`docs/FORMAT.md`): header, key slots, and the chunked
//! AES-256-GCM payload (the STREAM construction) over an lz4 frame.
//!
//! Why this shape: every object gets a fresh random data key, wrapped in a *key slot* by a key
//! derived (HKDF-SHA256) from the master key, the slot's random salt and the object's name. The
//! payload is encrypted under a key derived from the data key, in fixed-size chunks whose nonce
//! is a counter plus a last-chunk flag, so truncation, reordering and splicing fail. The name is
//! associated data of every chunk and of the header MAC, so an object copied onto another name
//! does not open. A slot can be rewritten (key rotation, more key kinds) without touching the
//! payload. Everything here is pure computation over `Read`/`Write`: no storage, no async.

mod header;
mod stream;

pub use header::{Header, RepositoryId, SlotKind, MAGIC, REPOSITORY_ID_LEN, VERSION, VERSION_1};
pub use stream::{
    open, open_with_key, seal, OpenReader, SealOptions, SealSink, SealWriter, SealedKey,
};

use crate::keys::KeyId;

/// Compression of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None = 0,
    /// One LZ4 frame (lz4 frame format, as `lz4_flex` writes it).
    Lz4 = 1,
    /// Zstandard frames (RFC 8878), as libzstd writes them; the level is a sealing option
    /// ([`SealOptions::zstd_level`]), not recorded.
    Zstd = 2,
}

/// Largest zstd window a reader accepts (2^23 = 8 MiB, what level 19 uses for large inputs):
/// a frame asking for more is refused rather than allowed to make a reader allocate it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The zstd levels walseal seals with (above 19, libzstd's "ultra" levels need windows
/// larger than [`ZSTD_WINDOW_LOG_MAX`]).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// Why an object could not be sealed or opened. Never contains key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes do not start with the walseal magic.
    #[error("not a walseal object (bad magic)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("sealed with format version {0}, which this walseal cannot read")]
    UnsupportedVersion(u8),
    /// A header field is out of range.
    #[error("malformed header: {0}")]
    Malformed(&'static str),
    /// No slot is for a key we hold.
    #[error("sealed under key id {0}, which is not in the configured keyring")]
    UnknownKey(String),
    /// The keyring holds only a recipient: it can seal but not open.
    #[error("this host holds only a recipient (push-only mode) and cannot open objects")]
    PushOnly,
    /// A slot for a key we hold did not authenticate.
    #[error("the key slot for key id {0} does not authenticate: the object was modified or copied from another name")]
    SlotAuth(KeyId),
    /// The header MAC did not verify.
    #[error("header authentication failed: the object was modified or copied from another name")]
    HeaderAuth,
    /// A payload chunk did not authenticate.
    #[error(
        "payload chunk {0} failed authentication: the object was modified, truncated or spliced"
    )]
    ChunkAuth(u64),
    /// The object ends early.
    #[error("the object is truncated")]
    Truncated,
    /// A format-1 object (not bound to a repository, not signed) without `allow_legacy`.
    #[error("it is in format version 1, which binds no repository and signs nothing; refused unless allow_legacy is set")]
    Legacy,
    /// The object was written for another repository.
    #[error(
        "it was written for repository {0}, not this one: it was copied from another repository"
    )]
    WrongRepository(String),
    /// An object sealed to a recipient carries no signature.
    #[error("it is sealed to a recipient but not signed: anyone with the (public) recipient could have written it")]
    Unsigned,
    /// Signed, but by no signer this host trusts.
    #[error("it is signed by signer id {0}, which is not in trusted_signers")]
    UntrustedSigner(String),
    /// A trusted signer's signature does not verify.
    #[error("its signature by signer id {0} does not verify: the object was forged or modified")]
    BadSignature(KeyId),
    /// The payload is not the one the signature vouches for.
    #[error("its payload is not the one its signature covers: the object was modified")]
    PayloadDigest,
    /// Sealing to a recipient needs a signer.
    #[error("sealing to a recipient needs a signer")]
    NeedSigner,
    /// A format-1 object sealed to a recipient cannot be proven authentic, so it is not
    /// rewrapped.
    #[error("it is a format-1 object sealed to a recipient: nothing proves who wrote it, so rekey leaves it as it is")]
    LegacyUnsigned,
    /// The lz4 or zstd frame inside the authenticated payload is invalid (should be
    /// impossible for an object walseal sealed).
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The object name is longer than the format allows.
    #[error("object name is longer than {max} bytes", max = MAX_NAME_LEN)]
    NameTooLong,
    /// Reading or writing the underlying stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Longest header the format allows (16 slots of the largest body, MAC included): a rekey
/// may change a header's length within this, never the payload.
pub const MAX_HEADER_LEN: u64 = 28 + 16 * (19 + 4096) + 32;

/// Longest object name the format binds.
pub const MAX_NAME_LEN: usize = 1024;

impl From<SealError> for std::io::Error {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// Recovers a [`SealError`] that travelled through an `io::Error` (e.g. via the lz4 decoder).
pub fn seal_error_from_io(e: std::io::Error) -> SealError {
    if e.get_ref().is_some_and(|inner| inner.is::<SealError>()) {
        match e.into_inner().map(|b| b.downcast::<SealError>()) {
            Some(Ok(seal)) => *seal,
            Some(Err(other)) => SealError::Io(std::io::Error::other(other)),
            None => SealError::Truncated,
        }
    } else if e.kind() == std::io::ErrorKind::InvalidData
        || e.kind() == std::io::ErrorKind::UnexpectedEof
    {
        SealError::Decompress(e.to_string())
    } else {
        SealError::Io(e)
    }
}

#[cfg(test)]
mod tests;

/// Seals a small in-memory object.
///
/// # Errors
/// As [`seal`].
pub fn seal_to_vec<'k>(
    key: impl Into<crate::keys::Sealer<'k>>,
    name: &str,
    data: &[u8],
    opts: &SealOptions,
) -> Result<Vec<u8>, SealError> {
    use std::io::Write;
    let mut w = seal(Vec::with_capacity(data.len() / 2 + 256), key, name, opts)?;
    w.write_all(data)?;
    Ok(w.finish()?)
}

/// Opens a small in-memory object completely.
///
/// # Errors
/// As [`open`] and its reads.
pub fn open_to_vec(
    keyring: &crate::keys::Keyring,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    use std::io::Read;
    let mut r = open(sealed, keyring, name)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(seal_error_from_io)?;
    Ok(out)
}

/// Reads an opened object to its authenticated end, handing each plaintext block to `f`;
/// returns the plaintext length. `key` names the object in errors.
///
/// # Errors
/// The object's own errors (tampering, truncation, storage errors carried through the reader)
/// and whatever `f` returns.
pub fn for_each_block<R: std::io::Read>(
    reader: &mut OpenReader<R>,
    key: &str,
    mut f: impl FnMut(&[u8]) -> crate::error::Result<()>,
) -> crate::error::Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| seal_error_from_io(e).into_error(key))?;
        if n == 0 {
            return Ok(total);
        }
        f(&buf[..n])?;
        total += n as u64;
    }
}

/// SHA-256 (hex) of a sealed object's payload chunks, i.e. everything after the header. Key
/// rotation rewrites only the header, so this digest names the same part before and after.
///
/// # Errors
/// Header parse errors.
pub fn payload_digest(sealed: &[u8]) -> Result<String, SealError> {
    let mut cursor = sealed;
    let header = Header::read(&mut cursor)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &sealed[header.len()..]);
    Ok(crate::keys::hex_encode(digest.as_ref()))
}

/// Rewraps a sealed object's data key under `to` (key rotation, and conversion of format-1
/// objects): returns the object with a new version-2 header for the keyring's repository,
/// holding a single key slot for `to` (a master-key or an X25519 slot; a content-digest slot
/// is kept only if it is for `to`), the signature slots it had (they cover the data key and
/// the payload, which do not change), a signature by the keyring's signer if `to` is a
/// recipient and the object had none, and the payload bytes unchanged; or `None` if the
/// object is already in that form. `digest` (a recipient's content digest of the object, see
/// [`crate::recipient::Recipient::content_digest`]) adds or replaces the content-digest slot
/// when `to` is a recipient. The payload is not re-encrypted: it is bound to the data key
/// (`docs/FORMAT.md` §4).
///
/// # Errors
/// As [`open`]'s header checks; `NeedSigner` if `to` is a recipient, the object has no
/// signature and the keyring no signer; `Malformed` if the keyring is not bound to a
/// repository.
pub fn rewrap(
    sealed: &[u8],
    keyring: &crate::keys::Keyring,
    to: crate::keys::Sealer<'_>,
    name: &str,
    digest: Option<[u8; 32]>,
) -> Result<Option<Vec<u8>>, SealError> {
    let mut cursor = sealed;
    let header = Header::read(&mut cursor)?;
    let payload = &sealed[header.len()..];
    let sha = || {
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
        Ok(sha)
    };
    Ok(
        rewrap_header(&header, keyring, to, name, digest, sha)?.map(|mut out| {
            out.extend_from_slice(payload);
            out
        }),
    )
}

/// [`rewrap`] for an object read as a stream: the new header only (the payload follows it
/// unchanged), or `None`. `payload_sha256` is called only when the object must be signed
/// now (an unsigned object moved to a recipient), to give the SHA-256 of its payload.
///
/// # Errors
/// As [`rewrap`], and what `payload_sha256` returns.
pub fn rewrap_header(
    header: &Header,
    keyring: &crate::keys::Keyring,
    to: crate::keys::Sealer<'_>,
    name: &str,
    digest: Option<[u8; 32]>,
    payload_sha256: impl FnOnce() -> Result<[u8; 32], SealError>,
) -> Result<Option<Vec<u8>>, SealError> {
    use crate::keys::Sealer;
    let repository = keyring
        .repository()
        .ok_or(SealError::Malformed("rewrap needs the repository id"))?;
    let signature = SlotKind::Signature as u8;
    let signed = header.slots.iter().any(|s| s.kind == signature);
    let has_digest = header.content_digest(&to.id()).is_some();
    let recipient = matches!(to, Sealer::Recipient(_));
    if header.version == VERSION
        && header.key_ids() == [to.id()]
        && (digest.is_none() || has_digest)
        && (!recipient || signed)
    {
        return Ok(None);
    }
    let unlocked = header.unlock(keyring, name.as_bytes())?;
    // A format-1 object sealed to a recipient carries nothing that proves who wrote it
    // (anyone with the public recipient could have): rewrapping it would turn a possible
    // forgery into a signed or master-key object. It stays as it is.
    if header.version == VERSION_1 && unlocked.by_identity {
        return Err(SealError::LegacyUnsigned);
    }
    let dek = unlocked.dek;
    // A master-key slot's salt, or a recipient slot's ephemeral secret: wiped on drop.
    let mut salt = zeroize::Zeroizing::new([0u8; header::SALT_LEN]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), salt.as_mut())
        .map_err(|_| SealError::Io(std::io::Error::other("the system random generator failed")))?;
    let mut slots = vec![match to {
        Sealer::Master(key) => header::master_slot(key, &salt, &dek, name.as_bytes()),
        Sealer::Recipient(r) => header::x25519_slot(r, &salt, &dek, name.as_bytes())?,
    }];
    match (to, digest) {
        (Sealer::Recipient(r), Some(d)) => slots.push(header::digest_slot(r, &d)),
        _ => slots.extend(
            header
                .slots
                .iter()
                .filter(|s| s.kind == SlotKind::ContentDigest as u8 && s.key_id == to.id())
                .cloned(),
        ),
    }
    let mut new = Header::new(
        header.compression,
        header.chunk_shift,
        repository,
        slots.clone(),
        &dek,
        name.as_bytes(),
    );
    if header.version == VERSION && header.repository == repository {
        slots.extend(header.slots.iter().filter(|s| s.kind == signature).cloned());
    }
    if recipient && !slots.iter().any(|s| s.kind == signature) {
        let signer = keyring.signer().ok_or(SealError::NeedSigner)?;
        let sha = payload_sha256()?;
        slots.push(header::signature_slot(
            signer,
            &new,
            &dek,
            &sha,
            name.as_bytes(),
        )?);
    }
    new = Header::new(
        header.compression,
        header.chunk_shift,
        repository,
        slots,
        &dek,
        name.as_bytes(),
    );
    Ok(Some(new.to_bytes()))
}

/// Sealing with a keyring's repository binding and signer. (Here, not in `keys`: the format
/// builds on keys, not the other way round.)
impl crate::keys::Keyring {
    /// How new objects of this repository are sealed: its id, and the signer when sealing
    /// to a recipient.
    ///
    /// # Errors
    /// `Internal` if the keyring is not bound to a repository; `Config` if it seals to a
    /// recipient without a signer.
    pub fn seal_options(&self) -> crate::error::Result<SealOptions> {
        let repository = self.repository().ok_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorKind::Internal,
                "sealing before the repository was opened",
            )
        })?;
        if matches!(self.active(), crate::keys::Sealer::Recipient(_)) && self.signer().is_none() {
            return Err(SealError::NeedSigner.into_error("sealing to the recipient"));
        }
        let (compression, zstd_level) = self.compression();
        Ok(SealOptions {
            repository,
            signer: self.signer_arc(),
            compression,
            zstd_level,
            ..SealOptions::default()
        })
    }

    /// Seals a small object of this repository with [`Keyring::seal_options`].
    ///
    /// # Errors
    /// As [`Keyring::seal_options`] and sealing.
    pub fn seal_to_vec(&self, name: &str, data: &[u8]) -> crate::error::Result<Vec<u8>> {
        seal_to_vec(self.active(), name, data, &self.seal_options()?)
            .map_err(|e| e.into_error(name))
    }
}

impl SealError {
    /// Converts to the crate error for the object `object`, choosing kind and fix.
    pub fn into_error(self, object: &str) -> crate::error::Error {
        use crate::error::{Error, ErrorKind};
        match self {
            SealError::UnknownKey(ids) => Error::new(
                ErrorKind::Key,
                format!("{object}: sealed under key id {ids}, which is not in the configured keyring"),
            )
            .hint("add the key file with that id to WALSEAL_KEY_FILE (several files may be listed, separated by ':')"),
            SealError::Io(e) => match e.get_ref().map(|inner| inner.is::<crate::error::Error>()) {
                Some(true) => match e.into_inner().map(|b| b.downcast::<crate::error::Error>()) {
                    Some(Ok(err)) => *err,
                    _ => Error::new(ErrorKind::Internal, format!("{object}: lost error")),
                },
                _ => crate::error::local_io(object, &e),
            },
            SealError::NameTooLong => Error::new(ErrorKind::Usage, format!("{object}: {self}")),
            SealError::PushOnly => crate::keys::push_only_error(&format!("opening {object}")),
            SealError::Legacy => Error::new(ErrorKind::Integrity, format!("{object}: {self}"))
                .hint("objects written before walseal 0.2 can be copied between repositories and, if sealed to a recipient, forged; set allow_legacy = true (WALSEAL_ALLOW_LEGACY=1) to read them, then run `walseal rekey` to convert them"),
            SealError::WrongRepository(_) => Error::new(ErrorKind::Integrity, format!("{object}: {self}"))
                .hint("do not use it; restore the object from a copy of this repository (several clusters sharing a key is fine: each repository only opens its own objects)"),
            SealError::Unsigned | SealError::UntrustedSigner(_) | SealError::BadSignature(_) | SealError::PayloadDigest => {
                Error::new(ErrorKind::Integrity, format!("{object}: {self}"))
                    .hint("if the signer is yours, add its `wss1…` text to trusted_signers (WALSEAL_TRUSTED_SIGNERS); otherwise the object was forged: do not use it")
            }
            SealError::LegacyUnsigned => Error::new(ErrorKind::Integrity, format!("{object}: {self}"))
                .hint("it stays readable only with allow_legacy; take a new base backup so that it is no longer needed, and let `walseal retain` remove it"),
            SealError::NeedSigner => Error::new(ErrorKind::Config, format!("{object}: {self}"))
                .hint("give this host a signer: `walseal keygen --signer -o FILE`, then signer_file = FILE (WALSEAL_SIGNER_FILE), and add its `wss1…` text to trusted_signers on restore hosts"),
            other => Error::new(ErrorKind::Integrity, format!("{object}: {other}"))
                .hint("the archived copy is damaged or was tampered with; do not use it: restore it from another copy of the repository"),
        }
    }
}
