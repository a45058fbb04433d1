//! A connection target: the URL or conninfo parsed once (sslmode taken out for rustls), its redacted
//! form, the libpq environment for PostgreSQL's client programs, and transaction-pooler detection.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use super::tls::TlsMode;
use crate::error::UsageError;
use crate::secret::{redact, Secret};

/// A parsed database URL. Holds the password, so it prints only its redacted form.
#[derive(Clone)]
pub struct DbTarget {
    raw: Secret<String>,
    pub(super) config: Config,
    pub(super) tls: TlsMode,
    pub(super) root_cert: Option<String>,
}

impl std::fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DbTarget {
    /// Parses a `postgres://` URL or a libpq `key=value` string. `what` names where it came from,
    /// for the error message.
    pub fn parse(raw: &str, what: &str) -> Result<Self, UsageError> {
        let (cleaned, sslmode, root_cert) = split_tls_params(raw);
        let tls = TlsMode::parse(sslmode.as_deref().unwrap_or("prefer"))?;
        let mut config = Config::from_str(&cleaned).map_err(|e| {
            UsageError::new(format!(
                "{what} is not a valid PostgreSQL URL ({}): expected postgres://user:password@host:5432/dbname",
                crate::secret::scrub(&e.to_string(), &[raw])
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(UsageError::new(format!(
                "{what} names no host: expected postgres://user:password@host:5432/dbname"
            )));
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        config.application_name("tenant-backup");
        config.connect_timeout(Duration::from_secs(15));
        Ok(DbTarget {
            raw: Secret::new(raw.to_string()),
            config,
            tls,
            root_cert,
        })
    }

    pub fn redacted(&self) -> String {
        redact(self.raw.expose())
    }

    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn first_port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// Supabase's transaction pooler (Supavisor, port 6543): it breaks named prepared statements,
    /// session settings and advisory locks.
    pub fn is_transaction_pooler(&self) -> bool {
        let tcp_hosts = self.config.get_hosts().iter().filter_map(|h| match h {
            Host::Tcp(name) => Some(name.as_str()),
            #[allow(unreachable_patterns)]
            _ => None,
        });
        let port = self.first_port();
        port == 6543 || tcp_hosts.clone().any(|h| h.ends_with("pooler.supabase.com")) && port != 5432
    }

    /// The same target in session mode (port 5432), for pg_dump, psql and advisory locks.
    pub fn session_mode(&self) -> Result<DbTarget, UsageError> {
        let raw = self.raw.expose();
        let switched = match url::Url::parse(raw) {
            Ok(mut url) if url.port().is_some() || url.host().is_some() => {
                let _ = url.set_port(Some(5432));
                url.to_string()
            }
            _ => raw
                .split_whitespace()
                .map(|kv| {
                    if kv.starts_with("port=") {
                        "port=5432".to_string()
                    } else {
                        kv.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        };
        DbTarget::parse(&switched, "the session-mode URL")
    }

    /// Environment for pg_dump, pg_restore and psql: the password travels here, never on a command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[allow(unreachable_patterns)]
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        let mut env = vec![
            ("PGHOST", hosts.join(",")),
            ("PGSSLMODE", self.tls.as_str().to_string()),
            ("PGAPPNAME", "tenant-backup".to_string()),
            ("PGCONNECT_TIMEOUT", "15".to_string()),
        ];
        if !ports.is_empty() {
            env.push(("PGPORT", ports.join(",")));
        }
        if let Some(user) = self.config.get_user() {
            env.push(("PGUSER", user.to_string()));
        }
        if let Some(db) = self.config.get_dbname() {
            env.push(("PGDATABASE", db.to_string()));
        }
        if let Some(password) = self.password() {
            env.push(("PGPASSWORD", password));
        }
        if let Some(cert) = &self.root_cert {
            env.push(("PGSSLROOTCERT", cert.clone()));
        }
        env
    }

    /// Removes this target's password from text that came from elsewhere.
    pub fn scrub(&self, text: &str) -> String {
        match self.password() {
            Some(p) => crate::secret::scrub(text, &[&p, self.raw.expose()]),
            None => text.to_string(),
        }
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }
}

/// Takes `sslmode` and `sslrootcert` out of the connection string (tokio-postgres rejects
/// `verify-full`), returning the rest untouched.
fn split_tls_params(raw: &str) -> (String, Option<String>, Option<String>) {
    if let Ok(mut url) = url::Url::parse(raw) {
        if url.scheme() == "postgres" || url.scheme() == "postgresql" {
            let mut sslmode = None;
            let mut root = None;
            let rest: Vec<(String, String)> = url
                .query_pairs()
                .filter_map(|(k, v)| match k.as_ref() {
                    "sslmode" => {
                        sslmode = Some(v.into_owned());
                        None
                    }
                    "sslrootcert" => {
                        root = Some(v.into_owned());
                        None
                    }
                    _ => Some((k.into_owned(), v.into_owned())),
                })
                .collect();
            if rest.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(rest);
            }
            return (url.to_string(), sslmode, root);
        }
        return (raw.to_string(), None, None);
    }
    let mut sslmode = None;
    let mut root = None;
    let rest: Vec<&str> = raw
        .split_whitespace()
        .filter(|kv| match kv.split_once('=') {
            Some(("sslmode", v)) => {
                sslmode = Some(v.to_string());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    (rest.join(" "), sslmode, root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_sslmode_values() {
        let t = DbTarget::parse("postgres://u:p@h:5432/d?sslmode=verify-full", "x").unwrap();
        assert_eq!(t.tls_mode(), TlsMode::VerifyFull);
        let t = DbTarget::parse("postgres://u:p@h/d", "x").unwrap();
        assert_eq!(t.tls_mode(), TlsMode::Prefer);
        assert!(DbTarget::parse("postgres://u:p@h/d?sslmode=bogus", "x").is_err());
        let t = DbTarget::parse("host=h user=u password=p sslmode=require", "x").unwrap();
        assert_eq!(t.tls_mode(), TlsMode::Require);
    }

    #[test]
    fn detects_transaction_pooler_and_switches_to_session_mode() {
        let url = "postgres://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres";
        let t = DbTarget::parse(url, "x").unwrap();
        assert!(t.is_transaction_pooler());
        let s = t.session_mode().unwrap();
        assert!(!s.is_transaction_pooler());
        assert_eq!(s.first_port(), 5432);
        assert_eq!(s.password().as_deref(), Some("pw"));
        let direct = DbTarget::parse("postgres://u:p@db.abc.supabase.co:5432/postgres", "x").unwrap();
        assert!(!direct.is_transaction_pooler());
    }

    #[test]
    fn libpq_env_carries_the_password_and_debug_hides_it() {
        let t = DbTarget::parse("postgres://u:s3cret@h:5433/d?sslmode=require", "x").unwrap();
        let env = t.libpq_env();
        assert!(env.contains(&("PGPASSWORD", "s3cret".to_string())));
        assert!(env.contains(&("PGPORT", "5433".to_string())));
        assert!(env.contains(&("PGSSLMODE", "require".to_string())));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn invalid_url_is_usage_error_without_password() {
        let err = DbTarget::parse("postgres://u:s3cret@h:notaport/d", "DATABASE_URL").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
