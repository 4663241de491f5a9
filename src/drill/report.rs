//! A drill's report: what it restored, how long each phase took, what the checks found. Sealed
//! into the repository as `drills/<id>.json`; `walseal status` and `walseal list` read it.

use serde::{Deserialize, Serialize};

use super::checks::{Check, Database};
use crate::error::{Error, ErrorKind, Result};

/// Prefix of the drill reports.
pub const DRILLS: &str = "drills";
/// Largest report walseal reads (a report lists up to 5000 tables per database).
pub const REPORT_MAX: u64 = 64 << 20;

/// Key of drill `id`'s report.
pub fn report_key(id: &str) -> String {
    format!("{DRILLS}/{id}.json")
}

/// The drill id of a report key, if it is one.
pub fn id_of(key: &str) -> Option<&str> {
    key.strip_prefix(DRILLS)?
        .strip_prefix('/')?
        .strip_suffix(".json")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// How a drill ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Restored, recovered to the end, every check passed.
    Passed,
    /// The restore failed (the backup could not be read or written).
    RestoreFailed,
    /// The server did not start or recovery failed.
    RecoveryFailed,
    /// Replay ended before the end of the archive or the target.
    ReplayShort,
    /// A check failed.
    CheckFailed,
    /// The drill was stopped by a signal (SIGTERM, SIGINT, SIGHUP) and cleaned up.
    Interrupted,
}

impl Outcome {
    /// The outcome of a drill that failed with an error of `kind` in phase `restoring`.
    pub fn of(kind: ErrorKind, restoring: bool, interrupted: bool) -> Outcome {
        match kind {
            _ if interrupted => Outcome::Interrupted,
            ErrorKind::ReplayShort => Outcome::ReplayShort,
            ErrorKind::CheckFailed => Outcome::CheckFailed,
            _ if restoring => Outcome::RestoreFailed,
            _ => Outcome::RecoveryFailed,
        }
    }
}

/// Time and volume of one phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// Seconds.
    pub seconds: f64,
    /// Bytes (restore: the backup's size; replay: WAL between the backup's start and the
    /// end of recovery).
    pub bytes: u64,
    /// MiB/s.
    pub mib_per_second: f64,
}

impl Phase {
    /// A phase of `bytes` in `seconds`.
    pub fn new(seconds: f64, bytes: u64) -> Phase {
        Phase {
            seconds,
            bytes,
            mib_per_second: if seconds > 0.0 {
                bytes as f64 / 1_048_576.0 / seconds
            } else {
                0.0
            },
        }
    }
}

/// Where replay ended, against what the archive holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Replay {
    /// WAL files restored from the archive (segments and history files).
    pub files_restored: u64,
    /// Timeline recovery ended on.
    pub timeline: u32,
    /// Where it ended.
    pub end_lsn: String,
    /// The segment it ended in.
    pub end_segment: String,
    /// The new timeline the server promoted to.
    pub promoted_timeline: u32,
    /// The last replayed commit's time (`pg_last_xact_replay_timestamp`), if any.
    pub last_commit_time: Option<String>,
    /// The newest segment archived on the end timeline when the drill started replaying.
    pub newest_archived_segment: Option<String>,
    /// Segments archived on that timeline after the one replay ended in (0: replayed to the
    /// end of the archive).
    pub segments_behind: u64,
    /// Seconds from the last replayed commit to when the newest archived segment was stored.
    pub seconds_behind: Option<f64>,
}

/// A drill's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Report format version (1).
    pub format_version: u32,
    /// Drill id: its UTC start time, `YYYYMMDDTHHMMSSZ`.
    pub id: String,
    /// Whether every step and check passed.
    pub ok: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, one line, if it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The host it ran on.
    pub host: String,
    /// The repository (as shown to users, no credentials).
    #[serde(default)]
    pub repository: String,
    /// The backup restored.
    pub backup: String,
    /// Its server version.
    pub pg_version: String,
    /// The binaries the drill ran (`postgres --version`).
    #[serde(default)]
    pub server_version: Option<String>,
    /// `latest` (the end of the archive), `time ...` or `lsn ...`.
    pub target: String,
    /// Start, `YYYY-MM-DD HH:MM:SS.ffffff+00`.
    pub started: String,
    /// Start, Unix seconds.
    pub started_unix: f64,
    /// End, Unix seconds.
    pub finished_unix: f64,
    /// Restoring the backup.
    #[serde(default)]
    pub restore: Option<Phase>,
    /// Starting the server and replaying WAL until it promoted.
    #[serde(default)]
    pub replay: Option<Phase>,
    /// Where replay ended.
    #[serde(default)]
    pub recovery: Option<Replay>,
    /// Seconds from the start of the restore to a server accepting connections: the
    /// recovery time to quote for an RTO.
    #[serde(default)]
    pub recovery_seconds: Option<f64>,
    /// The checks.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// The databases, tables and row counts.
    #[serde(default)]
    pub databases: Vec<Database>,
}

