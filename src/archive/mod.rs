//! `wal-push`: PostgreSQL's `archive_command`.
//!
//! Seal → self-check (open what we sealed and compare length and CRC-32 with the source,
//! pipelined beside the sealing) → conditional put. With push-ahead ([`ahead`]) one call
//! archives several segments PostgreSQL marked ready. Exit 0 means the object is durably stored under its name. A second push of
//! the same name succeeds only if the stored object opens and holds exactly the same bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use crate::config::Config;
use crate::error::{local_io, Error, ErrorKind, Result};
use crate::keys::{Keyring, Sealer};
use crate::recipient::Recipient;
use crate::repo::{Access, Repository};
use crate::repository::{self, Identity};
use crate::seal::{self, seal_error_from_io, SealError, SealOptions, SealSink};
use crate::storage::{PutOutcome, Storage};
use crate::wal::{LongPageHeader, WalFile, WalKind, LONG_HEADER_LEN};

pub mod ahead;
mod selfcheck;

/// What `wal-push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file was sealed and stored.
    Stored,
    /// An identical copy was already stored; nothing was written.
    AlreadyArchived,
}

const READ_BUF: usize = 256 << 10;

/// Archives the WAL file at `path`, and with `push_parallel` > 1 up to that many − 1
/// further segments PostgreSQL marked ready (push-ahead, [`ahead`]).
///
/// # Errors
/// `Usage` for a file name PostgreSQL would not archive; `Integrity` for a segment whose
/// header is not a WAL segment's; `Conflict` for another cluster's segment or different content
/// under an archived name; `Config`, `Storage`, `LocalIo` as their names say. A push-ahead
/// segment's failure is only logged: PostgreSQL's own call for it pushes it again.
pub async fn wal_push(cfg: &Config, path: &Path) -> Result<PushOutcome> {
    let started = Instant::now();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let wal = WalFile::parse(name).ok_or_else(|| {
        Error::new(ErrorKind::Usage, format!("{} is not a WAL file name", path.display()))
            .hint("archive_command must pass %p, the path of a WAL segment, .partial, .history or .backup file")
    })?;
    let repo = Repository::open(cfg, Access::Seal, "wal-push").await?;
    let state = ahead::State::new(path, &repo, cfg);
    if let Some(st) = &state {
        st.end_of_recovery_cleanup();
        if st.confirm(&repo.storage, &wal, path).await? {
            tracing::info!("{} was archived ahead by an earlier call", wal.name);
            return Ok(PushOutcome::AlreadyArchived);
        }
    }
    let size = std::fs::metadata(path)
        .map_err(|e| local_io(format!("cannot stat {}", path.display()), &e))?
        .len();
    let identity = if matches!(wal.kind, WalKind::Segment | WalKind::Partial) {
        let mut file = File::open(path)
            .map_err(|e| local_io(format!("cannot open {}", path.display()), &e))?;
        let candidate = check_segment(&mut file, path, &wal, size)?;
        Some(repository::ensure(&repo.storage, &repo.keyring, &candidate).await?)
    } else {
        None
    };
    let ahead = match (&state, &identity) {
        (Some(st), Some(_)) if cfg.push_parallel > 1 && wal.kind == WalKind::Segment => {
            st.claim_ready(&wal, cfg.push_parallel - 1)
        }
        _ => ahead::Claim::none(),
    };
    // One sealing at a time per core: memory stays a few sealed segments, and the requested
    // segment goes first.
    let permits = tokio::sync::Semaphore::new(sealing_threads());
    // The requested segment's upload comes first: the others may seal meanwhile, but store
    // only after it, so that on a slow link push-ahead never makes PostgreSQL's own segment
    // share the bandwidth (and time out where it alone would not).
    let gate = tokio::sync::RwLock::new(());
    let first = gate.try_write().ok();
    let main = async {
        let _p = permits.acquire().await;
        let r = push_file(&repo, path, &wal, size, None).await;
        drop(first);
        r
    };
    let others = futures::future::join_all(ahead.files.iter().map(|(p, w)| async {
        let _p = permits.acquire().await;
        let (Some(st), Some(id)) = (&state, &identity) else {
            return Ok(());
        };
        st.push_ahead(&repo, p, w, id, &gate)
            .await
            .map_err(|e| (w.name.clone(), e))
    }));
    let (outcome, others) = futures::join!(main, others);
    drop(ahead);
    // When the requested segment failed too, its one error line says it all (the storage is
    // down, say); otherwise a push-ahead failure is worth a warning: its own call will retry.
    let (outcome, sealed_len) = outcome?;
    for (name, e) in others.into_iter().filter_map(std::result::Result::err) {
        tracing::warn!("push-ahead of {name} failed (PostgreSQL's own call will archive it): {e}");
    }
    match outcome {
        PushOutcome::Stored => tracing::info!(
            "archived {} to {} ({} -> {} bytes) in {} ms",
            wal.name,
            wal.object_key(),
            size,
            sealed_len,
            started.elapsed().as_millis()
        ),
        PushOutcome::AlreadyArchived => {
            tracing::info!("{} was already archived with identical content", wal.name)
        }
    }
    Ok(outcome)
}

