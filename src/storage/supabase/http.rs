//! Requests to Supabase Storage: authentication headers, retries on 429/5xx/connection errors,
//! and errors turned into something a person can act on.

use backon::Retryable;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::Supabase;
use crate::retry::backoff;
use crate::secret::redact;
use crate::storage::StorageError;

/// One attempt's failure that is worth another try.
enum Attempt {
    /// 429 or 5xx: handed back as it is when the retries run out.
    Status(Response),
    Network(reqwest::Error),
}

impl Supabase {
    pub(super) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authed(self.http.request(method, format!("{}{path}", self.base)))
    }

    /// `apikey` always; `Authorization: Bearer` only for JWT keys (new `sb_secret_…` keys are not
    /// JWTs and go only in `apikey`).
    pub(super) fn authed(&self, rb: RequestBuilder) -> RequestBuilder {
        let key = self.key.expose();
        let rb = rb.header("apikey", key);
        if key.starts_with("eyJ") {
            rb.bearer_auth(key)
        } else {
            rb
        }
    }

    /// Sends with retries on 429, 5xx and connection errors (the shared backoff).
    /// `make` builds a fresh request each attempt.
    pub(super) async fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response, StorageError> {
        let attempt = || async {
            match make().send().await {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
                    Err(Attempt::Status(r))
                }
                Ok(r) => Ok(r),
                Err(e) => Err(Attempt::Network(e)),
            }
        };
        let result = attempt
            .retry(backoff(self.retries))
            .sleep(tokio::time::sleep)
            .when(|a| match a {
                Attempt::Status(_) => true,
                Attempt::Network(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            })
            .notify(|a, delay| match a {
                Attempt::Status(r) => tracing::warn!(
                    "{what}: Supabase answered {}; retrying in {:.1}s",
                    r.status(),
                    delay.as_secs_f64()
                ),
                Attempt::Network(e) => tracing::warn!(
                    "{what}: {}; retrying in {:.1}s",
                    self.scrub(&e.to_string()),
                    delay.as_secs_f64()
                ),
            })
            .await;
        match result {
            Ok(r) | Err(Attempt::Status(r)) => Ok(r),
            Err(Attempt::Network(e)) => Err(StorageError::Other(format!(
                "{what}: cannot reach {} ({}): check SUPABASE_URL",
                redact(&self.base),
                self.scrub(&e.to_string())
            ))),
        }
    }

    pub(super) fn scrub(&self, s: &str) -> String {
        crate::secret::scrub(s, &[self.key.expose()])
    }

    /// Turns a non-success answer into an error a person can act on. The real status is often in
    /// the JSON body of an HTTP 400.
    pub(super) async fn fail(&self, key: &str, resp: Response) -> StorageError {
        let http = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let parsed: Option<ErrorBody> = serde_json::from_str(&body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.status_code.as_ref())
            .and_then(|c| c.as_u16())
            .unwrap_or(http);
        let message = parsed
            .as_ref()
            .map(|b| {
                format!(
                    "{} {}",
                    b.error.clone().unwrap_or_default(),
                    b.message.clone().unwrap_or_default()
                )
            })
            .unwrap_or(body);
        let message = self.scrub(message.trim());
        match code {
            401 | 403 => StorageError::Other(format!(
                "Supabase rejected the key ({message}): use the service_role key, not the anon key (SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY)"
            )),
            404 if message.to_lowercase().contains("bucket") => StorageError::Other(format!(
                "bucket {:?} does not exist in this Supabase project: create it (Dashboard → Storage → New bucket, private) or set SUPABASE_BUCKET_NAME / --storage supabase://<bucket>",
                self.bucket
            )),
            404 => StorageError::NotFound(key.to_string()),
            409 => StorageError::AlreadyExists(key.to_string()),
            413 => StorageError::Other(format!(
                "{key} is larger than the Supabase project's upload size limit ({message}): raise the limit (Storage settings; 50 MB on the free plan) or use --max-size to refuse such backups"
            )),
            _ => StorageError::Other(format!("Supabase storage error {code} for {key}: {message}")),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    error: Option<String>,
    message: Option<String>,
}

trait AsU16 {
    fn as_u16(&self) -> Option<u16>;
}

impl AsU16 for serde_json::Value {
    fn as_u16(&self) -> Option<u16> {
        match self {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }
}

pub(super) fn header_u64(r: &Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

pub(super) fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else if key.ends_with(".sql") {
        "application/sql"
    } else {
        "application/octet-stream"
    }
}
