//! `restore --tenant S (--id N | --latest | --file KEY)`

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::human_size;
use crate::backup::format::DumpFormat;
use crate::cli::RestoreArgs;
use crate::cmd::Outcome;
use crate::jsonl::JsonRestore;
use crate::pg::catalog::schema_state;
use crate::pg::lock;
use crate::restore::access::check_access;
use crate::restore::{fetch_verified, open_decompressed, plan, resolve, run_psql, Source, Target, Which};
use crate::usage;

#[derive(Serialize)]
struct Restored<'a> {
    tenant: &'a str,
    restored_into: &'a str,
    backup: &'a Source,
    previous_schema_kept_as: Option<&'a str>,
    dry_run: bool,
    duration_seconds: f64,
}

pub async fn run(args: RestoreArgs, ctx: &Context) -> Result<Outcome> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.yes && !args.dry_run && !interactive {
        return Err(usage!(
            "restore replaces a live schema: pass --yes to confirm when not running on a terminal (or --dry-run to only check)"
        ));
    }
    if let Some(into) = &args.into {
        if into.is_empty() || into.len() > 63 || into.starts_with("pg_") {
            return Err(usage!(
                "--into {into:?} is not a usable schema name (1 to 63 bytes, not starting with pg_)"
            ));
        }
    }
    let which = match (args.id, args.latest, &args.file) {
        (Some(id), _, _) => Which::Id(id),
        (_, true, _) => Which::Latest,
        (_, _, Some(key)) => Which::Key(key.clone()),
        _ => return Err(usage!("say which backup: --id N, --latest or --file KEY")),
    };
    let started = Instant::now();
    let client = ctx.connect().await?;
    let tenant = ctx.catalog.tenant(&client, &args.tenant).await?;
    let mut source = resolve(
        &ctx.catalog,
        &client,
        ctx.storage.as_ref(),
        &tenant,
        &which,
        args.from_tenant.as_deref(),
    )
    .await?;
    source.decrypt = check_access(&source, &ctx.keys, &ctx.key_store, &client, args.allow_unsigned).await?;
    let target_name = args.into.clone().unwrap_or_else(|| tenant.schema_name.clone());
    let (exists, records_exist) = schema_state(&client, &ctx.catalog, &target_name).await?;
    let target = match &args.into {
        Some(into) => {
            if exists {
                return Err(usage!("schema {into:?} already exists: --into needs a new name"));
            }
            if *into == source.source_schema {
                return Err(usage!(
                    "--into {into:?} is the schema the backup itself creates: pick another name"
                ));
            }
            Target::Into { schema: into.clone() }
        }
        None => Target::Replace {
            schema: target_name.clone(),
            exists,
            drop_previous: args.drop_previous,
        },
    };
    let json = source.format == DumpFormat::Json;
    if json && (args.into.is_some() || args.from_tenant.is_some()) {
        return Err(usage!(
            "{} is a json backup: it loads into the tenant's existing tables, so --into and --from-tenant are not available for it",
            source.key
        ));
    }
    let tools = crate::restore::tools_for(&client, source.format, ctx.pg_dump.as_deref()).await?;
    drop(client);

    // Checked before anything runs.
    let file = fetch_verified(ctx.storage.as_ref(), &source).await?;

    let lock_timeout = Duration::from_secs(args.lock_timeout);
    let now = ctx.clock.now();
    let sql = plan(&source, &target, &ctx.catalog, records_exist, lock_timeout, now);
    describe(
        &tenant.schema_name,
        &target_name,
        &source,
        &target,
        sql.kept_as.as_deref(),
    );
    if args.dry_run {
        report(ctx, &tenant.schema_name, &target_name, &source, None, true, started)?;
        return Ok(Outcome::Done);
    }
    if !args.yes {
        confirm(&target_name)?;
    }

    // Hold the tenants' locks on a session connection for the whole restore: no backup or cleanup
    // of them can run meanwhile.
    let session = ctx.connect_session().await?;
    let mut locked = vec![tenant.schema_name.clone()];
    if source.source_schema != tenant.schema_name {
        locked.push(source.source_schema.clone());
    }
    for schema in &locked {
        lock::lock_with_timeout(&session, schema, lock_timeout).await?;
    }
    let Some(tools) = tools else {
        let input = open_decompressed(file.path(), &source)?;
        let opts = JsonRestore {
            schema: &target_name,
            catalog: &ctx.catalog,
            keep_history_since: records_exist.then_some(source.created_at),
            verify_only: false,
            lock_timeout,
        };
        crate::jsonl::restore(&session, input, &opts)
            .await
            .with_context(|| format!("restoring {target_name} from {}; nothing was changed", source.key))?;
        drop(session);
        report(ctx, &tenant.schema_name, &target_name, &source, None, false, started)?;
        return Ok(Outcome::Done);
    };
    let (psql, pg_restore) = (tools.sibling("psql"), tools.sibling("pg_restore"));
    let dump_target = ctx.dump.clone();
    let path = file.path().to_path_buf();
    let src = source.clone();
    let kept = sql.kept_as.clone();
    // Its COMMIT and the report below are one step for a stop (stop::commit_point).
    crate::stop::blocking(move || run_psql(&psql, &pg_restore, &dump_target, &path, &src, &sql))
        .await
        .context("the restore task panicked")?
        .with_context(|| format!("restoring {} from {}", target_name, source.key))?;
    drop(session);
    report(
        ctx,
        &tenant.schema_name,
        &target_name,
        &source,
        kept.as_deref(),
        false,
        started,
    )?;
    Ok(Outcome::Done)
}

