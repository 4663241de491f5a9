//! The drill's PostgreSQL server: finding the binaries of the backup's major version, the
//! settings it runs with, starting it on the restored data directory, waiting for recovery to
//! end, and stopping it.
//!
//! The restored configuration files come from the backed-up server, which the drill does not
//! trust: every setting that could open a network port, archive into the repository, run a
//! command or load a library is forced on the command line, which overrides
//! `postgresql.conf` and `postgresql.auto.conf` alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{local_io, Error, ErrorKind, Result};
use crate::restore::base::Target;

/// The port the drill's server uses; it only names the socket file in the private socket
/// directory (there is no TCP listener).
pub const PORT: u16 = 5432;

/// Recovery that writes nothing to the log for this long has stalled.
const STALL: Duration = Duration::from_secs(15 * 60);

/// PostgreSQL binaries of one major version.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The directory holding `postgres` (and, if installed, `pg_amcheck`, `pg_checksums`).
    pub dir: PathBuf,
    /// `postgres --version`'s version, e.g. `18.6`.
    pub version: String,
    /// Its major version.
    pub major: u32,
}

impl Binaries {
    /// Finds the server binaries of major version `major`: in `explicit` (`--pg-bin`) only, if
    /// given; else in PATH and the usual install locations.
    ///
    /// # Errors
    /// `Config` if none is found or `explicit` holds another version.
    pub fn find(explicit: Option<&Path>, major: u32) -> Result<Binaries> {
        if let Some(dir) = explicit {
            let found = Binaries::probe(dir).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("--pg-bin {}: no runnable postgres there", dir.display()),
                )
                .hint("pass the directory that holds the postgres server binary")
            })?;
            if found.major != major {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "--pg-bin {} holds PostgreSQL {}, the backup is of PostgreSQL {major}",
                        dir.display(),
                        found.version
                    ),
                )
                .hint(format!("pass the binaries of PostgreSQL {major}")));
            }
            return Ok(found);
        }
        let candidates = candidate_dirs(major);
        candidates
            .iter()
            .filter_map(|d| Binaries::probe(d))
            .find(|b| b.major == major)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "no PostgreSQL {major} server binaries found (looked in PATH, {})",
                        candidates
                            .iter()
                            .skip_while(|d| !d.starts_with("/usr/lib"))
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .hint(format!(
                    "install PostgreSQL {major} on this host, or pass --pg-bin DIR (WALSEAL_PG_BIN)"
                ))
            })
    }

    /// The version of the `postgres` in `dir`, if it runs. A symlink (`/usr/local/bin/postgres`
    /// on Debian) is followed to the real directory, where the client tools are.
    fn probe(dir: &Path) -> Option<Binaries> {
        let postgres = fs::canonicalize(dir.join("postgres")).ok()?;
        if !postgres.is_file() {
            return None;
        }
        let out = Command::new(&postgres).arg("--version").output().ok()?;
        let version = version_of(&String::from_utf8_lossy(&out.stdout))?;
        let major = major_of(&version)?;
        Some(Binaries {
            dir: postgres.parent()?.to_path_buf(),
            version,
            major,
        })
    }

    /// A client tool beside `postgres`, if installed.
    pub fn tool(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        path.is_file().then_some(path)
    }
}

/// Where server binaries usually are: PATH, then the Debian, RHEL, source and Homebrew
/// locations of `major`.
fn candidate_dirs(major: u32) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        format!("/usr/lib/postgresql/{major}/bin"),
        format!("/usr/pgsql-{major}/bin"),
        "/usr/local/pgsql/bin".to_string(),
        format!("/opt/homebrew/opt/postgresql@{major}/bin"),
        format!("/usr/local/opt/postgresql@{major}/bin"),
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The version in `postgres --version`'s output: `postgres (PostgreSQL) 15.18 (Debian
/// 15.18-0+deb12u1)` gives `15.18`.
pub fn version_of(text: &str) -> Option<String> {
    let rest = text.split_once("(PostgreSQL) ")?.1;
    rest.split_whitespace().next().map(str::to_string)
}