/// How many segments are sealed at once: one per core, at most 4.
fn sealing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Seals the file at `path` (`size` bytes, already checked) and stores it under its
/// object key; an existing object must hold exactly its bytes. Returns the outcome and the
/// sealed length.
pub(crate) async fn push_file(
    repo: &Repository,
    path: &Path,
    wal: &WalFile,
    size: u64,
    after: Option<&tokio::sync::RwLock<()>>,
) -> Result<(PushOutcome, u64)> {
    let storage = &repo.storage;
    let key = wal.object_key();
    let sealed = {
        let (keyring, path, key) = (repo.keyring.clone(), path.to_path_buf(), key.clone());
        tokio::task::spawn_blocking(move || seal_segment(&keyring, &path, &key, size))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("seal task failed: {e}")))??
    };
    let Sealed {
        body,
        crc,
        sealed_key,
        digest,
        len: sealed_len,
    } = sealed;
    let _after = match after {
        Some(gate) => Some(gate.read().await),
        None => None,
    };
    let outcome = match body {
        Body::Memory(bytes) => storage.put_new(&key, bytes.into()).await?,
        Body::Spool(spool) => {
            let outcome = storage.put_new_file(&key, spool, sealed_len).await?;
            if outcome == PutOutcome::Created {
                // The object came into place by a server-side copy of a staging object,
                // which anyone who can write to the bucket could have replaced meanwhile:
                // read back what is there now and authenticate it before PostgreSQL may
                // recycle the file.
                check_stored(storage, repo.keyring.clone(), sealed_key, &key, size, crc).await?;
            }
            outcome
        }
    };
    match outcome {
        PutOutcome::Created => Ok((PushOutcome::Stored, sealed_len)),
        PutOutcome::AlreadyExists => {
            let keyring = repo.keyring.clone();
            compare_with_archived(storage, keyring, &key, path, digest, sealed_len).await?;
            Ok((PushOutcome::AlreadyArchived, sealed_len))
        }
    }
}

/// A sealed, self-checked segment ready to store.
struct Sealed {
    body: Body,
    crc: u32,
    sealed_key: seal::SealedKey,
    digest: Option<[u8; 32]>,
    len: u64,
}

enum Body {
    Memory(Vec<u8>),
    Spool(File),
}

/// Seals the file at `path` and checks that the result opens to its bytes.
///
/// A segment of the default size is sealed in memory; with a master key, the self-check
/// opens each sealed chunk on a second thread as it is produced ([`selfcheck`]), so it
/// costs little wall time. Larger files go through an unnamed spool file (it holds only
/// sealed bytes and vanishes with the process) and are checked from there, so memory stays a
/// few buffers whatever the segment size. Sealed to a recipient, the object also records a
/// digest of its content, computed on another thread's own read of the file, so that a host
/// that cannot open objects (push-only) can still tell an identical re-push from a
/// conflicting one.
fn seal_segment(keyring: &Keyring, path: &Path, key: &str, size: u64) -> Result<Sealed> {
    let mut file =
        File::open(path).map_err(|e| local_io(format!("cannot open {}", path.display()), &e))?;
    let recipient = match keyring.active() {
        Sealer::Recipient(r) => Some(*r),
        Sealer::Master(_) => None,
    };
    if size <= IN_MEMORY_MAX {
        let estimate = usize::try_from(size / 3).unwrap_or(0) + 4096;
        std::thread::scope(|scope| {
            let job = start_digest(scope, path, recipient)?;
            let checker = match recipient {
                None => Some(selfcheck::Checker::start(scope, keyring, key)?),
                Some(_) => None,
            };
            let sink = selfcheck::Tee::new(Vec::with_capacity(estimate), checker.as_ref());
            let (sink, crc, sealed_key, digest) =
                seal_file(sink, &mut file, path, keyring, key, size, job)?;
            let (sealed, checked) = sink.finish();
            match (checker, checked) {
                (Some(c), true) => c.finish(key, size, crc)?,
                (c, _) => {
                    drop(c);
                    self_check(keyring, &sealed_key, key, || Ok(&sealed[..]), size, crc)?;
                }
            }
            let len = sealed.len() as u64;
            Ok(Sealed {
                body: Body::Memory(sealed),
                crc,
                sealed_key,
                digest,
                len,
            })
        })
    } else {
        let spool = crate::storage::spool_file(path.parent())?;
        let (spool, crc, sealed_key, digest) = std::thread::scope(|scope| {
            let job = start_digest(scope, path, recipient)?;
            seal_file(spool, &mut file, path, keyring, key, size, job)
        })?;
        let reread = || {
            use std::io::Seek;
            let mut f = &spool;
            f.rewind()
                .map_err(|e| local_io("cannot read the spool file", &e))?;
            Ok(std::io::BufReader::with_capacity(1 << 20, f))
        };
        self_check(keyring, &sealed_key, key, reread, size, crc)?;
        let len = spool
            .metadata()
            .map_err(|e| local_io("cannot stat the spool file", &e))?
            .len();
        Ok(Sealed {
            body: Body::Spool(spool),
            crc,
            sealed_key,
            digest,
            len,
        })
    }
}

