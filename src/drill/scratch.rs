//! The drill's scratch directory: where it may be made, what an interrupted drill left behind
//! (removed on the next run, its server stopped first), and the directory itself.
//!
//! A scratch directory is `<parent>/walseal-drill-<id>`, mode 0700, holding the restored data
//! directory (`data/`), tablespaces (`tablespaces/<oid>/`), the server's socket directory
//! (`socket/`), its log (`server.log`), its hba and ident files, and `walseal-drill.pid` (the
//! drill's process id) while the drill runs. A directory whose pid file names a process that
//! is no longer a drill belongs to an interrupted drill.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{local_io, Error, ErrorKind, Result};

/// Name prefix of every scratch directory.
pub const PREFIX: &str = "walseal-drill-";
/// The pid file a running drill keeps in its scratch directory (removed by `--keep`).
pub const PID_FILE: &str = "walseal-drill.pid";

/// Refuses a parent directory inside a PostgreSQL data directory or inside the local
/// repository (`repo_root`), or one that does not exist.
///
/// # Errors
/// `Usage` naming the directory and why.
pub fn check_location(parent: &Path, repo_root: Option<&Path>) -> Result<PathBuf> {
    let abs = fs::canonicalize(parent).map_err(|e| {
        local_io(format!("drill directory {}", parent.display()), &e)
            .hint("pass --dir an existing directory with room for the whole database")
    })?;
    if !abs.is_dir() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("drill directory {} is not a directory", abs.display()),
        ));
    }
    // The server's socket, `<dir>/walseal-drill-<id>/socket/.s.PGSQL.5432`, must fit a Unix
    // socket address (107 bytes), and the directory a list of socket directories.
    let socket_len =
        abs.as_os_str().len() + "/walseal-drill-YYYYMMDDTHHMMSSZ-r9/socket/.s.PGSQL.5432".len();
    let text = abs.to_string_lossy();
    if socket_len > 107 || text.contains(',') || text.contains('\'') || text.contains('\\') {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "drill directory {} is too long or holds a comma, quote or backslash: the drill's server puts its socket there",
                abs.display()
            ),
        )
        .hint("pass --dir a short plain path, e.g. /var/tmp"));
    }
    for dir in abs.ancestors() {
        if is_data_directory(dir) {
            let running = if dir.join("postmaster.pid").exists() {
                "the running cluster's "
            } else {
                "a cluster's "
            };
            return Err(Error::new(
                ErrorKind::Usage,
                format!(
                    "drill directory {} lies inside {running}data directory {}: a drill never writes into a cluster",
                    abs.display(),
                    dir.display()
                ),
            )
            .hint("pass --dir a directory outside every data directory, e.g. /var/tmp"));
        }
    }
    if let Some(root) = repo_root.and_then(|r| fs::canonicalize(r).ok()) {
        if abs.starts_with(&root) {
            return Err(Error::new(
                ErrorKind::Usage,
                format!(
                    "drill directory {} lies inside the repository {}",
                    abs.display(),
                    root.display()
                ),
            )
            .hint("pass --dir a directory outside the repository"));
        }
    }
    Ok(abs)
}

/// Whether `dir` is a PostgreSQL data directory.
fn is_data_directory(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join("global").join("pg_control").is_file()
}

/// Removes what interrupted drills left in `parent`: scratch directories whose drill is gone,
/// after stopping any server still running on them. Returns the directories removed.
/// Directories of running drills, kept ones (`--keep`, no pid file) and anything not ours are
/// left alone; failures are logged, not fatal.
pub fn remove_interrupted(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) || !is_own_dir(&path) {
            continue;
        }
        // `data` must be the directory the drill made: a planted symlink must not lead the
        // cleanup to another cluster's postmaster.
        let data = path.join("data");
        if fs::symlink_metadata(&data).is_ok_and(|m| !m.is_dir()) {
            continue;
        }
        let Ok(text) = fs::read_to_string(path.join(PID_FILE)) else {
            continue; // kept, or not a scratch directory
        };
        if text.trim().parse::<i32>().is_ok_and(drill_is_running) {
            continue;
        }
        stop_stale_server(&data);
        match fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!(
                "cannot remove {} left by an interrupted drill: {e}",
                path.display()
            ),
        }
    }
    removed
}

/// Whether `path` is a real directory (not a symlink) owned by this user, private (mode
/// 0700), as [`Scratch::create`] makes them: another user's directory of the same name in a
/// shared /tmp is never touched.
fn is_own_dir(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).is_ok_and(|m| {
        m.is_dir() && m.uid() == rustix::process::getuid().as_raw() && m.mode() & 0o077 == 0
    })
}

/// Whether process `pid` is a walseal drill (its command line has a `drill` argument).
fn drill_is_running(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"drill"))
}

