//! Requests to Supabase Storage: authentication headers, retries on 429/5xx/connection errors
//! (whether the 5xx is the HTTP status or the `statusCode` inside an HTTP 400's body), and answers
//! turned into something a person can act on. Redirects are never followed: the client would
//! carry the `apikey` header (the service_role key) to wherever the redirect points.

use backon::BackoffBuilder;
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;

use super::{BucketLimits, Supabase};
use crate::retry::backoff;
use crate::secret::redact;
use crate::storage::timeouts::SendError;
use crate::storage::{StorageError, Timeouts};

/// A non-success answer, read whole (error bodies are small).
pub(super) struct Failure {
    pub http: u16,
    pub body: String,
    pub location: Option<String>,
}

/// The storage API's own error body: `statusCode` as a string, and (from the server's error
/// handler) usually a `code`. fastify's bare 404 has a numeric `statusCode` and no `code`; a
/// gateway or another server answers with something else entirely.
#[derive(Deserialize)]
pub(super) struct ApiError {
    #[serde(rename = "statusCode")]
    pub status_code: String,
    pub code: Option<String>,
    pub error: Option<String>,
    pub message: Option<String>,
}

/// Which of the bucket's limits a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limit {
    Size,
    Type,
}

impl Failure {
    /// A refusal for the object's size (413 EntityTooLarge) or type (415 InvalidMimeType): as the
    /// storage API's JSON on the REST routes, as the real status with plain text on the
    /// resumable ones (`tus`).
    pub fn limit(&self, tus: bool) -> Option<Limit> {
        match self.api() {
            Some(a) => match (a.code.as_deref(), self.status()) {
                (Some("EntityTooLarge"), _) | (_, 413) => Some(Limit::Size),
                (Some("InvalidMimeType"), _) | (_, 415) => Some(Limit::Type),
                _ => None,
            },
            None if tus => match self.http {
                413 => Some(Limit::Size),
                415 => Some(Limit::Type),
                _ => None,
            },
            None => None,
        }
    }

    pub fn api(&self) -> Option<ApiError> {
        serde_json::from_str(&self.body).ok()
    }

    /// The real status: the body's `statusCode` for the storage API's errors, else HTTP's.
    pub fn status(&self) -> u16 {
        self.api().and_then(|a| a.status_code.parse().ok()).unwrap_or(self.http)
    }

    /// Worth another try: 429 or 5xx, as the HTTP status or as the body's `statusCode`
    /// (DatabaseReadOnly and LockTimeout come as HTTP 400 with `"statusCode":"503"`).
    pub fn transient(&self) -> bool {
        let s = self.status();
        // 501: the server lacks the feature (a TUS extension); asking again will not grow it.
        let missing = s == 501 || self.http == 501;
        !missing && (s == 429 || s >= 500 || self.http == 429 || self.http >= 500)
    }

    /// How to name it in a log line: `503 DatabaseReadOnly (HTTP 400)`.
    pub fn label(&self) -> String {
        match self.api() {
            Some(a) => {
                let code = a.code.map(|c| format!(" {c}")).unwrap_or_default();
                if a.status_code == self.http.to_string() {
                    format!("{}{code}", a.status_code)
                } else {
                    format!("{}{code} (HTTP {})", a.status_code, self.http)
                }
            }
            None => format!("HTTP {}", self.http),
        }
    }

    pub fn text(&self) -> String {
        match self.api() {
            Some(a) => format!("{} {}", a.error.unwrap_or_default(), a.message.unwrap_or_default())
                .trim()
                .to_string(),
            None => one_line(&self.body),
        }
    }
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

