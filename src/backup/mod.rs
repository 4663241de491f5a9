//! `walseal backup`: a base backup over the replication protocol, cut into sealed parts that
//! are uploaded while the next part is read.
//!
//! Pipeline: the connection task reads BASE_BACKUP's CopyData messages and feeds the tar bytes
//! to a sealing thread; the sealing thread cuts each archive into parts of `part_size`
//! plaintext bytes, seals each under its own key and hands it to the upload task. At most one
//! part is being sealed, one waits and one uploads, so memory is bounded by about three parts
//! whatever the database size. The record is written last, after the WAL up to the stop LSN is
//! in the archive: an interrupted backup is never listed as complete.

pub mod conn;
pub mod conninfo;
pub mod protocol;
pub mod tls;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::catalog::{self, Archive, BackupRecord, Part};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::repository::{self, Identity};
use crate::seal::{self, seal_error_from_io};
use crate::storage::{PutOutcome, Storage};
use conn::Conn;
use protocol::{CopyMessage, StartOptions};

/// What `walseal backup` was asked to do.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// libpq conninfo or URL (else PG* variables and defaults).
    pub conninfo: Option<String>,
    /// Fast (immediate) checkpoint instead of spread.
    pub fast: bool,
    /// Plaintext bytes per part.
    pub part_size: u64,
    /// How long to wait for the WAL the backup needs to be archived.
    pub wal_timeout: Duration,
    /// Show a progress bar (terminal).
    pub progress: bool,
    /// Take an incremental backup against the newest complete one (PostgreSQL 17+).
    pub incremental: bool,
    /// Incremental unless the newest full backup is older than this many seconds.
    pub full_every: Option<f64>,
    /// Let the server verify page checksums (on unless `--no-verify-checksums`).
    pub verify_checksums: bool,
    /// Parts sealed at once.
    pub jobs: usize,
}

/// The backup an incremental one is taken against, with its manifest.
struct Parent {
    id: String,
    manifest: Vec<u8>,
    sha256: String,
}

enum Feed {
    Archive {
        name: String,
        location: String,
        oid: Option<u32>,
    },
    Data(Bytes),
}

struct Upload {
    key: String,
    bytes: Vec<u8>,
}

