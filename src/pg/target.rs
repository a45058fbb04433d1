//! A connection target: the URL or conninfo parsed once (sslmode taken out for rustls), its redacted
//! form, the libpq environment for PostgreSQL's client programs, and transaction-pooler detection.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use super::tls::TlsMode;
use crate::error::UsageError;
use crate::secret::{is_postgres_url, parse_conninfo, percent_decode, redact, Secret, UrlParts};

/// A parsed database URL. Holds the password, so it prints only its redacted form.
#[derive(Clone)]
pub struct DbTarget {
    raw: Secret<String>,
    pub(super) config: Config,
    pub(super) tls: TlsMode,
    /// The root certificates the driver and the client programs trust ([`crate::pg::tls::root_file`]).
    pub(super) root_cert: Option<std::path::PathBuf>,
    /// Set by [`DbTarget::as_login`]: the role this copy logs in as.
    login: Option<Login>,
}

/// Another role on the same URL: its name is shown after the redacted URL, and the URL's own
/// password is still scrubbed from text.
#[derive(Clone)]
struct Login {
    user: String,
    admin_password: Option<Secret<String>>,
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
        let root_cert = crate::pg::tls::root_file(tls, root_cert.as_deref())?;
        config.ssl_mode(match tls {
            // allow: unencrypted first; `connect` tries again encrypted when the server refuses.
            TlsMode::Disable | TlsMode::Allow => SslMode::Disable,
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
            login: None,
        })
    }

    pub fn redacted(&self) -> String {
        match &self.login {
            Some(login) => format!("{} as {}", redact(self.raw.expose()), login.user),
            None => redact(self.raw.expose()),
        }
    }

    /// The same server, database, TLS and options, logging in as `role` with `password` (the
    /// restore's loader role): for the driver and, through [`DbTarget::libpq_env`], for psql.
    /// On Supabase's pooler a user name carries the project (`postgres.<ref>`); the role gets the
    /// same suffix.
    pub fn as_login(&self, role: &str, password: &str) -> DbTarget {
        let mut config = self.config.clone();
        let user = match self.config.get_user().and_then(|u| u.split_once('.')) {
            Some((_, project)) if self.is_supabase_pooler() => format!("{role}.{project}"),
            _ => role.to_string(),
        };
        config.user(&user);
        config.password(password);
        config.application_name("tenant-backup-loader");
        DbTarget {
            raw: self.raw.clone(),
            config,
            tls: self.tls,
            root_cert: self.root_cert.clone(),
            login: Some(Login {
                user,
                admin_password: self.password().map(Secret::new),
            }),
        }
    }

    /// The user name this target logs in as.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn first_port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    fn is_supabase_pooler(&self) -> bool {
        self.config.get_hosts().iter().any(|h| match h {
            Host::Tcp(name) => name.ends_with("pooler.supabase.com"),
            #[allow(unreachable_patterns)]
            _ => false,
        })
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

    /// The same target in session mode (port 5432 on every host), for pg_dump, psql and locks.
    pub fn session_mode(&self) -> Result<DbTarget, UsageError> {
        let raw = self.raw.expose();
        let switched = match UrlParts::parse(raw) {
            Some(url) => url_on_session_port(raw, &url),
            None => conninfo_on_session_port(raw).ok_or_else(|| {
                UsageError::new(
                    "DATABASE_URL is a transaction pooler, but its port could not be switched to 5432 for session mode: set BACKUP_DUMP_URL",
                )
            })?,
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
            env.push(("PGSSLROOTCERT", cert.display().to_string()));
        }
        // Server options from the URL (`options=-c …`, Neon's `endpoint=…`), as libpq reads them.
        if let Some(options) = self.config.get_options() {
            env.push(("PGOPTIONS", options.to_string()));
        }
        env
    }

    /// Removes this target's password from text that came from elsewhere.
    pub fn scrub(&self, text: &str) -> String {
        let own = self.password();
        let admin = self.login.as_ref().and_then(|l| l.admin_password.as_ref());
        let mut secrets = vec![self.raw.expose().as_str()];
        secrets.extend(own.as_deref());
        secrets.extend(admin.map(|p| p.expose().as_str()));
        if secrets.len() == 1 {
            return text.to_string();
        }
        crate::secret::scrub(text, &secrets)
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }
}

/// `postgres://u:p@h1:6543,h2/db?port=6543` → `postgres://u:p@h1:5432,h2:5432/db?port=5432`.
fn url_on_session_port(raw: &str, url: &UrlParts) -> String {
    let hosts: Vec<String> = raw[url.hosts.clone()]
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let name = match h.find(']') {
                Some(end) if h.starts_with('[') => &h[..=end],
                _ => h.split(':').next().unwrap_or(h),
            };
            format!("{name}:5432")
        })
        .collect();
    let mut out = format!("{}{}", &raw[..url.hosts.start], hosts.join(","));
    let Some(query) = &url.query else {
        out.push_str(&raw[url.hosts.end..]);
        return out;
    };
    out.push_str(&raw[url.hosts.end..query.start]);
    let params: Vec<&str> = url
        .params(raw)
        .iter()
        .map(|p| {
            if p.key == "port" {
                "port=5432"
            } else {
                &raw[p.text.clone()]
            }
        })
        .collect();
    out.push_str(&params.join("&"));
    out
}

