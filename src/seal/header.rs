//! The object header: fixed fields, key slots and the header MAC (`docs/FORMAT.md` §2–§4).

use std::io::Read;

use ring::aead::{Aad, LessSafeKey, Nonce, AES_256_GCM};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::{Compression, SealError, MAX_NAME_LEN};
use crate::keys::{KeyId, Keyring, MasterKey, KEY_ID_LEN};
use crate::recipient::{Identity, Recipient};
use crate::signer::{Signer, SIGNATURE_LEN};

/// The first eight bytes of every sealed object.
pub const MAGIC: [u8; 8] = *b"WALSEAL\x1a";
/// The format version this module writes.
pub const VERSION: u8 = 2;
/// The first format version, still read (with `allow_legacy`).
pub const VERSION_1: u8 = 1;
/// Bytes before the first key slot in version 1.
pub const FIXED_LEN_V1: usize = 12;
/// Bytes before the first key slot in version 2 (the repository id follows the slot count).
pub const FIXED_LEN: usize = 28;
/// Length of a repository id.
pub const REPOSITORY_ID_LEN: usize = 16;
/// Length of a slot salt.
pub const SALT_LEN: usize = 32;
/// Length of a data key.
pub const DEK_LEN: usize = 32;
/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;
/// HMAC-SHA256 length.
pub const MAC_LEN: usize = 32;
/// Smallest and largest allowed `chunk_shift`.
pub const CHUNK_SHIFT_RANGE: std::ops::RangeInclusive<u8> = 12..=24;
/// Most key slots one header may carry.
pub const MAX_SLOTS: usize = 16;
/// Body length of a master-key slot: salt, wrapped data key, tag.
pub const MASTER_SLOT_BODY_LEN: usize = SALT_LEN + DEK_LEN + TAG_LEN;
/// Body length of an X25519 slot: ephemeral public key, wrapped data key, tag.
pub const X25519_SLOT_BODY_LEN: usize = 32 + DEK_LEN + TAG_LEN;
/// Body length of a content-digest slot.
pub const DIGEST_SLOT_BODY_LEN: usize = 32;
/// Body length of a signature slot: payload SHA-256, Ed25519 signature.
pub const SIGNATURE_SLOT_BODY_LEN: usize = 32 + SIGNATURE_LEN;

const LABEL_WRAP: &[u8] = b"walseal/v1 wrap";
const LABEL_X25519: &[u8] = b"walseal/v1 x25519";
const LABEL_HEADER: &[u8] = b"walseal/v1 header";
const LABEL_PAYLOAD: &[u8] = b"walseal/v1 payload";
const LABEL_COMMITMENT: &[u8] = b"walseal/v2 commitment";
const LABEL_SIGNATURE: &[u8] = b"walseal/v2 signature";

/// Kinds of key slot. Unknown kinds are skipped when opening, so later versions may add some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// The data key wrapped under a symmetric master key (HKDF + AES-256-GCM).
    Master = 1,
    /// The data key wrapped for an X25519 recipient (ephemeral key agreement, HKDF, AES-256-GCM).
    X25519 = 2,
    /// Not a key: a keyed digest of the content, for hosts that cannot open (push-only).
    ContentDigest = 3,
    /// Not a key: a signer's Ed25519 signature of the object (version 2).
    Signature = 4,
}

/// One key slot: which key can unwrap the data key, and the wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Slot kind byte (see [`SlotKind`]).
    pub kind: u8,
    /// The key that can open this slot.
    pub key_id: KeyId,
    /// Kind-specific body.
    pub body: Vec<u8>,
}

/// A repository id: 16 random bytes made by `walseal init`, carried by every version-2 object
/// (all zero for objects outside a repository, such as key exports).
pub use crate::keys::RepositoryId;

/// A parsed header. `raw` is the exact header bytes up to (not including) the MAC.
#[derive(Debug, Clone)]
pub struct Header {
    /// Format version (1 or 2).
    pub version: u8,
    /// The repository the object was written for (version 2; zero in version 1).
    pub repository: RepositoryId,
    /// Payload compression.
    pub compression: Compression,
    /// Payload chunk size is `1 << chunk_shift` bytes.
    pub chunk_shift: u8,
    /// Key slots in header order.
    pub slots: Vec<Slot>,
    raw: Vec<u8>,
    mac: [u8; MAC_LEN],
}

