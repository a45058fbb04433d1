//! `verify --tenant S [--id N | --latest]`: checksum, then a restore inside a transaction that is
//! always rolled back, comparing every table's row count with the manifest.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::app::context::Context;
use crate::app::output::table;
use crate::cli::VerifyArgs;
use crate::cmd::Outcome;
use crate::restore::engine::{Ask, Engine};
use crate::restore::{Target, Which};
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
    let engine = Engine::start(ctx.restore_parts(), Duration::from_secs(args.lock_timeout)).await?;
    verify(args, ctx, &engine, which).await.map_err(|e| engine.explain(e))
}

async fn verify(args: VerifyArgs, ctx: &Context, engine: &Engine<'_>, which: Which) -> Result<Outcome> {
    let found = engine
        .find(Ask {
            tenant: args.tenant.clone(),
            unlisted: false,
            which,
            from_tenant: None,
            allow: args.allow(),
            model_table: args.model_table.clone(),
        })
        .await?;
    let opened = engine.fetch(found, &Target::Scratch).await?;
    let tenant = opened.tenant.schema_name.clone();
    let source = opened.source.clone();
    let checksum = if source.manifest.is_some() {
        "ok"
    } else {
        "none (no manifest)"
    };
    let counts = engine.verify(opened).await?;

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
        tenant,
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
