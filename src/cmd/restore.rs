//! `restore --tenant S (--id N | --latest | --file KEY | --path FILE)`

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::human_size;
use crate::backup::format::DumpFormat;
use crate::cli::RestoreArgs;
use crate::cmd::Outcome;
use crate::jsonl::{JsonRestore, Loaded};
use crate::outln;
use crate::pg::lock;
use crate::restore::access::{check_access, read_plain};
use crate::restore::guard::Scope;
use crate::restore::post;
use crate::restore::run::{application_name, new_mark, prepare_session, through_psql_as_loader, Watch};
use crate::restore::stage::{open_load, owner_for, swap};
use crate::restore::state::{read_facts, schema_exists};
use crate::restore::writes::Writes;
use crate::restore::{fetch_verified, open_decompressed, plan, resolve_at, Facts, Source, Target, Which};
use crate::usage;

#[derive(Serialize)]
struct Restored<'a> {
    tenant: &'a str,
    restored_into: &'a str,
    backup: &'a Source,
    previous_schema_kept_as: Option<&'a str>,
    /// Rows the application inserted, updated or deleted in the tenant while the restore ran: they
    /// are in the previous schema, not in the restored one.
    application_writes_during_restore: Option<i64>,
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
    let which = match (args.id, args.latest, &args.file, &args.path) {
        (Some(id), _, _, _) => Which::Id(id),
        (_, true, _, _) => Which::Latest,
        (_, _, Some(key), _) => Which::Key(key.clone()),
        (_, _, _, Some(path)) => Which::Path(path.clone()),
        _ => return Err(usage!("say which backup: --id N, --latest, --file KEY or --path FILE")),
    };
    let started = Instant::now();
    let lock_timeout = Duration::from_secs(args.lock_timeout);
    // One session connection for everything (never a transaction pooler): it holds the tenant's
    // lock, and its statements, like the dump's, wait for a lock no longer than --lock-timeout.
    let mark = new_mark();
    let client = ctx.connect_session().await?;
    prepare_session(&client, &mark, lock_timeout).await?;
    let watch = Watch::start(&ctx.dump, &application_name(&mark), lock_timeout).await;
    restore(args, ctx, &client, &watch, &mark, which, started)
        .await
        .map_err(|e| watch.explain(e))
}

