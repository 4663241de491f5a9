//! `walseal check` and `walseal status` against a real PostgreSQL 15: a correct setup is all
//! well; a wrong archive_command, an unwritable repository and a key readable by others are
//! each named; `status --prometheus` parses as the Prometheus text format.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn pg15_check_and_status_local() {
    scenario(Backend::Local);
}

#[test]
fn pg15_check_and_status_s3() {
    let Some((endpoint, bucket)) = s3_endpoint() else {
        return;
    };
    scenario(Backend::S3 { endpoint, bucket });
}

fn scenario(backend: Backend) {
    let s = Setup::new(&backend);
    let pg = s.primary(&pg_bin(), &[]);
    pg.start();
    let conn = format!("host=127.0.0.1 port={} user=postgres", pg.port);
    let check = || {
        s.walseal_as_pg()
            .args(["check", "--wait", "30", "--pg", &conn])
            .output()
            .unwrap()
    };

    let out = check();
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("reached the repository and opens"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("check: all is well"));

    // A wrong archive_command is named, with the fix.
    pg.psql("ALTER SYSTEM SET archive_command = 'cp %p /nowhere/%f'");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = check();
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAIL  archive_command"),
        "{}",
        stdout(&out)
    );
    pg.psql("ALTER SYSTEM RESET archive_command");
    pg.psql("SELECT pg_reload_conf()");

    // An unwritable repository (local: read-only directories).
    if let Some(repo) = s.repo.local_dir.clone() {
        run_ok(Command::new("chmod").arg("-R").arg("a-w").arg(&repo));
        let out = check();
        run_ok(Command::new("chmod").arg("-R").arg("u+w").arg(&repo));
        assert_eq!(code(&out), 3, "{}", stdout(&out));
        assert!(
            stdout(&out).contains("FAIL  repository"),
            "{}",
            stdout(&out)
        );
    }

    // A key readable by others.
    std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAIL  key") && stdout(&out).contains("chmod 600"),
        "{}",
        stdout(&out)
    );

    // status: JSON with the newest segment and, after a verify, its result; Prometheus format parses.
    assert_eq!(
        code(
            &s.walseal_as_pg()
                .args(["backup", "--fast", "--pg", &conn])
                .output()
                .unwrap()
        ),
        0
    );
    assert_eq!(code(&s.walseal_as_pg().arg("verify").output().unwrap()), 0);
    let out = s
        .walseal_as_pg()
        .args(["status", "--json", "--pg", &conn])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        st["newest_segment"].as_str().is_some_and(|s| s.len() == 24),
        "{st}"
    );
    assert_eq!(st["backups"], 1);
    assert_eq!(st["last_verify_ok"], true);
    assert!(
        st["archive_lag_segments"]
            .as_i64()
            .is_some_and(|l| (0..=2).contains(&l)),
        "{st}"
    );
    let prom = s
        .walseal_as_pg()
        .args(["status", "--prometheus", "-", "--pg", &conn])
        .output()
        .unwrap();
    assert_eq!(code(&prom), 0);
    let mut py = Command::new("python3")
        .args(["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfams = list(p(sys.stdin.read()))\nprint(' '.join(sorted(f.name for f in fams)))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), &prom.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "not the Prometheus text format ({}):\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        stdout(&prom)
    );
    let names = stdout(&parsed);
    for m in [
        "walseal_up",
        "walseal_newest_segment_age_seconds",
        "walseal_backups",
        "walseal_last_verify_ok",
        "walseal_archive_lag_segments",
    ] {
        assert!(names.contains(m), "{m} missing from {names}");
    }
}