    /// Sends with retries on 429, 5xx, connection errors and requests that went quiet for the
    /// idle timeout (the shared backoff, one log line a retry); `make` builds a fresh request each
    /// attempt. A success comes back as the response; anything else, once it is not worth another
    /// try, as a [`Failure`].
    pub(super) async fn exchange(
        &self,
        what: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Result<Response, Failure>, StorageError> {
        self.attempts(what, make).await.map(|(answer, _)| answer)
    }

    /// [`exchange`](Self::exchange), also saying whether an earlier attempt may have been carried
    /// out by the server without its answer reaching us (it timed out or the connection dropped
    /// after the request was sent, or a gateway answered 5xx): a create retried after one can
    /// meet its own object.
    pub(super) async fn attempts(
        &self,
        what: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<(Result<Response, Failure>, bool), StorageError> {
        let mut delays = backoff(self.retries).build();
        let mut unsure = false;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let problem = match self.timeouts.send(&self.http, make()).await {
                Ok(r) if r.status().is_success() => return Ok((Ok(r), unsure)),
                Ok(r) => {
                    let failure = read_failure(r, &self.timeouts).await;
                    if !failure.transient() {
                        return Ok((Err(failure), unsure));
                    }
                    Err(failure)
                }
                Err(e) if e.transient() => Ok(e),
                Err(e) => return Err(self.unreachable(what, &e, tries)),
            };
            unsure |= match &problem {
                Err(f) => f.status() != 429,
                Ok(SendError::Http(e)) => !e.is_connect(),
                Ok(SendError::Idle(_)) => true,
            };
            let Some(delay) = delays.next() else {
                return match problem {
                    Err(failure) => Ok((Err(failure), unsure)),
                    Ok(e) => Err(self.unreachable(what, &e, tries)),
                };
            };
            match &problem {
                Err(f) => tracing::warn!(
                    "{what}: Supabase answered {}; retrying in {:.1}s",
                    f.label(),
                    delay.as_secs_f64()
                ),
                Ok(e) => tracing::warn!(
                    "{what}: {}; retrying in {:.1}s",
                    self.scrub(&e.describe(&self.timeouts)),
                    delay.as_secs_f64()
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// [`exchange`](Self::exchange), with a failure turned into the error it means for `key`.
    pub(super) async fn send(
        &self,
        what: &str,
        key: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, StorageError> {
        match self.exchange(what, make).await? {
            Ok(r) => Ok(r),
            Err(f) => Err(self.fail(key, &f)),
        }
    }

    fn unreachable(&self, what: &str, e: &SendError, tries: u32) -> StorageError {
        let times = match tries {
            1 => String::new(),
            n => format!(", {n} attempts"),
        };
        let base = redact(&self.base);
        let why = self.scrub(&e.describe(&self.timeouts));
        StorageError::Other(match e {
            SendError::Idle(_) => format!(
                "{what}: {base} did not answer ({why}{times}): the server accepted the request and went quiet: check the project's status, or raise the idle timeout if it is only slow"
            ),
            _ => format!("{what}: cannot reach {base} ({why}{times}): check SUPABASE_URL"),
        })
    }

    pub(super) fn scrub(&self, s: &str) -> String {
        crate::secret::scrub(s, &[self.key.expose()])
    }

    /// What a non-success answer means. The real status is often in the JSON body of an HTTP
    /// 400; a 404 that is not the storage API's own error (a wrong base URL, a proxy) is a
    /// failure, never "not found".
    pub(super) fn fail(&self, key: &str, f: &Failure) -> StorageError {
        let message = self.scrub(&f.text());
        if (300..400).contains(&f.http) {
            let to = f
                .location
                .as_deref()
                .map(|l| format!(" to {}", redact(l)))
                .unwrap_or_default();
            return StorageError::Other(format!(
                "Supabase answered with a redirect{to} (HTTP {}): redirects are not followed, since they would carry the key elsewhere; set SUPABASE_URL to the project's own https://<project>.supabase.co URL",
                f.http
            ));
        }
        let Some(api) = f.api() else {
            if f.http == 404 {
                return StorageError::Other(format!(
                    "{} answered 404 ({message}), which is not the storage API's answer: check SUPABASE_URL (the project URL, https://<project>.supabase.co, without /storage/v1)",
                    redact(&self.base)
                ));
            }
            return StorageError::Other(format!(
                "Supabase storage answered HTTP {} for {key}: {message}",
                f.http
            ));
        };
        let code = api.code.as_deref().unwrap_or("");
        match (code, f.status()) {
            ("NoSuchKey", _) => StorageError::NotFound(key.to_string()),
            ("NoSuchBucket", _) => self.no_such_bucket(),
            ("KeyAlreadyExists" | "ResourceAlreadyExists", _) | (_, 409) => {
                StorageError::AlreadyExists(key.to_string())
            }
            ("AccessDenied" | "InvalidJWT", _) | (_, 401 | 403) => self.key_rejected(&message),
            ("EntityTooLarge", _) | (_, 413) => self.too_large(key, &message, None, None),
            ("InvalidMimeType", _) | (_, 415) => self.type_refused(key, &message, None),
            ("InvalidKey", _) => StorageError::Rejected(format!("Supabase cannot store the name {key:?} ({message})")),
            (_, status) => StorageError::Other(format!(
                "Supabase storage error {status}{} for {key}: {message}",
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" {code}")
                }
            )),
        }
    }

    pub(super) fn no_such_bucket(&self) -> StorageError {
        StorageError::Rejected(format!(
            "bucket {:?} does not exist in this Supabase project, or this key cannot see it: create it (Dashboard → Storage → New bucket, private), set SUPABASE_BUCKET_NAME / --storage supabase://<bucket>, or use the service_role key",
            self.bucket
        ))
    }

    pub(super) fn key_rejected(&self, message: &str) -> StorageError {
        StorageError::Rejected(format!(
            "Supabase rejected the key ({message}): use the service_role key, not the anon key (SUPABASE_SERVICE_ROLE_KEY or SUPABASE_KEY)"
        ))
    }

    /// A refusal for the object's size or type ([`Failure::limit`]), named with the bucket's own
    /// limits read now; `attempted` is how large the object was when refused (at least), if known.
    pub(super) async fn refused(&self, key: &str, f: &Failure, attempted: Option<u64>) -> StorageError {
        let message = self.scrub(&f.text());
        let tus = f.api().is_none();
        match f.limit(tus) {
            Some(limit) => {
                let bucket = self.bucket_limits().await;
                match limit {
                    Limit::Size => self.too_large(key, &message, bucket.as_ref(), attempted),
                    Limit::Type => self.type_refused(key, &message, bucket.as_ref()),
                }
            }
            None => self.fail(key, f),
        }
    }

    /// A 413. The server's message never says which limit: the bucket's own `file_size_limit`
    /// (`bucket`, when it could be read) or the project's upload size limit, whichever is lower;
    /// the object's size when refused (`attempted`) tells them apart.
    pub(super) fn too_large(
        &self,
        key: &str,
        message: &str,
        bucket: Option<&BucketLimits>,
        attempted: Option<u64>,
    ) -> StorageError {
        const PROJECT: &str = "the project's upload size limit";
        const RAISE_PROJECT: &str = "raise it (Dashboard → Storage → Settings; 50 MB on the free plan)";
        let bytes = |n: u64| match n {
            0..=1023 => format!("{n} bytes"),
            _ => format!("{n} bytes ({})", crate::progress::human_size(n)),
        };
        let name = &self.bucket;
        let why = match bucket.map(|b| b.file_size_limit) {
            None => format!(
                "the limit is bucket {name:?}'s file size limit or {PROJECT}, whichever is lower; raise it (Dashboard → Storage → the bucket → Edit bucket, and Storage → Settings; 50 MB on the free plan)"
            ),
            Some(None) => format!(
                "bucket {name:?} has no file size limit of its own, so {PROJECT} applies; {RAISE_PROJECT}"
            ),
            Some(Some(limit)) => match attempted {
                Some(size) if size <= limit => format!(
                    "it was refused at {size} bytes, within bucket {name:?}'s own file size limit of {}, so {PROJECT} is the lower one; {RAISE_PROJECT}",
                    bytes(limit)
                ),
                _ => format!(
                    "bucket {name:?} takes objects up to {}, its own file size limit; raise it (Dashboard → Storage → the bucket → Edit bucket)",
                    bytes(limit)
                ),
            },
        };
        StorageError::Rejected(format!(
            "Supabase refused {key} as too large ({message}): {why} or use --max-size to refuse such backups before they are dumped"
        ))
    }

    /// A 415: the bucket's allowed MIME types (`bucket`, when they could be read) leave out the
    /// type this object is sent as.
    pub(super) fn type_refused(&self, key: &str, message: &str, bucket: Option<&BucketLimits>) -> StorageError {
        let ty = content_type(key);
        let allowed = match bucket.and_then(|b| b.allowed_mime_types.as_ref()) {
            Some(types) if types.is_empty() => {
                "its list of allowed MIME types is empty (which refuses every resumable upload); ".to_string()
            }
            Some(types) => format!("it allows only {}; ", types.join(", ")),
            None => String::new(),
        };
        StorageError::Rejected(format!(
            "bucket {:?} does not accept {key}'s type {ty} ({message}): {allowed}add {ty} to the bucket's allowed MIME types (Dashboard → Storage → the bucket → Edit bucket), or clear that restriction",
            self.bucket
        ))
    }
}

/// A failure's answer, its body read within the idle timeout (an unreadable body is left empty).
pub(super) async fn read_failure(r: Response, timeouts: &Timeouts) -> Failure {
    let http = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = timeouts
        .body(r)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Failure { http, body, location }
}

/// A body that is not the storage API's (a gateway's or another server's page) on one short line:
/// an HTML page's `<title>`, else its text with tags dropped and whitespace collapsed.
pub(super) fn one_line(body: &str) -> String {
    let lower = body.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .and_then(|at| lower[at..].find("</title>").map(|end| &body[at + 7..at + end]));
    let text = match title {
        Some(t) => t.to_string(),
        None => {
            let mut out = String::new();
            let mut in_tag = false;
            for c in body.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' if in_tag => {
                        in_tag = false;
                        out.push(' ');
                    }
                    _ if !in_tag => out.push(c),
                    _ => {}
                }
            }
            out
        }
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(http: u16, body: &str) -> Failure {
        Failure {
            http,
            body: body.into(),
            location: None,
        }
    }

    #[test]
    fn the_real_status_is_in_the_body() {
        let read_only = f(
            400,
            r#"{"statusCode":"503","error":"DatabaseReadOnly","message":"read-only","code":"DatabaseReadOnly"}"#,
        );
        assert!(read_only.transient());
        assert_eq!(read_only.label(), "503 DatabaseReadOnly (HTTP 400)");
        let exists = f(
            400,
            r#"{"statusCode":"409","error":"Duplicate","message":"The resource already exists","code":"KeyAlreadyExists"}"#,
        );
        assert!(!exists.transient());
        assert_eq!(exists.status(), 409);
        assert!(f(544, r#"{"statusCode":"544","code":"DatabaseTimeout"}"#).transient());
        assert!(f(502, "Bad gateway").transient());
        assert!(!f(
            404,
            r#"{"message":"Route GET:/x not found","error":"Not Found","statusCode":404}"#
        )
        .transient());
        assert!(
            f(
                404,
                r#"{"message":"Route GET:/x not found","error":"Not Found","statusCode":404}"#
            )
            .api()
            .is_none(),
            "fastify's own 404 is not a storage error"
        );
    }
}
