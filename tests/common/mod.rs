//! Shared test harness: a throwaway PostgreSQL cluster run as the `postgres` OS user, the
//! loopback S3, Azure and GCS servers started by `scripts/test.sh`, and helpers to run the
//! walseal binary.
#![allow(dead_code, clippy::unwrap_used)]

pub mod kill;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// PostgreSQL 15 binaries (Debian package).
pub fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
}

/// The built walseal binary.
pub fn walseal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walseal"))
}

/// Server binaries of PostgreSQL `major`: Debian's for 15, else the npm build scripts/test.sh
/// installs (`WALSEAL_TEST_PG{16,17,18}_BIN`); None (printing SKIPPED) when the run opted out
/// of the extra versions with `WALSEAL_SKIP_PG_VERSIONS`.
pub fn server_bin(major: u32) -> Option<PathBuf> {
    if major == 15 {
        return Some(pg_bin());
    }
    match std::env::var(format!("WALSEAL_TEST_PG{major}_BIN")) {
        Ok(p) => Some(PathBuf::from(p)),
        Err(_) if std::env::var_os("WALSEAL_SKIP_PG_VERSIONS").is_some() => {
            eprintln!("SKIPPED: PostgreSQL {major} (WALSEAL_SKIP_PG_VERSIONS is set)");
            None
        }
        Err(_) => panic!("WALSEAL_TEST_PG{major}_BIN is not set: run the tests with scripts/test.sh (it installs PostgreSQL {major}), or set WALSEAL_SKIP_PG_VERSIONS=1"),
    }
}

/// The full PostgreSQL 18 install (every client tool: pg_combinebackup, pg_amcheck, ...), or
/// None (printing SKIPPED) when the run opted out.
pub fn pg18_full() -> Option<PathBuf> {
    match std::env::var("WALSEAL_TEST_PG18_FULL_BIN") {
        Ok(p) => Some(PathBuf::from(p)),
        Err(_) if std::env::var_os("WALSEAL_SKIP_PG_VERSIONS").is_some() => {
            eprintln!("SKIPPED: PostgreSQL 18 full install (WALSEAL_SKIP_PG_VERSIONS is set)");
            None
        }
        Err(_) => panic!("WALSEAL_TEST_PG18_FULL_BIN is not set: run the tests with scripts/test.sh (it installs PostgreSQL 18.6), or set WALSEAL_SKIP_PG_VERSIONS=1"),
    }
}

/// A directory under /tmp owned by postgres and removed on drop.
pub struct PgDir(pub PathBuf);

impl PgDir {
    pub fn new(tag: &str) -> PgDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("walseal-{tag}-"))
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        run_ok(Command::new("chmod").arg("755").arg(&dir));
        chown_pg(&dir);
        PgDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PgDir {
    fn drop(&mut self) {
        if std::env::var_os("WALSEAL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn chown_pg(path: &Path) {
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path),
    );
}

