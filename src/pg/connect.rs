//! Connecting: TLS as `sslmode` asks, transient failures retried with capped backoff, and the
//! server's own words when something fails.

use std::cell::Cell;

use anyhow::{Context as _, Result};
use backon::Retryable;
use tokio_postgres::Client;

use super::target::DbTarget;
use super::tls::TlsMode;
use crate::retry::backoff;

impl DbTarget {
    /// Connects, retrying transient failures (refused, reset, server restarting) with the shared
    /// backoff. Any other error fails at once with the server's message.
    pub async fn connect(&self) -> Result<Client> {
        let tls = self.tls_connector().context("setting up TLS")?;
        let attempts = Cell::new(1u32);
        let result = (|| self.connect_allowing(tls.as_ref()))
            .retry(backoff(CONNECT_RETRIES))
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .notify(|err, delay| {
                attempts.set(attempts.get() + 1);
                tracing::warn!(
                    "connecting to {} failed ({}); retrying in {:.1}s",
                    self.redacted(),
                    self.scrub(&err.to_string()),
                    delay.as_secs_f64()
                );
            })
            .await;
        result.map_err(|err| {
            let code = err.as_db_error().map(|db| db.code().code());
            let hint = if is_transient(&err) {
                format!(
                    " (gave up after {} attempts): check that the server is running and that --database-url / DATABASE_URL points at it",
                    attempts.get()
                )
            } else if matches!(code, Some("28P01" | "28000")) {
                " (check the user name and password in --database-url / DATABASE_URL, and in BACKUP_DUMP_URL when set; special characters in a URL's password must be percent-encoded)".to_string()
            } else if is_untrusted_certificate(&err) {
                " (the server's certificate is not trusted for this sslmode: set sslrootcert=/path/to/its CA in the URL or put the CA in ~/.postgresql/root.crt; verify-full also needs the host name in the certificate)".to_string()
            } else if code == Some("3D000") {
                " (check the database name at the end of the URL)".to_string()
            } else {
                String::new()
            };
            let message = format!(
                "could not connect to {}: {}{hint}",
                self.redacted(),
                self.scrub(&describe_pg_error(&err))
            );
            // A wrong password, user or database name is the operator's to fix (exit 2); a server
            // that does not answer is work that failed (exit 1), which a later run may finish.
            if matches!(code, Some("28P01" | "28000" | "3D000")) || is_untrusted_certificate(&err) {
                anyhow::Error::new(crate::error::UsageError::new(message))
            } else {
                anyhow::anyhow!(message)
            }
        })
    }

    /// One attempt; with `sslmode=allow`, unencrypted first and encrypted when the server
    /// refuses that (libpq's order).
    async fn connect_allowing(
        &self,
        tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<Client, tokio_postgres::Error> {
        if self.tls != TlsMode::Allow {
            return self.connect_once(&self.config, tls).await;
        }
        match self.connect_once(&self.config, None).await {
            Err(err) if err.as_db_error().is_some() => {
                let mut encrypted = self.config.clone();
                encrypted.ssl_mode(tokio_postgres::config::SslMode::Require);
                self.connect_once(&encrypted, tls).await
            }
            other => other,
        }
    }

    async fn connect_once(
        &self,
        config: &tokio_postgres::Config,
        tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<Client, tokio_postgres::Error> {
        Ok(match tls {
            None => {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                let cancel = client.cancel_token();
                drive(conn, async move {
                    let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                });
                client
            }
            Some(tls) => {
                let (client, conn) = config.connect(tls.clone()).await?;
                let (cancel, tls) = (client.cancel_token(), tls.clone());
                drive(conn, async move {
                    let _ = cancel.cancel_query(tls).await;
                });
                client
            }
        })
    }
    fn tls_connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
        if self.tls == TlsMode::Disable {
            return Ok(None);
        }
        let config = crate::pg::tls::client_config(self.tls, self.root_cert.as_deref())?;
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// Runs the connection until its client is dropped. A stop meanwhile first cancels the query in
/// progress: a server waiting for a lock would not notice that we are gone until it got it.
fn drive<C>(conn: C, cancel: impl std::future::Future<Output = ()> + Send + 'static)
where
    C: std::future::Future + Send + 'static,
{
    let on_stop = crate::stop::on_stop(cancel);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(on_stop);
    });
}

/// The server's certificate was refused: a configuration to fix (roots, host name), never retried.
fn is_untrusted_certificate(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        ) {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
            {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Attempts after the first.
const CONNECT_RETRIES: u32 = 3;

/// Connection-level failures and the server codes a restart or a pooler produces.
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        return matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003" | "08006" | "08001" | "08004"
        );
    }
    if err.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
                    | TimedOut
                    | UnexpectedEof
                    | NotConnected
            );
        }
        source = e.source();
    }
    false
}

/// For `map_err`: the server's own message, after what we were doing.
pub fn pg_context(what: impl std::fmt::Display) -> impl FnOnce(tokio_postgres::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("{what}: {}", describe_pg_error(&e))
}

/// The server's own message (with detail and hint) rather than tokio-postgres' generic "db error".
/// The server's error without any row data, for errors that may concern a backup's rows (a
/// restore's load): the message with quoted values withheld, its SQLSTATE, and the table, column
/// and constraint it names. DETAIL (`Failing row contains (…)`, `Key (id)=(…)`) is left out.
pub fn describe_pg_error_without_data(err: &tokio_postgres::Error) -> String {
    let Some(db) = err.as_db_error() else {
        return describe_pg_error(err);
    };
    let mut s = format!("{} ({})", withhold_values(db.message()), db.code().code());
    for (what, name) in [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(name) = name {
            s.push_str(&format!("; {what} {name}"));
        }
    }
    s
}

/// `… for type date: "a value"` and `value "123" is out of range …`: the value goes.
pub fn withhold_values(msg: &str) -> String {
    let mut m = msg.to_string();
    if m.ends_with('"') {
        if let Some(at) = m.rfind(": \"") {
            m.truncate(at);
            m.push_str(": (value withheld)");
        }
    }
    if let Some(start) = m.find("value \"") {
        if let Some(len) = m[start + 7..].find('"') {
            m.replace_range(start..start + 7 + len + 1, "value (withheld)");
        }
    }
    m
}

pub fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(detail) = db.detail() {
            s.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    let mut s = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        s.push_str(&format!(": {e}"));
        source = e.source();
    }
    s
}