/// Takes a base backup into the repository.
///
/// # Errors
/// `Database` for connection, authentication, permission or protocol problems and for WAL
/// that does not reach the archive in time; `Storage`, `Config` as usual.
pub async fn backup(cfg: &Config, opts: &BackupOptions) -> Result<BackupRecord> {
    let started = Instant::now();
    let repo = crate::repo::Repository::open(cfg, crate::repo::Access::Seal, "backup").await?;
    let (keyring, storage) = (repo.keyring.clone(), repo.storage.clone());
    // Fails now, not after the backup ran, on a recipient host without a signer.
    keyring.seal_options()?;
    let params = conninfo::resolve(opts.conninfo.as_deref())?;
    let mut conn = Conn::connect(&params).await?;
    let ident = protocol::identify_system(&mut conn).await?;
    let seg_size = protocol::wal_segment_size(&mut conn).await?;
    let pg_version = conn
        .server_params
        .get("server_version")
        .cloned()
        .unwrap_or_default();
    let major = pg_version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_some_and(|m| m < 15) {
        return Err(Error::new(
            ErrorKind::Database,
            format!("PostgreSQL {pg_version} is not supported by walseal backup"),
        )
        .hint("walseal backup supports PostgreSQL 15 and later"));
    }
    repository::ensure(
        &storage,
        &keyring,
        &Identity {
            format_version: u32::from(seal::VERSION),
            system_identifier: ident.system_identifier.clone(),
            wal_segment_size: seg_size.bytes(),
            pg_version: major,
        },
    )
    .await?;

    let (block_size, relseg_size) = page_geometry(&mut conn).await?;
    let mut parent = choose_parent(&storage, &keyring, &mut conn, major, &pg_version, opts).await?;
    let standby = protocol::show(&mut conn, "in_hot_standby")
        .await
        .is_ok_and(|v| v == "on");
    let archives_itself = protocol::show(&mut conn, "archive_mode")
        .await
        .is_ok_and(|v| v == "always");

    // Ids are the UTC start second; two backups within one second wait for the next.
    let mut start_unix = crate::time::now();
    let mut id = crate::time::format_id(start_unix);
    for _ in 0..3 {
        if storage
            .list(&format!("{}/{id}/", catalog::BACKUPS))
            .await?
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(
            1000 - (start_unix.fract() * 1000.0) as u64 + 1,
        ))
        .await;
        start_unix = crate::time::now();
        id = crate::time::format_id(start_unix);
    }
    if !storage
        .list(&format!("{}/{id}/", catalog::BACKUPS))
        .await?
        .is_empty()
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("backup id {id} is already used in {}", storage.display()),
        )
        .hint(
            "another walseal backup may be running against this repository; wait for it to finish",
        ));
    }
    let label = format!("walseal {id}");
    let start = start_base_backup(&mut conn, &label, opts, &mut parent).await?;
    let tablespaces = protocol::read_tablespaces(&mut conn).await?;
    let total_hint = total_hint(&tablespaces);
    protocol::expect_copy_out(&mut conn).await?;

    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(64);
    let (up_tx, mut up_rx) = mpsc::channel::<Upload>(1);
    let sealer = {
        let (keyring, id, part_size) = (keyring.clone(), id.clone(), opts.part_size);
        let jobs = opts.jobs.max(1);
        tokio::task::spawn_blocking(move || {
            seal_parts(feed_rx, &up_tx, &keyring, &id, part_size, jobs)
        })
    };
    let uploader = {
        let storage = storage.clone();
        tokio::spawn(async move {
            while let Some(u) = up_rx.recv().await {
                if storage.put_new(&u.key, u.bytes.into()).await? == PutOutcome::AlreadyExists {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("{} already exists; refusing to overwrite", u.key),
                    ));
                }
            }
            Ok::<(), Error>(())
        })
    };
    let mut progress = Progress::new(opts.progress, total_hint);
    let streamed = stream_copy(&mut conn, &feed_tx, &mut progress, &tablespaces).await;
    drop(feed_tx);
    let sealed = sealer
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("sealing task failed: {e}")))?;
    let uploaded = uploader
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("upload task failed: {e}")))?;
    progress.finish();
    // Report the first real cause: an upload or sealing failure stops the stream too.
    uploaded?;
    let archives = sealed?;
    streamed?;
    let stop = protocol::read_position(&mut conn).await?;
    conn.wait_ready().await?;
    conn.close().await;

    let stop_segment = stop.lsn.prev_segment_name(stop.timeline, seg_size);
    let waiter = WalWait {
        standby: standby && !archives_itself,
        timeout: opts.wal_timeout,
    };
    waiter.wait(&storage, stop.timeline, &stop_segment).await?;
    let stop_unix = crate::time::now();
    let record = BackupRecord {
        format_version: if parent.is_some() { 2 } else { 1 },
        id: id.clone(),
        label,
        system_identifier: ident.system_identifier,
        pg_version,
        timeline: start.timeline,
        start_lsn: start.lsn,
        stop_lsn: stop.lsn,
        stop_timeline: stop.timeline,
        start_time: crate::time::format_pg(start_unix),
        stop_time: crate::time::format_pg(stop_unix),
        stop_unix,
        wal_segment_size: seg_size.bytes(),
        size: archives.iter().map(|a| a.size).sum(),
        stored: archives
            .iter()
            .flat_map(|a| &a.parts)
            .map(|p| p.stored)
            .sum(),
        archives,
        parent_manifest_sha256: parent.as_ref().map(|p| p.sha256.clone()),
        parent: parent.map(|p| p.id),
        block_size: Some(block_size),
        relseg_size: Some(relseg_size),
    };
    // Every part must still be there: a record naming missing parts would list a backup that
    // cannot be restored (e.g. parts removed by a retain run on another host meanwhile).
    let present: std::collections::HashSet<String> = storage
        .list(&format!("{}/{id}/", catalog::BACKUPS))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    if let Some(missing) = record
        .archives
        .iter()
        .flat_map(|a| &a.parts)
        .find(|p| !present.contains(&p.key))
    {
        return Err(Error::new(
            ErrorKind::Storage,
            format!(
                "{} vanished from {} while the backup ran; the backup is not recorded",
                missing.key,
                storage.display()
            ),
        )
        .hint("something removed it (a retain run with a clock far off, or a bucket lifecycle rule on backups/): fix that, then run the backup again"));
    }
    if let Some(p) = &record.parent {
        if !storage.exists(&catalog::record_key(p)).await? {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("the parent backup {p} was removed while the incremental backup ran; the backup is not recorded"),
            )
            .hint("a retain run removed it: run the backup again (it picks a new parent or takes a full backup with --full-every)"));
        }
    }
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode record: {e}")))?;
    let key = catalog::record_key(&id);
    let sealed = keyring.seal_to_vec(&key, &json)?;
    if storage.put_new(&key, sealed.into()).await? == PutOutcome::AlreadyExists {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{key} already exists"),
        ));
    }
    tracing::info!(
        "backup {id} complete in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(record)
}

