//! `restore --tenant S (--id N | --latest | --file KEY | --path FILE)`

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::human_size;
use crate::cli::RestoreArgs;
use crate::cmd::Outcome;
use crate::outln;
use crate::restore::engine::{Ask, Engine};
use crate::restore::{Facts, Source, Target, Which};
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
    let engine = Engine::start(ctx.restore_parts(), Duration::from_secs(args.lock_timeout)).await?;
    restore(args, ctx, &engine, which, started)
        .await
        .map_err(|e| engine.explain(e))
}

async fn restore(
    args: RestoreArgs,
    ctx: &Context,
    engine: &Engine<'_>,
    which: Which,
    started: Instant,
) -> Result<Outcome> {
    let found = engine
        .find(Ask {
            tenant: args.tenant.clone(),
            unlisted: args.new_database,
            which,
            from_tenant: args.from_tenant.clone(),
            allow: args.allow(),
            model_table: args.model_table.clone(),
        })
        .await?;
    let target = engine.target(&found, args.into.as_deref(), args.drop_previous).await?;
    let opened = engine.fetch(found, &target).await?;
    let tenant = opened.tenant.schema_name.clone();
    let target_name = target.schema().unwrap_or(&tenant).to_string();
    let preview = engine.preview(&opened, &target).await?;
    describe(&tenant, &target_name, &opened.source, &target, &preview.facts);
    if let Some(h) = &opened.header {
        let another = opened.source.source_schema != tenant;
        describe_json(h, &target, &preview.facts, &preview.live_tables, another);
    }
    if let Some(d) = &opened.dumpdata {
        d.describe();
    }
    let source = opened.source.clone();
    if args.dry_run {
        report(ctx, &tenant, &target_name, &source, None, None, true, started)?;
        return Ok(Outcome::Done);
    }
    if !args.yes {
        confirm(&target_name)?;
    }
    let done = engine
        .restore(opened, &target, usize::from(args.jobs), args.maintenance)
        .await?;
    report(
        ctx,
        &tenant,
        &target_name,
        &source,
        done.kept_as.as_deref(),
        done.application_writes,
        false,
        started,
    )?;
    Ok(Outcome::Done)
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
fn describe_json(
    header: &crate::jsonl::Header,
    plan: &Target,
    facts: &Facts,
    live: &[crate::jsonl::TableSpec],
    another: bool,
) {
    let missing: Vec<&str> = live
        .iter()
        .filter(|l| !header.tables.iter().any(|t| t.name == l.name))
        .map(|l| l.name.as_str())
        .collect();
    if header.format_version == 2 {
        let others = match another {
            true => "every other table is EMPTY (the backup is another tenant's; django_migrations keeps its rows)",
            false => "every other table keeps the rows it has",
        };
        eprintln!(
            "  json     format version 2 (rows only): the {} tables it holds get its rows, {others}; the schema's structure is the live one's (loaded beside it, then swapped in)",
            header.tables.len()
        );
        if !missing.is_empty() {
            let how = match another {
                true => "restored empty",
                false => "their rows kept",
            };
            eprintln!("  tables the backup does not hold, {how}: {}", missing.join(", "));
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