/// Runs `cmd` as the postgres user (initdb refuses root), cwd `/`.
pub fn as_pg(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.arg("-u")
        .arg("postgres")
        .arg("--")
        .arg(program)
        .current_dir("/");
    c
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway cluster. Stopped (immediate) on drop.
pub struct Pg {
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
    /// Server binaries (initdb, pg_ctl, postgres) of this cluster's version.
    pub bin: PathBuf,
}

impl Pg {
    /// `initdb` into `dir/name` with trust auth and the given extra settings.
    pub fn init(dir: &Path, name: &str, settings: &[String]) -> Pg {
        Pg::init_with(&pg_bin(), dir, name, settings)
    }

    /// `initdb` with the server binaries in `bin`.
    pub fn init_with(bin: &Path, dir: &Path, name: &str, settings: &[String]) -> Pg {
        let data = dir.join(name);
        let port = free_port();
        run_ok(as_pg(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-instructions",
        ]));
        let pg = Pg {
            log: dir.join(format!("{name}.log")),
            data,
            port,
            bin: bin.to_path_buf(),
        };
        pg.configure(port, settings);
        pg
    }

    /// A cluster on a data directory made some other way (e.g. pg_basebackup or restore).
    pub fn existing(dir: &Path, name: &str, settings: &[String]) -> Pg {
        Pg::existing_with(&pg_bin(), dir, name, settings)
    }

    /// A cluster on an existing data directory, run with the server binaries in `bin`.
    pub fn existing_with(bin: &Path, dir: &Path, name: &str, settings: &[String]) -> Pg {
        let data = dir.join(name);
        let port = free_port();
        let pg = Pg {
            log: dir.join(format!("{name}.log")),
            data,
            port,
            bin: bin.to_path_buf(),
        };
        pg.configure(port, settings);
        pg
    }

    fn configure(&self, port: u16, settings: &[String]) {
        let sock = self.data.parent().unwrap();
        let mut conf = format!(
            "\n# walseal tests\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_wal_size = 256MB\n",
            sock.display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
    }

    pub fn start(&self) {
        let out = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed; log:\n{}",
            self.log_text()
        );
    }

    /// Starts without waiting (recovery may end in shutdown).
    pub fn start_nowait(&self) {
        run_ok(
            as_pg(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .arg("-W")
                .arg("start"),
        );
    }

    pub fn stop(&self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_raw(sql);
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 30)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn psql_raw(&self, sql: &str) -> Output {
        as_pg(&pg_bin().join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap()
    }

    /// pgbench load in the background: `clients` clients for `seconds` seconds.
    pub fn pgbench_background(&self, clients: u32, seconds: u32) -> std::process::Child {
        as_pg(&pg_bin().join("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                &clients.to_string(),
                "-T",
                &seconds.to_string(),
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("postgres")
            .spawn()
            .unwrap()
    }

    pub fn pgbench(&self, args: &[&str]) {
        run_ok(
            as_pg(&pg_bin().join("pgbench"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                    &self.port.to_string(),
                ])
                .args(args)
                .arg("postgres"),
        );
    }

    /// Waits until `cond(psql(sql))` or panics after `timeout`.
    pub fn wait_for(&self, sql: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.psql_raw(sql);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && cond(&text) {
                return text;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {sql:?} (last: {text:?}); log:\n{}",
                tail(&self.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Switches WAL and waits until the switched-out segment is archived; returns its name.
    pub fn switch_and_wait_archived(&self) -> String {
        let seg = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("SELECT pg_switch_wal()");
        self.wait_for(
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            Duration::from_secs(120),
            |last| last.len() >= 24 && last[..24] >= seg[..],
        );
        seg
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = as_pg(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The loopback S3 server from `scripts/test.sh`, or a panic explaining how to get one.
/// Set `WALSEAL_SKIP_S3=1` to skip S3 variants explicitly (they then print SKIPPED).
pub fn s3_endpoint() -> Option<(String, String)> {
    if std::env::var_os("WALSEAL_SKIP_S3").is_some() {
        eprintln!("SKIPPED: S3 variant (WALSEAL_SKIP_S3 is set)");
        return None;
    }
    let endpoint = std::env::var("WALSEAL_TEST_S3_ENDPOINT")
        .expect("WALSEAL_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh (it starts a loopback S3 server), or set WALSEAL_SKIP_S3=1");
    let bucket = std::env::var("WALSEAL_TEST_S3_BUCKET").unwrap_or_else(|_| "walseal-test".into());
    Some((endpoint, bucket))
}

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The loopback Azure Blob server (Azurite) from `scripts/test.sh`: its account URL
/// (`http://127.0.0.1:PORT/devstoreaccount1`) and container; `None` (printing SKIPPED) if
/// `WALSEAL_TEST_AZURE_ENDPOINT` is not set.
pub fn azure_endpoint() -> Option<(String, String)> {
    let Ok(endpoint) = std::env::var("WALSEAL_TEST_AZURE_ENDPOINT") else {
        eprintln!("SKIPPED: Azure variant (WALSEAL_TEST_AZURE_ENDPOINT is not set; scripts/test.sh starts Azurite)");
        return None;
    };
    let container =
        std::env::var("WALSEAL_TEST_AZURE_CONTAINER").unwrap_or_else(|_| "walseal-test".into());
    Some((endpoint, container))
}

/// The loopback GCS server (fake-gcs-server) from `scripts/test.sh`: its base URL and
/// bucket; `None` (printing SKIPPED) if `WALSEAL_TEST_GCS_ENDPOINT` is not set.
pub fn gcs_endpoint() -> Option<(String, String)> {
    let Ok(endpoint) = std::env::var("WALSEAL_TEST_GCS_ENDPOINT") else {
        eprintln!("SKIPPED: GCS variant (WALSEAL_TEST_GCS_ENDPOINT is not set; scripts/test.sh starts fake-gcs-server)");
        return None;
    };
    let bucket = std::env::var("WALSEAL_TEST_GCS_BUCKET").unwrap_or_else(|_| "walseal-test".into());
    Some((endpoint, bucket))
}

/// Every bucket backend whose loopback server `scripts/test.sh` started: S3 (required unless
/// `WALSEAL_SKIP_S3`), then Azure and GCS (each printing SKIPPED when absent).
pub fn bucket_backends() -> Vec<Backend> {
    let mut v = Vec::new();
    if let Some((endpoint, bucket)) = s3_endpoint() {
        v.push(Backend::S3 { endpoint, bucket });
    }
    if let Some((endpoint, container)) = azure_endpoint() {
        v.push(Backend::Azure {
            endpoint,
            container,
        });
    }
    if let Some((endpoint, bucket)) = gcs_endpoint() {
        v.push(Backend::Gcs { endpoint, bucket });
    }
    v
}

/// A unique prefix per test run.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Environment that points walseal at a repository.
#[derive(Clone, Debug)]
pub struct RepoEnv {
    pub url: String,
    pub vars: Vec<(String, String)>,
    /// Local directory of a file:// repository.
    pub local_dir: Option<PathBuf>,
}

impl RepoEnv {
    pub fn local(dir: &Path) -> RepoEnv {
        let url = format!("file://{}", dir.display());
        RepoEnv {
            vars: vec![("WALSEAL_REPO".into(), url.clone())],
            url,
            local_dir: Some(dir.to_path_buf()),
        }
    }

    pub fn s3(endpoint: &str, bucket: &str, prefix: &str) -> RepoEnv {
        let url = format!("s3://{bucket}/{prefix}");
        let vars = vec![
            ("WALSEAL_REPO".into(), url.clone()),
            ("WALSEAL_ALLOW_HTTP".into(), "1".into()),
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            (
                "AWS_ACCESS_KEY_ID".into(),
                std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        RepoEnv {
            url,
            vars,
            local_dir: None,
        }
    }

    /// A container on the Azurite server at `endpoint` (its account URL), with the
    /// well-known development account and key.
    pub fn azure(endpoint: &str, container: &str, prefix: &str) -> RepoEnv {
        let url = format!("az://{container}/{prefix}");
        let vars = vec![
            ("WALSEAL_REPO".into(), url.clone()),
            ("WALSEAL_ALLOW_HTTP".into(), "1".into()),
            ("AZURE_STORAGE_ENDPOINT".into(), endpoint.into()),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
        ];
        RepoEnv {
            url,
            vars,
            local_dir: None,
        }
    }

    /// A bucket on the fake-gcs-server at `endpoint` (its base URL), with a service account
    /// key that disables OAuth (the emulator checks no token).
    pub fn gcs(endpoint: &str, bucket: &str, prefix: &str) -> RepoEnv {
        let url = format!("gs://{bucket}/{prefix}");
        let key =
            r#"{"private_key":"","private_key_id":"","client_email":"","disable_oauth":true}"#;
        let vars = vec![
            ("WALSEAL_REPO".into(), url.clone()),
            ("WALSEAL_ALLOW_HTTP".into(), "1".into()),
            ("GOOGLE_BASE_URL".into(), endpoint.into()),
            ("GOOGLE_SERVICE_ACCOUNT_KEY".into(), key.into()),
        ];
        RepoEnv {
            url,
            vars,
            local_dir: None,
        }
    }

    /// The `[storage]` options (object_store configuration keys) equivalent to this
    /// repository's `AWS_*`, `AZURE_*` and `GOOGLE_*` variables.
    pub fn storage_options(&self) -> std::collections::BTreeMap<String, String> {
        let mut storage = std::collections::BTreeMap::new();
        for (k, v) in &self.vars {
            if let Some(rest) = k.strip_prefix("AWS_") {
                let key = match rest {
                    "ENDPOINT_URL" => "aws_endpoint".to_string(),
                    other => format!("aws_{}", other.to_lowercase()),
                };
                storage.insert(key, v.clone());
            } else if k.starts_with("AZURE_") || k.starts_with("GOOGLE_") {
                storage.insert(k.to_lowercase(), v.clone());
            }
        }
        storage
    }

    /// A config file's text for this repository with `key` as the key file (the storage
    /// settings in `[storage]`).
    pub fn config_toml(&self, key: &Path) -> String {
        let mut text = format!(
            "repo = \"{}\"\nkey_file = \"{}\"\nallow_http = true\n\n[storage]\n",
            self.url,
            key.display()
        );
        for (k, v) in self.storage_options() {
            text.push_str(&format!("{k} = '{v}'\n"));
        }
        text
    }

    /// `VAR=value ...` prefix for archive_command / restore_command.
    pub fn shell_prefix(&self) -> String {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A walseal command with this repository and key configured, as root.
    pub fn walseal(&self, key: &Path) -> Command {
        let mut c = Command::new(walseal_bin());
        c.env_remove("WALSEAL_CONFIG").env_remove("WALSEAL_LOG");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.env("WALSEAL_KEY_FILE", key);
        c
    }

    /// The walseal storage for direct (raw) access from tests.
    pub fn storage(&self) -> walseal::storage::Storage {
        let storage = self.storage_options();
        let cfg = walseal::config::Config {
            repo: Some(self.url.clone()),
            key_files: vec![],
            identity_files: vec![],
            recipient: None,
            signer_file: None,
            trusted_signers: vec![],
            allow_legacy: false,
            repository_id: None,
            allow_http: true,
            log_level: "warn".into(),
            audit_log: None,
            storage,
            storage_retries: 2,
            storage_timeout: Duration::from_secs(30),
            keys: vec![],
            compression: (walseal::seal::Compression::Lz4, 3),
            push_parallel: 1,
            fetch_prefetch: 0,
        };
        walseal::storage::Storage::open(&cfg, walseal::storage::Create::Yes).unwrap()
    }
}

/// `pg_basebackup -X none` of `primary` into `dest`: a copy that can only replay from the
/// archive.
pub fn plain_basebackup(primary: &Pg, dest: &Path) {
    run_ok(
        as_pg(&pg_bin().join("pg_basebackup"))
            .arg("-D")
            .arg(dest)
            .args([
                "-X",
                "none",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(primary.port.to_string()),
    );
}

/// walseal with `repo` and the given extra environment, no other WALSEAL_* setting from the
/// test's own environment.
pub fn clean_walseal(repo: &RepoEnv, vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(walseal_bin());
    for k in [
        "WALSEAL_CONFIG",
        "WALSEAL_LOG",
        "WALSEAL_KEY_FILE",
        "WALSEAL_RECIPIENT",
        "WALSEAL_IDENTITY_FILE",
        "WALSEAL_SIGNER_FILE",
        "WALSEAL_TRUSTED_SIGNERS",
        "WALSEAL_ALLOW_LEGACY",
        "WALSEAL_REPOSITORY_ID",
    ] {
        c.env_remove(k);
    }
    for (k, v) in &repo.vars {
        c.env(k, v);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// `walseal keygen ARGS -o PATH` (a master key, `--recipient` or `--signer`); returns what it
/// prints (the key id or the public text).
pub fn keygen(args: &[&str], path: &Path) -> String {
    let out = Command::new(walseal_bin())
        .arg("keygen")
        .args(args)
        .arg("-o")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Runs a future to completion on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A synthetic but well-formed WAL segment: a long page header naming `sysid`, then
/// pseudo-random, partly compressible bytes (with `marker` embedded if given).
pub fn synthetic_segment(name: &str, sysid: u64, seg_size: u32, marker: Option<&[u8]>) -> Vec<u8> {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let segno = log * (0x1_0000_0000u64 / u64::from(seg_size)) + seg;
    let mut data = vec![0u8; seg_size as usize];
    let mut x: u64 = sysid ^ segno;
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 4096) % 3 == 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        } else {
            *b = (i % 64) as u8;
        }
    }
    data[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    data[2..4].copy_from_slice(&2u16.to_le_bytes());
    data[4..8].copy_from_slice(&u32::from_str_radix(&name[0..8], 16).unwrap().to_le_bytes());
    data[8..16].copy_from_slice(&(segno * u64::from(seg_size)).to_le_bytes());
    data[16..24].fill(0);
    data[24..32].copy_from_slice(&sysid.to_le_bytes());
    data[32..36].copy_from_slice(&seg_size.to_le_bytes());
    data[36..40].copy_from_slice(&8192u32.to_le_bytes());
    if let Some(m) = marker {
        data[100_000..100_000 + m.len()].copy_from_slice(m);
    }
    data
}

/// True if `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Where a test repository lives.
pub enum Backend {
    Local,
    S3 { endpoint: String, bucket: String },
    Azure { endpoint: String, container: String },
    Gcs { endpoint: String, bucket: String },
}

impl Backend {
    /// A fresh repository (unique prefix) on a bucket backend; `None` for `Local`.
    pub fn bucket_repo(&self, tag: &str) -> Option<RepoEnv> {
        match self {
            Backend::Local => None,
            Backend::S3 { endpoint, bucket } => Some(RepoEnv::s3(endpoint, bucket, &unique(tag))),
            Backend::Azure {
                endpoint,
                container,
            } => Some(RepoEnv::azure(endpoint, container, &unique(tag))),
            Backend::Gcs { endpoint, bucket } => Some(RepoEnv::gcs(endpoint, bucket, &unique(tag))),
        }
    }
}

/// A test directory with the walseal binary, a key and a repository, all usable by postgres.
pub struct Setup {
    pub dir: PgDir,
    pub bin: PathBuf,
    pub key: PathBuf,
    pub repo: RepoEnv,
    /// How the commands find the repository: env prefix or `--config FILE`.
    pub config_arg: String,
    pub env_prefix: String,
    /// The config file (S3 setups).
    pub config_file: Option<PathBuf>,
}

impl Setup {
    pub fn new(backend: &Backend) -> Setup {
        let dir = PgDir::new("e2e");
        let bin = dir.path().join("walseal");
        std::fs::copy(walseal_bin(), &bin).unwrap();
        let key = dir.path().join("master.key");
        run_ok(as_pg(&bin).arg("keygen").arg("-o").arg(&key));
        let (repo, config_arg, env_prefix) = match backend {
            Backend::Local => {
                let repo = RepoEnv::local(&dir.path().join("repo"));
                let prefix = format!(
                    "{} WALSEAL_KEY_FILE='{}'",
                    repo.shell_prefix(),
                    key.display()
                );
                (repo, String::new(), prefix)
            }
            bucket => {
                let repo = bucket.bucket_repo("e2e").expect("a bucket backend");
                let cfg = dir.path().join("walseal.toml");
                std::fs::write(&cfg, repo.config_toml(&key)).unwrap();
                (repo, format!("--config '{}'", cfg.display()), String::new())
            }
        };
        chown_pg(dir.path());
        let config_file =
            (!matches!(backend, Backend::Local)).then(|| dir.path().join("walseal.toml"));
        let s = Setup {
            dir,
            bin,
            key,
            repo,
            config_arg,
            env_prefix,
            config_file,
        };
        run_ok(s.walseal_as_pg().arg("init"));
        s
    }

    /// The `archive_command` setting that runs this setup's walseal.
    pub fn archive_setting(&self) -> String {
        format!(
            "archive_command = '{}'",
            self.command("wal-push %p").replace('\'', "''")
        )
    }

    /// A primary (initdb'd with `bin`, not started) archiving through walseal, plus `extra` settings.
    pub fn primary(&self, bin: &Path, extra: &[String]) -> Pg {
        let mut settings = vec!["archive_mode = on".to_string(), self.archive_setting()];
        settings.extend_from_slice(extra);
        Pg::init_with(bin, self.dir.path(), "primary", &settings)
    }

    /// `walseal backup --fast` of `pg` over TCP, as postgres, with `extra` flags.
    pub fn backup(&self, pg: &Pg, extra: &[&str]) -> Output {
        self.walseal_as_pg()
            .args(["backup", "--fast", "--pg"])
            .arg(format!("host=127.0.0.1 port={} user=postgres", pg.port))
            .args(extra)
            .output()
            .unwrap()
    }

    /// `walseal restore ARGS... DEST`, as postgres.
    pub fn restore(&self, dest: &Path, args: &[&str]) -> Output {
        self.walseal_as_pg()
            .arg("restore")
            .args(args)
            .arg(dest)
            .output()
            .unwrap()
    }

    /// Starts the restored data directory `name` (with `bin`, archiving off) and waits until
    /// recovery has ended (promoted).
    pub fn start_restored(&self, bin: &Path, name: &str) -> Pg {
        let pg = Pg::existing_with(bin, self.dir.path(), name, &["archive_mode = off".into()]);
        pg.start();
        pg.wait_for(
            "SELECT pg_is_in_recovery()",
            Duration::from_secs(120),
            |r| r == "f",
        );
        pg
    }

    /// The walseal binary run as postgres, configured like archive_command is.
    pub fn walseal_as_pg(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--preserve-environment", "--"])
            .arg(&self.bin)
            .current_dir("/");
        c.env_remove("WALSEAL_CONFIG")
            .env_remove("WALSEAL_REPO")
            .env_remove("WALSEAL_KEY_FILE")
            .env_remove("WALSEAL_LOG");
        match &self.config_file {
            Some(cfg) => {
                c.arg("--config").arg(cfg);
            }
            None => {
                c.env("WALSEAL_REPO", &self.repo.url)
                    .env("WALSEAL_KEY_FILE", &self.key);
            }
        }
        c
    }

    pub fn command(&self, sub: &str) -> String {
        format!(
            "{} {} {} {sub}",
            self.env_prefix,
            self.bin.display(),
            self.config_arg
        )
        .trim()
        .to_string()
    }

    /// Every raw object in the repository.
    pub fn raw_objects(&self) -> Vec<(String, Vec<u8>)> {
        let storage = self.repo.storage();
        block_on(async {
            let mut out = Vec::new();
            for (key, _) in storage.list("").await.unwrap() {
                let bytes = storage.get_bytes(&key).await.unwrap().unwrap();
                out.push((key, bytes));
            }
            out
        })
    }
}

/// A process's exit code (-1 if killed by a signal).
pub fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A process's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process's stdout as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