/// The major version of a version string (`18.6`, `15.10 (Debian 15.10-1)`, `17beta1`).
pub fn major_of(version: &str) -> Option<u32> {
    let digits: String = version
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|m| *m >= 10)
}

/// Where the server's files are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory.
    pub data: PathBuf,
    /// The socket directory (mode 0700).
    pub socket: PathBuf,
    /// The hba file the drill writes (local connections only).
    pub hba: PathBuf,
    /// The ident file the drill writes (empty).
    pub ident: PathBuf,
    /// The server's log.
    pub log: PathBuf,
}

/// The settings forced on the drill's server (`-c name=value`, above every configuration
/// file): no TCP listener, a private socket, no archiving, no command or library named by the
/// backup, recovery by `restore_command` to `target` and promotion, small memory, English
/// messages (the log is read).
pub fn settings(
    paths: &Paths,
    restore_command: &str,
    target: &Target,
    major: u32,
) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut s: Vec<(&str, String)> = vec![
        ("listen_addresses", String::new()),
        ("port", PORT.to_string()),
        ("unix_socket_directories", path(&paths.socket)),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("data_directory", path(&paths.data)),
        ("hba_file", path(&paths.hba)),
        ("ident_file", path(&paths.ident)),
        ("external_pid_file", String::new()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_library", String::new()),
        ("restore_command", restore_command.to_string()),
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("recovery_min_apply_delay", "0".into()),
        ("hot_standby", "off".into()),
        ("recovery_target", String::new()),
        ("recovery_target_name", String::new()),
        ("recovery_target_time", String::new()),
        ("recovery_target_xid", String::new()),
        ("recovery_target_lsn", String::new()),
        ("recovery_target_inclusive", "on".into()),
        ("recovery_target_timeline", "latest".into()),
        ("recovery_target_action", "promote".into()),
        ("shared_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("dynamic_library_path", "$libdir".into()),
        ("jit", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_min_messages", "warning".into()),
        ("lc_messages", "C".into()),
        ("cluster_name", "walseal-drill".into()),
        ("shared_buffers", "128MB".into()),
        ("huge_pages", "off".into()),
        ("work_mem", "4MB".into()),
        ("maintenance_work_mem", "64MB".into()),
        ("autovacuum", "off".into()),
        ("statement_timeout", "0".into()),
        ("lock_timeout", "0".into()),
        ("idle_in_transaction_session_timeout", "0".into()),
        ("default_transaction_read_only", "off".into()),
        ("jit_provider", "llvmjit".into()),
        ("synchronous_standby_names", String::new()),
        // Settings that would hide damage instead of showing it.
        ("ignore_invalid_pages", "off".into()),
        ("zero_damaged_pages", "off".into()),
        ("ignore_checksum_failure", "off".into()),
        ("ignore_system_indexes", "off".into()),
        // The log is read: a known prefix, and a line every 10 s while redo runs.
        ("log_line_prefix", "%m [%p] ".into()),
        ("log_error_verbosity", "default".into()),
        ("log_startup_progress_interval", "10s".into()),
    ];
    if major >= 17 {
        s.push(("event_triggers", "off".into()));
    }
    if major >= 18 {
        s.push(("extension_control_path", "$system".into()));
    }
    match target {
        Target::Time(t, _) => s.push(("recovery_target_time", t.clone())),
        Target::Lsn(l) => s.push(("recovery_target_lsn", l.to_string())),
        _ => {}
    }
    // Later entries win: keep only the last value of each name.
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in s {
        out.retain(|(name, _)| name != k);
        out.push((k.to_string(), v));
    }
    out
}

/// Prepares the restored data directory for the drill's server: no standby.signal (archive
/// recovery ends and promotes), a postgresql.conf (empty when the backup has none, as with
/// Debian's layout in /etc), and the drill's own hba (local trust: the socket directory is
/// private) and ident files.
///
/// # Errors
/// `LocalIo`.
pub fn prepare(paths: &Paths) -> Result<()> {
    let write = |p: &Path, text: &str| {
        fs::write(p, text).map_err(|e| local_io(format!("cannot write {}", p.display()), &e))
    };
    let standby = paths.data.join("standby.signal");
    if standby.exists() {
        fs::remove_file(&standby)
            .map_err(|e| local_io(format!("cannot remove {}", standby.display()), &e))?;
    }
    let conf = paths.data.join("postgresql.conf");
    if !conf.exists() {
        write(
            &conf,
            "# written by walseal drill: the backup holds no postgresql.conf\n",
        )?;
    }
    write(
        &paths.hba,
        "# walseal drill: local connections only, through a private socket directory\nlocal all all trust\n",
    )?;
    write(&paths.ident, "")
}

/// What `pg_controldata` says: the latest checkpoint's timeline, and whether data
/// checksums are on. Pure.
pub fn controldata_fields(text: &str) -> (Option<u32>, Option<bool>) {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
    };
    let timeline = field("Latest checkpoint's TimeLineID").and_then(|v| v.parse().ok());
    let checksums = field("Data page checksum version")
        .and_then(|v| v.parse::<u32>().ok())
        .map(|v| v != 0);
    (timeline, checksums)
}

/// `pg_controldata` of `data`, if the binaries have it.
pub fn controldata(bin: &Binaries, data: &Path) -> (Option<u32>, Option<bool>) {
    let Some(tool) = bin.tool("pg_controldata") else {
        return (None, None);
    };
    match Command::new(tool).arg(data).env("LC_ALL", "C").output() {
        Ok(o) if o.status.success() => controldata_fields(&String::from_utf8_lossy(&o.stdout)),
        _ => (None, None),
    }
}

/// What the server's log says about how recovery went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFacts {
    /// WAL files restored from the archive (`restored log file "..." from archive`).
    pub restored: u64,
    /// The last one.
    pub last_restored: Option<String>,
    /// PostgreSQL said recovery ended before the configured target.
    pub target_not_reached: bool,
    /// The last error walseal's restore_command printed.
    pub fetch_error: Option<String>,
    /// The last FATAL or PANIC line (not the "starting up" refusals).
    pub fatal: Option<String>,
}