/// Reads the stored object `key` back and runs [`self_check`] on it.
async fn check_stored(
    storage: &Storage,
    keyring: std::sync::Arc<Keyring>,
    sealed_key: seal::SealedKey,
    key: &str,
    size: u64,
    crc: u32,
) -> Result<()> {
    let (storage, key) = (storage.clone(), key.to_string());
    tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let fetch = || {
            handle
                .block_on(storage.get(&key))?
                .map(|o| o.into_blocking_reader())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Storage,
                        format!("{key}: stored, then gone when read back"),
                    )
                })
        };
        self_check(&keyring, &sealed_key, &key, fetch, size, crc).map_err(|e| {
            e.hint("the object in the repository is not what was sealed: move it aside (verify names it), then let PostgreSQL retry")
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("check task failed: {e}")))?
}

/// Starts the thread that computes the content digest for `recipient` (if any) on its own
/// read of the file.
fn start_digest<'s, 'e>(
    scope: &'s std::thread::Scope<'s, 'e>,
    path: &'e Path,
    recipient: Option<Recipient>,
) -> Result<Option<DigestJob<'s>>> {
    let Some(r) = recipient else {
        return Ok(None);
    };
    std::thread::Builder::new()
        .name("digest".into())
        .spawn_scoped(scope, move || {
            let mut f = File::open(path)
                .map_err(|e| local_io(format!("cannot open {}", path.display()), &e))?;
            content_digest(&mut f, path, &r)
        })
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")))
}

/// Files up to this size (the default segment size) are sealed in memory and stored with one
/// PUT; larger ones go through a spool file and a staged upload.
const IN_MEMORY_MAX: u64 = 16 << 20;

/// Reads the first page header and checks it against the file name and size.
fn check_segment(file: &mut File, path: &Path, wal: &WalFile, size: u64) -> Result<Identity> {
    let mut head = [0u8; LONG_HEADER_LEN];
    file.read_exact(&mut head)
        .map_err(|e| not_a_segment(path, &format!("cannot read its first page: {e}")))?;
    let h = LongPageHeader::parse(&head).map_err(|e| not_a_segment(path, &e.to_string()))?;
    if u64::from(h.segment_size) != size {
        return Err(not_a_segment(
            path,
            &format!(
                "its header says segments are {} bytes but the file has {size}",
                h.segment_size
            ),
        ));
    }
    if wal.segment_number(u64::from(h.segment_size)) != Some(h.segment_number()) {
        return Err(not_a_segment(
            path,
            "its first page belongs to another segment (renamed or recycled file)",
        ));
    }
    Ok(Identity {
        format_version: 1,
        system_identifier: h.system_identifier.to_string(),
        wal_segment_size: u64::from(h.segment_size),
        pg_version: h.major_version(),
    })
}

fn not_a_segment(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!(
            "refusing to archive {}: not a valid WAL segment: {why}",
            path.display()
        ),
    )
    .hint("archive_command must pass %p unchanged; check the file in pg_wal")
}