/// A per-object data key; wiped on drop.
pub(crate) struct DataKey(pub(crate) Zeroizing<[u8; DEK_LEN]>);

impl DataKey {
    /// The AES-256-GCM key of the payload chunks.
    pub(crate) fn payload_key(&self) -> LessSafeKey {
        LessSafeKey::new(derive(&[], self.0.as_ref(), &[LABEL_PAYLOAD], &AES_256_GCM))
    }

    fn mac_key(&self) -> hmac::Key {
        derive(&[], self.0.as_ref(), &[LABEL_HEADER], hmac::HMAC_SHA256)
    }

    /// The commitment to this data key that signatures cover (`docs/FORMAT.md` §4).
    fn commitment(&self) -> [u8; 32] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(self.0.as_ref());
        let mut out = [0u8; 32];
        prk.expand(&[LABEL_COMMITMENT], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 can expand 32 bytes");
        out
    }
}

/// 32 bytes of HKDF output.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// What a signature slot signs: `"walseal/v2 signature" ‖ repository id ‖ compression ‖
/// chunk_shift ‖ commitment ‖ SHA-256(payload) ‖ name`.
fn signed_message(
    header: &Header,
    dek: &DataKey,
    payload_sha256: &[u8; 32],
    name: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_SIGNATURE.len() + 82 + name.len());
    m.extend_from_slice(LABEL_SIGNATURE);
    m.extend_from_slice(&header.repository);
    m.push(header.compression as u8);
    m.push(header.chunk_shift);
    m.extend_from_slice(&dek.commitment());
    m.extend_from_slice(payload_sha256);
    m.extend_from_slice(name);
    m
}

/// A signature slot for an object whose header (other slots final) is `header` and whose
/// payload hashes to `payload_sha256`.
///
/// # Errors
/// As [`Signer::sign`] (never in practice).
pub(crate) fn signature_slot(
    signer: &Signer,
    header: &Header,
    dek: &DataKey,
    payload_sha256: &[u8; 32],
    name: &[u8],
) -> Result<Slot, SealError> {
    let sig = signer
        .sign(&signed_message(header, dek, payload_sha256, name))
        .map_err(|_| SealError::Malformed("the signer could not sign"))?;
    let mut body = Vec::with_capacity(SIGNATURE_SLOT_BODY_LEN);
    body.extend_from_slice(payload_sha256);
    body.extend_from_slice(&sig);
    Ok(Slot {
        kind: SlotKind::Signature as u8,
        key_id: signer.public().id(),
        body,
    })
}

/// A placeholder signature slot of the right length (filled in when the payload is known).
pub(crate) fn placeholder_signature_slot(signer: &Signer) -> Slot {
    Slot {
        kind: SlotKind::Signature as u8,
        key_id: signer.public().id(),
        body: vec![0u8; SIGNATURE_SLOT_BODY_LEN],
    }
}

/// A header unlocked by [`Header::unlock`]: the data key, and the payload SHA-256 a trusted
/// signature vouches for (the reader compares it with the payload at the end).
pub(crate) struct Unlocked {
    pub(crate) dek: DataKey,
    pub(crate) payload_sha256: Option<[u8; 32]>,
    /// The data key came from an X25519 slot (the object was sealed to a recipient).
    pub(crate) by_identity: bool,
}

/// HKDF-SHA256(salt, ikm) expanded with `info` into a key of type `T`.
fn derive<L: hkdf::KeyType, T: for<'a> From<hkdf::Okm<'a, L>>>(
    salt: &[u8],
    ikm: &[u8],
    info: &[&[u8]],
    len: L,
) -> T {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, len)
        .expect("HKDF-SHA256 can expand 32 bytes");
    T::from(okm)
}

/// The key that wraps a data key in a master-key slot.
fn wrap_key(master: &MasterKey, salt: &[u8], name: &[u8]) -> LessSafeKey {
    LessSafeKey::new(derive(
        salt,
        master.secret(),
        &[LABEL_WRAP, name],
        &AES_256_GCM,
    ))
}

