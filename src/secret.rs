//! Secrets that cannot be printed by accident, and the one place connection strings and URLs
//! are redacted (with the parsers that redaction and `DbTarget` share).

use std::fmt;
use std::ops::Range;

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

/// Shows a connection string or storage URL with every secret in it replaced by `***`:
/// `postgres://user:***@h1:5432,h2:5432/db`, `host=h password=*** dbname=d`.
///
/// URLs (any scheme, any number of hosts): the user info's password and the value of any query
/// parameter whose name contains password, key, token, secret or signature. libpq `key=value`
/// strings: the value of any such keyword, quoted or not. What cannot be read as either (a bare
/// word, an unterminated quote, a parameter without `=`) is hidden from there on, since it may be a
/// password pasted in the wrong place. The rest is shown exactly as written.
pub fn redact(raw: &str) -> String {
    let hidden = match after_scheme(raw) {
        Some(start) => url_secrets(raw, start),
        None => conninfo_secrets(raw),
    };
    hide(raw, hidden)
}

fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "key", "token", "secret", "signature"]
        .iter()
        .any(|s| name.contains(s))
}

/// `raw` with each range replaced by `***` (overlapping or touching ranges by one `***`).
fn hide(raw: &str, mut ranges: Vec<Range<usize>>) -> String {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = String::with_capacity(raw.len());
    let mut shown_to = 0;
    for r in merged {
        out.push_str(&raw[shown_to..r.start]);
        out.push_str("***");
        shown_to = r.end;
    }
    out.push_str(&raw[shown_to..]);
    out
}

/// Where the text after `scheme://` begins, if `raw` is a URL.
fn after_scheme(raw: &str) -> Option<usize> {
    let end = raw.find("://")?;
    let scheme = &raw[..end];
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(end + 3)
}

/// `postgres://…` or `postgresql://…`, the URL forms libpq and tokio-postgres accept.
pub(crate) fn is_postgres_url(raw: &str) -> bool {
    after_scheme(raw).is_some_and(|start| {
        matches!(
            raw[..start].to_ascii_lowercase().as_str(),
            "postgres://" | "postgresql://"
        )
    })
}

/// The secrets of a URL, however its user info is delimited: tokio-postgres ends it at the first
/// `@`, libpq at an `@` before the first `/`, a reader that knows queries at one before `/` or
/// `?`, and a password holding an unencoded `@`, `/` or `?` needs the last `@`. What any of these
/// readings takes for a password or a secret parameter is hidden.
fn url_secrets(raw: &str, start: usize) -> Vec<Range<usize>> {
    let rest = &raw[start..];
    let at_before = |stops: &[char]| rest.find(stops).filter(|&i| rest[i..].starts_with('@'));
    let readings = [
        rest.find('@'),
        rest.rfind('@'),
        at_before(&['@', '/']),
        at_before(&['@', '/', '?']),
    ];
    let mut hidden = Vec::new();
    for at in readings {
        let url = UrlParts::cut(raw, start, at.map(|i| start + i));
        if let Some(info) = &url.userinfo {
            if let Some(colon) = raw[info.clone()].find(':') {
                hidden.push(info.start + colon + 1..info.end);
            }
        }
        for param in url.params(raw) {
            match param.value {
                Some(value) if is_sensitive(&param.key) => hidden.push(value),
                None => hidden.push(param.text),
                Some(_) => {}
            }
        }
    }
    hidden
}

/// A URL cut into its parts, each a range of the raw text (still percent-encoded):
/// `scheme://userinfo@hosts/path?query`, where `hosts` may list several `host:port`s.
pub(crate) struct UrlParts {
    pub userinfo: Option<Range<usize>>,
    pub hosts: Range<usize>,
    /// Everything after the `?`, if there is one.
    pub query: Option<Range<usize>>,
}

/// One `key=value` of a URL's query. `key` is decoded; `value` is `None` when there is no `=`.
pub(crate) struct Param {
    pub text: Range<usize>,
    pub key: String,
    pub value: Option<Range<usize>>,
}

impl UrlParts {
    /// Cuts `raw` the way tokio-postgres does (the user info ends at the first `@`), the reading
    /// that decides what the driver connects to. None if `raw` is not a URL.
    pub(crate) fn parse(raw: &str) -> Option<UrlParts> {
        let start = after_scheme(raw)?;
        Some(UrlParts::cut(raw, start, raw[start..].find('@').map(|i| start + i)))
    }

