//! Sealing and opening as streams: `SealWriter` (lz4 → chunked AES-256-GCM → `Write`) and
//! `open` (`Read` → authenticate chunk by chunk → lz4 decode). Memory is bounded by the chunk
//! size and the lz4 block size, whatever the object size (`docs/FORMAT.md` §5).

use std::io::{self, Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use ring::aead::{Aad, LessSafeKey, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use std::sync::Arc;

use ring::digest;

use super::header::{
    check_x25519_slot, digest_slot, master_slot, placeholder_signature_slot, signature_slot,
    x25519_slot, DataKey, Header, RepositoryId, DEK_LEN, SALT_LEN, TAG_LEN,
};
use super::{seal_error_from_io, Compression, SealError, SlotKind, MAX_NAME_LEN};
use crate::keys::{Keyring, Sealer};
use crate::recipient::Recipient;
use crate::signer::{Signer, SignerPublic};

/// How to seal: compression and chunk size.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Payload compression.
    pub compression: Compression,
    /// The zstd level (1..=19) when `compression` is zstd.
    pub zstd_level: i32,
    /// Payload chunk size is `1 << chunk_shift` (12..=24).
    pub chunk_shift: u8,
    /// For a recipient: the content digest to record in a digest slot (kind 0x03), from
    /// [`crate::recipient::Recipient::content_digest`] over the content. Ignored for master
    /// keys.
    pub content_digest: Option<[u8; 32]>,
    /// The repository the object is written for (`walseal init` made its id); zero for
    /// objects outside a repository (key exports).
    pub repository: RepositoryId,
    /// For a recipient: the signer that signs the object (push-only hosts must have one, or
    /// readers refuse what they seal). Ignored for master keys.
    pub signer: Option<Arc<Signer>>,
    /// Fixed data key and salt (the ephemeral secret for a recipient) instead of random
    /// ones: for test vectors only.
    #[doc(hidden)]
    pub fixed_secrets: Option<([u8; DEK_LEN], [u8; SALT_LEN])>,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            compression: Compression::Lz4,
            zstd_level: 3,
            chunk_shift: 16,
            content_digest: None,
            repository: [0u8; 16],
            signer: None,
            fixed_secrets: None,
        }
    }
}

fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Encrypts a byte stream into STREAM chunks written to `out`.
struct ChunkSealer<W: Write> {
    out: W,
    key: LessSafeKey,
    aad: Vec<u8>,
    buf: Vec<u8>,
    chunk: usize,
    counter: u64,
    /// SHA-256 of the chunks written, when the object will be signed.
    hash: Option<digest::Context>,
}

impl<W: Write> ChunkSealer<W> {
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        self.key
            .seal_in_place_append_tag(
                chunk_nonce(self.counter, last),
                Aad::from(&self.aad),
                &mut self.buf,
            )
            .map_err(|_| io::Error::other("AES-256-GCM seal failed"))?;
        if let Some(h) = &mut self.hash {
            h.update(&self.buf);
        }
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    fn finish(mut self) -> io::Result<(W, Option<[u8; 32]>)> {
        self.seal_chunk(true)?;
        let hash = self.hash.take().map(|h| {
            let mut out = [0u8; 32];
            out.copy_from_slice(h.finish().as_ref());
            out
        });
        Ok((self.out, hash))
    }
}

impl<W: Write> Write for ChunkSealer<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            if self.buf.len() == self.chunk {
                // More data follows, so this full chunk is not the last one.
                self.seal_chunk(false)?;
            }
            let n = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

enum Sink<W: Write> {
    Plain(Box<ChunkSealer<W>>),
    Lz4(Box<FrameEncoder<ChunkSealer<W>>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, ChunkSealer<W>>>),
}

/// A `Write` that seals everything written to it; call [`SealWriter::finish`] at the end.
/// Dropping it without `finish` leaves an object with no final chunk, which never opens.
pub struct SealWriter<W: Write> {
    sink: Sink<W>,
    dek: DataKey,
    header: Header,
    name: String,
    /// A recipient slot's ephemeral secret and recipient, for the self-check.
    ephemeral: Option<(Zeroizing<[u8; SALT_LEN]>, Recipient)>,
    /// The signer whose signature slot is filled in at the end.
    signer: Option<Arc<Signer>>,
}

