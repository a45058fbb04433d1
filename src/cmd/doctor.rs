//! `doctor`: one line per check of the setup; exit 1 if any fails.

use anyhow::Result;
use serde::Serialize;

use crate::app::context::Context;
use crate::backup::env::NATIVE_ABOVE_TENANTS;
use crate::cmd::Outcome;
use crate::outln;
use crate::pg::tools::server_version;
use crate::pg::tools::{FindError, PgDump};
use crate::storage::Access;

#[derive(Serialize)]
struct Check {
    check: &'static str,
    ok: bool,
    detail: String,
}

pub async fn run(ctx: &Context) -> Result<Outcome> {
    let mut checks = Vec::new();
    let mut add = |check: &'static str, ok: bool, detail: String| checks.push(Check { check, ok, detail });

    let mut major = None;
    let mut tenants = 0u64;
    let mut keyed = Vec::new();
    match &ctx.db_problem {
        // No database to check: say why, and check everything else.
        Some(problem) => add("database", false, problem.clone()),
        None => {
            match ctx.connect().await {
                Ok(client) => {
                    match ctx.key_store.wrapped(&client).await {
                        Ok(k) => keyed = k,
                        Err(e) => add("keys in bucket", false, format!("{e:#}")),
                    }
                    match server_version(&client).await {
                        Ok((v, m)) => {
                            major = Some(m);
                            add(
                                "database",
                                true,
                                format!("{} answers: PostgreSQL {v}", ctx.db.redacted()),
                            );
                        }
                        Err(e) => add("database", false, format!("{e:#}")),
                    }
                    let mut schemas = Vec::new();
                    match ctx.catalog.tenants(&client).await {
                        Ok(t) => {
                            tenants = t.len() as u64;
                            schemas = t.iter().map(|t| t.schema_name.clone()).collect();
                            add(
                                "tenants",
                                true,
                                format!("{} tenants in {}", t.len(), ctx.catalog.tenants_table),
                            )
                        }
                        Err(e) => add("tenants", false, format!("{e:#}")),
                    }
                    let (ok, detail) = crate::restore::loader::doctor(&client, &schemas).await;
                    add("loader role", ok, detail);
                }
                Err(e) => add("database", false, format!("{e:#}")),
            }
            let pooler = ctx.db.is_transaction_pooler();
            add(
                "pooler",
                true,
                if pooler {
                    format!(
                        "DATABASE_URL is a transaction pooler; dumps and locks use {}",
                        ctx.dump.redacted()
                    )
                } else {
                    "DATABASE_URL is not a transaction pooler".to_string()
                },
            );
            match ctx.connect_session().await {
                Ok(_) => add(
                    "session",
                    true,
                    format!("{} accepts session connections (pg_dump, locks)", ctx.dump.redacted()),
                ),
                Err(e) => add("session", false, format!("{e:#}")),
            }
        }
    }

    let (tried, found) = PgDump::candidates(ctx.pg_dump.as_deref());
    let listed = if found.is_empty() {
        format!(
            "none found (looked at {})",
            if tried.is_empty() {
                "PATH".into()
            } else {
                tried.join(", ")
            }
        )
    } else {
        found
            .iter()
            .map(|d| format!("{} {}", d.path.display(), d.version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // An explicit --pg-dump / PG_DUMP that does not answer is a mistake (backup refuses it).
    let explicit = ctx.pg_dump.is_some();
    add("pg_dump found", !(explicit && found.is_empty()), listed);
    if let Some(m) = major {
        match PgDump::find(ctx.pg_dump.as_deref(), m) {
            Ok(d) if tenants > NATIVE_ABOVE_TENANTS => add(
                "pg_dump used",
                true,
                format!(
                    "{} ({}) for --format sql and custom; --format auto makes native json dumps ({tenants} tenants, more than {NATIVE_ABOVE_TENANTS})",
                    d.path.display(),
                    d.version,
                ),
            ),
            Ok(d) => add(
                "pg_dump used",
                true,
                format!(
                    "{} ({}); --format auto makes plain SQL dumps, restored with {}",
                    d.path.display(),
                    d.version,
                    d.sibling("psql").display()
                ),
            ),
            Err(e @ FindError::NotFound { .. }) if explicit => {
                add("pg_dump used", false, format!("--pg-dump / PG_DUMP: {e}"))
            }
            Err(e) => add(
                "pg_dump used",
                true,
                format!("none usable ({e}); --format auto makes native json dumps"),
            ),
        }
    }

    // At the top of the bucket, so no empty folder is left behind.
    let probe = format!(".tenant-backup-doctor-probe-{}", std::process::id());
    let storage = ctx.storage.describe();
    let proven = match ctx.storage_configured {
        // What backup would refuse to use, doctor does not write to.
        false => Err(
            "no storage configured: set --storage or BACKUP_STORAGE (backup, run-scheduled and cleanup refuse to run without it)"
                .to_string(),
        ),
        true => ctx.prove_storage(Access::Read).await.map_err(|e| format!("{e:#}")),
    };
    match proven {
        Err(e) => add("storage", false, e),
        Ok(()) => match ctx
            .storage
            .put_bytes(&probe, b"tenant-backup doctor probe\n".to_vec())
            .await
        {
            Ok(()) => match ctx.storage.delete(&probe).await {
                Ok(()) => add(
                    "storage",
                    true,
                    format!("{storage} is reachable and writable (probe written and deleted)"),
                ),
                Err(e) => add(
                    "storage",
                    false,
                    format!("{storage}: wrote a probe but could not delete it: {e}"),
                ),
            },
            Err(e) => add("storage", false, format!("{storage}: {e}")),
        },
    }

    // Encryption and signing: configured, and consistent (a mismatched identity/recipient pair is
    // refused when the configuration is read, before doctor runs).
    let keys = &ctx.keys;
    let encryption = match (&keys.recipient, &keys.identity) {
        (None, _) => (
            true,
            "off: backups are stored unencrypted (run `tenant-backup keys init`, then set BACKUP_AGE_RECIPIENT)"
                .to_string(),
        ),
        (Some(r), None) => (
            true,
            format!(
                "on, to tenant keys wrapped to {} (no identity here: this machine can back up but not read backups)",
                r.as_string()
            ),
        ),
        (Some(r), Some(_)) => (
            true,
            format!(
                "on, to tenant keys wrapped to {}; the identity here matches it (backups can be read)",
                r.as_string()
            ),
        ),
    };
    add("encryption", encryption.0, encryption.1);
    let signing = match (&keys.signing_key, &keys.recipient) {
        (Some(_), _) => (
            true,
            "on: manifests are signed and checked (BACKUP_SIGNING_KEY)".to_string(),
        ),
        (None, Some(_)) => (
            false,
            "off while encryption is on: set BACKUP_SIGNING_KEY too, or a rewritten manifest cannot be told from ours"
                .to_string(),
        ),
        (None, None) => (
            true,
            "off: manifests carry a sha256 only (BACKUP_SIGNING_KEY signs them)".to_string(),
        ),
    };
    add("signing", signing.0, signing.1);
    let identity = match (&keys.identity, &keys.identity_file) {
        (None, _) => "none here (restore, verify and download need it; backups do not)".to_string(),
        (Some(_), None) => "from BACKUP_AGE_IDENTITY (the environment)".to_string(),
        // A file open to others was refused when the configuration was read.
        (Some(_), Some(path)) => format!("from {} (mode 0600: its owner's only)", path.display()),
    };
    add("identity", true, identity);

    // Every tenant key in the bucket too: without its copy, a tenant's backups die with the database.
    if !keyed.is_empty() {
        let mut missing = Vec::new();
        let mut failed = None;
        for (tenant, wrapped_to) in &keyed {
            match ctx
                .storage
                .size(&crate::crypto::bucket::key_of(tenant, wrapped_to))
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => missing.push(tenant.as_str()),
                Err(e) => {
                    failed = Some(format!("{e}"));
                    break;
                }
            }
        }
        let (ok, detail) = match (failed, missing.is_empty()) {
            (Some(e), _) => (false, format!("cannot check: {e}")),
            (None, true) => (
                true,
                format!("all {} tenant keys are in {} (.keys/)", keyed.len(), storage),
            ),
            (None, false) => (
                false,
                format!(
                    "{} of {} tenant keys are not in the bucket ({}): if the database is lost, so are their encrypted backups; the next backup of each stores its key",
                    missing.len(),
                    keyed.len(),
                    missing.join(", ")
                ),
            ),
        };
        add("keys in bucket", ok, detail);
    }

    let failed = checks.iter().filter(|c| !c.ok).count();
    if ctx.output.json {
        ctx.output.json(&checks)?;
    } else {
        for c in &checks {
            outln!("{} {:<13} {}", if c.ok { "ok  " } else { "FAIL" }, c.check, c.detail)?;
        }
    }
    Ok(Outcome::from_failures(failed))
}
