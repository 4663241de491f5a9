//! The repository's storage: one `object_store` backend behind a small API that speaks in
//! outcomes (created / already there / not found) rather than backend errors.
//!
//! Writes are atomic and durable before they return: the local backend writes a staging file,
//! fsyncs it, links it into place and fsyncs the directory (`LocalFileSystem::with_fsync`);
//! S3, GCS and Azure complete a single PUT. New objects are written with `PutMode::Create`, so
//! an existing object is never overwritten (S3: `If-None-Match: *`).

pub mod conformance;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    ClientConfigKey, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};

/// Outcome of [`Storage::put_new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object already exists under that key; nothing was written.
    AlreadyExists,
}

/// A listed object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    /// Key relative to the repository root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: f64,
}

/// An object's bytes as a stream, with its size.
pub struct ObjectStream {
    /// Size in bytes as the storage reports it.
    pub size: u64,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

/// A repository location: a backend plus a display name without credentials.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    display: String,
    /// The directory of a `file://` repository.
    local_dir: Option<std::path::PathBuf>,
}

/// Whether a command may create a missing local repository directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create the directory (writers).
    Yes,
    /// A missing directory is an error (readers).
    No,
}

impl Storage {
    /// Wraps an existing store (tests, in-memory).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        display: impl Into<String>,
    ) -> Self {
        Storage {
            local_dir: None,
            store,
            prefix: ObjPath::from(prefix),
            display: display.into(),
        }
    }

    /// Opens the repository named by the configuration.
    ///
    /// # Errors
    /// `Config` for a missing or invalid URL, unknown storage options, or a refused plain-http
    /// endpoint; `Storage` if the backend cannot be set up.
    pub fn open(cfg: &Config, create: Create) -> Result<Self> {
        let url_text = cfg.repo_url()?;
        let shown = crate::redact::redact_url(url_text);
        let url = url::Url::parse(url_text).map_err(|e| {
            Error::new(ErrorKind::Config, format!("repository URL {shown:?} is invalid: {e}"))
                .hint("use file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix")
        })?;
        let display = redact(&url);
        let retry = RetryConfig {
            max_retries: cfg.storage_retries,
            retry_timeout: cfg.storage_timeout,
            ..RetryConfig::default()
        };
        let timeout = format!("{}s", cfg.storage_timeout.as_secs().max(1));
        let prefix = url.path().trim_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("repository URL {shown} names a host"),
                    )
                    .hint("a local repository is file:///absolute/path (three slashes)"));
                }
                let dir = url.to_file_path().map_err(|()| {
                    Error::new(
                        ErrorKind::Config,
                        format!("repository URL {shown} is not an absolute path"),
                    )
                })?;
                if create == Create::Yes {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Error::new(
                            ErrorKind::Storage,
                            format!("cannot create repository directory {}: {e}", dir.display()),
                        )
                        .hint(
                            "check that the directory's parent exists and is writable by this user",
                        )
                    })?;
                } else if !dir.is_dir() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("repository directory {} does not exist", dir.display()),
                    )
                    .hint("check WALSEAL_REPO / repo in the config"));
                }
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| storage_error(&display, "open", &e))?
                    .with_fsync(true);
                return Ok(Storage {
                    store: Arc::new(fs),
                    prefix: ObjPath::default(),
                    display,
                    local_dir: Some(dir),
                });
            }
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url_text)
                    .with_retry(retry);
                for (k, v) in &cfg.storage {
                    b = b.with_config(parse_key::<AmazonS3ConfigKey>(k)?, v);
                }
                // Staged uploads are copied into place create-only (`put_new_file`).
                if b.get_config_value(&AmazonS3ConfigKey::CopyIfNotExists)
                    .is_none()
                {
                    b = b.with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart");
                }
                b = b
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        &timeout,
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        "5s",
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp),
                        cfg.allow_http.to_string(),
                    );
                let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
                check_http(endpoint.as_deref(), cfg.allow_http)?;
                Arc::new(b.build().map_err(|e| config_error(&display, &e))?)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(url_text)
                    .with_retry(retry);
                for (k, v) in &cfg.storage {
                    b = b.with_config(parse_key::<GoogleConfigKey>(k)?, v);
                }
                b = b
                    .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                    .with_config(
                        GoogleConfigKey::Client(ClientConfigKey::AllowHttp),
                        cfg.allow_http.to_string(),
                    );
                let endpoint = b.get_config_value(&GoogleConfigKey::BaseUrl);
                check_http(endpoint.as_deref(), cfg.allow_http)?;
                Arc::new(b.build().map_err(|e| config_error(&display, &e))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(url_text)
                    .with_retry(retry);
                for (k, v) in &cfg.storage {
                    b = b.with_config(parse_key::<AzureConfigKey>(k)?, v);
                }
                b = b
                    .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), &timeout)
                    .with_config(
                        AzureConfigKey::Client(ClientConfigKey::AllowHttp),
                        cfg.allow_http.to_string(),
                    );
                let mut endpoint = b.get_config_value(&AzureConfigKey::Endpoint);
                let truthy = |v: String| {
                    ["true", "1", "yes", "on", "y"].contains(&v.to_ascii_lowercase().as_str())
                };
                if b.get_config_value(&AzureConfigKey::UseEmulator)
                    .is_some_and(truthy)
                {
                    // object_store then talks plain http to AZURITE_BLOB_STORAGE_URL, whatever
                    // allow_http says: refuse it the same way.
                    endpoint = Some(
                        std::env::var("AZURITE_BLOB_STORAGE_URL")
                            .unwrap_or_else(|_| "http://127.0.0.1:10000".into()),
                    );
                }
                check_http(endpoint.as_deref(), cfg.allow_http)?;
                Arc::new(b.build().map_err(|e| config_error(&display, &e))?)
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("unsupported repository scheme {other:?} in {shown}"),
                )
                .hint("use file://, s3://, gs:// or az://"))
            }
        };
        // For bucket URLs, the path is the prefix inside the bucket/container.
        Ok(Storage {
            store,
            prefix: ObjPath::from(prefix),
            display,
            local_dir: None,
        })
    }

    /// The directory of a `file://` repository (`None` for buckets).
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    /// The repository as shown to users (no credentials).
    pub fn display(&self) -> &str {
        &self.display
    }

    fn path(&self, key: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Writes `data` under `key` unless an object is already there.
    ///
    /// # Errors
    /// `Storage` if the write fails (after the backend's retries).
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let r = self
            .store
            .put_opts(&self.path(key), PutPayload::from(data), opts)
            .await;
        self.create_outcome(key, r)
    }

    /// The outcome of a create-only write (a PUT or a copy) of `key`.
    fn create_outcome<T>(
        &self,
        key: &str,
        r: std::result::Result<T, object_store::Error>,
    ) -> Result<PutOutcome> {
        match r {
            Ok(_) => Ok(PutOutcome::Created),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot write {key}"),
                &e,
            )),
        }
    }

    /// Atomically replaces an object (readers see the old or the new bytes, never a mix):
    /// for key rotation, where the plaintext stays the same.
    ///
    /// # Errors
    /// `Storage` if the write fails.
    pub async fn replace(&self, key: &str, data: Bytes) -> Result<()> {
        self.store
            .put_opts(
                &self.path(key),
                PutPayload::from(data),
                PutOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| storage_error(&self.display, &format!("cannot replace {key}"), &e))
    }

    /// Replaces an object only if it is still the version read before (`version`, from
    /// [`Storage::get_versioned`]): an object removed or rewritten meanwhile (by `retain`, or
    /// another writer) is left as it is and `false` returned. Conditional on backends that
    /// support it (S3, GCS, Azure, memory); on a local directory, checked just before the
    /// atomic rename (the local backend has no conditional replace).
    ///
    /// # Errors
    /// `Storage` if the write fails.
    pub async fn replace_if_unchanged(
        &self,
        key: &str,
        data: Bytes,
        version: &object_store::UpdateVersion,
    ) -> Result<bool> {
        let path = self.path(key);
        let opts = PutOptions {
            mode: PutMode::Update(version.clone()),
            ..PutOptions::default()
        };
        let cannot = |e: &object_store::Error| {
            storage_error(&self.display, &format!("cannot replace {key}"), e)
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => match self.store.head(&path).await {
                Ok(meta) if meta.e_tag == version.e_tag && meta.version == version.version => {
                    self.store
                        .put_opts(&path, PutPayload::from(data), PutOptions::default())
                        .await
                        .map_err(|e| cannot(&e))?;
                    Ok(true)
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(cannot(&e)),
            },
            Err(e) => Err(cannot(&e)),
        }
    }

    /// Reads a whole (small) object and the version to replace it conditionally with;
    /// `None` if it does not exist.
    ///
    /// # Errors
    /// As [`Storage::get`].
    pub async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, object_store::UpdateVersion)>> {
        let cannot = |e: &object_store::Error| {
            storage_error(&self.display, &format!("cannot read {key}"), e)
        };
        match self.store.get(&self.path(key)).await {
            Ok(r) => {
                let version = object_store::UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r.bytes().await.map_err(|e| cannot(&e))?;
                Ok(Some((bytes.to_vec(), version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(cannot(&e)),
        }
    }

    /// Reads an object as a stream; `None` if it does not exist.
    ///
    /// # Errors
    /// `Storage` for anything but "not found".
    pub async fn get(&self, key: &str) -> Result<Option<ObjectStream>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(self.object_stream(key, r))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot read {key}"),
                &e,
            )),
        }
    }

    fn object_stream(&self, key: &str, r: object_store::GetResult) -> ObjectStream {
        let size = r.meta.size;
        let display = self.display.clone();
        let key = key.to_string();
        let stream = match r.payload {
            // A local file: read it in large blocks on the blocking pool (object_store's
            // own stream reads 8 KiB per blocking task, which dominates restore time).
            GetResultPayload::File(file, _) => file_stream(file, display, key),
            GetResultPayload::Stream(s) => s
                .map_err(move |e| storage_error(&display, &format!("cannot read {key}"), &e))
                .boxed(),
        };
        ObjectStream { size, stream }
    }

    /// Reads a whole (small) object into memory; `None` if it does not exist.
    ///
    /// # Errors
    /// As [`Storage::get`].
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut obj) = self.get(key).await? else {
            return Ok(None);
        };
        // The size comes from the storage: reserve no more than a part's worth up front.
        let hint = usize::try_from(obj.size).unwrap_or(0).min(64 << 20);
        let mut out = Vec::with_capacity(hint);
        while let Some(chunk) = obj.stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out))
    }

    /// As [`Storage::get_bytes`], for an object that cannot be larger than `max` bytes (a
    /// record, a part whose size the backup record states): a larger one is refused before
    /// it is read, so a planted giant cannot exhaust memory.
    ///
    /// # Errors
    /// As [`Storage::get`]; `Integrity` if the object is larger than `max`.
    pub async fn get_bytes_max(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(mut obj) = self.get(key).await? else {
            return Ok(None);
        };
        let too_large = |size: u64| {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "{key} is {size} bytes, more than it can be ({max}): walseal did not write it"
                ),
            )
            .hint("the object was replaced; restore it from a copy of the repository")
        };
        if obj.size > max {
            return Err(too_large(obj.size));
        }
        let mut out = Vec::with_capacity(usize::try_from(obj.size).unwrap_or(0));
        while let Some(chunk) = obj.stream.next().await {
            let chunk = chunk?;
            if (out.len() + chunk.len()) as u64 > max {
                return Err(too_large((out.len() + chunk.len()) as u64));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// An object's size, or `None` if there is none.
    ///
    /// # Errors
    /// `Storage` for anything but "not found".
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot check {key}"),
                &e,
            )),
        }
    }

    /// Whether an object exists.
    ///
    /// # Errors
    /// `Storage` for anything but "not found".
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot check {key}"),
                &e,
            )),
        }
    }

    /// Deletes an object; deleting a missing object succeeds.
    ///
    /// # Errors
    /// `Storage` if the backend refuses.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot delete {key}"),
                &e,
            )),
        }
    }

    /// Local repositories only: removes staging files (`name#N`, left by a writer killed
    /// mid-write; listings never show them) under `prefix` that were last written more than
    /// `min_age_secs` ago, then (with `remove_empty_dirs`, for prefixes no writer uses any
    /// more) directories left empty. Returns how many files it removed (or, with `dry_run`,
    /// would remove). Other backends have no staging files: 0.
    ///
    /// # Errors
    /// `Storage` if the directory cannot be read or a file removed.
    pub fn remove_stale_staging(
        &self,
        prefix: &str,
        min_age_secs: f64,
        remove_empty_dirs: bool,
        dry_run: bool,
    ) -> Result<u64> {
        let Some(root) = &self.local_dir else {
            return Ok(0);
        };
        let dir = root.join(prefix.trim_end_matches('/'));
        if !dir.is_dir() {
            return Ok(0);
        }
        let now = std::time::SystemTime::now();
        let fail = |what: &str, p: &std::path::Path, e: &std::io::Error| {
            Error::new(
                ErrorKind::Storage,
                format!("{}: cannot {what} {}: {e}", self.display, p.display()),
            )
        };
        let mut removed = 0;
        let mut stack = vec![dir.clone()];
        let mut dirs = Vec::new();
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| fail("read", &d, &e))? {
                let entry = entry.map_err(|e| fail("read", &d, &e))?;
                let path = entry.path();
                let meta = entry.metadata().map_err(|e| fail("stat", &path, &e))?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let staging = entry.file_name().to_string_lossy().contains('#');
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                if staging && age > min_age_secs {
                    if !dry_run {
                        std::fs::remove_file(&path).map_err(|e| fail("remove", &path, &e))?;
                    }
                    removed += 1;
                }
            }
            dirs.push(d);
        }
        if remove_empty_dirs && !dry_run {
            // Deepest first; a directory that is not empty stays (remove_dir refuses it).
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
        Ok(removed)
    }

    /// Lists the keys (relative to the repository) and sizes under `prefix`, sorted.
    ///
    /// # Errors
    /// `Storage` if listing fails.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect())
    }

    /// Whether the repository location holds no object other than `except` (stops at the
    /// first other object, so it is cheap on a full bucket).
    ///
    /// # Errors
    /// `Storage` if listing fails.
    pub async fn is_empty_except(&self, except: &str) -> Result<bool> {
        let skip = self.path(except);
        let mut stream = self.store.list(Some(&self.prefix));
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| storage_error(&self.display, "cannot list", &e))?;
            if meta.location != skip {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Lists keys, sizes and modification times under `prefix`, sorted by key.
    ///
    /// # Errors
    /// `Storage` if listing fails.
    pub async fn list_meta(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let base = self.prefix.clone();
        let mut items: Vec<ObjectInfo> = self
            .store
            .list(Some(&self.path(prefix)))
            .map_ok(|m| {
                let key = m.location.prefix_match(&base).map_or_else(
                    || m.location.to_string(),
                    |parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    },
                );
                let modified = m.last_modified.timestamp_micros() as f64 / 1e6;
                ObjectInfo {
                    key,
                    size: m.size,
                    modified,
                }
            })
            .try_collect()
            .await
            .map_err(|e| storage_error(&self.display, &format!("cannot list {prefix}"), &e))?;
        // Uploads in progress are the storage's business: listed only when asked for.
        if !prefix.starts_with(STAGING) {
            items.retain(|o| !o.key.starts_with(STAGING));
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(items)
    }

    /// Writes the `len` bytes of `file` (from its start) under `key` unless an object is
    /// already there, holding at most a few parts in memory whatever the size: an object
    /// larger than one part is uploaded in parts to a staging key under `staging/`, then
    /// copied into place create-only (S3 completes a multipart copy with `If-None-Match: *`,
    /// GCS and Azure copy with their own preconditions, the local backend hard-links) and the
    /// staging object removed. A crash can leave a staging object, which no listing of the
    /// repository shows and `retain` removes.
    ///
    /// # Errors
    /// `Storage` if a request fails (after retries), `LocalIo` if the file cannot be read.
    pub async fn put_new_file(
        &self,
        key: &str,
        mut file: std::fs::File,
        len: u64,
    ) -> Result<PutOutcome> {
        use std::io::{Read, Seek};
        let read_err = |e: &std::io::Error| crate::error::local_io("cannot read the spool file", e);
        file.rewind().map_err(|e| read_err(&e))?;
        if len <= PART_SIZE as u64 {
            let mut data = Vec::with_capacity(PART_SIZE);
            file.take(len)
                .read_to_end(&mut data)
                .map_err(|e| read_err(&e))?;
            return self.put_new(key, data.into()).await;
        }
        let (staging, staged) = self.stage_file(key, &mut file, len).await?;
        let r = self
            .store
            .copy_if_not_exists(&staged, &self.path(key))
            .await;
        let outcome = self.create_outcome(key, r)?;
        if outcome == PutOutcome::Created {
            self.check_copied(key, &staging, len).await?;
        }
        self.remove_staged(&staging, &staged).await;
        Ok(outcome)
    }

    /// After a server-side copy: the object in place must have the staged length (a copy
    /// still pending, as Azure may leave one, or cut short, is an error, and the staging
    /// object is kept). The caller authenticates the content where it matters.
    async fn check_copied(&self, key: &str, staging: &str, len: u64) -> Result<()> {
        let meta = self.store.head(&self.path(key)).await.map_err(|e| {
            storage_error(&self.display, &format!("cannot check the copy {key}"), &e)
        })?;
        if meta.size != len {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "{}: {key} has {} bytes after the copy from {staging}, {len} expected (a copy still pending or cut short)",
                    self.display, meta.size
                ),
            )
            .hint("the storage did not complete the copy: retry; if it persists, report the storage server"));
        }
        Ok(())
    }
}