/// The content digest of the file for `recipient` (`docs/FORMAT.md` §4, kind 0x03), and the
/// CRC-32 of the bytes it covers (to prove they are the bytes that were sealed).
fn content_digest(file: &mut File, path: &Path, recipient: &Recipient) -> Result<([u8; 32], u32)> {
    use std::io::Seek;
    file.rewind()
        .map_err(|e| local_io(format!("cannot read {}", path.display()), &e))?;
    let mut digest = recipient.content_digest();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((digest.finish(), crc.finalize())),
            Ok(n) => {
                digest.update(&buf[..n]);
                crc.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(local_io(format!("cannot read {}", path.display()), &e)),
        }
    }
}

/// Seals the whole file into `sink` (memory or a spool file), returning it, the CRC-32 of the source and
/// the object's key for the self-check.
fn seal_file<W: SealSink>(
    sink: W,
    file: &mut File,
    path: &Path,
    keyring: &Keyring,
    key: &str,
    size: u64,
    digest_job: Option<DigestJob<'_>>,
) -> Result<SealedFile<W>> {
    use std::io::Seek;
    file.rewind()
        .map_err(|e| local_io(format!("cannot read {}", path.display()), &e))?;
    // A recipient's object gets a placeholder digest, filled in by `finish_with_digest`.
    let opts = SealOptions {
        content_digest: matches!(keyring.active(), Sealer::Recipient(_)).then_some([0u8; 32]),
        ..keyring.seal_options()?
    };
    let mut writer =
        seal::seal(sink, keyring.active(), key, &opts).map_err(|e| e.into_error(key))?;
    let digest = move || -> Result<Option<([u8; 32], u32)>> {
        match digest_job {
            None => Ok(None),
            Some(j) => j
                .join()
                .map_err(|_| Error::new(ErrorKind::Internal, "the digest thread panicked"))?
                .map(Some),
        }
    };
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(local_io(format!("cannot read {}", path.display()), &e)),
        };
        crc.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| seal_error_from_io(e).into_error(key))?;
        total += n as u64;
    }
    if total != size {
        return Err(Error::new(
            ErrorKind::LocalIo,
            format!(
                "{} changed size while being archived ({size} -> {total} bytes)",
                path.display()
            ),
        ));
    }
    let crc = crc.finalize();
    let digest = match digest()? {
        // The digest thread read the file on its own: it must have seen the sealed bytes.
        Some((_, digest_crc)) if digest_crc != crc => return Err(Error::new(
            ErrorKind::LocalIo,
            format!(
                "{} changed while being archived (two reads differ); nothing was stored",
                path.display()
            ),
        )
        .hint(
            "PostgreSQL never changes a finished segment: check that nothing else writes to pg_wal",
        )),
        Some((d, _)) => Some(d),
        None => None,
    };
    let (sealed, sealed_key) = match digest {
        Some(d) => writer.finish_with_digest(d),
        None => writer.finish_with_key(),
    }
    .map_err(|e| seal_error_from_io(e).into_error(key))?;
    Ok((sealed, crc, sealed_key, digest))
}

/// What [`seal_file`] returns: the sealed object, the source's CRC-32, the object's key for
/// the self-check, and the content digest (recipients only).
type SealedFile<W> = (W, u32, seal::SealedKey, Option<[u8; 32]>);

/// The thread computing the content digest (and CRC-32) of the file on its own read.
type DigestJob<'s> = std::thread::ScopedJoinHandle<'s, Result<([u8; 32], u32)>>;

/// Opens what we just sealed and checks length and CRC-32 against the source: with the
/// keyring where it can open the object (checking the key slot too), else (push-only) with
/// the data key kept from sealing.
fn self_check<R: Read>(
    keyring: &Keyring,
    sealed_key: &seal::SealedKey,
    key: &str,
    sealed: impl Fn() -> Result<R>,
    size: u64,
    crc: u32,
) -> Result<()> {
    let mut reader = match seal::open(sealed()?, keyring, key) {
        Ok(r) => r,
        Err(SealError::PushOnly | SealError::UnknownKey(_)) => {
            seal::open_with_key(sealed()?, sealed_key, key).map_err(|e| e.into_error(key))?
        }
        Err(e) => return Err(e.into_error(key)),
    };
    let mut hasher = crc32fast::Hasher::new();
    let total = seal::for_each_block(&mut reader, key, |block| {
        hasher.update(block);
        Ok(())
    })?;
    if total != size || hasher.finalize() != crc {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "{key}: self-check failed: the sealed object does not open to the source bytes"
            ),
        )
        .hint("this is a bug or a hardware fault: report it"));
    }
    Ok(())
}