/// Starts sealing an object called `name` to `to` (a master key or a recipient) in memory,
/// writing the header to `out` at once (it is rewritten at the end when the object gets a
/// content digest or a signature, whose slots have fixed lengths).
///
/// # Errors
/// `NameTooLong`, `Malformed` (bad chunk size, unusable recipient) or `Io` from `out`.
pub fn seal<'k, W: SealSink>(
    mut out: W,
    to: impl Into<Sealer<'k>>,
    name: &str,
    opts: &SealOptions,
) -> Result<SealWriter<W>, SealError> {
    if name.len() > MAX_NAME_LEN {
        return Err(SealError::NameTooLong);
    }
    if !super::header::CHUNK_SHIFT_RANGE.contains(&opts.chunk_shift) {
        return Err(SealError::Malformed("chunk size out of range"));
    }
    // `salt` is a master-key slot's salt, or a recipient slot's ephemeral secret (so wiped).
    let (dek, salt) = match &opts.fixed_secrets {
        Some((dek, salt)) => (DataKey(Zeroizing::new(*dek)), Zeroizing::new(*salt)),
        None => {
            let rng = SystemRandom::new();
            let mut dek = Zeroizing::new([0u8; DEK_LEN]);
            let mut salt = Zeroizing::new([0u8; SALT_LEN]);
            rng.fill(dek.as_mut())
                .and_then(|()| rng.fill(salt.as_mut()))
                .map_err(|_| {
                    SealError::Io(io::Error::other("the system random generator failed"))
                })?;
            (DataKey(dek), salt)
        }
    };
    let to = to.into();
    let ephemeral = match to {
        Sealer::Recipient(r) => Some((salt.clone(), *r)),
        Sealer::Master(_) => None,
    };
    let signer = match to {
        Sealer::Recipient(_) => opts.signer.clone(),
        Sealer::Master(_) => None,
    };
    let slots = match to {
        Sealer::Master(key) => vec![master_slot(key, &salt, &dek, name.as_bytes())],
        Sealer::Recipient(r) => {
            let mut slots = vec![x25519_slot(r, &salt, &dek, name.as_bytes())?];
            if let Some(digest) = &opts.content_digest {
                slots.push(digest_slot(r, digest));
            }
            if let Some(s) = &signer {
                slots.push(placeholder_signature_slot(s));
            }
            slots
        }
    };
    let header = Header::new(
        opts.compression,
        opts.chunk_shift,
        opts.repository,
        slots,
        &dek,
        name.as_bytes(),
    );
    out.write_all(&header.to_bytes())?;
    let header_copy = header.clone();
    let chunk = 1usize << opts.chunk_shift;
    let sealer = ChunkSealer {
        out,
        key: dek.payload_key(),
        aad: name.as_bytes().to_vec(),
        buf: Vec::with_capacity(chunk + TAG_LEN),
        chunk,
        counter: 0,
        hash: signer
            .is_some()
            .then(|| digest::Context::new(&digest::SHA256)),
    };
    let sink = match opts.compression {
        Compression::None => Sink::Plain(Box::new(sealer)),
        Compression::Lz4 => {
            let info = FrameInfo::new()
                .block_size(BlockSize::Max256KB)
                .block_mode(BlockMode::Linked);
            Sink::Lz4(Box::new(FrameEncoder::with_frame_info(info, sealer)))
        }
        Compression::Zstd => Sink::Zstd(Box::new(zstd_encoder(sealer, opts.zstd_level)?)),
    };
    Ok(SealWriter {
        sink,
        dek,
        header: header_copy,
        name: name.to_string(),
        ephemeral,
        signer,
    })
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Plain(s) => s.write(data),
            Sink::Lz4(e) => e.write(data),
            Sink::Zstd(e) => e.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Sealing cannot flush a partial chunk; the data is written at `finish`.
        Ok(())
    }
}

/// Where a sealed object is written: memory, or a spool file for objects too large for it.
/// The header is rewritten at the end (digest and signature slots are filled in then).
pub trait SealSink: Write {
    /// Overwrites the object's first `bytes.len()` bytes, already written.
    ///
    /// # Errors
    /// I/O errors; fewer bytes written so far than `bytes.len()`.
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl SealSink for Vec<u8> {
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        let start = self
            .get_mut(..bytes.len())
            .ok_or_else(|| io::Error::other("the sealed object is shorter than its header"))?;
        start.copy_from_slice(bytes);
        Ok(())
    }
}

impl SealSink for std::fs::File {
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.metadata()?.len() < bytes.len() as u64 {
            return Err(io::Error::other(
                "the sealed object is shorter than its header",
            ));
        }
        self.write_all_at(bytes, 0)
    }
}

