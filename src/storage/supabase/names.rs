//! What the server can store, and how names travel: its character rules for keys and bucket
//! names (refused before any request), percent-encoding of each path segment, and the role a key
//! carries.

use base64::Engine as _;

/// What a key may do, as far as it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The service_role JWT, or a secret (`sb_secret_…`) key: bypasses row-level security.
    Service,
    /// Anything else (`anon`, `authenticated`, a publishable key): row-level security blinds it.
    Other(String),
    /// Not a key whose role can be read.
    Unknown,
}

pub(super) fn role_of(key: &str) -> Role {
    if key.starts_with("sb_secret_") {
        return Role::Service;
    }
    if key.starts_with("sb_publishable_") {
        return Role::Other("publishable (anon)".into());
    }
    if !key.starts_with("eyJ") {
        return Role::Unknown;
    }
    let claim = key
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("role").and_then(|r| r.as_str()).map(String::from));
    match claim.as_deref() {
        Some("service_role") => Role::Service,
        Some(other) => Role::Other(other.to_string()),
        None => Role::Unknown,
    }
}

/// The characters the server accepts in an object name (its `limits.ts`:
/// `^[A-Za-z0-9_/!.*'() &$=@;:+,?-]*$`); `%`, `#`, non-ASCII and control characters are not.
fn storable_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_/!.*'() &$=@;:+,?-".contains(c)
}

/// Why the server could not store `name` (a key or prefix), if it could not.
pub(super) fn unstorable(name: &str) -> Option<String> {
    if let Some(c) = name.chars().find(|c| !storable_char(*c)) {
        return Some(format!(
            "{c:?} is not a character Supabase Storage accepts in a name (letters, digits and _/!.*'() &$=@;:+,?- only)"
        ));
    }
    if name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Some("it has an empty, `.` or `..` segment".into());
    }
    None
}

/// Bucket names: the same characters without `/`, 1 to 100 of them.
pub(super) fn bucket_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 100 {
        return Some("a bucket name has 1 to 100 characters".into());
    }
    name.chars()
        .find(|c| *c == '/' || !storable_char(*c))
        .map(|c| format!("{c:?} is not a character Supabase Storage accepts in a bucket name"))
}

/// One path segment, percent-encoded: only unreserved characters stay as they are, so no name
/// can become a query (`?`), a fragment (`#`), an escape (`%`) or a parent directory.
pub(super) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn encode_path(name: &str) -> String {
    name.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded_and_bad_names_refused() {
        assert_eq!(encode_path("a b/c?d#e%f/..x"), "a%20b/c%3Fd%23e%25f/..x");
        assert_eq!(
            encode_path("mindcare/backup-sql-mindcare-2026.sql.zst"),
            "mindcare/backup-sql-mindcare-2026.sql.zst"
        );
        assert!(unstorable("exports 2026/a+b&c=d;e,f:g@h$i'(j)*!?k").is_none());
        for bad in ["%2e%2e", "a#b", "clínica", "a\tb", "a/../b", "a//b", "./a", "x\u{7f}"] {
            assert!(unstorable(bad).is_some(), "{bad:?}");
        }
        assert!(bucket_problem("backups").is_none());
        assert!(bucket_problem("back/ups").is_some() && bucket_problem("").is_some() && bucket_problem("b%").is_some());
    }

    #[test]
    fn roles_are_read_from_the_key() {
        let jwt = |payload: &str| {
            format!(
                "eyJhbGciOiJIUzI1NiJ9.{}.sig",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
            )
        };
        assert_eq!(role_of(&jwt(r#"{"role":"service_role"}"#)), Role::Service);
        assert_eq!(role_of(&jwt(r#"{"role":"anon"}"#)), Role::Other("anon".into()));
        assert_eq!(role_of("sb_secret_x"), Role::Service);
        assert!(matches!(role_of("sb_publishable_x"), Role::Other(_)));
        assert_eq!(role_of("eyJhbGciOiJIUzI1NiJ9.service.role"), Role::Unknown);
    }
}