/// Reads the server log's recovery facts. Pure: the log is text the server wrote about a
/// backup the drill does not trust, so lines are only matched and cut, never interpreted.
pub fn log_facts(log: &str) -> LogFacts {
    let mut f = LogFacts::default();
    let cut = |l: &str| l.trim().chars().take(300).collect::<String>();
    for line in log.lines() {
        if let Some(rest) = line.split("restored log file \"").nth(1) {
            f.restored += 1;
            f.last_restored = rest.split('"').next().map(str::to_string);
        } else if line.contains("recovery ended before configured recovery target was reached") {
            f.target_not_reached = true;
        } else if let Some(i) = line.find("walseal wal-fetch: error: ") {
            f.fetch_error = Some(cut(&line[i + "walseal wal-fetch: error: ".len()..]));
        } else if let Some(i) = line.find("FATAL:").or_else(|| line.find("PANIC:")) {
            let msg = line[i..].split_once(':').map_or("", |(_, m)| m).trim();
            if !msg.starts_with("the database system is") {
                f.fatal = Some(cut(msg));
            }
        }
    }
    f
}

/// The drill's running server.
pub struct Server {
    child: Option<Child>,
    paths: Paths,
}

impl Server {
    /// Starts `postgres` on the data directory with `settings`, its output into the log.
    ///
    /// # Errors
    /// `Recovery` if it cannot be started.
    pub fn start(bin: &Binaries, paths: &Paths, settings: &[(String, String)]) -> Result<Server> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)
            .map_err(|e| local_io(format!("cannot create {}", paths.log.display()), &e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| local_io(format!("cannot open {}", paths.log.display()), &e))?;
        let mut cmd = Command::new(bin.dir.join("postgres"));
        cmd.arg("-D").arg(&paths.data);
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let child = cmd
            .current_dir(&paths.data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Recovery,
                    format!("cannot start {}: {e}", bin.dir.join("postgres").display()),
                )
            })?;
        Ok(Server {
            child: Some(child),
            paths: paths.clone(),
        })
    }

    /// Waits until recovery has ended and the server accepts connections (its postmaster.pid
    /// says `ready`), printing progress to a terminal every 30 s.
    ///
    /// # Errors
    /// `ReplayShort` if recovery ended before its target; `Recovery` if the server exited or
    /// recovery stalled, naming what the log says.
    pub async fn wait_ready(&mut self) -> Result<LogFacts> {
        let start = Instant::now();
        let (mut last_len, mut last_change) = (0u64, Instant::now());
        let mut next_report = Duration::from_secs(30);
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                Some(Ok(None)) => None,
                None => Some("not running".into()),
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(self.exit_error(&status));
            }
            if self.status_line().as_deref() == Some("ready") {
                return Ok(self.facts());
            }
            let len = fs::metadata(&self.paths.log).map_or(0, |m| m.len());
            if len != last_len {
                (last_len, last_change) = (len, Instant::now());
            } else if last_change.elapsed() > STALL {
                return Err(Error::new(
                    ErrorKind::Recovery,
                    format!(
                        "recovery made no progress for {} minutes (last restored: {})",
                        STALL.as_secs() / 60,
                        self.facts().last_restored.as_deref().unwrap_or("nothing")
                    ),
                )
                .hint("check the storage and the server log (rerun with --keep to keep it)"));
            }
            if tty && start.elapsed() > next_report {
                next_report += Duration::from_secs(30);
                let f = self.facts();
                eprintln!(
                    "walseal drill: replaying WAL: {} files restored, last {}",
                    f.restored,
                    f.last_restored.as_deref().unwrap_or("-")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn facts(&self) -> LogFacts {
        log_facts(&String::from_utf8_lossy(
            &fs::read(&self.paths.log).unwrap_or_default(),
        ))
    }

    /// The error for a server that exited during recovery, from its log.
    fn exit_error(&self, status: &str) -> Error {
        let f = self.facts();
        if f.target_not_reached {
            let next = f
                .last_restored
                .as_deref()
                .map_or_else(String::new, |l| format!(" after {l}"));
            return Error::new(
                ErrorKind::ReplayShort,
                format!("recovery ended before the recovery target: the archive has no further WAL{next}"),
            )
            .hint("a WAL file is missing from the archive: run `walseal verify`, or choose an earlier target");
        }
        let why = f
            .fetch_error
            .map(|e| format!("restore_command failed: {e}"))
            .or(f.fatal)
            .unwrap_or_else(|| format!("the server exited ({status})"));
        Error::new(
            ErrorKind::Recovery,
            format!("the drill's server stopped during recovery: {why}"),
        )
        .hint("rerun with --keep and read server.log in the drill directory")
    }

    /// The status line of postmaster.pid (`starting`, `ready`, `standby`, `stopping`).
    fn status_line(&self) -> Option<String> {
        let text = fs::read_to_string(self.paths.data.join("postmaster.pid")).ok()?;
        text.lines().nth(7).map(|l| l.trim().to_string())
    }

    /// Stops the server: a fast shutdown (a clean one, which pg_checksums needs), then an
    /// immediate one after 2 minutes, then SIGKILL.
    ///
    /// # Errors
    /// `Recovery` if it did not stop cleanly.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let start = Instant::now();
        let mut clean = true;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return if clean && status.success() {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::Recovery,
                        format!("the drill's server did not shut down cleanly ({status})"),
                    ))
                };
            }
            let waited = start.elapsed();
            if waited > Duration::from_secs(120) && clean {
                clean = false;
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            } else if waited > Duration::from_secs(150) {
                let _ = child.kill();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    /// An immediate shutdown of a server still running (an error path): never leave one.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            let start = Instant::now();
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_postgres_version() {
        assert_eq!(
            version_of("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            version_of("postgres (PostgreSQL) 18.6\n").as_deref(),
            Some("18.6")
        );
        assert_eq!(version_of("something else"), None);
    }

    #[test]
    fn major_versions() {
        assert_eq!(major_of("18.6"), Some(18));
        assert_eq!(major_of("15.10 (Debian 15.10-1.pgdg120+1)"), Some(15));
        assert_eq!(major_of("17beta1"), Some(17));
        assert_eq!(major_of("9.6.2"), None);
        assert_eq!(major_of(""), None);
        assert_eq!(major_of("x18"), None);
    }

    #[test]
    fn settings_close_every_door_and_the_last_value_wins() {
        let paths = Paths {
            data: "/s/data".into(),
            socket: "/s/socket".into(),
            hba: "/s/hba".into(),
            ident: "/s/ident".into(),
            log: "/s/log".into(),
        };
        let s = settings(
            &paths,
            "walseal wal-fetch %f %p",
            &Target::Lsn(crate::wal::Lsn(0x1_0000_0028)),
            18,
        );
        let get = |k: &str| {
            let v: Vec<&String> = s.iter().filter(|(n, _)| n == k).map(|(_, v)| v).collect();
            assert_eq!(v.len(), 1, "{k} once");
            v[0].clone()
        };
        assert_eq!(get("listen_addresses"), "");
        assert_eq!(get("archive_mode"), "off");
        assert_eq!(get("archive_command"), "");
        assert_eq!(get("shared_preload_libraries"), "");
        assert_eq!(get("recovery_end_command"), "");
        assert_eq!(get("recovery_target_lsn"), "1/28");
        assert_eq!(get("recovery_target_time"), "");
        assert_eq!(get("recovery_target_action"), "promote");
        assert_eq!(get("event_triggers"), "off");
        assert_eq!(get("unix_socket_directories"), "/s/socket");
        assert_eq!(get("jit_provider"), "llvmjit");
        assert_eq!(get("zero_damaged_pages"), "off");
        assert_eq!(get("synchronous_standby_names"), "");
        assert_eq!(get("extension_control_path"), "$system");
        let s15 = settings(&paths, "x", &Target::Latest, 15);
        assert!(!s15
            .iter()
            .any(|(k, _)| k == "event_triggers" || k == "extension_control_path"));
    }

    #[test]
    fn controldata_timeline_and_checksums() {
        let text = "pg_control version number:            1800\nLatest checkpoint's TimeLineID:       2\nLatest checkpoint's PrevTimeLineID:   1\nData page checksum version:           1\n";
        assert_eq!(controldata_fields(text), (Some(2), Some(true)));
        let off =
            "Latest checkpoint's TimeLineID:       7\nData page checksum version:           0\n";
        assert_eq!(controldata_fields(off), (Some(7), Some(false)));
        assert_eq!(controldata_fields("garbage"), (None, None));
    }

    #[test]
    fn log_facts_find_restores_failures_and_skip_startup_refusals() {
        let log = "\
2026-12-01 LOG:  restored log file \"000000010000000000000003\" from archive
2026-12-01 FATAL:  the database system is starting up
2026-12-01 LOG:  restored log file \"000000010000000000000004\" from archive
walseal wal-fetch: error: wal/00000001/000000010000000000000005: tampered (fix: x)
2026-12-01 LOG:  restore_command failed
2026-12-01 FATAL:  could not restore file \"000000010000000000000005\" from archive
";
        let f = log_facts(log);
        assert_eq!(f.restored, 2);
        assert_eq!(f.last_restored.as_deref(), Some("000000010000000000000004"));
        assert!(f.fetch_error.unwrap().starts_with("wal/00000001/"));
        assert!(f.fatal.unwrap().starts_with("could not restore file"));
        assert!(!f.target_not_reached);
        let f = log_facts("FATAL:  recovery ended before configured recovery target was reached\n");
        assert!(f.target_not_reached);
        assert_eq!(
            log_facts("\u{0}\u{ff}garbage \"restored log file \"").restored,
            1
        );
    }
}