impl<W: SealSink> SealWriter<W> {
    /// Writes the final chunk (and the signature, if any) and returns the object.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(self) -> io::Result<W> {
        self.finish_with_key().map(|(w, _)| w)
    }

    /// As [`SealWriter::finish`], also returning the object's data key for
    /// [`open_with_key`].
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish_with_key(self) -> io::Result<(W, SealedKey)> {
        self.finish_inner(None)
    }

    /// Finishes an object whose content digest (kind 0x03) is known only now, e.g. computed
    /// on another thread while sealing: the object must have been started with a placeholder
    /// digest in [`SealOptions::content_digest`]; its header is rebuilt with `digest`.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` if the object has no digest slot to fill.
    pub fn finish_with_digest(self, digest: [u8; 32]) -> io::Result<(W, SealedKey)> {
        let kind = SlotKind::ContentDigest as u8;
        if !self.header.slots.iter().any(|s| s.kind == kind) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sealed without a content-digest slot to fill",
            ));
        }
        self.finish_inner(Some(digest))
    }

    /// Seals the final chunk, then fills the digest and signature slots (same lengths as
    /// their placeholders) and rewrites the header with its new MAC in place.
    fn finish_inner(self, digest: Option<[u8; 32]>) -> io::Result<(W, SealedKey)> {
        let (mut out, payload_sha256) = match self.sink {
            Sink::Plain(s) => (*s).finish()?,
            Sink::Lz4(enc) => enc.finish().map_err(io::Error::other)?.finish()?,
            Sink::Zstd(enc) => enc.finish()?.finish()?,
        };
        let key = SealedKey {
            dek: self.dek,
            ephemeral: self.ephemeral,
            signer: self.signer.as_ref().map(|s| *s.public()),
        };
        let (header, name) = (self.header, self.name);
        if digest.is_none() && self.signer.is_none() {
            return Ok((out, key));
        }
        let mut slots = Vec::with_capacity(header.slots.len());
        for slot in &header.slots {
            let mut slot = slot.clone();
            match (slot.kind, digest, &self.signer, payload_sha256) {
                (k, Some(d), _, _) if k == SlotKind::ContentDigest as u8 => slot.body = d.to_vec(),
                (k, _, Some(signer), Some(sha)) if k == SlotKind::Signature as u8 => {
                    slot = signature_slot(signer, &header, &key.dek, &sha, name.as_bytes())?;
                }
                _ => {}
            }
            slots.push(slot);
        }
        let rebuilt = Header::new(
            header.compression,
            header.chunk_shift,
            header.repository,
            slots,
            &key.dek,
            name.as_bytes(),
        )
        .to_bytes();
        if rebuilt.len() != header.len() {
            return Err(io::Error::other("the rebuilt header changed length"));
        }
        out.rewrite_start(&rebuilt)?;
        Ok((out, key))
    }
}

/// Decrypts STREAM chunks from `src`; yields the (possibly compressed) payload.
pub struct ChunkOpener<R: Read> {
    src: R,
    key: LessSafeKey,
    aad: Vec<u8>,
    chunk: usize,
    /// Ciphertext of one chunk plus one look-ahead byte; after decryption, plaintext.
    buf: Box<[u8]>,
    filled: usize,
    pt_start: usize,
    pt_end: usize,
    carry: Option<u8>,
    counter: u64,
    done: bool,
    /// SHA-256 of the chunks read, and the value a trusted signature vouches for.
    hash: Option<(digest::Context, [u8; 32])>,
    /// SHA-256 of the chunks read, when the caller asked for it, and its value at the end.
    tally: Option<digest::Context>,
    tallied: Option<[u8; 32]>,
    /// An error came from `src` (or from authentication), not from a decoder above.
    src_failed: bool,
}

impl<R: Read> ChunkOpener<R> {
    fn next_chunk(&mut self) -> Result<(), SealError> {
        let r = self.read_chunk();
        self.src_failed |= r.is_err();
        r
    }

