//! `verify --tenant S [--id N | --latest]`: checksum, then a restore inside a transaction that is
//! always rolled back, comparing every table's row count with the manifest.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::table;
use crate::backup::format::DumpFormat;
use crate::cli::VerifyArgs;
use crate::cmd::Outcome;
use crate::jsonl::JsonRestore;
use crate::pg::lock;
use crate::restore::access::{check_access, read_plain};
use crate::restore::guard::Scope;
use crate::restore::run::{application_name, new_mark, prepare_session, through_psql_as_loader, Watch};
use crate::restore::stage::open_load;
use crate::restore::state::read_facts;
use crate::restore::{fetch_verified, open_decompressed, plan, resolve_at, Target, Which};
use crate::{out, outln};

#[derive(Serialize)]
struct TableCheck {
    table: String,
    expected: Option<u64>,
    restored: Option<u64>,
    ok: bool,
}

#[derive(Serialize)]
struct Verified {
    tenant: String,
    key: String,
    checksum: &'static str,
    restore: &'static str,
    tables: Vec<TableCheck>,
    ok: bool,
}

pub async fn run(args: VerifyArgs, ctx: &Context) -> Result<Outcome> {
    let which = match (&args.path, args.id) {
        (Some(path), _) => Which::Path(path.clone()),
        (None, id) => id.map(Which::Id).unwrap_or(Which::Latest),
    };
    let timeout = Duration::from_secs(args.lock_timeout);
    let mark = new_mark();
    let client = ctx.connect_session().await?;
    prepare_session(&client, &mark, timeout).await?;
    let watch = Watch::start(&ctx.dump, &application_name(&mark), timeout).await;
    verify(args, ctx, &client, &watch, &mark, which)
        .await
        .map_err(|e| watch.explain(e))
}

async fn verify(
    args: VerifyArgs,
    ctx: &Context,
    client: &tokio_postgres::Client,
    watch: &Watch,
    mark: &str,
    which: Which,
) -> Result<Outcome> {
    let timeout = Duration::from_secs(args.lock_timeout);
    let tenant = ctx.catalog.tenant(client, &args.tenant).await?;
    let mut source = resolve_at(
        &ctx.catalog,
        client,
        ctx.storage.as_ref(),
        &tenant,
        &which,
        None,
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
    let tools = crate::restore::tools_for(client, source.format, ctx.pg_dump.as_deref()).await?;
    let shown = ctx.shown(&source.source_schema);
    let file = fetch_verified(ctx.storage.as_ref(), &source, &shown).await?;
    let checksum = if source.manifest.is_some() {
        "ok"
    } else {
        "none (no manifest)"
    };

    let session = client;
    lock::lock_with_timeout(session, &source.source_schema, timeout).await?;
    let facts = read_facts(
        session,
        &ctx.catalog,
        ctx.storage.as_ref(),
        &source,
        &Target::Scratch,
        ctx.clock.now(),
    )
    .await?;
    let sql = plan(&source, &Target::Scratch, &ctx.catalog, &facts, timeout, mark);
    let scope = Scope::load(session, &source.source_schema, lock::timeout_ms(timeout))
        .await?
        .staged(&sql.staging);
    let opts = JsonRestore {
        source_schema: &source.source_schema,
        target: &Target::Scratch,
        catalog: &ctx.catalog,
        plan: &sql,
        scope: &scope,
        keep_history: false,
        keep_previous_as: None,
        lock_timeout: timeout,
        reconnect: None,
        defer_post_data: false,
    };
    let loading_what = || format!("loading {} inside a rolled-back transaction", source.key);
    // The application's dumpdata backups are rows only too.
    let dumpdata = match source.format {
        DumpFormat::Json => {
            crate::dumpdata::recognise(session, &source, file.path(), &shown, &args.model_table).await?
        }
        _ => None,
    };
    let in_place = dumpdata.is_some()
        || source.format == DumpFormat::Json
            && crate::jsonl::loads_in_place(read_plain(
                std::fs::File::open(file.path())?,
                source.compression,
                source.decrypt.as_ref(),
            )?)?;
    let counts = if in_place {
        // Rows only: loaded into temporary copies of the live tables, rolled back.
        let input = match &dumpdata {
            Some(d) => d.stream(),
            None => open_decompressed(file.path(), &source, &shown)?,
        };
        crate::jsonl::restore(session, input, &opts)
            .await
            .with_context(loading_what)?
            .0
    } else {
        // Loaded as the loader role into an empty staging schema, inside a transaction that is
        // rolled back; the schema is then dropped. The live schema is never touched.
        let (mut loading, staged) =
            open_load(session, &ctx.dump, &sql.staging, &[&source.source_schema], timeout).await?;
        let counts = match tools {
            None => {
                let client = loading.connect().await?;
                prepare_session(&client, mark, timeout).await?;
                loading.seal().await?;
                crate::jsonl::restore(&client, open_decompressed(file.path(), &source, &shown)?, &opts)
                    .await
                    .with_context(loading_what)?
                    .0
            }
            Some(tools) => {
                through_psql_as_loader(
                    &mut loading,
                    0,
                    &tools,
                    &ctx.dump,
                    session,
                    file.path(),
                    &source,
                    &sql,
                    false,
                    watch,
                    &shown,
                )
                .await
                .with_context(|| format!("restoring {} into a scratch transaction", source.key))?
                .counts
            }
        };
        loading.close().await?;
        staged.discard().await?;
        counts
    };

    let expected = source.manifest.as_ref().and_then(|m| m.row_counts.clone());
    let mut names: Vec<String> = counts.keys().cloned().collect();
    if let Some(e) = &expected {
        names.extend(e.keys().filter(|k| !counts.contains_key(*k)).cloned());
    }
    names.sort();
    let tables: Vec<TableCheck> = names
        .into_iter()
        .map(|t| {
            let restored = counts.get(&t).copied();
            let want = expected.as_ref().map(|e| e.get(&t).copied().unwrap_or(0));
            let ok = match (want, restored) {
                (Some(w), Some(r)) => w == r,
                (Some(_), None) => false,
                (None, _) => true,
            };
            TableCheck {
                table: t,
                expected: want,
                restored,
                ok,
            }
        })
        .collect();
    let ok = tables.iter().all(|t| t.ok);
    let result = Verified {
        tenant: tenant.schema_name,
        key: source.key.clone(),
        checksum,
        restore: "ok (rolled back)",
        tables,
        ok,
    };
    if ctx.output.json {
        ctx.output.json(&result)?;
    } else {
        let show = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        let rows: Vec<Vec<String>> = result
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone(),
                    show(t.expected),
                    show(t.restored),
                    if t.ok { "ok".into() } else { "MISMATCH".into() },
                ]
            })
            .collect();
        out!("{}", table(&["table", "manifest", "restored", ""], &rows))?;
        outln!(
            "{}: checksum {checksum}, restore ok (rolled back), row counts {}",
            result.key,
            if expected.is_none() {
                "not in the manifest"
            } else if ok {
                "match"
            } else {
                "DIFFER"
            }
        )?;
    }
    Ok(if ok { Outcome::Done } else { Outcome::Failed })
}
