//! `walseal restore`: a base backup plus recovery settings, ready for `pg_ctl start`.
//!
//! Picks the backup (`latest`, the newest that ended before `--target-time`, or an id), refuses
//! a non-empty PGDATA, downloads each archive's parts in order (the next part downloads while
//! the current one is opened and extracted), checks every file against the backup manifest,
//! writes `backup_manifest`, `recovery.signal` and the recovery settings.

use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::chain::{self, Roots, State};
use super::manifest::{verify_file, ManifestFile};
use super::tar::{self, Layer, Listing, Policy, Root};
use crate::catalog::{self, Archive, BackupRecord};
use crate::config::Config;
use crate::error::{local_io, Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repo::{Access, Repository};
use crate::seal::{self, seal_error_from_io, OpenReader};
use crate::storage::Storage;
use crate::wal::Lsn;

/// A recovery target.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Replay all archived WAL.
    Latest,
    /// `recovery_target_time` (normalised to UTC) and its Unix time.
    Time(String, f64),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name`.
    Name(String),
}

/// What to restore and how to recover.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Backup id or `latest`.
    pub backup: String,
    /// Destination data directory.
    pub pgdata: PathBuf,
    /// Recovery target.
    pub target: Target,
    /// `recovery_target_timeline`.
    pub timeline: String,
    /// `recovery_target_action`.
    pub action: String,
    /// Tablespace relocations (old location → new).
    pub tablespace_map: Vec<(String, String)>,
    /// The config file walseal was run with, for restore_command.
    pub config_file: Option<PathBuf>,
    /// Write large files with O_DIRECT (see `tar::extract`).
    pub direct_io: bool,
    /// Flush the restored files to stable storage before reporting success (see
    /// [`Root::sync`]); `restore --no-sync` turns it off, for tests.
    pub sync: bool,
    /// Only this backup, as PostgreSQL sent it: no chain, no recovery settings.
    pub raw: bool,
    /// Parts downloaded and opened at once (memory: about 1.5 parts each).
    pub jobs: usize,
}

fn target_error(msg: String) -> Error {
    Error::new(ErrorKind::Target, msg)
}

/// Chooses the backup for `opts`.
/// The backup to restore: `backup` (an id, or `latest`: the newest complete one, or with a
/// time or LSN target the newest that ended before it), checked against `target`.
///
/// # Errors
/// `NotFound` (no backups, no such backup), `Target` (the target lies before its end).
pub fn choose<'a>(
    backups: &'a [BackupRecord],
    backup: &str,
    target: &Target,
) -> Result<&'a BackupRecord> {
    if backups.is_empty() {
        return Err(
            Error::new(ErrorKind::NotFound, "the repository has no complete backup")
                .hint("take one with `walseal backup`"),
        );
    }
    let chosen =
        if backup == "latest" {
            match target {
                Target::Time(text, t) => backups
                    .iter()
                    .rev()
                    .find(|b| b.stop_unix < *t)
                    .ok_or_else(|| {
                        target_error(format!(
                            "no backup ended before the target time {text}; the oldest ended at {}",
                            backups[0].stop_time
                        ))
                    })?,
                Target::Lsn(lsn) => backups
                    .iter()
                    .rev()
                    .find(|b| b.stop_lsn <= *lsn)
                    .ok_or_else(|| {
                        target_error(format!(
                            "no backup ended before the target LSN {lsn}; the oldest ended at {}",
                            backups[0].stop_lsn
                        ))
                    })?,
                _ => backups
                    .last()
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "no backup"))?,
            }
        } else {
            backups.iter().find(|b| b.id == backup).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no complete backup {backup:?} in the repository"),
                )
                .hint("run `walseal list` to see the backups")
            })?
        };
    match target {
        Target::Time(text, t) if *t <= chosen.stop_unix => Err(target_error(format!(
            "the target time {text} is before backup {} ended ({}); a backup can only be recovered to a later point",
            chosen.id, chosen.stop_time
        ))
        .hint("choose an older backup, or use `latest` to let walseal pick one")),
        Target::Lsn(lsn) if *lsn < chosen.stop_lsn => Err(target_error(format!(
            "the target LSN {lsn} is before backup {} ended ({})",
            chosen.id, chosen.stop_lsn
        ))
        .hint("choose an older backup, or use `latest` to let walseal pick one")),
        _ => Ok(chosen),
    }
}

fn ensure_empty_dir(dir: &Path, what: &str) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::new(ErrorKind::Conflict, format!("{what} {} is not empty; refusing to restore over it", dir.display()))
                    .hint("restore into a new or empty directory (stop the old cluster and move its directory aside first)"));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| local_io(format!("cannot create {}", dir.display()), &e)),
        Err(e) => Err(local_io(format!("cannot read {}", dir.display()), &e)),
    }
}

/// Restores a backup into `opts.pgdata`; returns the restored record.
///
/// # Errors
/// `NotFound` (no such backup), `Target` (target before the backup's end), `Conflict`
/// (non-empty destination), `Integrity` (parts or files that do not check out), and the usual.
pub async fn restore(cfg: &Config, opts: &RestoreOptions) -> Result<Restored> {
    let repo = Repository::open(cfg, Access::Open, "restore").await?;
    let (keyring, storage) = (repo.keyring.clone(), repo.storage.clone());
    // The restore_command written below pins this repository.
    let mut pinned = cfg.clone();
    pinned.repository_id = Some(crate::keys::hex_encode(&repo.id));
    let cfg = &pinned;
    let listing = catalog::list(&storage, &keyring).await?;
    if opts.backup != "latest" && !listing.backups.iter().any(|b| b.id == opts.backup) {
        // Say whether it is incomplete or unknown.
        catalog::load_record(&storage, &keyring, &opts.backup).await?;
    }
    let record = choose(&listing.backups, &opts.backup, &opts.target)?.clone();
    let chain: Vec<BackupRecord> = if opts.raw {
        vec![record.clone()]
    } else {
        catalog::chain(&listing.backups, &record.id)?
            .into_iter()
            .cloned()
            .collect()
    };
    // Before anything is written: the whole chain is there and bound together.
    chain::check(&storage, &keyring, &chain).await?;
    ensure_empty_dir(&opts.pgdata, "PGDATA")?;
    let map: HashMap<&str, &str> = opts
        .tablespace_map
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut targets: Vec<PathBuf> = vec![opts.pgdata.clone()];
    for a in record
        .archives
        .iter()
        .filter(|a| a.tablespace_oid.is_some())
    {
        let loc = mapped(&map, &a.location);
        ensure_empty_dir(Path::new(loc), "tablespace directory")?;
        targets.push(PathBuf::from(loc));
    }
    // The destinations were empty: on failure, empty them again so nothing half-restored can
    // be started by mistake.
    let bytes = match fill(cfg, opts, &storage, &keyring, &chain, &map).await {
        Ok(b) => b,
        Err(e) => {
            for dir in &targets {
                if let Ok(entries) = fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let _ = if p.is_dir() && !p.is_symlink() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
            }
            return Err(e);
        }
    };
    Ok(Restored {
        bytes,
        chain: chain.iter().map(|r| r.id.clone()).collect(),
        record,
    })
}

/// What `restore` restored.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup restored (the newest of its chain).
    pub record: BackupRecord,
    /// The chain it was rebuilt from, oldest first (just the backup for a full one).
    pub chain: Vec<String>,
    /// Bytes restored (the rebuilt cluster's size for a chain).
    pub bytes: u64,
}

/// Where tablespace location `location` goes: its `--tablespace-map` entry, or itself.
fn mapped<'a>(map: &HashMap<&'a str, &'a str>, location: &'a str) -> &'a str {
    map.get(location).copied().unwrap_or(location)
}

/// Downloads, checks and writes everything into the (empty) destinations: each archive of
/// each backup of the chain (one backup unless it is incremental; see [`chain`]) is
/// extracted beneath its destination's handle, its files checked against its manifest (see
/// [`tar::extract`]), then everything is flushed to disk unless `opts.sync` is off. Returns
/// the restored cluster's size in bytes.
async fn fill(
    cfg: &Config,
    opts: &RestoreOptions,
    storage: &Storage,
    keyring: &std::sync::Arc<Keyring>,
    chain: &[BackupRecord],
    map: &HashMap<&str, &str>,
) -> Result<u64> {
    let newest = chain
        .last()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "an empty chain"))?;
    // The tablespace links base.tar must hold, pointing where the record (and the map) say.
    let links: BTreeMap<u32, PathBuf> = newest
        .archives
        .iter()
        .filter_map(|a| {
            let oid = a.tablespace_oid?;
            Some((oid, PathBuf::from(mapped(map, &a.location))))
        })
        .collect();
    let mut tablespaces = BTreeMap::new();
    for (oid, dest) in &links {
        tablespaces.insert(*oid, Root::open(dest)?);
    }
    let roots = Roots {
        data: Root::open(&opts.pgdata)?,
        tablespaces,
    };
    let mut state = State::default();
    let mut newest_manifest = Vec::new();
    for (i, record) in chain.iter().enumerate() {
        let layer = if i == 0 {
            Layer::Fresh
        } else {
            Layer::Over {
                newest: i + 1 == chain.len(),
                geometry: chain::geometry(record)?,
            }
        };
        let (bytes, listing) = chain::load_manifest(storage, keyring, record).await?;
        if let Some(child) = chain.get(i + 1) {
            chain::check_binding(record, &bytes, child)?;
        }
        // Files gone since the previous backup go first (a path may be a directory now).
        let files = State::files_of(&listing);
        state.remove_gone_files(&files, &roots)?;
        let (listing, dirs) = apply_backup(
            opts, storage, keyring, record, newest, &links, &roots, layer, listing,
        )
        .await?;
        let next = State::of(&listing, dirs);
        state.remove_gone_dirs(&next, &roots)?;
        state = next;
        newest_manifest = bytes;
    }
    let (manifest, bytes) = if chain.len() > 1 {
        chain::finish(&opts.pgdata, &roots, &newest_manifest, &newest.id)?
    } else {
        (newest_manifest, newest.size)
    };
    write_file(&opts.pgdata.join("backup_manifest"), &manifest)?;
    if !opts.raw {
        // A backup of a standby holds its standby.signal, which would make the restored
        // cluster a standby (of the old primary, through primary_conninfo) instead of
        // recovering from the archive to the target.
        roots.data.remove(b"standby.signal", false)?;
        write_recovery(cfg, opts)?;
    }
    if opts.sync {
        // After the files written above: syncfs covers them too (PGDATA's file system).
        roots.data.sync()?;
        for root in roots.tablespaces.values() {
            root.sync()?;
        }
    }
    Ok(bytes)
}

/// Extracts one backup of the chain as `layer` says, its files checked against `listing`
/// (its manifest's); returns the listing with the files marked, and its directories. Tablespaces the newest backup no longer has are
/// skipped (their archives are not read, their links not made).
#[allow(clippy::too_many_arguments)]
async fn apply_backup(
    opts: &RestoreOptions,
    storage: &Storage,
    keyring: &std::sync::Arc<Keyring>,
    record: &BackupRecord,
    newest: &BackupRecord,
    links: &BTreeMap<u32, PathBuf>,
    roots: &Roots,
    layer: Layer,
    mut listing: Listing<ManifestFile>,
) -> Result<(Listing<ManifestFile>, Vec<Vec<u8>>)> {
    let mut skip = BTreeSet::new();
    for a in &record.archives {
        let Some(oid) = a.tablespace_oid else {
            continue;
        };
        match newest
            .archives
            .iter()
            .find(|n| n.tablespace_oid == Some(oid))
        {
            None => {
                skip.insert(oid);
            }
            Some(n) if n.location != a.location => {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "backup {}: tablespace {oid} is at {:?} in backup {} but at {:?} in {}",
                        newest.id, a.location, record.id, n.location, newest.id
                    ),
                )
                .hint("a tablespace never moves: the chain was altered; restore an older complete chain (`walseal list`) and take a new full backup"))
            }
            Some(_) => {}
        }
    }
    let base_links: BTreeMap<u32, PathBuf> = links
        .iter()
        .filter(|(oid, _)| {
            record
                .archives
                .iter()
                .any(|a| a.tablespace_oid == Some(**oid))
        })
        .map(|(o, p)| (*o, p.clone()))
        .collect();
    let mut dirs = Vec::new();
    for archive in record.archives.iter().filter(|a| a.name.ends_with(".tar")) {
        if archive.tablespace_oid.is_some_and(|o| skip.contains(&o)) {
            continue;
        }
        let (root, prefix, links) = match archive.tablespace_oid {
            Some(oid) => (
                roots.tablespaces.get(&oid),
                format!("pg_tblspc/{oid}/"),
                BTreeMap::new(),
            ),
            None => (Some(&roots.data), String::new(), base_links.clone()),
        };
        let root = root.ok_or_else(|| Error::new(ErrorKind::Internal, "no destination"))?;
        let job = Extraction {
            root: root.try_clone()?,
            prefix,
            links,
            listing,
            direct_io: opts.direct_io,
            layer,
            skip: skip.clone(),
            dirs,
        };
        (listing, dirs) = extract_archive(storage, keyring, archive, job, opts.jobs).await?;
    }
    let skipped = |p: &[u8]| {
        skip.iter()
            .any(|o| p.starts_with(format!("pg_tblspc/{o}/").as_bytes()))
    };
    let missing: Vec<&[u8]> = listing.unwritten().filter(|p| !skipped(p)).collect();
    if let Some(first) = missing.first() {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "backup {}: {} files listed in the backup manifest were not in the backup (one is {:?})",
                record.id,
                missing.len(),
                String::from_utf8_lossy(first)
            ),
        ));
    }
    Ok((listing, dirs))
}

pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| local_io(format!("cannot create {}", path.display()), &e))?;
    io::Write::write_all(&mut f, data)
        .map_err(|e| local_io(format!("cannot write {}", path.display()), &e))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Refuses a repository URL that carries credentials (user info, or a query string such as
/// an Azure SAS token): restore_command is written to `postgresql.auto.conf`, which every
/// later base backup of the restored cluster copies.
fn refuse_credentials_in_url(repo: &str) -> Result<()> {
    let carries = match url::Url::parse(repo) {
        Ok(u) => !u.username().is_empty() || u.password().is_some() || u.query().is_some(),
        Err(_) => repo.contains(['@', '?']),
    };
    if !carries {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "repository URL {} carries credentials (user info or a query string such as a SAS token), which restore_command would write into postgresql.auto.conf",
            crate::redact::redact_url(repo)
        ),
    )
    .hint("run walseal restore with --config FILE (or WALSEAL_CONFIG) holding the repository and its credentials: restore_command then names only that file"))
}

/// The restore_command walseal writes: this binary, with the configuration it was run with.
/// Run with a config file, the command names that file (and the key and identity file paths)
/// and nothing from inside it; run from the environment only, it repeats the repository URL
/// and file paths, never a credential, passphrase or key: a URL carrying credentials is
/// refused.
///
/// # Errors
/// `Config` for a URL carrying credentials or no URL; `LocalIo` if the executable or the
/// config file cannot be resolved.
pub fn restore_command(cfg: &Config, config_file: Option<&Path>) -> Result<String> {
    let exe =
        std::env::current_exe().map_err(|e| local_io("cannot find the walseal executable", &e))?;
    let abs_list = |paths: &[PathBuf]| -> String {
        paths
            .iter()
            .map(|k| {
                fs::canonicalize(k)
                    .unwrap_or_else(|_| k.clone())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join(":")
    };
    // Key and identity files: always named, so that ones given in the environment (over the
    // config file) reach wal-fetch too.
    let mut keys_env = String::new();
    if !cfg.key_files.is_empty() {
        keys_env += &format!(
            "WALSEAL_KEY_FILE={} ",
            shell_quote(&abs_list(&cfg.key_files))
        );
    }
    if !cfg.identity_files.is_empty() {
        keys_env += &format!(
            "WALSEAL_IDENTITY_FILE={} ",
            shell_quote(&abs_list(&cfg.identity_files))
        );
    }
    // The reading policy travels too (none of it is secret): the trusted signers, whether
    // format-1 objects are read, and the repository id, pinned so that the repository cannot
    // be replaced under a running recovery.
    let signers: Vec<&str> = cfg
        .trusted_signers
        .iter()
        .flat_map(|l| l.split(|c: char| c == ',' || c == ':' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .collect();
    if !signers.is_empty() {
        keys_env += &format!(
            "WALSEAL_TRUSTED_SIGNERS={} ",
            shell_quote(&signers.join(","))
        );
    }
    if cfg.allow_legacy {
        keys_env += "WALSEAL_ALLOW_LEGACY=1 ";
    }
    if let Some(id) = &cfg.repository_id {
        keys_env += &format!("WALSEAL_REPOSITORY_ID={} ", shell_quote(id));
    }
    let mut cmd = String::new();
    if let Some(file) = config_file {
        let abs = fs::canonicalize(file)
            .map_err(|e| local_io(format!("cannot resolve {}", file.display()), &e))?;
        cmd += &keys_env;
        cmd += &format!(
            "{} --config {} wal-fetch %f %p",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&abs.to_string_lossy())
        );
    } else {
        let repo = cfg.repo_url()?;
        refuse_credentials_in_url(repo)?;
        cmd += &format!("WALSEAL_REPO={} {keys_env}", shell_quote(repo));
        if cfg.allow_http {
            cmd += "WALSEAL_ALLOW_HTTP=1 ";
        }
        cmd += &format!("{} wal-fetch %f %p", shell_quote(&exe.to_string_lossy()));
    }
    Ok(cmd)
}

/// A string value for `postgresql.conf`: quotes doubled, and backslashes and line breaks
/// escaped (PostgreSQL reads `\\`, `\n` and `\r` escapes in quoted values), so no value
/// can end the line or change its meaning.
fn conf_quote(s: &str) -> String {
    format!(
        "'{}'",
        s.replace('\\', "\\\\")
            .replace('\'', "''")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    )
}

fn write_recovery(cfg: &Config, opts: &RestoreOptions) -> Result<()> {
    let mut lines = vec![
        String::new(),
        "# Added by walseal restore".to_string(),
        format!(
            "restore_command = {}",
            conf_quote(&restore_command(cfg, opts.config_file.as_deref())?)
        ),
        format!("recovery_target_timeline = {}", conf_quote(&opts.timeline)),
    ];
    match &opts.target {
        Target::Latest => {}
        Target::Time(t, _) => lines.push(format!("recovery_target_time = {}", conf_quote(t))),
        Target::Lsn(l) => lines.push(format!(
            "recovery_target_lsn = {}",
            conf_quote(&l.to_string())
        )),
        Target::Xid(x) => lines.push(format!("recovery_target_xid = {}", conf_quote(x))),
        Target::Name(n) => lines.push(format!("recovery_target_name = {}", conf_quote(n))),
    }
    if opts.target != Target::Latest {
        lines.push(format!(
            "recovery_target_action = {}",
            conf_quote(&opts.action)
        ));
    }
    let auto = opts.pgdata.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap_or_default();
    text += &(lines.join("\n") + "\n");
    fs::write(&auto, text).map_err(|e| local_io(format!("cannot write {}", auto.display()), &e))?;
    write_file(&opts.pgdata.join("recovery.signal"), b"")
}

/// What one archive's extraction needs, moved into its thread and back.
struct Extraction {
    root: Root,
    /// The manifest's prefix for the archive's paths.
    prefix: String,
    /// The tablespace links the archive must hold (base.tar only).
    links: BTreeMap<u32, PathBuf>,
    listing: Listing<ManifestFile>,
    direct_io: bool,
    layer: Layer,
    /// Tablespace links to skip.
    skip: BTreeSet<u32>,
    /// Directories seen so far in this backup.
    dirs: Vec<Vec<u8>>,
}

/// Streams an archive's parts through the opener into the tar extractor, checking each file
/// against the manifest as it is written; returns the listing with the files marked.
async fn extract_archive(
    storage: &Storage,
    keyring: &std::sync::Arc<Keyring>,
    archive: &Archive,
    job: Extraction,
    jobs: usize,
) -> Result<(Listing<ManifestFile>, Vec<Vec<u8>>)> {
    let (tx, rx) = mpsc::channel::<Result<Piece>>(1);
    // With more than one job, parts are downloaded and opened (authenticated, decompressed)
    // `jobs` at a time, ahead of the extraction, and handed over in order as plaintext.
    let feeder = {
        let (storage, keyring) = (storage.clone(), keyring.clone());
        let parts = archive.parts.clone();
        tokio::spawn(async move {
            let opened = futures::stream::iter(parts)
                .map(|p| {
                    let (storage, keyring) = (storage.clone(), keyring.clone());
                    async move {
                        let sealed = catalog::fetch_part(&storage, &p).await?;
                        if jobs <= 1 {
                            return Ok(Piece::Sealed(p.key.clone(), sealed, p.size));
                        }
                        let key = p.key.clone();
                        let plain = tokio::task::spawn_blocking(move || {
                            open_part(&keyring, &key, &sealed, p.size)
                        })
                        .await
                        .map_err(|e| {
                            Error::new(ErrorKind::Internal, format!("open task failed: {e}"))
                        })??;
                        Ok(Piece::Opened(plain))
                    }
                })
                .buffered(jobs.max(1));
            futures::pin_mut!(opened);
            while let Some(item) = opened.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        })
    };
    // Two threads: one opens the parts (decrypt, decompress), one parses the tar and writes
    // files, so both cores work; at most four 1 MiB blocks sit between them.
    let parts = PartsReader {
        rx,
        keyring: keyring.clone(),
        current: None,
        plain: None,
        key: String::new(),
        expected: 0,
        got: 0,
    };
    let (btx, brx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let opener = tokio::task::spawn_blocking(move || pump(parts, &btx));
    let name = archive.name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut job = job;
        let reader = BlockReader {
            rx: brx,
            cur: Vec::new(),
            pos: 0,
        };
        let mut policy = Policy {
            archive: &name,
            prefix: job.prefix.as_bytes(),
            listing: &mut job.listing,
            links: &job.links,
            direct_io: job.direct_io,
            layer: job.layer,
            skip_links: &job.skip,
            dirs: &mut job.dirs,
        };
        tar::extract(
            reader,
            &job.root,
            &mut policy,
            &mut |f, m| verify_file(&f, m),
            &|e| seal_error_from_io(e).into_error(&name),
        )?;
        Ok((job.listing, job.dirs))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("restore task failed: {e}")))?;
    feeder.abort();
    let _ = opener.await;
    result
}

/// Opens a whole sealed part into memory and checks its length.
fn open_part(keyring: &Keyring, key: &str, sealed: &[u8], size: u64) -> Result<Vec<u8>> {
    let mut reader = seal::open(sealed, keyring, key).map_err(|e| e.into_error(key))?;
    let mut plain = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
    let got = seal::for_each_block(&mut reader, key, |block| {
        if (plain.len() + block.len()) as u64 > size {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("{key}: more than the {size} bytes its backup record names"),
            ));
        }
        plain.extend_from_slice(block);
        Ok(())
    })?;
    if got != size {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("{key}: {got} bytes instead of {size}"),
        ));
    }
    Ok(plain)
}

/// Moves `r`'s bytes into `tx` in 1 MiB blocks until the end, an error, or the receiver leaves.
fn pump<R: Read>(mut r: R, tx: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut filled = 0;
        let result = loop {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let full = filled == buf.len();
        if filled > 0 {
            buf.truncate(filled);
            if tx.send(Ok(buf)).is_err() {
                return;
            }
        }
        match result {
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
            Ok(()) if !full => return,
            Ok(()) => {}
        }
    }
}

/// A `Read` over the blocks [`pump`] sends; the end of the channel is the end of the data.
struct BlockReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for BlockReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.cur = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = (self.cur.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A part handed to the extraction: sealed (key, bytes, plaintext size), opened here as it is
/// read; or already opened ahead (`--jobs` > 1), authenticated and its size checked.
enum Piece {
    Sealed(String, Vec<u8>, u64),
    Opened(Vec<u8>),
}

/// A `Read` over the plaintext of consecutive sealed parts.
struct PartsReader {
    rx: mpsc::Receiver<Result<Piece>>,
    keyring: std::sync::Arc<Keyring>,
    current: Option<OpenReader<io::Cursor<Vec<u8>>>>,
    /// A part opened ahead (already checked whole).
    plain: Option<io::Cursor<Vec<u8>>>,
    key: String,
    expected: u64,
    got: u64,
}

impl Read for PartsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(plain) = self.plain.as_mut() {
                let n = plain.read(out)?;
                if n > 0 {
                    return Ok(n);
                }
                self.plain = None;
            }
            if let Some(cur) = self.current.as_mut() {
                let n = cur.read(out)?;
                if n > 0 {
                    self.got += n as u64;
                    return Ok(n);
                }
                if self.got != self.expected {
                    return Err(io::Error::other(Error::new(
                        ErrorKind::Integrity,
                        format!(
                            "{}: {} bytes instead of {}",
                            self.key, self.got, self.expected
                        ),
                    )));
                }
                self.current = None;
            }
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(Piece::Opened(bytes))) => self.plain = Some(io::Cursor::new(bytes)),
                Some(Ok(Piece::Sealed(key, bytes, size))) => {
                    let reader = seal::open(io::Cursor::new(bytes), &self.keyring, &key)
                        .map_err(|e| io::Error::other(e.into_error(&key)))?;
                    self.current = Some(reader);
                    self.key = key;
                    self.expected = size;
                    self.got = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    const PASSPHRASE_VAR: &str = "WALSEAL_TEST_RESTORE_COMMAND_PASSPHRASE";

    fn cfg_with(repo: &str) -> Config {
        std::env::set_var(PASSPHRASE_VAR, "PASSSECRET");
        Config {
            repo: Some(repo.into()),
            key_files: vec![PathBuf::from("/etc/walseal/master.key")],
            identity_files: vec![PathBuf::from("/etc/walseal/restore.id")],
            recipient: None,
            signer_file: None,
            trusted_signers: vec![],
            allow_legacy: false,
            repository_id: None,
            allow_http: false,
            log_level: "warn".into(),
            audit_log: None,
            storage: [("aws_secret_access_key".to_string(), "AWSSECRET".to_string())].into(),
            keys: vec![crate::keysource::KeySpec {
                passphrase_env: Some(PASSPHRASE_VAR.into()),
                salt: Some("ab".repeat(32)),
                iterations: Some(600_000),
                ..Default::default()
            }],
            storage_retries: 3,
            storage_timeout: std::time::Duration::from_secs(60),
            compression: (crate::seal::Compression::Lz4, 3),
            push_parallel: 4,
            fetch_prefetch: 8,
        }
    }

    const SECRETS: [&str; 4] = ["SIGSECRET", "PWSECRET", "AWSSECRET", "PASSSECRET"];

    #[test]
    fn restore_command_carries_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("walseal.toml");
        fs::write(&file, "").unwrap();
        let sas = "az://c/p?sv=2024-01-01&sig=SIGSECRET";
        // Run with --config: the line names the file, never what is in it.
        let line = restore_command(&cfg_with(sas), Some(&file)).unwrap();
        for s in SECRETS {
            assert!(!line.contains(s), "{s} in {line}");
        }
        let abs = fs::canonicalize(&file).unwrap();
        assert!(
            line.contains(&format!("--config '{}'", abs.display())),
            "{line}"
        );
        assert!(
            line.ends_with(" wal-fetch %f %p") && !line.contains("WALSEAL_REPO"),
            "{line}"
        );
        // From the environment only: a URL carrying credentials cannot be written.
        for url in [sas, "s3://AKIA:PWSECRET@bucket/p", "s3://AKIA@bucket/p"] {
            let e = restore_command(&cfg_with(url), None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{url}");
            assert!(e.hint_text().unwrap_or("").contains("--config"), "{e}");
            for s in SECRETS {
                assert!(!e.to_string().contains(s), "{s} in {e}");
            }
        }
        let line = restore_command(&cfg_with("s3://bucket/p"), None).unwrap();
        for s in SECRETS {
            assert!(!line.contains(s), "{s} in {line}");
        }
        assert!(line.starts_with("WALSEAL_REPO='s3://bucket/p' WALSEAL_KEY_FILE='/etc/walseal/master.key' WALSEAL_IDENTITY_FILE='/etc/walseal/restore.id' "), "{line}");
    }

    #[test]
    fn settings_are_quoted_for_postgresql_conf() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote("a\\b"), "'a\\\\b'");
        assert_eq!(conf_quote("x\ny\rz"), "'x\\ny\\rz'");
    }
}