/// The backup's size as the server estimates it (for the progress bar), in bytes.
fn total_hint(tablespaces: &[protocol::Tablespace]) -> u64 {
    tablespaces
        .iter()
        .filter_map(|t| t.size_kb)
        .fold(0u64, u64::saturating_add)
        .saturating_mul(1024)
}

/// Reads the COPY stream and feeds the sealing thread until CopyDone.
async fn stream_copy(
    conn: &mut Conn,
    feed: &mpsc::Sender<Feed>,
    progress: &mut Progress,
    tablespaces: &[protocol::Tablespace],
) -> Result<()> {
    let closed = || Error::new(ErrorKind::Internal, "the sealing or upload task stopped");
    loop {
        match protocol::next_copy(conn).await? {
            CopyMessage::NewArchive { name, location } => {
                let oid = tablespaces
                    .iter()
                    .find(|t| {
                        t.location.as_deref() == Some(location.as_str()) && !location.is_empty()
                    })
                    .and_then(|t| t.oid);
                feed.send(Feed::Archive {
                    name,
                    location,
                    oid,
                })
                .await
                .map_err(|_| closed())?;
            }
            CopyMessage::Manifest => {
                feed.send(Feed::Archive {
                    name: "backup_manifest".into(),
                    location: String::new(),
                    oid: None,
                })
                .await
                .map_err(|_| closed())?;
            }
            CopyMessage::Data(data) => {
                progress.add(data.len() as u64);
                feed.send(Feed::Data(data)).await.map_err(|_| closed())?;
            }
            CopyMessage::Progress(done) => progress.server(done),
            CopyMessage::Done => return Ok(()),
        }
    }
}

/// The sealing thread: archives in, sealed parts out. Each part's plaintext is gathered,
/// then sealed by one of `jobs` threads (so memory is about `jobs` parts in plaintext and
/// sealed, plus the one being gathered); parts are uploaded as they are sealed and listed
/// in order.
fn seal_parts(
    mut feed: mpsc::Receiver<Feed>,
    up: &mpsc::Sender<Upload>,
    keyring: &Keyring,
    id: &str,
    part_size: u64,
    jobs: usize,
) -> Result<Vec<Archive>> {
    let opts = keyring.seal_options()?;
    let cap = usize::try_from(part_size).unwrap_or(1 << 20);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<PartJob>(0);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(usize, usize, Part)>>();
    // After a failure, the threads only drain what is still sent, and the gathering stops
    // at its next part.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (job_rx, done_tx, opts, stop) = (&job_rx, done_tx.clone(), &opts, &stop);
            scope.spawn(move || loop {
                let next = job_rx.lock().map(|rx| rx.recv());
                let Ok(Ok(job)) = next else { return };
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let r = seal_part(keyring, opts, job, up);
                if r.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = done_tx.send(r);
            });
        }
        drop(done_tx);
        let gathered = gather_parts(&mut feed, &job_tx, id, part_size, cap, &stop);
        drop(job_tx);
        let mut sealed = Vec::new();
        for r in done_rx.iter() {
            sealed.push(r?);
        }
        let mut archives = gathered?;
        sealed.sort_by_key(|(archive, index, _)| (*archive, *index));
        for (archive, _, part) in sealed {
            archives[archive].parts.push(part);
        }
        let parts: usize = archives.iter().map(|a| a.parts.len()).sum();
        let expected: usize = archives
            .iter()
            .map(|a| a.size.div_ceil(part_size.max(1)) as usize)
            .sum();
        if parts != expected {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("{parts} parts sealed, {expected} expected"),
            ));
        }
        Ok(archives)
    })
}

/// A part's plaintext, to be sealed as `key`.
struct PartJob {
    archive: usize,
    index: usize,
    key: String,
    plain: Vec<u8>,
}

