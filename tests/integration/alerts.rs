//! Pings and notifications, against a local HTTP server the test starts.

use serde_json::Value;

use crate::support::http_recorder::HttpRecorder;
use crate::support::*;

fn nothing_due(db: &TestDb) {
    db.sql("UPDATE public.tenants_clinic SET backup_schedule = 'disabled'");
}

#[test]
fn a_tick_with_nothing_due_pings_start_then_success() {
    let db = TestDb::new();
    nothing_due(&db);
    let hc = HttpRecorder::start();
    let notify = HttpRecorder::start();
    let out = db
        .cmd()
        .env("BACKUP_PING_URL", format!("{}/ping/abc", hc.url))
        .env("BACKUP_NOTIFY_URL", format!("{}/hook", notify.url))
        .args(["run-scheduled"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(hc.paths(), ["/ping/abc/start", "/ping/abc"]);
    assert!(notify.requests().is_empty(), "no failure, no notification");
}

#[test]
fn a_failed_backup_pings_fail_with_the_log_and_notifies_without_secrets() {
    let db = TestDb::new();
    std::fs::create_dir_all(db.storage()).unwrap();
    std::fs::write(db.storage().join("mindcare"), b"in the way").unwrap();
    let hc = HttpRecorder::start();
    let notify = HttpRecorder::start();
    let out = db
        .cmd()
        .env("BACKUP_PING_URL", format!("{}/p", hc.url))
        .env("BACKUP_NOTIFY_URL", format!("{}/hook", notify.url))
        .args(["backup", "--all", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "2 backed up, 1 failed");
    let pings = hc.requests();
    assert_eq!(
        pings.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/p/start", "/p/fail"]
    );
    let body = &pings[1].body;
    assert!(body.contains("mindcare") && body.contains("backup started"), "{body}");
    let password = &cluster().password;
    assert!(!body.contains(password.as_str()), "{body}");

    let sent = notify.requests();
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].body.contains(password.as_str()));
    let v: Value = serde_json::from_str(&sent[0].body).unwrap();
    assert_eq!(v["command"], "backup");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["tenants_failed"][0]["tenant"], "mindcare");
    assert!(!v["tenants_failed"][0]["reason"].as_str().unwrap().contains('\n'));
    let done: Vec<&str> = v["tenants_done"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(v["tool_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["host"].is_string() && v["time"].is_string());
}

#[test]
fn slack_and_discord_bodies_and_notify_on_always() {
    let db = TestDb::new();
    nothing_due(&db);
    for (format, field) in [("slack", "text"), ("discord", "content")] {
        let hook = HttpRecorder::start();
        let out = db
            .cmd()
            .args(["run-scheduled", "--notify-on", "always", "--notify-format", format])
            .args(["--notify-url", &format!("{}/h", hook.url)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let sent = hook.requests();
        assert_eq!(sent.len(), 1, "{format}");
        let v: Value = serde_json::from_str(&sent[0].body).unwrap();
        let msg = v[field].as_str().unwrap_or_else(|| panic!("{format}: {v}"));
        assert!(
            msg.contains("tenant-backup run-scheduled") && msg.contains("ok"),
            "{msg}"
        );
    }
}

#[test]
fn an_overdue_tenant_in_status_notifies() {
    let db = TestDb::new();
    db.sql(
        "UPDATE public.tenants_clinic SET backup_schedule = 'disabled'; \
         UPDATE public.tenants_clinic SET backup_schedule = 'daily', last_backup_at = now() - interval '3 days' WHERE schema_name = 'bienestar'",
    );
    let hook = HttpRecorder::start();
    let out = db
        .cmd()
        .args(["status", "--notify-url", &format!("{}/h", hook.url)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&hook.requests()[0].body).unwrap();
    assert_eq!(v["command"], "status");
    assert_eq!(v["tenants_overdue"][0], "bienestar");
}

#[test]
fn an_undeliverable_alert_changes_nothing_and_says_so() {
    let db = TestDb::new();
    nothing_due(&db);
    let broken = HttpRecorder::start();
    broken.answer_with(500);
    let out = db
        .cmd()
        .env("BACKUP_PING_URL", format!("{}/p/secret-uuid", broken.url))
        .args(["run-scheduled"])
        .output()
        .unwrap();
    assert!(out.status.success(), "the tick itself worked: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("could not be delivered"), "{stderr}");
    assert!(
        !stderr.contains("secret-uuid"),
        "the ping URL's path is a secret: {stderr}"
    );
    assert!(broken.requests().len() >= 2, "retried");
}

#[test]
fn bad_alert_urls_are_usage_errors_before_anything_else() {
    let db = TestDb::new();
    let out = db
        .cmd()
        .env_remove("DATABASE_URL")
        .args(["run-scheduled", "--ping-url", "http://hc-ping.com/abc"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "must be an https:// URL");
}

#[test]
fn a_broken_configuration_still_pings_fail() {
    let db = TestDb::new();
    let hc = HttpRecorder::start();
    let out = db
        .cmd()
        .env_remove("DATABASE_URL")
        .env("BACKUP_PING_URL", format!("{}/p", hc.url))
        .args(["run-scheduled"])
        .output()
        .unwrap();
    assert_fails(&out, 2, "DATABASE_URL must be set");
    let pings = hc.requests();
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].path, "/p/fail");
    assert!(pings[0].body.contains("DATABASE_URL must be set"), "{}", pings[0].body);
}