    fn read_chunk(&mut self) -> Result<(), SealError> {
        let full = self.chunk + TAG_LEN;
        self.filled = 0;
        if let Some(b) = self.carry.take() {
            self.buf[0] = b;
            self.filled = 1;
        }
        while self.filled < full + 1 {
            match self.src.read(&mut self.buf[self.filled..full + 1]) {
                Ok(0) => break,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SealError::Io(e)),
            }
        }
        let last = self.filled <= full;
        let ct_len = if last { self.filled } else { full };
        if !last {
            self.carry = Some(self.buf[full]);
        }
        if ct_len < TAG_LEN {
            return Err(SealError::Truncated);
        }
        let counter = self.counter;
        if let Some((h, _)) = &mut self.hash {
            h.update(&self.buf[..ct_len]);
        }
        if let Some(t) = &mut self.tally {
            t.update(&self.buf[..ct_len]);
        }
        let plain = self
            .key
            .open_in_place(
                chunk_nonce(counter, last),
                Aad::from(&self.aad),
                &mut self.buf[..ct_len],
            )
            .map_err(|_| SealError::ChunkAuth(counter))?;
        let len = plain.len();
        if last && len == 0 && counter > 0 {
            return Err(SealError::Malformed("empty final chunk after full chunks"));
        }
        if last {
            if let Some(t) = self.tally.take() {
                let mut sha = [0u8; 32];
                sha.copy_from_slice(t.finish().as_ref());
                self.tallied = Some(sha);
            }
            if let Some((h, signed)) = self.hash.take() {
                if h.finish().as_ref() != signed {
                    return Err(SealError::PayloadDigest);
                }
            }
        }
        self.pt_start = 0;
        self.pt_end = len;
        self.counter += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for ChunkOpener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pt_start == self.pt_end {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = (self.pt_end - self.pt_start).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pt_start..self.pt_start + n]);
        self.pt_start += n;
        Ok(n)
    }
}

enum Source<R: Read> {
    Plain(Box<ChunkOpener<R>>),
    Lz4(Box<FrameDecoder<ChunkOpener<R>>>),
    Zstd(Box<ZstdDecoder<R>>),
}

type ZstdDecoder<R> = zstd::stream::read::Decoder<'static, io::BufReader<ChunkOpener<R>>>;

/// A zstd encoder at `level` that writes one frame with neither checksum nor content size
/// (the AEAD authenticates the payload), window within [`super::ZSTD_WINDOW_LOG_MAX`].
fn zstd_encoder<W: Write>(
    sealer: ChunkSealer<W>,
    level: i32,
) -> Result<zstd::stream::write::Encoder<'static, ChunkSealer<W>>, SealError> {
    if !super::ZSTD_LEVELS.contains(&level) {
        return Err(SealError::Malformed("zstd level out of range (1..=19)"));
    }
    let mut enc = zstd::stream::write::Encoder::new(sealer, level)?;
    enc.include_checksum(false)?;
    enc.include_contentsize(false)?;
    enc.window_log(super::ZSTD_WINDOW_LOG_MAX.min(zstd_default_window_log(level)))?;
    Ok(enc)
}

/// libzstd's window log for inputs over 256 KiB at `level` (its parameter table), so that
/// asking for it changes nothing but the cap.
fn zstd_default_window_log(level: i32) -> u32 {
    match level {
        ..=1 => 19,
        2 => 20,
        3..=4 => 21,
        5..=16 => 22,
        _ => 23,
    }
}

/// A zstd decoder over the opened chunks that refuses windows above
/// [`super::ZSTD_WINDOW_LOG_MAX`].
fn zstd_decoder<R: Read>(opener: ChunkOpener<R>) -> io::Result<ZstdDecoder<R>> {
    let mut d = zstd::stream::read::Decoder::new(opener)?;
    d.window_log_max(super::ZSTD_WINDOW_LOG_MAX)?;
    Ok(d)
}

/// The opened object: a `Read` of its plaintext. Every chunk is authenticated before its bytes
/// are returned; end of stream (`Ok(0)`) is returned only after the final chunk authenticated,
/// so a reader that reaches `Ok(0)` without error has the whole, authentic object.
pub struct OpenReader<R: Read> {
    source: Source<R>,
    header: Header,
}