/// Seals one part and hands it to the uploader.
fn seal_part(
    keyring: &Keyring,
    opts: &seal::SealOptions,
    job: PartJob,
    up: &mpsc::Sender<Upload>,
) -> Result<(usize, usize, Part)> {
    let mut writer = seal::seal(
        Vec::with_capacity(job.plain.len() / 2 + 4096),
        keyring.active(),
        &job.key,
        opts,
    )
    .map_err(|e| e.into_error(&job.key))?;
    writer
        .write_all(&job.plain)
        .map_err(|e| seal_error_from_io(e).into_error(&job.key))?;
    let size = job.plain.len() as u64;
    drop(job.plain);
    let bytes = writer
        .finish()
        .map_err(|e| seal_error_from_io(e).into_error(&job.key))?;
    let sha256 = seal::payload_digest(&bytes).map_err(|e| e.into_error(&job.key))?;
    let part = Part {
        key: job.key.clone(),
        size,
        stored: bytes.len() as u64,
        sha256,
    };
    up.blocking_send(Upload {
        key: job.key,
        bytes,
    })
    .map_err(|_| Error::new(ErrorKind::Internal, "the upload task stopped"))?;
    Ok((job.archive, job.index, part))
}

/// Reads the feed into archives and part plaintexts of `part_size`, sent to the sealing
/// threads as they fill. Returns the archives (without their parts).
fn gather_parts(
    feed: &mut mpsc::Receiver<Feed>,
    jobs: &std::sync::mpsc::SyncSender<PartJob>,
    id: &str,
    part_size: u64,
    cap: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Archive>> {
    let mut archives: Vec<Archive> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut part: Option<PartJob> = None;
    let stopped = || Error::new(ErrorKind::Internal, "sealing stopped");
    let send = |p: PartJob| -> Result<()> {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(stopped());
        }
        jobs.send(p).map_err(|_| stopped())
    };
    while let Some(item) = feed.blocking_recv() {
        match item {
            Feed::Archive {
                name,
                location,
                oid,
            } => {
                if let Some(p) = part.take() {
                    send(p)?;
                }
                archives.push(Archive {
                    name,
                    tablespace_oid: oid,
                    location,
                    size: 0,
                    parts: Vec::new(),
                });
                counts.push(0);
            }
            Feed::Data(mut data) => {
                let index = archives.len().checked_sub(1).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Database,
                        "BASE_BACKUP sent data before naming an archive",
                    )
                })?;
                while !data.is_empty() {
                    let p = match part.as_mut() {
                        Some(p) => p,
                        None => {
                            let key = format!(
                                "{}/{id}/{}.{:05}",
                                catalog::BACKUPS,
                                archives[index].name,
                                counts[index]
                            );
                            counts[index] += 1;
                            part.insert(PartJob {
                                archive: index,
                                index: counts[index] - 1,
                                key,
                                plain: Vec::with_capacity(cap.min(8 << 20)),
                            })
                        }
                    };
                    let room =
                        usize::try_from(part_size - p.plain.len() as u64).unwrap_or(usize::MAX);
                    let chunk = data.split_to(room.min(data.len()));
                    p.plain.extend_from_slice(&chunk);
                    archives[index].size += chunk.len() as u64;
                    if p.plain.len() as u64 == part_size {
                        if let Some(full) = part.take() {
                            send(full)?;
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = part.take() {
        send(p)?;
    }
    Ok(archives)
}

/// Starts BASE_BACKUP (after UPLOAD_MANIFEST for an incremental one) and reads its start
/// position. When the server cannot take the incremental (e.g. no WAL summaries back to the
/// parent: summarize_wal turned on since, or wal_summary_keep_time shorter than the period),
/// `--full-every` asks for a full backup instead and clears `parent`; `--incremental` fails
/// with what to fix.
async fn start_base_backup(
    conn: &mut Conn,
    label: &str,
    opts: &BackupOptions,
    parent: &mut Option<Parent>,
) -> Result<protocol::Position> {
    let command = |incremental| {
        protocol::base_backup_command(&StartOptions {
            label,
            fast: opts.fast,
            incremental,
            verify_checksums: opts.verify_checksums,
        })
    };
    let Some(p) = parent.as_ref() else {
        conn.send_query(&command(false)).await?;
        return protocol::read_position(conn).await;
    };
    conn.upload_manifest(&p.manifest).await.map_err(|e| {
        e.hint(format!(
            "the server refused backup {}'s manifest as the parent: take a full backup (drop --incremental and --full-every once)",
            p.id
        ))
    })?;
    conn.send_query(&command(true)).await?;
    match protocol::read_position(conn).await {
        Err(e) if opts.full_every.is_some() => {
            tracing::warn!(
                "the server cannot take an incremental backup ({}): taking a full backup",
                e.message()
            );
            conn.wait_ready().await?;
            *parent = None;
            conn.send_query(&command(false)).await?;
            protocol::read_position(conn).await
        }
        Err(e) => Err(e.hint("the server cannot take this incremental backup: it needs WAL summaries back to the parent's start (summarize_wal = on since then, wal_summary_keep_time longer than the time since): take a full backup, or use --full-every, which falls back to one")),
        ok => ok,
    }
}

/// How the backup waits for its stop segment to reach the repository.
struct WalWait {
    /// Backing up a standby that does not archive itself: the primary must archive the
    /// segment, which it does only once it fills or switches it.
    standby: bool,
    timeout: Duration,
}

impl WalWait {
    /// Waits until `wal/<tli>/<segment>` is in the repository.
    async fn wait(&self, storage: &Storage, timeline: u32, segment: &str) -> Result<()> {
        let key = format!("wal/{timeline:08X}/{segment}");
        let start = Instant::now();
        let mut told = false;
        loop {
            if storage.exists(&key).await? {
                return Ok(());
            }
            if self.standby && !told && start.elapsed() >= Duration::from_secs(10) {
                told = true;
                tracing::warn!("waiting for WAL segment {segment}: backing up a standby, so the primary archives it once it switches segments (on a quiet primary run SELECT pg_switch_wal() there)");
            }
            if start.elapsed() >= self.timeout {
                let secs = self.timeout.as_secs();
                let e = Error::new(
                    ErrorKind::Database,
                    format!("backup is not complete: WAL segment {segment} (needed to restore it) did not reach the archive within {secs} s"),
                );
                return Err(if self.standby {
                    e.hint("this backup ran on a standby, whose stop segment the primary archives only when it switches segments: run SELECT pg_switch_wal() on the primary (or set archive_mode = always on the standby, archiving into the same repository), check the primary's pg_stat_archiver, then run the backup again")
                } else {
                    e.hint("check archive_mode/archive_command and pg_stat_archiver on the server; then run the backup again")
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `block_size` and pages per relation segment (`segment_size`), which restoring an
/// incremental backup needs.
async fn page_geometry(conn: &mut Conn) -> Result<(u32, u32)> {
    let bad = |what: &str, v: &str| {
        Error::new(
            ErrorKind::Database,
            format!("unexpected reply from the server: SHOW {what} gave {v:?}"),
        )
    };
    let bs_text = protocol::show(conn, "block_size").await?;
    let block_size: u32 = bs_text
        .parse()
        .ok()
        .filter(|b: &u32| b.is_power_of_two() && (1024..=32768).contains(b))
        .ok_or_else(|| bad("block_size", &bs_text))?;
    let seg_text = protocol::show(conn, "segment_size").await?;
    let relseg = protocol::parse_guc_size(&seg_text)
        .map(|b| b / u64::from(block_size))
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0 && *r <= catalog::MAX_RELSEG_SIZE)
        .ok_or_else(|| bad("segment_size", &seg_text))?;
    Ok((block_size, relseg))
}

/// The parent of an incremental backup, or `None` for a full one: with `--incremental`, the
/// newest complete backup of this cluster and major version whose chain is complete (else
/// an error saying what is missing); with `--full-every`, the same unless the chain's full
/// backup is older than the period (or there is no usable parent): then a full backup.
async fn choose_parent(
    storage: &Storage,
    keyring: &Keyring,
    conn: &mut Conn,
    major: Option<u32>,
    pg_version: &str,
    opts: &BackupOptions,
) -> Result<Option<Parent>> {
    if !opts.incremental && opts.full_every.is_none() {
        return Ok(None);
    }
    if major.is_none_or(|m| m < 17) {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("incremental backups need PostgreSQL 17 or later; the server runs {pg_version}"),
        )
        .hint("drop --incremental and --full-every: walseal takes full backups of PostgreSQL 15 and 16"));
    }
    let summarize = protocol::show(conn, "summarize_wal").await?;
    if summarize != "on" {
        return Err(Error::new(
            ErrorKind::Config,
            "summarize_wal is off on the server; incremental backups need the WAL summaries it writes",
        )
        .hint("set summarize_wal = on in postgresql.conf and reload (SELECT pg_reload_conf()); then take a full backup, which later incrementals can build on"));
    }
    let listing = catalog::list(storage, keyring).await?;
    let same_major = |b: &&BackupRecord| {
        b.pg_version
            .split(['.', ' '])
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            == major
    };
    let newest = listing.backups.iter().rev().find(same_major);
    let Some(newest) = newest else {
        if opts.incremental && opts.full_every.is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no complete backup of PostgreSQL {} in {} to take an incremental backup against", major.unwrap_or(0), storage.display()),
            )
            .hint("take a full backup first (walseal backup), or use --full-every, which takes a full one when needed"));
        }
        tracing::info!("no earlier backup of this version: taking a full backup");
        return Ok(None);
    };
    let whole = match catalog::chain(&listing.backups, &newest.id) {
        Ok(c) => catalog::parts_present(storage, &c).await.map(|()| c),
        Err(e) => Err(e),
    };
    let chain = match whole {
        Ok(c) => c,
        Err(e) if opts.full_every.is_some() => {
            tracing::warn!("taking a full backup: {}", e.message());
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("no incremental backup can be taken against {}: {}", newest.id, e.message()),
            )
            .hint("take a full backup (drop --incremental), or use --full-every, which takes one when the chain is broken"))
        }
    };
    if chain.len() > catalog::MAX_CHAIN {
        tracing::warn!(
            "the chain of {} is {} backups long, the most walseal restores: taking a full backup",
            newest.id,
            chain.len()
        );
        return Ok(None);
    }
    if let (Some(period), Some(full)) = (opts.full_every, chain.first()) {
        if crate::time::now() - full.stop_unix >= period {
            tracing::info!(
                "the newest full backup {} is older than --full-every: taking a full backup",
                full.id
            );
            return Ok(None);
        }
    }
    let manifest = catalog::read_manifest(storage, keyring, newest).await?;
    let sha256 =
        crate::keys::hex_encode(ring::digest::digest(&ring::digest::SHA256, &manifest).as_ref());
    tracing::info!("taking an incremental backup against {}", newest.id);
    Ok(Some(Parent {
        id: newest.id.clone(),
        manifest,
        sha256,
    }))
}

/// A progress bar on a terminal, nothing otherwise.
struct Progress {
    enabled: bool,
    total: u64,
    received: u64,
    server_done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total,
            received: 0,
            server_done: 0,
            started: now,
            last: now,
        }
    }

    fn add(&mut self, n: u64) {
        self.received += n;
        self.draw(false);
    }

    fn server(&mut self, done: u64) {
        self.server_done = done;
        self.draw(false);
    }

    fn draw(&mut self, force: bool) {
        if !self.enabled || (!force && self.last.elapsed() < Duration::from_millis(250)) {
            return;
        }
        self.last = Instant::now();
        let done = self.server_done.max(self.received);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let (pct, eta) = if self.total > 0 {
            let pct = (done as f64 * 100.0 / self.total as f64).min(100.0);
            let eta = if rate > 0.0 {
                (self.total.saturating_sub(done)) as f64 / rate
            } else {
                0.0
            };
            (format!("{pct:5.1}%"), format!("ETA {eta:.0}s"))
        } else {
            (String::from("  ?  "), String::new())
        };
        let width = 30usize;
        let filled = if self.total > 0 {
            ((done as f64 / self.total as f64).min(1.0) * width as f64) as usize
        } else {
            0
        };
        eprint!(
            "\r[{}{}] {pct} {} / {} {}/s {eta}   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            human(done),
            human(self.total),
            human(rate as u64)
        );
    }

    fn finish(&mut self) {
        if self.enabled {
            self.draw(true);
            eprintln!();
        }
    }
}

/// `1.5 GiB`-style sizes.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses `64MiB`, `64M`, `1GiB`, `1048576` (without overflowing: a size beyond `u64` is an
/// error).
///
/// # Errors
/// `Usage` for anything else.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        Error::new(
            ErrorKind::Usage,
            format!("size {s:?} is not a number with an optional unit (KiB, MiB, GiB)"),
        )
    })?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("unknown size unit in {s:?} (use KiB, MiB or GiB)"),
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::new(ErrorKind::Usage, format!("size {s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_s_size_estimate_does_not_overflow() {
        let ts = |kb: u64| protocol::Tablespace {
            oid: None,
            location: None,
            size_kb: Some(kb),
        };
        assert_eq!(total_hint(&[ts(u64::MAX / 2), ts(u64::MAX / 2)]), u64::MAX);
        assert_eq!(total_hint(&[ts(1), ts(2)]), 3072);
    }

    #[test]
    fn part_sizes_do_not_overflow() {
        assert!(parse_size("17179869184GiB").is_err());
        assert!(parse_size("18446744073709551615k").is_err());
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
    }
}