fn slot_aad(kind: u8, key_id: &KeyId) -> [u8; 1 + KEY_ID_LEN] {
    let mut aad = [0u8; 1 + KEY_ID_LEN];
    aad[0] = kind;
    aad[1..].copy_from_slice(&key_id.0);
    aad
}

/// Builds a master-key slot wrapping `dek` for `name`.
pub(crate) fn master_slot(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    dek: &DataKey,
    name: &[u8],
) -> Slot {
    let mut body = Vec::with_capacity(MASTER_SLOT_BODY_LEN);
    body.extend_from_slice(salt);
    let mut wrapped = Zeroizing::new(dek.0.to_vec());
    let aad = slot_aad(SlotKind::Master as u8, &master.id());
    wrap_key(master, salt, name)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut *wrapped,
        )
        .expect("AES-256-GCM seals 32 bytes");
    body.extend_from_slice(&wrapped);
    Slot {
        kind: SlotKind::Master as u8,
        key_id: master.id(),
        body,
    }
}

fn unwrap_master_slot(master: &MasterKey, slot: &Slot, name: &[u8]) -> Result<DataKey, SealError> {
    if slot.body.len() != MASTER_SLOT_BODY_LEN {
        return Err(SealError::Malformed("master-key slot has the wrong length"));
    }
    let (salt, wrapped) = slot.body.split_at(SALT_LEN);
    unwrap_dek(&wrap_key(master, salt, name), slot, wrapped)
}

/// Opens a slot's wrapped data key (AES-256-GCM, zero nonce, AAD = kind ‖ key id).
fn unwrap_dek(kek: &LessSafeKey, slot: &Slot, wrapped: &[u8]) -> Result<DataKey, SealError> {
    let mut buf = Zeroizing::new(wrapped.to_vec());
    let plain = kek
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(slot_aad(slot.kind, &slot.key_id)),
            &mut buf,
        )
        .map_err(|_| SealError::SlotAuth(slot.key_id))?;
    if plain.len() != DEK_LEN {
        return Err(SealError::SlotAuth(slot.key_id));
    }
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    dek.copy_from_slice(plain);
    Ok(DataKey(dek))
}

/// The key that wraps a data key in an X25519 slot, from the shared secret.
fn x25519_wrap_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    name: &[u8],
) -> LessSafeKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    LessSafeKey::new(derive(&salt, shared, &[LABEL_X25519, name], &AES_256_GCM))
}

/// Builds an X25519 slot wrapping `dek` for `recipient`; `ephemeral_secret` is fresh random.
///
/// # Errors
/// `Malformed` if the recipient is a low-order point (no shared secret).
pub(crate) fn x25519_slot(
    recipient: &Recipient,
    ephemeral_secret: &[u8; 32],
    dek: &DataKey,
    name: &[u8],
) -> Result<Slot, SealError> {
    let ephemeral = Identity::from_bytes(Zeroizing::new(*ephemeral_secret));
    let shared = ephemeral
        .agree(recipient.bytes())
        .ok_or(SealError::Malformed(
            "the recipient is not a usable X25519 public key",
        ))?;
    let epk = *ephemeral.recipient().bytes();
    let mut wrapped = Zeroizing::new(dek.0.to_vec());
    let aad = slot_aad(SlotKind::X25519 as u8, &recipient.id());
    x25519_wrap_key(&shared, &epk, recipient.bytes(), name)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut *wrapped,
        )
        .expect("AES-256-GCM seals 32 bytes");
    let mut body = Vec::with_capacity(X25519_SLOT_BODY_LEN);
    body.extend_from_slice(&epk);
    body.extend_from_slice(&wrapped);
    Ok(Slot {
        kind: SlotKind::X25519 as u8,
        key_id: recipient.id(),
        body,
    })
}

fn unwrap_x25519_slot(identity: &Identity, slot: &Slot, name: &[u8]) -> Result<DataKey, SealError> {
    if slot.body.len() != X25519_SLOT_BODY_LEN {
        return Err(SealError::Malformed("X25519 slot has the wrong length"));
    }
    let (epk, wrapped) = slot.body.split_at(32);
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(epk);
    let shared = identity
        .agree(&ephemeral)
        .ok_or(SealError::SlotAuth(slot.key_id))?;
    let kek = x25519_wrap_key(&shared, &ephemeral, identity.recipient().bytes(), name);
    unwrap_dek(&kek, slot, wrapped)
}

