//! Telling someone: healthchecks.io-style pings (a dead-man's switch for the cron job) and a JSON,
//! Slack or Discord notification when a run had a failure or a tenant is overdue.
//!
//! Delivery is best effort: a ping or notification that cannot be delivered is retried with the
//! shared backoff, then reported on stderr, and never changes the command's exit code or its work.
//! No body holds a secret: log lines are the tool's own (already redacted) and are scrubbed again.

use std::sync::Mutex;
use std::time::Duration;

use backon::Retryable;
use serde::Serialize;

use crate::error::UsageError;
use crate::retry::backoff;

/// When to send a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOn {
    Failure,
    Always,
}

/// The body's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyFormat {
    Json,
    Slack,
    Discord,
}

/// What the command did, as far as alerts care: filled in by the command while it runs.
#[derive(Debug, Default)]
pub struct RunLog {
    pub done: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub overdue: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Alerts {
    ping: Option<url::Url>,
    notify: Option<url::Url>,
    on: NotifyOn,
    format: NotifyFormat,
    http: reqwest::Client,
    /// Secrets to scrub from any body, on top of the redaction logs already had.
    secrets: Vec<String>,
}

#[derive(Serialize)]
struct Notification<'a> {
    command: &'a str,
    status: &'a str,
    host: String,
    tool_version: &'static str,
    time: String,
    error: Option<String>,
    tenants_failed: Vec<FailedTenant<'a>>,
    tenants_done: &'a [String],
    tenants_overdue: &'a [String],
}

#[derive(Serialize)]
struct FailedTenant<'a> {
    tenant: &'a str,
    reason: &'a str,
}

impl Alerts {
    /// Checks the URLs before anything runs: http(s) only, https except to this machine.
    pub fn new(
        ping: Option<&str>,
        notify: Option<&str>,
        on: NotifyOn,
        format: NotifyFormat,
    ) -> Result<Alerts, UsageError> {
        let parse = |raw: Option<&str>, flag: &str| -> Result<Option<url::Url>, UsageError> {
            let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
                return Ok(None);
            };
            let url = url::Url::parse(raw).map_err(|_| {
                UsageError::new(format!(
                    "{flag} is not a URL: expected e.g. https://hc-ping.com/<uuid> or a webhook URL"
                ))
            })?;
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"));
            match url.scheme() {
                "https" => Ok(Some(url)),
                "http" if loopback => Ok(Some(url)),
                _ => Err(UsageError::new(format!(
                    "{flag} must be an https:// URL (plain http only to localhost): {}",
                    shown(&url)
                ))),
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tenant-backup/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UsageError::new(format!("setting up HTTPS for alerts: {e}")))?;
        Ok(Alerts {
            ping: parse(ping, "--ping-url / BACKUP_PING_URL")?,
            notify: parse(notify, "--notify-url / BACKUP_NOTIFY_URL")?,
            on,
            format,
            http,
            secrets: Vec::new(),
        })
    }

    /// Text that must never reach a body (the database passwords, storage keys).
    pub fn with_secrets(mut self, secrets: Vec<String>) -> Self {
        self.secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ping.is_none() && self.notify.is_none()
    }

    /// `<url>/start`: the work begins.
    pub async fn ping_start(&self) {
        if let Some(url) = &self.ping {
            self.deliver("ping", join(url, "start"), None).await;
        }
    }

    /// `<url>` on success, `<url>/fail` with the last log lines on failure.
    pub async fn ping_end(&self, ok: bool, error: Option<&str>) {
        let Some(url) = &self.ping else { return };
        if ok {
            self.deliver("ping", url.clone(), None).await;
        } else {
            let mut body = crate::app::logging::recent_lines().join("");
            if let Some(e) = error {
                body.push_str(&format!("error: {e}\n"));
            }
            self.deliver("ping", join(url, "fail"), Some((self.scrub(&body), "text/plain")))
                .await;
        }
    }

