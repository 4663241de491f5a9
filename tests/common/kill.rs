//! Helpers for the fault tests (`tests/kills.rs`): run a walseal command and SIGKILL it after a
//! delay, keeping count of where the kills landed; compare archived WAL with copies of what
//! PostgreSQL archived; and file systems that clean up after themselves (a tmpfs, an ext4 on
//! a loop device that can be "crashed").
//!
//! Commands are started directly as the postgres user (`Command::uid`), not through
//! `runuser`: a SIGKILL must hit walseal itself, not a wrapper that would leave it running.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{run_ok, Setup};

/// The postgres OS user's uid and gid.
pub fn pg_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        run_ok(Command::new("id").arg(flag).arg("postgres"))
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// `s`'s walseal binary run directly as postgres (no wrapper process), configured like
/// `Setup::walseal_as_pg`.
pub fn walseal_pg(s: &Setup) -> Command {
    let (uid, gid) = pg_ids();
    let mut c = Command::new(&s.bin);
    c.uid(uid).gid(gid).current_dir("/");
    for k in [
        "WALSEAL_CONFIG",
        "WALSEAL_REPO",
        "WALSEAL_KEY_FILE",
        "WALSEAL_LOG",
    ] {
        c.env_remove(k);
    }
    match &s.config_file {
        Some(cfg) => {
            c.arg("--config").arg(cfg);
        }
        None => {
            c.env("WALSEAL_REPO", &s.repo.url)
                .env("WALSEAL_KEY_FILE", &s.key);
        }
    }
    c
}

/// How a command given a kill ended.
#[derive(Debug)]
pub enum Ending {
    /// SIGKILL reached it while it ran.
    Killed,
    /// It had already exited (the delay was longer than the run).
    Finished(ExitStatus),
}

/// Kill counts for one command, printed as a table line by [`Kills::report`].
#[derive(Debug)]
pub struct Kills {
    pub command: String,
    /// Kills that reached a running process.
    pub killed: u32,
    /// Delays after which the process had already exited.
    pub finished_first: u32,
}

impl Kills {
    pub fn new(command: &str) -> Kills {
        Kills {
            command: command.to_string(),
            killed: 0,
            finished_first: 0,
        }
    }

    /// Spawns `cmd` (output discarded), waits `delay`, then SIGKILLs it unless it has exited
    /// (which it must then have done successfully).
    pub fn run(&mut self, mut cmd: Command, delay: Duration) -> Ending {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?} ended before the kill: {status}");
            self.finished_first += 1;
            return Ending::Finished(status);
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            self.killed += 1;
            Ending::Killed
        } else {
            assert!(status.success(), "{cmd:?} ended before the kill: {status}");
            self.finished_first += 1;
            Ending::Finished(status)
        }
    }

    /// Prints `KILLS <command> killed=N finished-first=M` (visible with `--nocapture`).
    pub fn report(&self) {
        eprintln!(
            "KILLS {:<24} killed={:<3} finished-first={}",
            self.command, self.killed, self.finished_first
        );
    }
}

/// Where the kills land: `n` points spread evenly from a few milliseconds to 90% of the
/// shortest uninterrupted run seen so far (runs get faster as caches warm up, and a kill
/// after the end kills nothing).
pub struct Pacer {
    run: Duration,
    n: u32,
}

impl Pacer {
    /// `n` points over runs that take `run`.
    pub fn new(run: Duration, n: u32) -> Pacer {
        Pacer { run, n }
    }

    /// The delay of point `i` (0-based).
    pub fn delay(&self, i: usize) -> Duration {
        let start = Duration::from_millis(3);
        let end = self.run.mul_f64(0.9).max(start);
        let f = i as f64 / f64::from((self.n - 1).max(1));
        start + (end - start).mul_f64(f)
    }

    /// Runs `cmd` (a complete run of the same work) to success and learns from its length.
    pub fn rerun(&mut self, cmd: &mut Command) {
        self.run = self.run.min(timed(cmd));
    }

    /// The points `0..n`.
    pub fn points(&self) -> std::ops::Range<usize> {
        0..self.n as usize
    }
}

/// Runs `cmd` to completion, asserting success; returns how long it took.
pub fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    run_ok(cmd);
    t.elapsed()
}