async fn restore(
    args: RestoreArgs,
    ctx: &Context,
    client: &tokio_postgres::Client,
    watch: &Watch,
    mark: &str,
    which: Which,
    started: Instant,
) -> Result<Outcome> {
    let lock_timeout = Duration::from_secs(args.lock_timeout);
    let tenant = if args.new_database {
        ctx.catalog.unlisted_tenant(client, &args.tenant).await?
    } else {
        ctx.catalog.tenant(client, &args.tenant).await?
    };
    let mut source = resolve_at(
        &ctx.catalog,
        client,
        ctx.storage.as_ref(),
        &tenant,
        &which,
        args.from_tenant.as_deref(),
        ctx.clock.now(),
    )
    .await?;
    source.decrypt = check_access(
        &source,
        &ctx.keys,
        &ctx.key_store,
        client,
        ctx.storage.as_ref(),
        args.allow(),
    )
    .await?;
    let target_name = args.into.clone().unwrap_or_else(|| tenant.schema_name.clone());
    let target = match &args.into {
        Some(into) => {
            // Another tenant's name, even while its schema is missing (a dropped tenant awaiting
            // its own restore), would hand that tenant another clinic's rows.
            if ctx.catalog.tenant(client, into).await.is_ok() {
                return Err(usage!(
                    "--into {into:?} is a tenant's schema name: --into makes a new schema beside the tenants; to restore a tenant, use --tenant {into}"
                ));
            }
            if schema_exists(client, into).await? {
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
            drop_previous: args.drop_previous,
        },
    };
    let tools = crate::restore::tools_for(client, source.format, ctx.pg_dump.as_deref()).await?;
    // What the application writes to the tenant from now on will be in the schema set aside, not
    // in the restored one: where it stands now, to tell afterwards.
    let writes = Writes::start(client, &target_name).await?;

    // Checked before anything runs.
    let shown = ctx.shown(&source.source_schema);
    let file = fetch_verified(ctx.storage.as_ref(), &source, &shown).await?;

    // What the plan will be; read again, for real, once the tenant's lock is held.
    let facts = read_facts(
        client,
        &ctx.catalog,
        ctx.storage.as_ref(),
        &source,
        &target,
        ctx.clock.now(),
    )
    .await?;
    // The application's dumpdata backups are json too: recognised by their content.
    let dumpdata = crate::dumpdata::recognise(client, &source, file.path(), &shown, &args.model_table).await?;
    let header = match (&dumpdata, source.format) {
        (Some(d), _) => Some(d.header.clone()),
        (None, DumpFormat::Json) => Some(crate::jsonl::peek_header(open_decompressed(
            file.path(),
            &source,
            &shown,
        )?)?),
        _ => None,
    };
    let live_tables = match &header {
        Some(_) => crate::jsonl::tables(client, &target_name).await?,
        None => Vec::new(),
    };
    describe(&tenant.schema_name, &target_name, &source, &target, &facts);
    if let Some(h) = &header {
        describe_json(h, &target, &facts, &live_tables);
    }
    if let Some(d) = &dumpdata {
        d.describe();
    }
    if args.dry_run {
        report(
            ctx,
            &tenant.schema_name,
            &target_name,
            &source,
            None,
            None,
            true,
            started,
        )?;
        return Ok(Outcome::Done);
    }
    if !args.yes {
        confirm(&target_name)?;
    }

    // Hold the tenants' locks for the whole restore: no backup, cleanup or other restore of them
    // can run meanwhile.
    let session = client;
    let mut locked = vec![tenant.schema_name.clone()];
    if source.source_schema != tenant.schema_name {
        locked.push(source.source_schema.clone());
    }
    for schema in &locked {
        lock::lock_with_timeout(session, schema, lock_timeout).await?;
    }
    let facts = read_facts(
        session,
        &ctx.catalog,
        ctx.storage.as_ref(),
        &source,
        &target,
        ctx.clock.now(),
    )
    .await?;
    let sql = plan(&source, &target, &ctx.catalog, &facts, lock_timeout, mark);
    let kept = sql.kept_as.clone();
    let keep_previous = match &target {
        Target::Replace {
            drop_previous: false, ..
        } => facts.previous.as_deref(),
        _ => None,
    };
    let scope = Scope::load(session, &source.source_schema, lock::timeout_ms(lock_timeout))
        .await?
        .staged(&sql.staging);
    let opts = JsonRestore {
        source_schema: &source.source_schema,
        target: &target,
        catalog: &ctx.catalog,
        plan: &sql,
        scope: &scope,
        keep_history: facts.records_exist,
        keep_previous_as: keep_previous,
        lock_timeout,
        reconnect: Some(&ctx.dump),
        defer_post_data: true,
    };
    let restoring = || format!("restoring {target_name} from {}; nothing was changed", source.key);
    // A json backup that holds rows only (format version 2, or a structure that does not carry
    // every object) loads into the live tables, which it holds locked, as the tool: nobody writes
    // meanwhile, and there is nothing to swap.
    // The application's dumpdata backups are rows only too.
    if dumpdata.is_some()
        || source.format == DumpFormat::Json
            && crate::jsonl::loads_in_place(read_plain(
                std::fs::File::open(file.path())?,
                source.compression,
                source.decrypt.as_ref(),
            )?)?
    {
        let input = match &dumpdata {
            Some(d) => d.stream(),
            None => open_decompressed(file.path(), &source, &shown)?,
        };
        crate::jsonl::restore(session, input, &opts)
            .await
            .with_context(restoring)?;
        let kept = keep_previous.map(str::to_string);
        report(
            ctx,
            &tenant.schema_name,
            &target_name,
            &source,
            kept.as_deref(),
            None,
            false,
            started,
        )?;
        return Ok(Outcome::Done);
    }

    // Everything else loads into a staging schema of its own, committed while the application
    // cannot see it, as the loader role: a login that can create and write only there (the second
    // wall behind the guard). The live schema is not touched until the swap.
    let live = target.schema().filter(|_| facts.target_exists);
    let references_from: Vec<&str> = live.into_iter().chain([source.source_schema.as_str()]).collect();
    let (mut loading, staged) = open_load(session, &ctx.dump, &sql.staging, &references_from, lock_timeout).await?;
    let load_as = loading.target()?.clone();
    // Every connection of the load opens now, while its login window is open.
    let builders = post::connect(&load_as, usize::from(args.jobs), mark, lock_timeout).await?;
    let deferred = match tools {
        // A json backup loads through the driver, on a connection of its own: the tool's session,
        // which holds the tenant's lock, is left for the swap whatever becomes of the load's.
        None => {
            let input = open_decompressed(file.path(), &source, &shown)?;
            let loader_client = loading.connect().await?;
            prepare_session(&loader_client, mark, lock_timeout).await?;
            // Every connection of the load is open: no other can log in as the loader.
            loading.seal().await?;
            match crate::jsonl::restore(&loader_client, input, &opts)
                .await
                .with_context(restoring)?
            {
                (_, Loaded::Staged(deferred)) => deferred,
                (_, Loaded::InPlace) => anyhow::bail!("internal: a json backup loaded in place after all"),
            }
        }
        Some(tools) => {
            let ran = through_psql_as_loader(
                &mut loading,
                builders.len(),
                &tools,
                &ctx.dump,
                session,
                file.path(),
                &source,
                &sql,
                true,
                watch,
                &shown,
            )
            .await
            .with_context(|| format!("restoring {} from {}", target_name, source.key))?;
            if let Some(note) = &ran.note {
                tracing::warn!("{note}");
            }
            ran.deferred
        }
    };
    // The keys, indexes and foreign keys, on --jobs connections at once: the staging schema is
    // private until the swap.
    post::run(&builders, &deferred).await.with_context(restoring)?;
    if !sql.history.is_empty() {
        builders[0]
            .batch_execute(&format!("BEGIN;\n{}COMMIT;", sql.history))
            .await
            .map_err(|e| anyhow::anyhow!("{}", crate::pg::connect::describe_pg_error_without_data(&e)))
            .context("carrying the history over")
            .with_context(restoring)?;
    }
    drop(builders);
    // The restored schema becomes the tenant owner's; then the tool swaps it in.
    let owner = owner_for(session, target.schema().unwrap_or(&tenant.schema_name)).await?;
    loading.hand_over(&owner).await.with_context(restoring)?;
    swap(session, &sql, &ctx.dump).await?;
    staged.swapped();
    if let Err(e) = loading.close().await {
        tracing::warn!("the restore is done, but the loader role could not be put back to rest: {e:#}");
    }
    let (kept, wrote) = settle_previous(session, &target, kept, &writes, lock_timeout).await;
    report(
        ctx,
        &tenant.schema_name,
        &target_name,
        &source,
        kept.as_deref(),
        wrote,
        false,
        started,
    )?;
    Ok(Outcome::Done)
}

/// After the COMMIT: how many rows the application wrote to the tenant while the restore ran
/// (they are in the previous schema, set aside), and the previous schema dropped if
/// `--drop-previous` asked for it and nothing was written there. For the drop, the previous
/// schema's tables are locked first (within `--lock-timeout`), so the count is exact and nothing
/// can be written between it and the DROP. Acknowledged writes are never dropped silently: the
/// schema is kept and the report says so.
async fn settle_previous(
    client: &tokio_postgres::Client,
    target: &Target,
    kept: Option<String>,
    writes: &Writes,
    lock_timeout: Duration,
) -> (Option<String>, Option<i64>) {
    let Some(previous) = kept else {
        return (None, None);
    };
    if !matches!(
        target,
        Target::Replace {
            drop_previous: true,
            ..
        }
    ) {
        return match writes.since(client).await {
            Ok(n) => (Some(previous), Some(n)),
            Err(e) => {
                tracing::warn!("could not tell what the application wrote during the restore: {e:#}");
                (Some(previous), None)
            }
        };
    }
    match drop_unless_written(client, &previous, writes, lock_timeout).await {
        Ok(0) => (None, Some(0)),
        Ok(n) => {
            tracing::warn!(
                "--drop-previous: the previous schema is KEPT as {previous}: the application wrote {n} row(s) to the tenant while the restore ran, and they are there"
            );
            (Some(previous), Some(n))
        }
        Err(e) => {
            tracing::warn!(
                "the restore is committed, but the previous schema is KEPT as {previous}: it could not be dropped ({e:#}); drop it yourself once you have checked it"
            );
            (Some(previous), None)
        }
    }
}

/// In one transaction: the previous schema's tables locked, the application's writes counted, and
/// the schema dropped when there were none. Returns the count.
async fn drop_unless_written(
    client: &tokio_postgres::Client,
    previous: &str,
    writes: &Writes,
    lock_timeout: Duration,
) -> Result<i64> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'",
            lock::timeout_ms(lock_timeout)
        ))
        .await?;
    let result = async {
        writes.lock_tables(client).await?;
        let n = writes.since(client).await?;
        if n == 0 {
            client
                .batch_execute(&format!(
                    "DROP SCHEMA {} CASCADE",
                    crate::pg::sql::quote_ident(previous)
                ))
                .await?;
        }
        anyhow::Ok(n)
    }
    .await;
    let end = if matches!(result, Ok(0)) { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await?;
    result.map_err(|e| match e.downcast_ref::<tokio_postgres::Error>() {
        Some(pg) => anyhow::anyhow!("{}", crate::pg::connect::describe_pg_error(pg)),
        None => e,
    })
}

