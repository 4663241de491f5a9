//! `walseal rekey`: rotate the master key. Every object sealed under a key other than the
//! target gets a new header whose only slot wraps its data key under the target key; the
//! payload is copied unchanged (no re-encryption, `docs/FORMAT.md` §4). Each new object is
//! opened and authenticated to its end before it atomically replaces the old one (one PUT, or
//! a rename on local disk), so an object is never missing or unreadable, archiving can go on,
//! and an interrupted rekey is finished by running it again.

use std::io::Read;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{KeyId, Keyring};
use crate::seal;
use crate::storage::Storage;

/// What rekey did.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyReport {
    /// The key everything is now sealed under.
    pub to: String,
    /// Objects looked at.
    pub objects: u64,
    /// Objects rewrapped.
    pub rewrapped: u64,
    /// Objects already under the target key.
    pub unchanged: u64,
}

/// Rewraps every object not sealed under `to` alone.
///
/// # Errors
/// `Key` if an object is sealed under a key the keyring lacks; `Integrity` for an object that
/// does not authenticate (nothing is replaced); storage errors.
pub async fn rekey(
    storage: &Storage,
    keyring: Arc<Keyring>,
    to: Option<KeyId>,
    jobs: usize,
) -> Result<RekeyReport> {
    keyring.require_open("rekey")?;
    let target = to.unwrap_or_else(|| keyring.active().id());
    if target_sealer(&keyring, &target).is_none() {
        return Err(Error::new(
            ErrorKind::Key,
            format!("key {target} is not in the keyring (a master key, or the identity of a recipient)"),
        )
        .hint("add it to WALSEAL_KEY_FILE (or WALSEAL_IDENTITY_FILE for a recipient: every rewrapped object is opened before it replaces the old one) before rekeying to it"));
    }
    let objects: Vec<_> = storage
        .list("")
        .await?
        .into_iter()
        .filter(|(k, _)| {
            k != crate::repository::PLAIN_IDENTITY_KEY && k != crate::repo::PLAIN_RECORD_KEY
        })
        .collect();
    let total = objects.len() as u64;
    let results: Vec<bool> = futures::stream::iter(objects.into_iter().map(|(k, _)| k))
        .map(|key| {
            let (storage, keyring) = (storage.clone(), keyring.clone());
            async move { rekey_one(&storage, keyring, target, key).await }
        })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    let rewrapped = results.iter().filter(|r| **r).count() as u64;
    Ok(RekeyReport {
        to: target.to_string(),
        objects: total,
        rewrapped,
        unchanged: total - rewrapped,
    })
}

/// The sealer for `id` that this keyring can also open with: a master key, or the recipient
/// of a held identity.
fn target_sealer<'k>(keyring: &'k Keyring, id: &KeyId) -> Option<crate::keys::Sealer<'k>> {
    keyring
        .get(id)
        .map(crate::keys::Sealer::Master)
        .or_else(|| {
            keyring
                .identity(id)
                .map(|i| crate::keys::Sealer::Recipient(i.recipient()))
        })
}

async fn rekey_one(
    storage: &Storage,
    keyring: Arc<Keyring>,
    target: KeyId,
    key: String,
) -> Result<bool> {
    let Some((object, version)) = storage.get_versioned_stream(&key).await? else {
        return Ok(false); // removed meanwhile (retain)
    };
    let large = object.size > IN_MEMORY_MAX;
    let mut source = object.into_blocking_reader();
    let k = key.clone();
    let new = tokio::task::spawn_blocking(move || -> Result<Option<Rekeyed>> {
        let r = if large {
            rekey_large(&mut source, &keyring, target, &k)
                .map(|n| n.map(|(f, len)| Rekeyed::Spooled(f, len)))
        } else {
            let mut sealed = Vec::new();
            match source.read_to_end(&mut sealed) {
                Ok(_) => rekey_small(&sealed, &keyring, target, &k).map(|n| n.map(Rekeyed::Bytes)),
                // The storage error itself is taken below.
                Err(_) => Ok(None),
            }
        };
        match source.take_error() {
            Some(e) => Err(e),
            None => r,
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("rekey task failed: {e}")))??;
    // Conditional: an object `retain` removed (or anyone rewrote) meanwhile stays as it is
    // now, so a removed backup record cannot come back.
    match new {
        None => Ok(false),
        Some(Rekeyed::Bytes(bytes)) => {
            storage
                .replace_if_unchanged(&key, bytes.into(), &version)
                .await
        }
        Some(Rekeyed::Spooled(file, len)) => {
            storage
                .replace_file_if_unchanged(&key, file, len, &version)
                .await
        }
    }
}

/// A rewrapped object: in memory, or (large) in a spool file with its length.
enum Rekeyed {
    Bytes(Vec<u8>),
    Spooled(std::fs::File, u64),
}

/// Objects up to this size are rekeyed in memory; larger ones (big segments, backup parts)
/// through spool files, so memory stays bounded whatever the object size.
const IN_MEMORY_MAX: u64 = 16 << 20;

/// WAL files moving to a recipient get a content digest, so that a push-only host can still
/// recognise an identical re-push of them (`docs/FORMAT.md` §4, kind 0x03): `Some(to)` when
/// this object needs one computed.
fn needs_digest<'k>(
    to: crate::keys::Sealer<'k>,
    header: &seal::Header,
    key: &str,
) -> Option<&'k crate::recipient::Recipient> {
    match to {
        crate::keys::Sealer::Recipient(r) if key.starts_with("wal/") => {
            let has = header.key_ids() == [r.id()] && header.content_digest(&r.id()).is_some();
            (!has).then_some(r)
        }
        _ => None,
    }
}