impl<R: Read> OpenReader<R> {
    /// The object's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn opener(&self) -> &ChunkOpener<R> {
        match &self.source {
            Source::Plain(o) => o,
            Source::Lz4(d) => d.get_ref(),
            Source::Zstd(d) => d.get_ref().get_ref(),
        }
    }

    /// Also computes the SHA-256 of the payload (every byte after the header, as
    /// [`super::payload_digest`]), available from [`OpenReader::payload_sha256`] once the
    /// end was reached. Call before reading.
    #[must_use]
    pub fn digesting_payload(mut self) -> Self {
        let opener = match &mut self.source {
            Source::Plain(o) => &mut **o,
            Source::Lz4(d) => d.get_mut(),
            Source::Zstd(d) => d.get_mut().get_mut(),
        };
        if opener.counter == 0 && opener.filled == 0 {
            opener.tally = Some(digest::Context::new(&digest::SHA256));
        }
        self
    }

    /// The payload's SHA-256, after the end was read (with [`OpenReader::digesting_payload`]).
    pub fn payload_sha256(&self) -> Option<[u8; 32]> {
        self.opener().tallied
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.source {
            Source::Plain(o) => o.read(out)?,
            Source::Lz4(d) => d
                .read(out)
                .map_err(|e| io::Error::from(seal_error_from_io(e)))?,
            Source::Zstd(d) => match d.read(out) {
                Ok(n) => n,
                // An error of the source (storage, authentication) passes unchanged; any
                // other is libzstd's verdict on the (authenticated) frame.
                Err(e) if d.get_ref().get_ref().src_failed => {
                    return Err(io::Error::from(seal_error_from_io(e)))
                }
                Err(e) => match seal_error_from_io(e) {
                    SealError::Io(e) => return Err(SealError::Decompress(e.to_string()).into()),
                    other => return Err(other.into()),
                },
            },
        };
        if n == 0 && !out.is_empty() && !self.opener().done {
            return Err(SealError::Truncated.into());
        }
        Ok(n)
    }
}

/// Opens an object called `name` from `src` with a key from `keyring`.
///
/// # Errors
/// Header errors at once (bad magic, unknown key, slot or header authentication); payload
/// errors come later from `read`, as `io::Error`s carrying a [`SealError`]
/// (see [`super::seal_error_from_io`]).
pub fn open<R: Read>(
    mut src: R,
    keyring: &Keyring,
    name: &str,
) -> Result<OpenReader<R>, SealError> {
    let header = Header::read(&mut src)?;
    let unlocked = header.unlock(keyring, name.as_bytes())?;
    open_payload(src, header, &unlocked.dek, name, unlocked.payload_sha256)
}

/// The data key of an object this process just sealed ([`SealWriter::finish_with_key`]): lets
/// the sealer check its own output on a host that cannot open objects (push-only). Never
/// leaves the process; `Debug` shows nothing.
pub struct SealedKey {
    dek: DataKey,
    ephemeral: Option<(Zeroizing<[u8; SALT_LEN]>, Recipient)>,
    signer: Option<SignerPublic>,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedKey(..)")
    }
}

/// Opens an object this process sealed, with the data key kept from sealing: checks the
/// header MAC and every chunk (not the key slots).
///
/// # Errors
/// As [`open`].
pub fn open_with_key<R: Read>(
    mut src: R,
    key: &SealedKey,
    name: &str,
) -> Result<OpenReader<R>, SealError> {
    let header = Header::read(&mut src)?;
    // The recipient slot must wrap this data key: redo the ephemeral agreement.
    if let Some((secret, recipient)) = &key.ephemeral {
        let slot = header
            .slots
            .iter()
            .find(|s| s.kind == super::SlotKind::X25519 as u8 && s.key_id == recipient.id())
            .ok_or(SealError::Malformed("no X25519 slot for the recipient"))?;
        check_x25519_slot(slot, secret, recipient, &key.dek, name.as_bytes())?;
    }
    header.verify_mac(&key.dek, name.as_bytes())?;
    // And the signature must verify under the signer that made it.
    let payload_sha256 = match &key.signer {
        Some(signer) => {
            let trust = Keyring::trusting(*signer);
            Some(header.verify_signature(&trust, &key.dek, name.as_bytes())?)
        }
        None => None,
    };
    open_payload(src, header, &key.dek, name, payload_sha256)
}

fn open_payload<R: Read>(
    src: R,
    header: Header,
    dek: &DataKey,
    name: &str,
    payload_sha256: Option<[u8; 32]>,
) -> Result<OpenReader<R>, SealError> {
    let chunk = header.chunk_size();
    let opener = ChunkOpener {
        src,
        key: dek.payload_key(),
        aad: name.as_bytes().to_vec(),
        chunk,
        buf: vec![0u8; chunk + TAG_LEN + 1].into_boxed_slice(),
        filled: 0,
        pt_start: 0,
        pt_end: 0,
        carry: None,
        counter: 0,
        done: false,
        hash: payload_sha256.map(|sha| (digest::Context::new(&digest::SHA256), sha)),
        tally: None,
        tallied: None,
        src_failed: false,
    };
    let source = match header.compression {
        Compression::None => Source::Plain(Box::new(opener)),
        Compression::Lz4 => Source::Lz4(Box::new(FrameDecoder::new(opener))),
        Compression::Zstd => Source::Zstd(Box::new(zstd_decoder(opener)?)),
    };
    Ok(OpenReader { source, header })
}