/// Stops the postmaster running on `data`, if any: the pid in `postmaster.pid`, only if that
/// process runs in `data` (a postmaster's working directory is its data directory), with an
/// immediate shutdown, then SIGKILL after 30 s.
fn stop_stale_server(data: &Path) {
    let Some(pid) = postmaster_pid(data) else {
        return;
    };
    tracing::warn!(
        "stopping the server (pid {}) an interrupted drill left running on {}",
        pid.as_raw_nonzero(),
        data.display()
    );
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
    let start = Instant::now();
    while process_runs_in(pid, data) {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the postmaster running on `data`, from its `postmaster.pid`, if that process
/// is alive and works in `data`.
pub fn postmaster_pid(data: &Path) -> Option<rustix::process::Pid> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let raw: i32 = text.lines().next()?.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(raw)?;
    process_runs_in(pid, data).then_some(pid)
}

/// Whether process `pid` works in `dir` (the path as the kernel reports it, which is
/// canonical: `dir` comes from a canonical parent and holds no symlink).
fn process_runs_in(pid: rustix::process::Pid, dir: &Path) -> bool {
    fs::read_link(format!("/proc/{}/cwd", pid.as_raw_nonzero())).is_ok_and(|cwd| cwd == dir)
}

/// A drill's scratch directory; removed on drop unless kept.
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Makes `<parent>/walseal-drill-<id>` (mode 0700) and its pid file.
    ///
    /// # Errors
    /// `LocalIo` if it cannot be made (it exists: another drill of the same second).
    pub fn create(parent: &Path, id: &str) -> Result<Scratch> {
        let path = parent.join(format!("{PREFIX}{id}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| local_io(format!("cannot create {}", path.display()), &e))?;
        let scratch = Scratch { path, keep: false };
        fs::write(
            scratch.path.join(PID_FILE),
            format!("{}\n", std::process::id()),
        )
        .map_err(|e| local_io(format!("cannot write in {}", scratch.path.display()), &e))?;
        for dir in [scratch.socket(), scratch.path.join("tablespaces")] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| local_io(format!("cannot create {}", dir.display()), &e))?;
        }
        // The socket directory must stay private whatever the umask: the server trusts
        // every local connection.
        let _ = fs::set_permissions(scratch.socket(), fs::Permissions::from_mode(0o700));
        Ok(scratch)
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The restored data directory.
    pub fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    /// Where tablespace `oid` is restored.
    pub fn tablespace(&self, oid: u32) -> PathBuf {
        self.path.join("tablespaces").join(oid.to_string())
    }

    /// The server's Unix socket directory.
    pub fn socket(&self) -> PathBuf {
        self.path.join("socket")
    }

    /// The server's log.
    pub fn log(&self) -> PathBuf {
        self.path.join("server.log")
    }

    /// Keeps the directory (`--keep`): it stays, without a pid file, so that later drills
    /// leave it alone.
    pub fn keep(&mut self) {
        self.keep = true;
        let _ = fs::remove_file(self.path.join(PID_FILE));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_and_the_repository_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("global")).expect("mkdir");
        fs::create_dir_all(data.join("base/tmp")).expect("mkdir");
        assert!(check_location(&data.join("base/tmp"), None).is_ok());
        fs::write(data.join("PG_VERSION"), "18\n").expect("write");
        fs::write(data.join("global/pg_control"), "x").expect("write");
        let e = check_location(&data.join("base/tmp"), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(e.message().contains("data directory"), "{e}");
        assert!(check_location(&data, None).is_err());
        let repo = dir.path().join("repo");
        fs::create_dir_all(repo.join("wal")).expect("mkdir");
        let e = check_location(&repo.join("wal"), Some(&repo)).unwrap_err();
        assert!(e.message().contains("repository"), "{e}");
        assert!(check_location(dir.path(), Some(&repo)).is_ok());
        assert!(check_location(&dir.path().join("missing"), None).is_err());
        let long = dir.path().join("x".repeat(80));
        fs::create_dir_all(&long).expect("mkdir");
        assert_eq!(
            check_location(&long, None).unwrap_err().kind(),
            ErrorKind::Usage
        );
        let comma = dir.path().join("a,b");
        fs::create_dir_all(&comma).expect("mkdir");
        assert!(check_location(&comma, None).is_err());
    }

    #[test]
    fn interrupted_scratch_directories_are_removed_running_and_kept_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The pid of a process that has ended.
        let mut gone = std::process::Command::new("true").spawn().expect("spawn");
        gone.wait().expect("wait");
        let private = |p: &Path| {
            fs::create_dir_all(p).expect("mkdir");
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).expect("chmod");
        };
        let dead = dir.path().join(format!("{PREFIX}a"));
        private(&dead);
        fs::create_dir_all(dead.join("data")).expect("mkdir");
        fs::write(dead.join(PID_FILE), format!("{}\n", gone.id())).expect("write");
        let kept = dir.path().join(format!("{PREFIX}b"));
        private(&kept);
        // Not private (another user's, say), or its data a symlink: left alone.
        let open = dir.path().join(format!("{PREFIX}c"));
        fs::create_dir_all(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(open.join(PID_FILE), format!("{}\n", gone.id())).expect("write");
        let planted = dir.path().join(format!("{PREFIX}d"));
        private(&planted);
        std::os::unix::fs::symlink(dir.path(), planted.join("data")).expect("symlink");
        fs::write(planted.join(PID_FILE), format!("{}\n", gone.id())).expect("write");
        let other = dir.path().join("walseal-other");
        fs::create_dir_all(&other).expect("mkdir");
        fs::write(other.join(PID_FILE), "1\n").expect("write");
        let removed = remove_interrupted(dir.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && kept.exists() && other.exists());
        assert!(open.exists() && planted.join("data").exists());
    }

    #[test]
    fn a_scratch_directory_goes_unless_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Scratch::create(dir.path(), "x").expect("create");
        let path = s.path().to_path_buf();
        assert!(path.join(PID_FILE).is_file() && s.socket().is_dir());
        drop(s);
        assert!(!path.exists());
        let mut s = Scratch::create(dir.path(), "y").expect("create");
        s.keep();
        let path = s.path().to_path_buf();
        drop(s);
        assert!(path.is_dir() && !path.join(PID_FILE).exists());
        assert!(
            Scratch::create(dir.path(), "y").is_err(),
            "never reuses one"
        );
    }
}