    /// Cuts `raw` (whose text after `scheme://` begins at `start`) with the user info ending at `at`.
    fn cut(raw: &str, start: usize, at: Option<usize>) -> UrlParts {
        let (userinfo, hosts_start) = match at {
            Some(at) => (Some(start..at), at + 1),
            None => (None, start),
        };
        let hosts_end = raw[hosts_start..]
            .find(['/', '?'])
            .map_or(raw.len(), |i| hosts_start + i);
        let query = raw[hosts_end..].find('?').map(|i| hosts_end + i + 1..raw.len());
        UrlParts {
            userinfo,
            hosts: hosts_start..hosts_end,
            query,
        }
    }

    /// The query's parameters, split at `&` (empty ones skipped).
    pub(crate) fn params(&self, raw: &str) -> Vec<Param> {
        let Some(query) = &self.query else {
            return Vec::new();
        };
        let mut params = Vec::new();
        let mut from = query.start;
        for piece in raw[query.clone()].split('&') {
            let text = from..from + piece.len();
            from = text.end + 1;
            if piece.is_empty() {
                continue;
            }
            let (key, value) = match piece.find('=') {
                Some(eq) => (&piece[..eq], Some(text.start + eq + 1..text.end)),
                None => (piece, None),
            };
            params.push(Param {
                text,
                key: percent_decode(key),
                value,
            });
        }
        params
    }
}