impl Storage {
    /// Removes staging objects ([`Storage::put_new_file`]) older than `min_age_secs`: what
    /// writers killed mid-upload left. Returns how many it removed (or would, `dry_run`).
    ///
    /// # Errors
    /// `Storage` if listing or a delete fails.
    pub async fn remove_stale_uploads(&self, min_age_secs: f64, dry_run: bool) -> Result<u64> {
        let now = crate::time::now();
        let mut removed = 0;
        for o in self.list_meta(STAGING).await? {
            if now - o.modified >= min_age_secs {
                if !dry_run {
                    self.delete(&o.key).await?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Storage {
    /// Uploads `len` bytes of `file` (from where it stands) in parts to a new staging key for
    /// `key`; returns that key and its path.
    async fn stage_file(
        &self,
        key: &str,
        file: &mut std::fs::File,
        len: u64,
    ) -> Result<(String, ObjPath)> {
        use std::io::Read;
        let staging = format!("{STAGING}{key}.{}", random_suffix()?);
        let staged = self.path(&staging);
        let cannot = |e: &object_store::Error| {
            storage_error(&self.display, &format!("cannot write {staging}"), e)
        };
        let upload = self
            .store
            .put_multipart(&staged)
            .await
            .map_err(|e| cannot(&e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut left = len;
        let mut buf = vec![0u8; PART_SIZE];
        while left > 0 {
            let want = usize::try_from(left.min(PART_SIZE as u64)).unwrap_or(PART_SIZE);
            if let Err(e) = file.read_exact(&mut buf[..want]) {
                let _ = writer.abort().await;
                return Err(crate::error::local_io("cannot read the spool file", &e));
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(cannot(&e));
            }
            writer.write(&buf[..want]);
            left -= want as u64;
        }
        drop(buf);
        writer.finish().await.map_err(|e| cannot(&e))?;
        Ok((staging, staged))
    }

    async fn remove_staged(&self, staging: &str, staged: &ObjPath) {
        if let Err(e) = self.store.delete(staged).await {
            tracing::warn!(
                "{}: cannot remove the staging object {staging} ({e}); `walseal retain` removes it later",
                self.display
            );
        }
    }

    /// As [`Storage::replace_if_unchanged`], for the `len` bytes of `file` (from its start),
    /// with bounded memory: larger than a part, they are staged ([`Storage::put_new_file`]),
    /// then copied over the object if its version is still `version`. Between that check and
    /// the copy (a request's time) a delete of the object can be undone; for the objects
    /// large enough to take this path (WAL segments and backup parts, never records), that
    /// leaves at most a stray object, which `retain` removes.
    ///
    /// # Errors
    /// As [`Storage::put_new_file`].
    pub async fn replace_file_if_unchanged(
        &self,
        key: &str,
        mut file: std::fs::File,
        len: u64,
        version: &object_store::UpdateVersion,
    ) -> Result<bool> {
        use std::io::{Read, Seek};
        file.rewind()
            .map_err(|e| crate::error::local_io("cannot read the spool file", &e))?;
        if len <= PART_SIZE as u64 {
            let mut data = Vec::with_capacity(PART_SIZE);
            file.take(len)
                .read_to_end(&mut data)
                .map_err(|e| crate::error::local_io("cannot read the spool file", &e))?;
            return self.replace_if_unchanged(key, data.into(), version).await;
        }
        let (staging, staged) = self.stage_file(key, &mut file, len).await?;
        let path = self.path(key);
        let cannot = |e: &object_store::Error| {
            storage_error(&self.display, &format!("cannot replace {key}"), e)
        };
        let replaced = match self.store.head(&path).await {
            Ok(meta) if meta.e_tag == version.e_tag && meta.version == version.version => {
                self.store
                    .copy(&staged, &path)
                    .await
                    .map_err(|e| cannot(&e))?;
                self.check_copied(key, &staging, len).await?;
                true
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(cannot(&e)),
        };
        self.remove_staged(&staging, &staged).await;
        Ok(replaced)
    }

    /// As [`Storage::get_versioned`], as a stream.
    ///
    /// # Errors
    /// As [`Storage::get`].
    pub async fn get_versioned_stream(
        &self,
        key: &str,
    ) -> Result<Option<(ObjectStream, object_store::UpdateVersion)>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => {
                let version = object_store::UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                Ok(Some((self.object_stream(key, r), version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_error(
                &self.display,
                &format!("cannot read {key}"),
                &e,
            )),
        }
    }
}

/// An unnamed temporary file (`O_TMPFILE`) for sealed bytes, never plaintext: in `near`
/// (`pg_wal` for `wal-push`, so on the disk that holds the WAL and invisible to PostgreSQL)
/// if given and possible, else in the temporary directory. It has no name, so a crash leaves
/// nothing behind.
///
/// # Errors
/// `LocalIo` if neither directory can hold one.
pub fn spool_file(near: Option<&std::path::Path>) -> Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let near = near.map(|p| {
        if p.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            p
        }
    });
    let tmp = std::env::temp_dir();
    let mut last = None;
    for dir in near.into_iter().chain([tmp.as_path()]) {
        match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok(std::fs::File::from(fd)),
            Err(e) => last = Some((dir.to_path_buf(), std::io::Error::from(e))),
        }
    }
    let (dir, e) = last.unwrap_or_else(|| (tmp.clone(), std::io::Error::other("no directory")));
    Err(crate::error::local_io(
        format!("cannot create a spool file in {}", dir.display()),
        &e,
    ))
}

/// Keys under this prefix are uploads in progress ([`Storage::put_new_file`]).
pub const STAGING: &str = "staging/";
/// Part size of staged uploads (S3 wants at least 5 MiB per part but the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once by one staged upload.
const PARTS_IN_FLIGHT: usize = 2;

fn random_suffix() -> Result<String> {
    let mut r = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
        .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
    Ok(crate::keys::hex_encode(&r))
}

/// A blocking `Read` of an object's bytes, for decoders that read (run it on the blocking
/// pool, never on the runtime's thread). A storage failure mid-stream reads as an I/O error
/// and is kept: [`BlockingReader::take_error`] tells it apart from damaged content.
pub struct BlockingReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, Result<Bytes>>,
    current: Bytes,
    error: Option<Error>,
}

impl ObjectStream {
    /// A blocking reader of the stream; call from inside the runtime (it keeps its handle).
    pub fn into_blocking_reader(self) -> BlockingReader {
        BlockingReader {
            handle: tokio::runtime::Handle::current(),
            stream: self.stream,
            current: Bytes::new(),
            error: None,
        }
    }
}

impl BlockingReader {
    /// The storage error that interrupted reading, if one did.
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }
}

impl std::io::Read for BlockingReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.error.is_some() {
                return Err(std::io::Error::other("the storage read failed"));
            }
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    self.error = Some(e);
                    return Err(std::io::Error::other("the storage read failed"));
                }
            }
        }
        let n = self.current.len().min(out.len());
        out[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

const FILE_BLOCK: usize = 1 << 20;

fn file_stream(
    file: std::fs::File,
    display: String,
    key: String,
) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::try_unfold(Some(file), move |state| {
        let (display, key) = (display.clone(), key.clone());
        async move {
            let Some(mut file) = state else {
                return Ok(None);
            };
            let (file, block) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut buf = Vec::with_capacity(FILE_BLOCK);
                let r = (&mut file).take(FILE_BLOCK as u64).read_to_end(&mut buf);
                (file, r.map(|_| buf))
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("read task failed: {e}")))?;
            let block = block.map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("{display}: cannot read {key}: {e}"),
                )
            })?;
            if block.is_empty() {
                return Ok(None);
            }
            let next = (block.len() == FILE_BLOCK).then_some(file);
            Ok(Some((Bytes::from(block), next)))
        }
    })
    .boxed()
}

