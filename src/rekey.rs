//! `walseal rekey`: rotate the master key. Every object sealed under a key other than the
//! target gets a new header whose only slot wraps its data key under the target key; the
//! payload is copied unchanged (no re-encryption, `docs/FORMAT.md` §4). Each new object is
//! opened and authenticated to its end before it atomically replaces the old one (one PUT, or
//! a rename on local disk), so an object is never missing or unreadable, archiving can go on,
//! and an interrupted rekey is finished by running it again.

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
    let Some((sealed, version)) = storage.get_versioned(&key).await? else {
        return Ok(false); // removed meanwhile (retain)
    };
    let k = key.clone();
    let new = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
        let to = target_sealer(&keyring, &target)
            .ok_or_else(|| Error::new(ErrorKind::Internal, "target key vanished"))?;
        // WAL files moving to a recipient get a content digest, so that a push-only host can
        // still recognise an identical re-push of them (`docs/FORMAT.md` §4, kind 0x03).
        let digest = match to {
            crate::keys::Sealer::Recipient(r) if k.starts_with("wal/") => {
                let header = seal::Header::read(&mut &sealed[..]).map_err(|e| e.into_error(&k))?;
                if header.key_ids() == [r.id()] && header.content_digest(&r.id()).is_some() {
                    None
                } else {
                    let mut d = r.content_digest();
                    let mut reader =
                        seal::open(&sealed[..], &keyring, &k).map_err(|e| e.into_error(&k))?;
                    seal::for_each_block(&mut reader, &k, |block| {
                        d.update(block);
                        Ok(())
                    })?;
                    Some(d.finish())
                }
            }
            _ => None,
        };
        let new = match seal::rewrap(&sealed, &keyring, to, &k, digest) {
            Ok(Some(new)) => new,
            Ok(None) => return Ok(None),
            Err(seal::SealError::LegacyUnsigned) => {
                tracing::warn!("{k}: a format-1 object sealed to a recipient: left as it is (nothing proves who wrote it)");
                return Ok(None);
            }
            Err(e) => return Err(e.into_error(&k)),
        };
        // Authenticate the new object to its end before it replaces the old one.
        let mut reader = seal::open(&new[..], &keyring, &k).map_err(|e| e.into_error(&k))?;
        seal::for_each_block(&mut reader, &k, |_| Ok(()))?;
        Ok(Some(new))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("rekey task failed: {e}")))??;
    match new {
        None => Ok(false),
        // Conditional: an object `retain` removed (or anyone rewrote) meanwhile stays as it
        // is now, so a removed backup record cannot come back.
        Some(bytes) => {
            storage
                .replace_if_unchanged(&key, bytes.into(), &version)
                .await
        }
    }
}
