//! `backup --tenant S … | --all`

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_postgres::Client;

use crate::app::context::Context;
use crate::app::output::{human_size, table};
use crate::app::progress::Progress;
use crate::backup::compress::Compression;
use crate::backup::runner::{run_backups, LockPolicy, TenantResult, TenantStatus};
use crate::backup::{BackupEnv, BackupRequest};
use crate::cli::{BackupArgs, BackupType, CompressArg, DumpArgs, FormatArg};
use crate::cmd::Outcome;
use crate::pg::catalog::{BackupKind, Tenant};
use crate::pg::tools::{DumpFormat, PgDump};
use crate::usage;

pub async fn run(args: BackupArgs, ctx: &Context) -> Result<Outcome> {
    dump_choice(&args.dump)?;
    let client = ctx.connect().await?;

    // Everything a user can get wrong is checked before the first dump starts.
    let tenants = if args.all {
        ctx.catalog.tenants(&client).await?
    } else {
        named_tenants(ctx, &client, &args.tenants).await?
    };
    let kind = match args.backup_type {
        BackupType::Manual => BackupKind::Manual,
        BackupType::Automatic => BackupKind::Automatic,
    };
    let mut jobs = Vec::new();
    for tenant in tenants {
        let created_by_id = match &args.created_by {
            Some(who) => Some(ctx.catalog.resolve_user(&client, &tenant.schema_name, who).await?),
            None => None,
        };
        jobs.push(BackupRequest {
            tenant,
            kind,
            created_by_id,
            max_size: args.dump.max_size,
            progress: None,
        });
    }
    if jobs.is_empty() {
        tracing::warn!("no tenants in {}: nothing to back up", ctx.catalog.tenants_table);
        return Ok(Outcome::Done);
    }
    let env = Arc::new(backup_env(ctx, &client, &args.dump).await?);
    drop(client);

    let policy = LockPolicy::Wait(Duration::from_secs(args.lock_timeout));
    let progress = Progress::new(ctx.output.progress);
    let results = run_backups(&env, &ctx.dump, jobs, args.concurrency as usize, policy, &progress).await;
    report(ctx, &results)?;
    Ok(Outcome::from_failures(results.iter().filter(|r| r.failed()).count()))
}

/// Checks the dump flags before anything is touched.
pub fn dump_choice(args: &DumpArgs) -> Result<&DumpArgs> {
    if args.level.is_some() && args.compress == CompressArg::None {
        return Err(usage!("--level needs --compress zstd or gzip"));
    }
    if args.inserts && matches!(args.format, FormatArg::Custom | FormatArg::Json) {
        return Err(usage!("--inserts applies to --format sql only"));
    }
    compression_for(args, DumpFormat::Plain)?;
    Ok(args)
}

fn compression_for(args: &DumpArgs, format: DumpFormat) -> Result<Compression> {
    let name = match (args.compress, format) {
        (CompressArg::Auto, DumpFormat::Custom) => "none",
        (CompressArg::Auto, _) | (CompressArg::Zstd, _) => "zstd",
        (CompressArg::Gzip, _) => "gzip",
        (CompressArg::None, _) => "none",
    };
    Ok(Compression::from_name(name, args.level)?)
}

/// Finds the server's version and a pg_dump that can dump it, and settles the format: `auto` is
/// plain SQL when such a pg_dump exists, else the native json format (saying why).
pub async fn backup_env(ctx: &Context, client: &Client, args: &DumpArgs) -> Result<BackupEnv> {
    let (version, major) = server_version(client).await?;
    let (format, pg_dump) = match args.format {
        FormatArg::Json => (DumpFormat::Json, None),
        requested => match PgDump::find(ctx.pg_dump.as_deref(), major) {
            Ok(p) => {
                tracing::debug!("using {} ({}) for PostgreSQL {version}", p.path.display(), p.version);
                let format = if requested == FormatArg::Custom {
                    DumpFormat::Custom
                } else {
                    DumpFormat::Plain
                };
                (format, Some(p))
            }
            Err(e) if requested == FormatArg::Auto => {
                tracing::info!("using the native json format (no pg_dump needed): {e}");
                (DumpFormat::Json, None)
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context("--format sql and custom need pg_dump; --format json or auto do not")
                )
            }
        },
    };
    Ok(BackupEnv {
        storage: ctx.storage.clone(),
        catalog: ctx.catalog.clone(),
        dump_target: ctx.dump.clone(),
        pg_dump,
        format,
        inserts: args.inserts && format == DumpFormat::Plain,
        compression: compression_for(args, format)?,
        server_version: version,
        clock: ctx.clock.clone(),
        spool_dir: std::env::temp_dir(),
    })
}

/// What restoring a dump of `format` needs: pg_dump's installation (for psql and pg_restore), or
/// nothing for the native json format, which is loaded through the driver.
pub async fn restore_tools(ctx: &Context, client: &Client, format: DumpFormat) -> Result<Option<PgDump>> {
    if format == DumpFormat::Json {
        return Ok(None);
    }
    Ok(Some(pg_tools(ctx, client).await?.0))
}

/// The pg_dump (and so the psql and pg_restore beside it) for this server, and the server's version.
pub async fn pg_tools(ctx: &Context, client: &Client) -> Result<(PgDump, String)> {
    let (version, major) = server_version(client).await?;
    let pg_dump = PgDump::find(ctx.pg_dump.as_deref(), major).map_err(|e| usage!("{e}"))?;
    tracing::debug!(
        "using {} ({}) for PostgreSQL {version}",
        pg_dump.path.display(),
        pg_dump.version
    );
    Ok((pg_dump, version))
}

pub async fn server_version(client: &Client) -> Result<(String, u32)> {
    let rows = client
        .simple_query("SELECT current_setting('server_version'), current_setting('server_version_num')")
        .await
        .context("reading the server version")?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .context("the server did not report its version")?;
    let version = row
        .get(0)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let num: u32 = row.get(1).unwrap_or("0").parse().unwrap_or(0);
    Ok((version, num / 10000))
}

fn report(ctx: &Context, results: &[TenantResult]) -> Result<()> {
    if ctx.output.json {
        ctx.output.json(&results)?;
        return Ok(());
    }
    let mut rows = Vec::new();
    for r in results {
        match &r.status {
            TenantStatus::BackedUp { backup: o } => rows.push(vec![
                r.tenant.clone(),
                o.id.to_string(),
                o.key.clone(),
                human_size(o.size),
                o.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                format!("{:.2} s", o.duration.as_secs_f64()),
            ]),
            _ => rows.push(vec![
                r.tenant.clone(),
                "-".into(),
                "FAILED (see above)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    print!("{}", table(&["tenant", "id", "key", "size", "date", "duration"], &rows));
    let failed = results.iter().filter(|r| r.failed()).count();
    if results.len() > 1 || failed > 0 {
        eprintln!("{} backed up, {failed} failed", results.len() - failed);
    }
    Ok(())
}

/// The tenants named on the command line, checked against the tenant table.
pub async fn named_tenants(ctx: &Context, client: &Client, names: &[String]) -> Result<Vec<Tenant>> {
    let mut out = Vec::new();
    for name in names {
        out.push(ctx.catalog.tenant(client, name).await?);
    }
    Ok(out)
}