/// Checks, as the sealer, that an X25519 slot made with `ephemeral_secret` for `recipient`
/// wraps `dek` (the self-check of a host that holds no identity).
///
/// # Errors
/// `SlotAuth` if it does not.
pub(crate) fn check_x25519_slot(
    slot: &Slot,
    ephemeral_secret: &[u8; 32],
    recipient: &Recipient,
    dek: &DataKey,
    name: &[u8],
) -> Result<(), SealError> {
    let fail = SealError::SlotAuth(slot.key_id);
    if slot.body.len() != X25519_SLOT_BODY_LEN {
        return Err(fail);
    }
    let ephemeral = Identity::from_bytes(Zeroizing::new(*ephemeral_secret));
    let (epk, wrapped) = slot.body.split_at(32);
    if epk != ephemeral.recipient().bytes() {
        return Err(fail);
    }
    let shared = ephemeral
        .agree(recipient.bytes())
        .ok_or(SealError::SlotAuth(slot.key_id))?;
    let kek = x25519_wrap_key(
        &shared,
        ephemeral.recipient().bytes(),
        recipient.bytes(),
        name,
    );
    let unwrapped = unwrap_dek(&kek, slot, wrapped)?;
    // Not secret from the caller, who sealed it: a plain comparison will do.
    if unwrapped.0[..] != dek.0[..] {
        return Err(SealError::SlotAuth(slot.key_id));
    }
    Ok(())
}

/// A content-digest slot for `recipient` (see [`Recipient::content_digest`]).
pub(crate) fn digest_slot(recipient: &Recipient, digest: &[u8; 32]) -> Slot {
    Slot {
        kind: SlotKind::ContentDigest as u8,
        key_id: recipient.id(),
        body: digest.to_vec(),
    }
}

impl Header {
    /// A new version-2 header for `slots` and `repository`, MACed under `dek` with `name`.
    pub(crate) fn new(
        compression: Compression,
        chunk_shift: u8,
        repository: RepositoryId,
        slots: Vec<Slot>,
        dek: &DataKey,
        name: &[u8],
    ) -> Self {
        let mut raw = Vec::with_capacity(FIXED_LEN + slots.len() * (19 + X25519_SLOT_BODY_LEN));
        raw.extend_from_slice(&MAGIC);
        raw.push(VERSION);
        raw.push(compression as u8);
        raw.push(chunk_shift);
        raw.push(u8::try_from(slots.len()).expect("slot count is bounded by MAX_SLOTS"));
        raw.extend_from_slice(&repository);
        for slot in &slots {
            raw.push(slot.kind);
            raw.extend_from_slice(&slot.key_id.0);
            let len = u16::try_from(slot.body.len()).expect("slot bodies are small");
            raw.extend_from_slice(&len.to_be_bytes());
            raw.extend_from_slice(&slot.body);
        }
        let mac = compute_mac(dek, &raw, name);
        Header {
            version: VERSION,
            repository,
            compression,
            chunk_shift,
            slots,
            raw,
            mac,
        }
    }