/// `host=h port = 6543 password='a b'` → `host=h port=5432 password='a b'`; None if it does not parse.
fn conninfo_on_session_port(raw: &str) -> Option<String> {
    let conninfo = parse_conninfo(raw);
    if conninfo.broken_at.is_some() {
        return None;
    }
    let pairs: Vec<&str> = conninfo
        .pairs
        .iter()
        .map(|p| {
            if p.keyword == "port" {
                "port=5432"
            } else {
                &raw[p.text.clone()]
            }
        })
        .collect();
    Some(pairs.join(" "))
}

/// Takes `sslmode` and `sslrootcert` out of the connection string (tokio-postgres rejects
/// `verify-full`), returning the rest as written.
fn split_tls_params(raw: &str) -> (String, Option<String>, Option<String>) {
    let (mut sslmode, mut root) = (None, None);
    let mut take = |key: &str, value: String| {
        match key {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => return false,
        }
        true
    };
    if let Some(url) = UrlParts::parse(raw) {
        let Some(query) = url.query.as_ref().filter(|_| is_postgres_url(raw)) else {
            return (raw.to_string(), None, None);
        };
        let rest: Vec<&str> = url
            .params(raw)
            .into_iter()
            .filter(|p| {
                let value = p.value.clone().map(|v| percent_decode(&raw[v])).unwrap_or_default();
                !take(&p.key, value)
            })
            .map(|p| &raw[p.text])
            .collect();
        let mut out = raw[..query.start - 1].to_string();
        if !rest.is_empty() {
            out.push('?');
            out.push_str(&rest.join("&"));
        }
        return (out, sslmode, root);
    }
    let conninfo = parse_conninfo(raw);
    if conninfo.broken_at.is_some() {
        // Not ours to fix: tokio-postgres says what is wrong with it.
        return (raw.to_string(), None, None);
    }
    let rest: Vec<&str> = conninfo
        .pairs
        .into_iter()
        .filter(|p| !take(&p.keyword, p.value.clone()))
        .map(|p| &raw[p.text])
        .collect();
    (rest.join(" "), sslmode, root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_login_keeps_the_server_and_changes_the_role() {
        let admin = DbTarget::parse(
            "postgres://app:s3cr3t-admin@db.example.com:6000/shop?sslmode=require",
            "x",
        )
        .unwrap();
        let loader = admin.as_login("tenant_backup_loader_shop", "l0ader-pw");
        assert_eq!(
            loader.redacted(),
            format!("{} as tenant_backup_loader_shop", admin.redacted())
        );
        let env = loader.libpq_env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGUSER"), Some("tenant_backup_loader_shop"));
        assert_eq!(get("PGPASSWORD"), Some("l0ader-pw"));
        assert_eq!(get("PGHOST"), Some("db.example.com"));
        assert_eq!(get("PGPORT"), Some("6000"));
        assert_eq!(get("PGDATABASE"), Some("shop"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        // Both passwords are scrubbed from what the server or a child says.
        assert_eq!(loader.scrub("l0ader-pw and s3cr3t-admin"), "*** and ***");
        // Supabase's pooler names the project in the user: the loader's name carries it too.
        let pooler = DbTarget::parse(
            "postgres://postgres.abcdef:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
            "x",
        )
        .unwrap();
        assert_eq!(
            pooler.as_login("tenant_backup_loader_postgres", "p").user(),
            Some("tenant_backup_loader_postgres.abcdef")
        );
    }

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

    #[test]
    fn multi_host_and_conninfo_forms_parse_switch_to_session_mode_and_hide_the_password() {
        let url = "postgres://u:s3cret@h1:6543,[::1]:6543/d?sslmode=verify-full&port=6543";
        let t = DbTarget::parse(url, "x").unwrap();
        assert_eq!(t.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(t.password().as_deref(), Some("s3cret"));
        assert!(t.is_transaction_pooler());
        let s = t.session_mode().unwrap();
        assert_eq!(
            s.redacted(),
            "postgres://u:***@h1:5432,[::1]:5432/d?sslmode=verify-full&port=5432"
        );
        assert!(
            s.config.get_ports().iter().all(|&p| p == 5432),
            "{:?}",
            s.config.get_ports()
        );
        assert_eq!(s.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(s.scrub("auth failed for s3cret"), "auth failed for ***");

        let q = DbTarget::parse("postgresql://u@h1,h2/d?password=s3cret&sslmode=require", "x").unwrap();
        assert_eq!(q.password().as_deref(), Some("s3cret"));
        assert_eq!(q.tls_mode(), TlsMode::Require);
        assert_eq!(q.redacted(), "postgresql://u@h1,h2/d?password=***&sslmode=require");

        let kv = r"host=h1,h2 port = 6543 user=u password='s3 cr\'et' sslmode = verify-ca";
        let t = DbTarget::parse(kv, "x").unwrap();
        assert_eq!(t.password().as_deref(), Some("s3 cr'et"));
        assert_eq!(t.tls_mode(), TlsMode::VerifyCa);
        assert!(t.is_transaction_pooler());
        let s = t.session_mode().unwrap();
        assert_eq!(
            s.redacted(),
            "host=h1,h2 port=5432 user=u password=*** sslmode = verify-ca"
        );
        assert_eq!(s.password().as_deref(), Some("s3 cr'et"));
        assert!(!format!("{s:?}").contains("s3"));
    }
}