fn rekey_small(
    sealed: &[u8],
    keyring: &Keyring,
    target: KeyId,
    k: &str,
) -> Result<Option<Vec<u8>>> {
    let to = target_sealer(keyring, &target)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "target key vanished"))?;
    let header = seal::Header::read(&mut &sealed[..]).map_err(|e| e.into_error(k))?;
    let digest = match needs_digest(to, &header, k) {
        Some(r) => {
            let mut d = r.content_digest();
            let mut reader = seal::open(sealed, keyring, k).map_err(|e| e.into_error(k))?;
            seal::for_each_block(&mut reader, k, |block| {
                d.update(block);
                Ok(())
            })?;
            Some(d.finish())
        }
        None => None,
    };
    let new = match seal::rewrap(sealed, keyring, to, k, digest) {
        Ok(Some(new)) => new,
        Ok(None) => return Ok(None),
        Err(e) => return legacy_or(e, k),
    };
    // Authenticate the new object to its end before it replaces the old one.
    let mut reader = seal::open(&new[..], keyring, k).map_err(|e| e.into_error(k))?;
    seal::for_each_block(&mut reader, k, |_| Ok(()))?;
    Ok(Some(new))
}

/// A format-1 object sealed to a recipient is left as it is; other errors are errors.
fn legacy_or<T>(e: seal::SealError, k: &str) -> Result<Option<T>> {
    match e {
        seal::SealError::LegacyUnsigned => {
            tracing::warn!("{k}: a format-1 object sealed to a recipient: left as it is (nothing proves who wrote it)");
            Ok(None)
        }
        e => Err(e.into_error(k)),
    }
}

/// As [`rekey_small`], through two spool files (the old object, then the new one), so that
/// memory stays a chunk and a read buffer: returns the new object's file and length.
fn rekey_large(
    source: &mut impl Read,
    keyring: &Keyring,
    target: KeyId,
    k: &str,
) -> Result<Option<(std::fs::File, u64)>> {
    use std::io::{BufReader, Seek, SeekFrom, Write};
    let spool_err = |e: std::io::Error| crate::error::local_io("cannot use a spool file", &e);
    let mut old = crate::storage::spool_file(None)?;
    if let Err(e) = std::io::copy(source, &mut old) {
        // A storage error is the reader's, reported by the caller; anything else is the spool
        // file's (a full temporary directory) and must not pass for "nothing to do".
        return Err(crate::error::local_io(
            format!(
                "{k}: cannot spool it in {} for rekeying",
                std::env::temp_dir().display()
            ),
            &e,
        )
        .hint("free space there, or point TMPDIR at a larger file system; rerun rekey"));
    }
    let reread = |f: &std::fs::File| -> Result<BufReader<std::fs::File>> {
        let mut f = f.try_clone().map_err(spool_err)?;
        f.rewind().map_err(spool_err)?;
        Ok(BufReader::with_capacity(1 << 20, f))
    };
    let to = target_sealer(keyring, &target)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "target key vanished"))?;
    let header = seal::Header::read(&mut reread(&old)?).map_err(|e| e.into_error(k))?;
    // One pass over the old object when it needs a content digest or a signature now: it is
    // authenticated to its end, and gives both.
    let mut payload_sha = None;
    let digest = match needs_digest(to, &header, k) {
        Some(r) => {
            let mut d = r.content_digest();
            let mut reader = seal::open(reread(&old)?, keyring, k)
                .map_err(|e| e.into_error(k))?
                .digesting_payload();
            seal::for_each_block(&mut reader, k, |block| {
                d.update(block);
                Ok(())
            })?;
            payload_sha = reader.payload_sha256();
            Some(d.finish())
        }
        None => None,
    };
    let sha = || -> std::result::Result<[u8; 32], seal::SealError> {
        if let Some(sha) = payload_sha {
            return Ok(sha);
        }
        let mut f = reread(&old).map_err(|_| seal::SealError::Truncated)?;
        f.seek(SeekFrom::Start(header.len() as u64))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok(out)
    };
    let new_header = match seal::rewrap_header(&header, keyring, to, k, digest, sha) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return legacy_or(e, k),
    };
    let mut new = crate::storage::spool_file(None)?;
    new.write_all(&new_header).map_err(spool_err)?;
    let mut payload = reread(&old)?;
    payload
        .seek(SeekFrom::Start(header.len() as u64))
        .map_err(spool_err)?;
    std::io::copy(&mut payload, &mut new).map_err(spool_err)?;
    drop((payload, old));
    // Authenticate the new object to its end before it replaces the old one.
    let mut reader = seal::open(reread(&new)?, keyring, k).map_err(|e| e.into_error(k))?;
    seal::for_each_block(&mut reader, k, |_| Ok(()))?;
    let len = new.metadata().map_err(spool_err)?.len();
    Ok(Some((new, len)))
}
