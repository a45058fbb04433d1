//! Secrets that cannot be printed by accident, and the one place URLs are redacted.

use std::fmt;

/// A value that must never reach output: `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The real value, for the few places that must hand it on (a driver, an environment variable).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Shows a connection or storage URL with its password (and any key-like query value) replaced by `***`:
/// `postgres://user:***@host/db`. Anything that does not parse as a URL is shown as `***` whole,
/// since a libpq `key=value` string may hold `password=` anywhere.
pub fn redact(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return redact_key_value(raw);
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let sensitive = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["password", "key", "token", "secret", "signature"]
            .iter()
            .any(|s| k.contains(s))
    };
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if sensitive(&k) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string().replace("%2A%2A%2A", "***")
}

/// `host=h password=secret dbname=d` → `host=h password=*** dbname=d`.
fn redact_key_value(raw: &str) -> String {
    if !raw.contains('=') {
        return raw.to_string();
    }
    raw.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces every occurrence of each secret in `text` with `***`, for text we did not write
/// ourselves (pg_dump's stderr, a server's error message).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret {
            out = out.replace(&encoded, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redacts_url_password() {
        assert_eq!(
            redact("postgres://user:hunter2@db.example.com:5432/app?sslmode=require"),
            "postgres://user:***@db.example.com:5432/app?sslmode=require"
        );
        assert_eq!(redact("postgres://user@host/db"), "postgres://user@host/db");
    }

    #[test]
    fn redacts_query_secrets_and_key_value_strings() {
        assert_eq!(
            redact("https://x.supabase.co/storage?apikey=abc&x=1"),
            "https://x.supabase.co/storage?apikey=***&x=1"
        );
        assert_eq!(
            redact("host=h password=hunter2 dbname=d"),
            "host=h password=*** dbname=d"
        );
    }

    #[test]
    fn scrub_removes_plain_and_encoded_secrets() {
        assert_eq!(scrub("a p@ss b p%40ss", &["p@ss"]), "a *** b ***");
        assert_eq!(scrub("nothing", &[""]), "nothing");
    }
}