    /// The serialized header, MAC included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + MAC_LEN);
        out.extend_from_slice(&self.raw);
        out.extend_from_slice(&self.mac);
        out
    }

    /// Payload chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        1usize << self.chunk_shift
    }

    /// Length of the serialized header, MAC included.
    pub fn len(&self) -> usize {
        self.raw.len() + MAC_LEN
    }

    /// Whether the header has no bytes (never: kept for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The key ids named by the header's key slots (master-key and X25519 slots; slots of
    /// unknown kinds may be keys too, but this walseal cannot use them), in order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.slots
            .iter()
            .filter(|s| s.kind == SlotKind::Master as u8 || s.kind == SlotKind::X25519 as u8)
            .map(|s| s.key_id)
            .collect()
    }

    /// The content digest recorded for the recipient `id`, if the header has one. Not
    /// authenticated unless the header is unlocked.
    pub fn content_digest(&self, id: &KeyId) -> Option<[u8; 32]> {
        self.slots
            .iter()
            .find(|s| {
                s.kind == SlotKind::ContentDigest as u8
                    && s.key_id == *id
                    && s.body.len() == DIGEST_SLOT_BODY_LEN
            })
            .map(|s| {
                let mut d = [0u8; 32];
                d.copy_from_slice(&s.body);
                d
            })
    }

    /// Reads and parses a header (without authenticating it; see [`Header::unlock`]).
    ///
    /// # Errors
    /// `BadMagic`, `UnsupportedVersion`, `Malformed`, `Truncated` or `Io`.
    pub fn read<R: Read>(r: &mut R) -> Result<Self, SealError> {
        let mut raw = vec![0u8; FIXED_LEN_V1];
        read_exact(r, &mut raw)?;
        if raw[..8] != MAGIC {
            return Err(SealError::BadMagic);
        }
        let version = raw[8];
        if version != VERSION && version != VERSION_1 {
            return Err(SealError::UnsupportedVersion(version));
        }
        let compression = match raw[9] {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            _ => return Err(SealError::Malformed("unknown compression")),
        };
        let chunk_shift = raw[10];
        if !CHUNK_SHIFT_RANGE.contains(&chunk_shift) {
            return Err(SealError::Malformed("chunk size out of range"));
        }
        let count = usize::from(raw[11]);
        if count == 0 || count > MAX_SLOTS {
            return Err(SealError::Malformed("key slot count out of range"));
        }
        let mut repository = [0u8; REPOSITORY_ID_LEN];
        if version == VERSION {
            read_exact(r, &mut repository)?;
            raw.extend_from_slice(&repository);
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            slots.push(read_slot(r, &mut raw, version)?);
        }
        let mut mac = [0u8; MAC_LEN];
        read_exact(r, &mut mac)?;
        Ok(Header {
            version,
            repository,
            compression,
            chunk_shift,
            slots,
            raw,
            mac,
        })
    }

    /// Finds a slot for a key in `keyring`, unwraps the data key, verifies the header MAC and
    /// applies the keyring's policy: the repository id must be the keyring's (version 2), a
    /// version-1 object opens only with `allow_legacy`, and an object opened with an identity
    /// (sealed to a recipient) must carry a valid signature of a trusted signer.
    ///
    /// # Errors
    /// `UnknownKey` if no slot names a key we hold; `SlotAuth` or `HeaderAuth` if the object
    /// was modified or is opened under another name; `Legacy`, `WrongRepository`,
    /// `Unsigned`, `UntrustedSigner` or `BadSignature` when the policy refuses it.
    pub(crate) fn unlock(&self, keyring: &Keyring, name: &[u8]) -> Result<Unlocked, SealError> {
        if name.len() > MAX_NAME_LEN {
            return Err(SealError::NameTooLong);
        }
        // A host that cannot open anything says so first (a push-only host then compares by
        // content digest, whatever the object's version).
        if !keyring.can_open() {
            return Err(SealError::PushOnly);
        }
        if self.version == VERSION_1 && !keyring.allow_legacy() {
            return Err(SealError::Legacy);
        }
        if let Some(expected) = keyring.repository() {
            if self.version == VERSION && self.repository != expected {
                return Err(SealError::WrongRepository(crate::keys::hex_encode(
                    &self.repository,
                )));
            }
        }
        let mut found = None;
        for slot in &self.slots {
            if slot.kind == SlotKind::Master as u8 {
                if let Some(master) = keyring.get(&slot.key_id) {
                    found = Some((unwrap_master_slot(master, slot, name)?, false));
                    break;
                }
            } else if slot.kind == SlotKind::X25519 as u8 {
                if let Some(identity) = keyring.identity(&slot.key_id) {
                    found = Some((unwrap_x25519_slot(identity, slot, name)?, true));
                    break;
                }
            }
        }
        let Some((dek, by_identity)) = found else {
            if !keyring.can_open() {
                return Err(SealError::PushOnly);
            }
            let ids: Vec<String> = self.key_ids().iter().map(ToString::to_string).collect();
            return Err(SealError::UnknownKey(ids.join(", ")));
        };
        self.verify_mac(&dek, name)?;
        // A master key is secret, so its MAC proves the sender; a recipient is public, so
        // only a signature does. Version 1 predates signatures (allowed above, or refused).
        let payload_sha256 = if by_identity && self.version == VERSION {
            Some(self.verify_signature(keyring, &dek, name)?)
        } else {
            None
        };
        Ok(Unlocked {
            dek,
            payload_sha256,
            by_identity,
        })
    }

    /// Checks the signature slots: one of a trusted signer must verify. Returns the payload
    /// SHA-256 it vouches for.
    ///
    /// # Errors
    /// `Unsigned`, `UntrustedSigner` or `BadSignature`.
    pub(crate) fn verify_signature(
        &self,
        keyring: &Keyring,
        dek: &DataKey,
        name: &[u8],
    ) -> Result<[u8; 32], SealError> {
        let sigs: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Signature as u8)
            .collect();
        if sigs.is_empty() {
            return Err(SealError::Unsigned);
        }
        let Some((slot, signer)) = sigs
            .iter()
            .find_map(|s| keyring.trusted_signer(&s.key_id).map(|p| (*s, p)))
        else {
            let ids: Vec<String> = sigs.iter().map(|s| s.key_id.to_string()).collect();
            return Err(SealError::UntrustedSigner(ids.join(", ")));
        };
        let (sha, sig) = slot.body.split_at(32);
        let mut payload_sha256 = [0u8; 32];
        payload_sha256.copy_from_slice(sha);
        if !signer.verify(&signed_message(self, dek, &payload_sha256, name), sig) {
            return Err(SealError::BadSignature(slot.key_id));
        }
        Ok(payload_sha256)
    }

    /// Verifies the header MAC under `dek`.
    ///
    /// # Errors
    /// `HeaderAuth`.
    pub(crate) fn verify_mac(&self, dek: &DataKey, name: &[u8]) -> Result<(), SealError> {
        let mut input = Vec::with_capacity(self.raw.len() + name.len());
        input.extend_from_slice(&self.raw);
        input.extend_from_slice(name);
        hmac::verify(&dek.mac_key(), &input, &self.mac).map_err(|_| SealError::HeaderAuth)
    }
}