fn describe(tenant: &str, target: &str, source: &Source, plan: &Target, facts: &Facts) {
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
    let history = if facts.records_exist {
        "every history row the backup lacks is carried over".to_string()
    } else {
        format!(
            "there is no history table: the backup's history, plus {} backup(s) the bucket's manifests know of",
            facts.bucket_rows.len()
        )
    };
    match plan {
        Target::Replace {
            drop_previous: true, ..
        } if facts.target_exists => {
            eprintln!(
                "  target   {target}: the current schema is replaced, and DROPPED once the restore is committed unless the application wrote to it meanwhile ({history})"
            )
        }
        Target::Replace { .. } if facts.target_exists => eprintln!(
            "  target   {target}: the current schema is renamed to {} and kept ({history})",
            facts.previous.as_deref().unwrap_or("?")
        ),
        Target::Replace { .. } => eprintln!("  target   {target}: does not exist; it is created ({history})"),
        Target::Into { .. } => eprintln!("  target   new schema {target}; tenant {tenant} is left as it is"),
        Target::Scratch => {}
    }
}

/// What a json backup holds, against the tables the target has now: a table the backup does not
/// hold is never emptied silently.
fn describe_json(header: &crate::jsonl::Header, plan: &Target, facts: &Facts, live: &[crate::jsonl::TableSpec]) {
    let missing: Vec<&str> = live
        .iter()
        .filter(|l| !header.tables.iter().any(|t| t.name == l.name))
        .map(|l| l.name.as_str())
        .collect();
    if header.format_version == 2 {
        let kept = match plan {
            Target::Replace {
                drop_previous: false, ..
            } => format!(
                "their previous rows are copied to {} first",
                facts.previous.as_deref().unwrap_or("?")
            ),
            _ => "their previous rows are not kept (--drop-previous)".into(),
        };
        eprintln!(
            "  json     format version 2 (rows only): the {} tables it holds are emptied and loaded in the existing schema; {kept}",
            header.tables.len()
        );
        if !missing.is_empty() {
            eprintln!(
                "  untouched tables the backup does not hold, left as they are: {}",
                missing.join(", ")
            );
        }
        return;
    }
    if !missing.is_empty() {
        let whereto = match (plan, &facts.previous) {
            (
                Target::Replace {
                    drop_previous: false, ..
                },
                Some(p),
            ) => format!("they stay in {p} with the previous schema"),
            (
                Target::Replace {
                    drop_previous: true, ..
                },
                _,
            ) => "they are DROPPED with the previous schema (--drop-previous)".into(),
            _ => "they are not in the restored schema".into(),
        };
        eprintln!(
            "  NOT IN THE BACKUP: {} (made after the backup was taken?): the restored schema will not have them; {whereto}; run the application's migrations afterwards",
            missing.join(", ")
        );
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

#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &Context,
    tenant: &str,
    target: &str,
    source: &Source,
    kept_as: Option<&str>,
    application_writes: Option<i64>,
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
            application_writes_during_restore: application_writes,
            dry_run,
            duration_seconds: (elapsed * 1000.0).round() / 1000.0,
        })?;
        return Ok(());
    }
    if dry_run {
        outln!("dry run: {} verified; nothing was changed", source.key)?;
        return Ok(());
    }
    outln!("restored {target} from {} in {elapsed:.2} s", source.key)?;
    if let (Some(n), Some(old)) = (application_writes.filter(|n| *n > 0), kept_as) {
        outln!(
            "the application wrote {n} row(s) to {target} while the restore ran: they are not in the restored schema, they are in {old}"
        )?;
    }
    if let Some(old) = kept_as {
        outln!(
            "the previous schema is kept as {old}; check the restore, then drop it with `DROP SCHEMA \"{old}\" CASCADE` (or `tenant-backup cleanup --pre-restore-days N`)"
        )?;
    }
    Ok(())
}