/// The name is taken: succeed only if the archived object holds exactly the file's bytes.
/// A host that cannot open the archived copy (push-only) compares content digests instead.
/// The archived copy is streamed, never held whole.
async fn compare_with_archived(
    storage: &Storage,
    keyring: std::sync::Arc<Keyring>,
    key: &str,
    path: &Path,
    digest: Option<[u8; 32]>,
    sealed_len: u64,
) -> Result<()> {
    let archived = storage.get(key).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Storage,
            format!("{key}: exists but vanished while being compared"),
        )
    })?;
    let archived_len = archived.size;
    let mut reader = archived.into_blocking_reader();
    let (key, path) = (key.to_string(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let r = compare_stream(
            &mut reader,
            archived_len,
            &keyring,
            &key,
            &path,
            digest,
            sealed_len,
        );
        // A storage failure mid-read is the storage's, not a difference in content.
        match reader.take_error() {
            Some(e) => Err(e),
            None => r,
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("compare task failed: {e}")))?
}

fn compare_stream<R: Read>(
    archived: &mut R,
    archived_len: u64,
    keyring: &Keyring,
    key: &str,
    path: &Path,
    digest: Option<[u8; 32]>,
    sealed_len: u64,
) -> Result<()> {
    let header = seal::Header::read(archived).map_err(|e| e.into_error(key))?;
    let mut archived = match seal::open(
        std::io::Cursor::new(header.to_bytes()).chain(archived),
        keyring,
        key,
    ) {
        Ok(r) => r,
        Err(SealError::PushOnly | SealError::UnknownKey(_)) if digest.is_some() => {
            return compare_digest(keyring, key, &header, archived_len, digest, sealed_len);
        }
        Err(e) => {
            return Err(e.into_error(key).hint("the copy already archived under this name does not open: move it aside, then let PostgreSQL retry"));
        }
    };
    let mut local =
        File::open(path).map_err(|e| local_io(format!("cannot open {}", path.display()), &e))?;
    let (mut a, mut b) = (vec![0u8; READ_BUF], vec![0u8; READ_BUF]);
    loop {
        let n =
            read_full(&mut archived, &mut a).map_err(|e| seal_error_from_io(e).into_error(key))?;
        let m = read_full(&mut local, &mut b)
            .map_err(|e| local_io(format!("cannot read {}", path.display()), &e))?;
        if n != m || a[..n] != b[..m] {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{key} is already archived with different content; refusing to overwrite it"),
            )
            .hint("two clusters may share this repository, or this cluster was restored without a new timeline: give it its own repository or prefix"));
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// The push-only comparison: the archived copy's content digest for our recipient against the
/// file's. This host cannot authenticate the archived header, so the copy must also be sealed
/// to our recipient and have exactly the length our own sealing just produced (same content,
/// recipient and compressor give the same length): a truncated or padded copy is not taken
/// for the segment, which PostgreSQL would then recycle.
fn compare_digest(
    keyring: &Keyring,
    key: &str,
    header: &seal::Header,
    archived_len: u64,
    digest: Option<[u8; 32]>,
    sealed_len: u64,
) -> Result<()> {
    let id = keyring.active().id();
    match header.content_digest(&id) {
        Some(archived)
            if Some(archived) == digest
                && (archived_len != sealed_len || header.key_ids() != [id]) =>
        {
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{key} is already archived with the same content digest, but its size ({} bytes, {} expected) or key slot does not match; this host cannot open it to tell whether it is intact",
                    archived_len,
                    sealed_len
                ),
            )
            .hint("run `walseal verify` on a host with the identity: if the copy is damaged, move it aside and let PostgreSQL retry"))
        }
        Some(archived) if Some(archived) == digest => Ok(()),
        Some(_) => Err(Error::new(
            ErrorKind::Conflict,
            format!("{key} is already archived with different content (its content digest differs); refusing to overwrite it"),
        )
        .hint("two clusters may share this repository, or this cluster was restored without a new timeline: give it its own repository or prefix")),
        None => Err(Error::new(
            ErrorKind::Conflict,
            format!("{key} is already archived, and this host cannot tell whether with the same content: the copy has no content digest for recipient {id} and this host cannot open it"),
        )
        .hint("run this wal-push once on a host that holds the identity or key (WALSEAL_IDENTITY_FILE or WALSEAL_KEY_FILE) to compare; if the archived copy is wrong, move it aside")),
    }
}

/// Reads until `buf` is full or the reader ends.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