/// The `archive_command` setting for `s` that also copies each archived file into `copies`
/// after walseal stored it, so the tests can check every archived segment byte for byte.
pub fn archive_and_copy_setting(s: &Setup, copies: &Path) -> String {
    let cmd = format!(
        "{} && cp %p '{}/%f'",
        s.command("wal-push %p"),
        copies.display()
    );
    format!("archive_command = '{}'", cmd.replace('\'', "''"))
}

/// Checks that every file in `copies` whose segment is at or after `from` (a 24-character
/// segment name; `None`: all) is in the repository and opens to exactly the copied bytes,
/// fetched with the keys in `keys` (a WALSEAL_KEY_FILE value). Returns how many were checked.
pub fn assert_wal_intact(s: &Setup, keys: &str, copies: &Path, from: Option<&str>) -> usize {
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut names: Vec<String> = std::fs::read_dir(copies)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        // Below `from`, retain removed it on purpose (never a .history file).
        if !name.ends_with(".history") && from.is_some_and(|f| name.get(..24) < f.get(..24)) {
            continue;
        }
        let dest = scratch.path().join(&name);
        let out = s
            .repo
            .walseal(Path::new(keys))
            .args(["wal-fetch", &name])
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "archived {name} cannot be fetched: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read(copies.join(&name)).unwrap();
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "archived {name} does not open to the bytes PostgreSQL archived"
        );
        std::fs::remove_file(&dest).unwrap();
        checked += 1;
    }
    checked
}

/// Runs a shell command line, ignoring its outcome (for clean-up).
fn quietly(cmd: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Unmounts `dir`, lazily if it is still busy.
fn unmount(dir: &Path) {
    let out = Command::new("umount").arg(dir).output();
    if !out.is_ok_and(|o| o.status.success()) {
        quietly(&format!("umount -l '{}'", dir.display()));
    }
}

/// A tmpfs of `size_mib` MiB mounted on a fresh directory, owned by postgres; unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size_mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_mib}m,mode=0755"))
                .arg("tmpfs")
                .arg(path),
        );
        let fs = Tmpfs {
            path: path.to_path_buf(),
        };
        super::chown_pg(path);
        fs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// An ext4 file system on a loop device over an image file, mounted at `path` with a long
/// journal commit interval (so only an explicit sync makes anything durable); unmounted and
/// detached on drop.
pub struct LoopExt4 {
    pub path: PathBuf,
    device: String,
    mounted: bool,
}

/// `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`, the same number as XFS's GOINGDOWN).
const EXT4_IOC_SHUTDOWN: u32 = 0x8004_587D;
/// Shut down without flushing the journal: what was not yet committed is lost, as in a crash.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

impl LoopExt4 {
    pub fn new(image: &Path, path: &Path, size_mib: u32) -> LoopExt4 {
        run_ok(
            Command::new("truncate")
                .arg("-s")
                .arg(format!("{size_mib}M"))
                .arg(image),
        );
        let device = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(image))
            .trim()
            .to_string();
        let mut fs = LoopExt4 {
            path: path.to_path_buf(),
            device,
            mounted: false,
        };
        run_ok(Command::new("mkfs.ext4").args(["-q", &fs.device]));
        std::fs::create_dir_all(path).unwrap();
        fs.mount();
        super::chown_pg(path);
        // The owner of the root directory must survive the crash too.
        run_ok(Command::new("sync").arg("-f").arg(path));
        fs
    }

    pub fn mount(&mut self) {
        run_ok(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "commit=300", &self.device])
                .arg(&self.path),
        );
        self.mounted = true;
    }

    /// The host dies now: the file system stops without writing anything more (page cache
    /// and uncommitted journal are dropped), then is unmounted. [`LoopExt4::mount`] brings it
    /// back with what had reached the disk.
    pub fn crash(&mut self) {
        let dir = std::fs::File::open(&self.path).unwrap();
        let flags: u32 = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the descriptor is open for the duration of the call, and the ioctl reads
        // one u32 from the pointer, which points at `flags`.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN as _,
                &flags as *const u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
        drop(dir);
        run_ok(Command::new("umount").arg(&self.path));
        self.mounted = false;
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            unmount(&self.path);
        }
        quietly(&format!("losetup -d '{}'", self.device));
    }
}