    /// One notification for the run, when it `failed` (exit code not 0) or had a failed or overdue
    /// tenant, or always when asked.
    pub async fn notify(&self, command: &str, log: &RunLog, failed: bool, error: Option<&str>) {
        let Some(url) = &self.notify else { return };
        let trouble = failed || error.is_some() || !log.failed.is_empty() || !log.overdue.is_empty();
        if !trouble && self.on == NotifyOn::Failure {
            return;
        }
        let status = if trouble { "failed" } else { "ok" };
        let error = error.map(|e| self.scrub(e));
        let failed: Vec<(String, String)> = log
            .failed
            .iter()
            .map(|(t, r)| (t.clone(), self.scrub(first_line(r))))
            .collect();
        let n = Notification {
            command,
            status,
            host: hostname(),
            tool_version: env!("CARGO_PKG_VERSION"),
            time: crate::clock::Clock::now(&crate::clock::SystemClock)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            error: error.clone(),
            tenants_failed: failed
                .iter()
                .map(|(t, r)| FailedTenant { tenant: t, reason: r })
                .collect(),
            tenants_done: &log.done,
            tenants_overdue: &log.overdue,
        };
        let body = match self.format {
            NotifyFormat::Json => serde_json::to_string(&n).unwrap_or_default(),
            NotifyFormat::Slack => serde_json::json!({ "text": summary(&n) }).to_string(),
            NotifyFormat::Discord => {
                let mut text = summary(&n);
                if text.chars().count() > 1900 {
                    text = text.chars().take(1900).collect::<String>() + "…";
                }
                serde_json::json!({ "content": text }).to_string()
            }
        };
        self.deliver("notification", url.clone(), Some((body, "application/json")))
            .await;
    }

    fn scrub(&self, text: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        crate::secret::scrub(text, &secrets)
    }

    async fn deliver(&self, what: &str, url: url::Url, body: Option<(String, &'static str)>) {
        let send = || async {
            let rb = match &body {
                None => self.http.get(url.clone()),
                Some((b, ct)) => self.http.post(url.clone()).header("Content-Type", *ct).body(b.clone()),
            };
            let resp = rb.send().await.map_err(|e| e.without_url().to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", resp.status()))
            }
        };
        let result = send
            .retry(backoff(3).with_max_delay(crate::retry::scaled(Duration::from_secs(4))))
            .sleep(tokio::time::sleep)
            .await;
        if let Err(e) = result {
            eprintln!(
                "warning: the {what} to {} could not be delivered ({e}); the run's result is unchanged",
                shown(&url)
            );
        }
    }
}

/// A URL as it may be shown: scheme and host only (webhook paths and ping UUIDs are secrets).
fn shown(url: &url::Url) -> String {
    format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("?"))
}

fn join(url: &url::Url, last: &str) -> url::Url {
    let mut u = url.clone();
    let path = format!("{}/{last}", u.path().trim_end_matches('/'));
    u.set_path(&path);
    u
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn summary(n: &Notification<'_>) -> String {
    let mut s = format!(
        "tenant-backup {} on {}: {}",
        n.command,
        n.host,
        if n.status == "ok" { "ok" } else { "FAILED" }
    );
    if let Some(e) = &n.error {
        s.push_str(&format!("\nerror: {e}"));
    }
    for f in &n.tenants_failed {
        s.push_str(&format!("\n• {}: {}", f.tenant, f.reason));
    }
    if !n.tenants_overdue.is_empty() {
        s.push_str(&format!("\noverdue: {}", n.tenants_overdue.join(", ")));
    }
    if !n.tenants_done.is_empty() {
        s.push_str(&format!("\n{} tenant(s) done", n.tenants_done.len()));
    }
    s
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into())
}

/// The run's log, shared between the command (which fills it) and the dispatcher (which alerts).
pub type SharedRunLog = Mutex<RunLog>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_shown_whole() {
        let ok = |p: &str| Alerts::new(Some(p), None, NotifyOn::Failure, NotifyFormat::Json);
        assert!(ok("https://hc-ping.com/0b2c").is_ok());
        assert!(ok("http://127.0.0.1:9/x").is_ok());
        assert!(ok("http://hc-ping.com/0b2c").is_err());
        assert!(ok("hc-ping.com").is_err());
        let u = url::Url::parse("https://hooks.slack.com/services/T0/B0/SECRET").unwrap();
        assert_eq!(shown(&u), "https://hooks.slack.com/…");
        assert_eq!(
            join(&url::Url::parse("https://h/p/uuid/").unwrap(), "fail").as_str(),
            "https://h/p/uuid/fail"
        );
    }
}