fn parse_key<K: std::str::FromStr>(k: &str) -> Result<K> {
    k.parse::<K>().map_err(|_| {
        Error::new(ErrorKind::Config, format!("unknown storage option {k:?}")).hint(
            "storage options are object_store configuration keys, e.g. aws_endpoint, aws_region",
        )
    })
}

fn check_http(endpoint: Option<&str>, allow_http: bool) -> Result<()> {
    match endpoint {
        Some(e) if e.starts_with("http://") && !allow_http => Err(Error::new(
            ErrorKind::Config,
            format!("storage endpoint {e} is plain http; refusing to send data unencrypted in transit"),
        )
        .hint("use an https endpoint, or set WALSEAL_ALLOW_HTTP=1 (allow_http = true) for a trusted local test server")),
        _ => Ok(()),
    }
}

fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.to_string()
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn config_error(display: &str, e: &object_store::Error) -> Error {
    Error::new(ErrorKind::Config, format!("cannot set up storage {display}: {}", one_line(e)))
        .hint("check the repository URL and the storage settings (AWS_*, GOOGLE_*, AZURE_* or [storage] in the config)")
}

/// Maps a backend error to the crate error, naming the repository and the operation.
pub fn storage_error(display: &str, what: &str, e: &object_store::Error) -> Error {
    use object_store::client::{HttpError, HttpErrorKind};
    let http = causes(e).find_map(|c| c.downcast_ref::<HttpError>().map(HttpError::kind));
    let hint = match (e, http) {
        (
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. },
            _,
        ) => "check the storage credentials and that they may read and write this bucket/prefix",
        (_, Some(HttpErrorKind::Timeout)) => {
            "the storage did not answer in time: check that it is reachable; if it is just slow, raise storage_timeout_secs"
        }
        (_, Some(HttpErrorKind::Connect)) => {
            "the storage did not accept the connection: check that it is running and that the endpoint in the repository URL or [storage] is right"
        }
        _ => "check that the storage is reachable and the repository URL and credentials are right",
    };
    Error::new(
        ErrorKind::Storage,
        format!("{display}: {what}: {}", describe(e)),
    )
    .hint(hint)
}

/// `e` and its causes, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| c.source())
}

/// The error with the causes its message leaves out ("error sending request" says nothing of
/// a refused connection or a timeout; the innermost cause does), on one line.
fn describe(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    for cause in causes(e).skip(1) {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    one_line(&text)
}