/// `%XX` sequences decoded (invalid UTF-8 replaced); a malformed `%` is kept as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex
            .filter(|_| b[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `keyword = value` of a libpq connection string.
pub(crate) struct Pair {
    pub keyword: String,
    /// Unquoted and unescaped.
    pub value: String,
    /// The whole pair as written, quotes and escapes included.
    pub text: Range<usize>,
    value_text: Range<usize>,
}

/// A libpq `key=value` connection string split the way libpq splits it.
pub(crate) struct Conninfo {
    pub pairs: Vec<Pair>,
    /// Where it stops making sense (a missing `=`, an unterminated quote), if it does.
    pub broken_at: Option<usize>,
}

/// libpq's rules: a keyword, optional whitespace, `=`, optional whitespace, then a value that is
/// either single-quoted or runs to the next whitespace; a backslash escapes the next character
/// in either.
pub(crate) fn parse_conninfo(raw: &str) -> Conninfo {
    let b = raw.as_bytes();
    let skip_space = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut pairs = Vec::new();
    let mut i = skip_space(0);
    while i < b.len() {
        let start = i;
        let broken = |pairs| Conninfo {
            pairs,
            broken_at: Some(start),
        };
        while b.get(i).is_some_and(|&c| !c.is_ascii_whitespace() && c != b'=') {
            i += 1;
        }
        let keyword = &raw[start..i];
        i = skip_space(i);
        if keyword.is_empty() || b.get(i) != Some(&b'=') {
            return broken(pairs);
        }
        i = skip_space(i + 1);
        let value_start = i;
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = Vec::new();
        loop {
            match b.get(i) {
                None if quoted => return broken(pairs),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if c.is_ascii_whitespace() && !quoted => break,
                Some(b'\\') if i + 1 < b.len() => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push(Pair {
            keyword: keyword.to_string(),
            value: String::from_utf8_lossy(&value).into_owned(),
            text: start..i,
            value_text: value_start..i,
        });
        i = skip_space(i);
    }
    Conninfo { pairs, broken_at: None }
}

fn conninfo_secrets(raw: &str) -> Vec<Range<usize>> {
    let conninfo = parse_conninfo(raw);
    let mut hidden: Vec<Range<usize>> = conninfo
        .pairs
        .into_iter()
        .filter(|p| is_sensitive(&p.keyword))
        .map(|p| p.value_text)
        .collect();
    hidden.extend(conninfo.broken_at.map(|at| at..raw.len()));
    hidden
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

    /// Every connection-string form libpq accepts, and the odd ones it rejects: what is shown.
    const FORMS: &[(&str, &str)] = &[
        // URLs, one host or several
        (
            "postgres://user:PW@db.example.com:5432/app?sslmode=require",
            "postgres://user:***@db.example.com:5432/app?sslmode=require",
        ),
        ("postgres://user@host/db", "postgres://user@host/db"),
        (
            "postgresql://u:PW@h1:5432,h2:5432/db",
            "postgresql://u:***@h1:5432,h2:5432/db",
        ),
        (
            "postgres://u:PW@127.0.0.1:1,127.0.0.1:2/db",
            "postgres://u:***@127.0.0.1:1,127.0.0.1:2/db",
        ),
        (
            "postgres://u@h1,h2:6543/db?password=PW&sslmode=require",
            "postgres://u@h1,h2:6543/db?password=***&sslmode=require",
        ),
        (
            "postgres://u:PW@[::1]:5432,[2001:db8::2]/db",
            "postgres://u:***@[::1]:5432,[2001:db8::2]/db",
        ),
        ("POSTGRES://u:PW@h/db", "POSTGRES://u:***@h/db"),
        (
            "postgres:///db?host=/var/run/postgresql&password=PW",
            "postgres:///db?host=/var/run/postgresql&password=***",
        ),
        // percent-encoding: in the password, and in a parameter's name
        ("postgres://u:P%40W%2F@h/db", "postgres://u:***@h/db"),
        ("postgres://u@h/db?pass%77ord=PW", "postgres://u@h/db?pass%77ord=***"),
        (
            "postgres://u@h/db?sslpassword=PW&api_token=PW&X_Secret=PW&Signature=PW&sslkey=PW",
            "postgres://u@h/db?sslpassword=***&api_token=***&X_Secret=***&Signature=***&sslkey=***",
        ),
        // malformed: an unencoded `@` or `/` in the password, a bare word, a broken port
        ("postgres://u:P@W@h/db", "postgres://u:***@h/db"),
        ("postgres://u:P/W@h/db", "postgres://u:***@h/db"),
        (
            "postgres://u@h/db?sslmode=require&PW",
            "postgres://u@h/db?sslmode=require&***",
        ),
        ("postgres://h/db?password=P@W", "postgres://h/db?password=***"),
        ("postgres://h?password=P@W", "postgres://h?password=***"),
        ("postgres://u:P@W/X@h/db", "postgres://u:***@h/db"),
        // over-redacted, since the last `@` might end a password: an `@` in a parameter's value
        ("postgres://u:PW@h/db?application_name=a@b", "postgres://u:***@b"),
        ("postgres://u:PW@h:notaport/d", "postgres://u:***@h:notaport/d"),
        // other URLs
        (
            "https://x.supabase.co/storage?apikey=PW&x=1",
            "https://x.supabase.co/storage?apikey=***&x=1",
        ),
        ("https://user:PW@example.com/", "https://user:***@example.com/"),
        (
            "https://user:PW@example.com:99999/",
            "https://user:***@example.com:99999/",
        ),
        ("s3://bucket/prefix?region=eu", "s3://bucket/prefix?region=eu"),
        // libpq key=value
        ("host=h password=PW dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='PW b c' dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = PW dbname=d", "host=h password = *** dbname=d"),
        ("host=h password= 'PW' dbname =d", "host=h password= *** dbname =d"),
        (r"host=h password='it\'s PW' dbname=d", "host=h password=*** dbname=d"),
        (r"password=P\ W host=h", "password=*** host=h"),
        ("host=h\tPASSWORD=PW\nuser=u", "host=h\tPASSWORD=***\nuser=u"),
        ("host=h sslpassword=PW sslkey=PW", "host=h sslpassword=*** sslkey=***"),
        ("host=h port=5432,5433 user=u", "host=h port=5432,5433 user=u"),
        // unparseable key=value: what parsed is shown, the rest is not
        ("host=h password='PW unterminated", "host=h ***"),
        ("host=h PW", "host=h ***"),
        ("PW", "***"),
        ("", ""),
    ];

    #[test]
    fn redacts_every_connection_string_form() {
        let wrong: Vec<String> = FORMS
            .iter()
            .filter(|(raw, shown)| redact(raw) != *shown)
            .map(|(raw, shown)| format!("redact({raw:?})\n   = {:?}\n want {shown:?}", redact(raw)))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn scrub_removes_plain_and_encoded_secrets() {
        assert_eq!(scrub("a p@ss b p%40ss", &["p@ss"]), "a *** b ***");
        assert_eq!(scrub("nothing", &[""]), "nothing");
    }
}