fn describe(tenant: &str, target: &str, source: &Source, plan: &Target, kept_as: Option<&str>) {
    let id = source.record_id.map(|i| format!("id {i}, ")).unwrap_or_default();
    let size = source.size.map(human_size).unwrap_or_else(|| "unknown size".into());
    eprintln!("restore plan:");
    eprintln!(
        "  backup   {id}{} ({size}, taken {})",
        source.key,
        source.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if source.source_schema != tenant {
        eprintln!("  from     tenant {} (--from-tenant)", source.source_schema);
    }
    match plan {
        _ if source.format == DumpFormat::Json => eprintln!(
            "  target   {target}: its tables are emptied and loaded from the json backup in one transaction (history rows newer than the backup are carried over)"
        ),
        Target::Replace { exists: true, drop_previous: true, .. } => {
            eprintln!("  target   {target}: the current schema is replaced and DROPPED in the same transaction")
        }
        Target::Replace { exists: true, .. } => eprintln!(
            "  target   {target}: the current schema is renamed to {} and kept (history rows newer than the backup are carried over)",
            kept_as.unwrap_or("?")
        ),
        Target::Replace { .. } => eprintln!("  target   {target}: does not exist yet; it is created"),
        Target::Into { .. } => eprintln!("  target   new schema {target}; tenant {tenant} is left as it is"),
        Target::Scratch => {}
    }
}

fn confirm(target: &str) -> Result<()> {
    eprint!("Type the schema name ({target}) to restore it, anything else to stop: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if line.trim() != target {
        return Err(usage!("not confirmed: nothing was changed"));
    }
    Ok(())
}

fn report(
    ctx: &Context,
    tenant: &str,
    target: &str,
    source: &Source,
    kept_as: Option<&str>,
    dry_run: bool,
    started: Instant,
) -> Result<()> {
    let elapsed = started.elapsed().as_secs_f64();
    if ctx.output.json {
        ctx.output.json(&Restored {
            tenant,
            restored_into: target,
            backup: source,
            previous_schema_kept_as: kept_as,
            dry_run,
            duration_seconds: (elapsed * 1000.0).round() / 1000.0,
        })?;
        return Ok(());
    }
    if dry_run {
        println!("dry run: {} verified; nothing was changed", source.key);
        return Ok(());
    }
    println!("restored {target} from {} in {elapsed:.2} s", source.key);
    if let Some(old) = kept_as {
        println!(
            "the previous schema is kept as {old}; check the restore, then drop it with `DROP SCHEMA \"{old}\" CASCADE` (or `tenant-backup cleanup --pre-restore-days N`)"
        );
    }
    Ok(())
}