/// Decodes a report's plaintext (`key` names it in errors). Pure: a fuzz target.
///
/// # Errors
/// `Integrity` if it is not a drill report.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Report> {
    let r: Report = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!("{key}: unreadable drill report: {e}"),
        )
    })?;
    if r.format_version != 1 || id_of(&report_key(&r.id)) != Some(r.id.as_str()) {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("{key}: not a drill report walseal writes"),
        ));
    }
    Ok(r)
}

/// What monitoring needs of the last drill: whether it passed, seconds since it ended, its
/// recovery time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastDrill {
    /// Whether it passed (unknown on a push-only host, which cannot open the report).
    pub ok: Option<bool>,
    /// Seconds since it ended.
    pub age_seconds: Option<f64>,
    /// Its recovery time.
    pub recovery_seconds: Option<f64>,
}

impl LastDrill {
    /// The figures of `report`, which ended `age` seconds ago.
    pub fn of(report: &Report, age: f64) -> LastDrill {
        LastDrill {
            ok: Some(report.ok),
            age_seconds: Some(age),
            recovery_seconds: report.recovery_seconds,
        }
    }
}

/// The Prometheus metrics of the last drill (in `walseal status --prometheus`, and what
/// `walseal drill --prometheus` writes).
pub fn prometheus(repository: &str, last: &LastDrill) -> String {
    let repo_label = repository
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out += &format!("# HELP walseal_{name} {help}\n# TYPE walseal_{name} gauge\nwalseal_{name}{{repository=\"{repo_label}\"}} {v}\n");
        }
    };
    metric(
        "last_drill_success",
        "1 if the last walseal drill restored, recovered and passed every check, 0 if not.",
        last.ok.map(|ok| if ok { 1.0 } else { 0.0 }),
    );
    metric(
        "last_drill_age_seconds",
        "Seconds since the last walseal drill ended.",
        last.age_seconds,
    );
    metric(
        "last_drill_recovery_seconds",
        "Seconds the last walseal drill took from the start of the restore to a usable server.",
        last.recovery_seconds,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            format_version: 1,
            id: "20261201T140000Z".into(),
            ok: true,
            outcome: Outcome::Passed,
            error: None,
            host: "h".into(),
            repository: "file:///r".into(),
            backup: "20261201T130000Z".into(),
            pg_version: "18.6".into(),
            server_version: Some("18.6".into()),
            target: "latest".into(),
            started: "2026-12-01 14:00:00.000000+00".into(),
            started_unix: 1.0,
            finished_unix: 2.0,
            restore: Some(Phase::new(2.0, 4 << 20)),
            replay: None,
            recovery: None,
            recovery_seconds: Some(3.5),
            checks: vec![],
            databases: vec![],
        }
    }

    #[test]
    fn reports_round_trip_and_foreign_json_is_refused() {
        let r = sample();
        assert_eq!(r.restore.as_ref().map(|p| p.mib_per_second), Some(2.0));
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode("k", &bytes).unwrap(), r);
        let mut other = serde_json::to_value(&r).unwrap();
        other["format_version"] = 2.into();
        assert!(decode("k", other.to_string().as_bytes()).is_err());
        other["format_version"] = 1.into();
        other["id"] = "../x".into();
        assert!(decode("k", other.to_string().as_bytes()).is_err());
        assert!(decode("k", b"{}").is_err());
        assert!(decode("k", b"\xff").is_err());
    }

    #[test]
    fn keys_and_metrics() {
        assert_eq!(
            id_of(&report_key("20261201T140000Z")),
            Some("20261201T140000Z")
        );
        assert_eq!(id_of("drills/a/b.json"), None);
        assert_eq!(id_of("drills/.json"), None);
        assert_eq!(id_of("backups/x.json"), None);
        let text = prometheus("file:///r", &LastDrill::of(&sample(), 10.0));
        assert!(text.contains("walseal_last_drill_success{repository=\"file:///r\"} 1\n"));
        assert!(text.contains("walseal_last_drill_age_seconds{repository=\"file:///r\"} 10\n"));
        assert!(
            text.contains("walseal_last_drill_recovery_seconds{repository=\"file:///r\"} 3.5\n")
        );
        assert_eq!(prometheus("r", &LastDrill::default()), "");
        assert!(
            prometheus("a\"b", &LastDrill::of(&sample(), 1.0)).contains("{repository=\"a\\\"b\"}")
        );
    }
}