/// Reads one key slot, appending its bytes to `raw`.
fn read_slot<R: Read>(r: &mut R, raw: &mut Vec<u8>, version: u8) -> Result<Slot, SealError> {
    let mut fixed = [0u8; 1 + KEY_ID_LEN + 2];
    read_exact(r, &mut fixed)?;
    raw.extend_from_slice(&fixed);
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&fixed[1..=KEY_ID_LEN]);
    let len = usize::from(u16::from_be_bytes([fixed[17], fixed[18]]));
    if len > 4096 {
        return Err(SealError::Malformed("key slot body too long"));
    }
    let expected = match fixed[0] {
        k if k == SlotKind::Master as u8 => Some(MASTER_SLOT_BODY_LEN),
        k if k == SlotKind::X25519 as u8 => Some(X25519_SLOT_BODY_LEN),
        k if k == SlotKind::ContentDigest as u8 => Some(DIGEST_SLOT_BODY_LEN),
        k if k == SlotKind::Signature as u8 && version == VERSION => Some(SIGNATURE_SLOT_BODY_LEN),
        _ => None,
    };
    if expected.is_some_and(|e| e != len) {
        return Err(SealError::Malformed(
            "a key slot has the wrong length for its kind",
        ));
    }
    let mut body = vec![0u8; len];
    read_exact(r, &mut body)?;
    raw.extend_from_slice(&body);
    Ok(Slot {
        kind: fixed[0],
        key_id: KeyId(key_id),
        body,
    })
}

fn compute_mac(dek: &DataKey, raw: &[u8], name: &[u8]) -> [u8; MAC_LEN] {
    let mut ctx = hmac::Context::with_key(&dek.mac_key());
    ctx.update(raw);
    ctx.update(name);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(ctx.sign().as_ref());
    mac
}

/// `read_exact` that reports a short read as `Truncated`.
pub(crate) fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), SealError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SealError::Truncated
        } else {
            SealError::Io(e)
        }
    })
}
