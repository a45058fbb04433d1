//! The restore engine: one for `restore` and `verify`, and for every format (plain SQL, custom
//! archive, native json, the old application's dumpdata). The commands check their arguments,
//! confirm and print; everything between the backup they name and the schema swapped in (or the
//! row counts of a load thrown away) happens here, always in this order:
//!
//! 1. [`Engine::find`]: which backup (`source`), its signature and key (`access`), before a byte is
//!    downloaded;
//! 2. [`Engine::target`], [`Engine::fetch`]: where it goes, then the object fetched and checked
//!    against its manifest, and recognised (json, dumpdata, rows only or a whole schema);
//! 3. [`Engine::preview`]: what is there now, for the plan the operator confirms;
//! 4. [`Engine::restore`] or [`Engine::verify`]: under the tenants' locks, the facts read again
//!    and the plan made from them (`state`, `script`); the load into a staging schema of its own,
//!    as the loader role (`stage`, `loader`; or, for rows only, into the live tables); its last
//!    part on `--jobs` connections (`post`); then the swap, or for verify the staging schema
//!    dropped.
//!
//! A restore killed at any step before the swap's COMMIT leaves the tenant as it was: the live
//! schema is not touched until then, and the staging schema is dropped on the way out, or left
//! for `cleanup --orphans` when the process was killed (tests/integration/restore_kill.rs kills it
//! at every step).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tempfile::NamedTempFile;
use tokio_postgres::Client;

use super::access::{check_access, read_plain, Allow};
use super::guard::Scope;
use super::loader::LoaderSession;
use super::post::{self, Deferred};
use super::run::{application_name, new_mark, prepare_session, through_psql_as_loader, Watch};
use super::stage::{open_load, owner_for, swap, Staged};
use super::state::{read_facts, schema_exists};
use super::writes::Writes;
use super::{fetch_verified, open_decompressed, plan, resolve_at, Counts, Facts, Plan, Source, Target, Which};
use crate::backup::format::DumpFormat;
use crate::clock::Clock;
use crate::crypto::keys::KeyStore;
use crate::crypto::KeyConfig;
use crate::dumpdata::Dumpdata;
use crate::jsonl::{Header, JsonRestore, Loaded, TableSpec};
use crate::pg::catalog::{Catalog, Tenant};
use crate::pg::lock;
use crate::pg::target::DbTarget;
use crate::pg::tools::PgDump;
use crate::progress::{ProgressSink, Shown};
use crate::storage::Storage;
use crate::usage;

/// What the engine works with: the database (a session-mode target), the bucket, the keys.
pub struct Parts<'a> {
    pub session: &'a DbTarget,
    pub catalog: &'a Catalog,
    pub storage: &'a dyn Storage,
    pub clock: &'a dyn Clock,
    /// `--pg-dump`: where psql and pg_restore are found, when not beside the server's version.
    pub pg_dump: Option<&'a Path>,
    pub keys: &'a KeyConfig,
    pub key_store: &'a KeyStore,
    pub progress: Arc<dyn ProgressSink>,
}

/// Which backup, of which tenant, as the operator asked.
pub struct Ask {
    pub tenant: String,
    /// `--new-database`: the tenant is not (yet) in the tenants table.
    pub unlisted: bool,
    pub which: Which,
    pub from_tenant: Option<String>,
    pub allow: Allow,
    /// `--model-table MODEL=TABLE`, for the application's dumpdata backups.
    pub model_table: Vec<(String, String)>,
}

/// A backup found and allowed: nothing downloaded yet.
pub struct Found {
    pub tenant: Tenant,
    pub source: Source,
    model_table: Vec<(String, String)>,
}

/// A backup fetched, checked against its manifest and recognised.
pub struct Opened {
    pub tenant: Tenant,
    pub source: Source,
    file: NamedTempFile,
    shown: Shown,
    /// The application's dumpdata backup, recognised by its content.
    pub dumpdata: Option<Dumpdata>,
    /// A json backup's header (the native format's, or the one made for a dumpdata backup).
    pub header: Option<Header>,
    /// Rows only (a version 2 json dump, a structure that does not carry every object, or a
    /// dumpdata backup): loaded into the existing tables, with nothing to swap.
    in_place: bool,
    /// psql and pg_restore; none for json, which loads through the driver.
    tools: Option<PgDump>,
    /// Where the application's writes to the live tenant stood before the fetch.
    writes: Option<Writes>,
}

/// What is there now, for the plan shown before the operator confirms (read again, for real, under
/// the tenant's lock).
pub struct Preview {
    pub facts: Facts,
    /// The target's tables now, for a json backup (a table the backup does not hold is named).
    pub live_tables: Vec<TableSpec>,
}

/// A restore done.
pub struct Restored {
    /// The previous schema, renamed aside and kept.
    pub kept_as: Option<String>,
    /// Rows the application wrote to the tenant while the restore ran (they are in `kept_as`).
    pub application_writes: Option<i64>,
}

/// One restore or verify: the tool's own session (it holds the tenants' locks, and runs the swap),
/// named so that who blocks it can be told ([`Watch`]).
pub struct Engine<'a> {
    parts: Parts<'a>,
    client: Client,
    watch: Watch,
    mark: String,
    lock_timeout: Duration,
}

impl<'a> Engine<'a> {
    /// Opens the session: one connection for everything (never a transaction pooler), whose
    /// statements, like the dump's, wait for a lock no longer than `lock_timeout`.
    pub async fn start(parts: Parts<'a>, lock_timeout: Duration) -> Result<Engine<'a>> {
        let mark = new_mark();
        let client = parts.session.connect().await?;
        prepare_session(&client, &mark, lock_timeout).await?;
        let watch = Watch::start(parts.session, &application_name(&mark), lock_timeout).await;
        Ok(Engine {
            parts,
            client,
            watch,
            mark,
            lock_timeout,
        })
    }

    /// `err`, or when a lock did not come in time, who held it.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        self.watch.explain(err)
    }

    /// The backup `ask` names, its signature and key settled: nothing is downloaded yet.
    pub async fn find(&self, ask: Ask) -> Result<Found> {
        let p = &self.parts;
        let tenant = if ask.unlisted {
            p.catalog.unlisted_tenant(&self.client, &ask.tenant).await?
        } else {
            p.catalog.tenant(&self.client, &ask.tenant).await?
        };
        let mut source = resolve_at(
            p.catalog,
            &self.client,
            p.storage,
            &tenant,
            &ask.which,
            ask.from_tenant.as_deref(),
            p.clock.now(),
        )
        .await?;
        source.decrypt = check_access(&source, p.keys, p.key_store, &self.client, p.storage, ask.allow).await?;
        Ok(Found {
            tenant,
            source,
            model_table: ask.model_table,
        })
    }

    /// Where a restore of `found` goes: the tenant's own schema, replaced (its previous one kept
    /// aside unless `drop_previous`), or with `into` a new schema beside the tenants.
    pub async fn target(&self, found: &Found, into: Option<&str>, drop_previous: bool) -> Result<Target> {
        let Some(into) = into else {
            return Ok(Target::Replace {
                schema: found.tenant.schema_name.clone(),
                drop_previous,
            });
        };
        // Another tenant's name, even while its schema is missing (a dropped tenant awaiting its
        // own restore), would hand that tenant another clinic's rows.
        if self.parts.catalog.tenant(&self.client, into).await.is_ok() {
            return Err(usage!(
                "--into {into:?} is a tenant's schema name: --into makes a new schema beside the tenants; to restore a tenant, use --tenant {into}"
            ));
        }
        if schema_exists(&self.client, into).await? {
            return Err(usage!("schema {into:?} already exists: --into needs a new name"));
        }
        if into == found.source.source_schema {
            return Err(usage!(
                "--into {into:?} is the schema the backup itself creates: pick another name"
            ));
        }
        Ok(Target::Into {
            schema: into.to_string(),
        })
    }

    /// Fetches `found` (checked against its manifest before anything runs) and recognises it.
    /// For a restore over the live tenant (`target`), where the application's writes stand is
    /// noted first: what it writes from now on is in the schema set aside, to be told afterwards.
    pub async fn fetch(&self, found: Found, target: &Target) -> Result<Opened> {
        let Found {
            tenant,
            source,
            model_table,
        } = found;
        let tools = match source.format {
            DumpFormat::Json => None,
            _ => Some(crate::pg::tools::for_server(&self.client, self.parts.pg_dump).await?.0),
        };
        let writes = match target {
            Target::Replace { schema, .. } => Some(Writes::start(&self.client, schema).await?),
            _ => None,
        };
        let shown = Shown::new(self.parts.progress.clone(), source.source_schema.clone());
        let file = fetch_verified(self.parts.storage, &source, &shown).await?;
        // The application's dumpdata backups are json too: recognised by their content.
        let dumpdata = crate::dumpdata::recognise(&self.client, &source, file.path(), &shown, &model_table).await?;
        // A json backup's first lines (up to two of 32 MiB, decrypted and decompressed) are read
        // off the runtime's thread.
        let (header, in_place) = match (&dumpdata, source.format) {
            (Some(d), _) => (Some(d.header.clone()), true),
            (None, DumpFormat::Json) => {
                let (path, source, shown) = (file.path().to_path_buf(), source.clone(), shown.clone());
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let header = crate::jsonl::peek_header(open_decompressed(&path, &source, &shown)?)?;
                    let in_place = crate::jsonl::loads_in_place(read_plain(
                        std::fs::File::open(&path)?,
                        source.compression,
                        source.decrypt.as_ref(),
                    )?)?;
                    Ok((Some(header), in_place))
                })
                .await
                .context("the reading task panicked")??
            }
            _ => (None, false),
        };
        Ok(Opened {
            tenant,
            source,
            file,
            shown,
            dumpdata,
            header,
            in_place,
            tools,
            writes,
        })
    }

    /// What is there now, for the plan shown before confirming.
    pub async fn preview(&self, opened: &Opened, target: &Target) -> Result<Preview> {
        let facts = self.facts(&opened.source, target).await?;
        let live_tables = match (&opened.header, target.schema()) {
            (Some(_), Some(schema)) => crate::jsonl::tables(&self.client, schema).await?,
            _ => Vec::new(),
        };
        Ok(Preview { facts, live_tables })
    }

    async fn facts(&self, source: &Source, target: &Target) -> Result<Facts> {
        let p = &self.parts;
        read_facts(&self.client, p.catalog, p.storage, source, target, p.clock.now()).await
    }

    /// Restores `opened` into `target`, building its last part on `jobs` connections;
    /// `maintenance`: refuse the swap if the application wrote to the tenant meanwhile.
    pub async fn restore(&self, opened: Opened, target: &Target, jobs: usize, maintenance: bool) -> Result<Restored> {
        let (session, source) = (&self.client, &opened.source);
        // Hold the tenants' locks for the whole restore: no backup, cleanup or other restore of
        // them can run meanwhile.
        lock::lock_with_timeout(session, &opened.tenant.schema_name, self.lock_timeout).await?;
        if source.source_schema != opened.tenant.schema_name {
            lock::lock_with_timeout(session, &source.source_schema, self.lock_timeout).await?;
        }
        failpoint("locked");
        let facts = self.facts(source, target).await?;
        let sql = plan(
            source,
            target,
            self.parts.catalog,
            &facts,
            self.lock_timeout,
            &self.mark,
        );
        let keep_previous = match target {
            Target::Replace {
                drop_previous: false, ..
            } => facts.previous.as_deref(),
            _ => None,
        };
        let target_name = target.schema().unwrap_or(&opened.tenant.schema_name);
        let restoring = || format!("restoring {target_name} from {}; nothing was changed", source.key);
        // Rows only (they cannot create the schema): completed from the live schema's structure and
        // the rows of the tables they do not hold, they load like the rest.
        let whole = match opened.in_place {
            true => self.completed(&opened).await.with_context(restoring)?,
            false => None,
        };
        let dumped = self.dumped(&opened, whole.is_some());
        let scope = self.scope_of(dumped, &sql).await?;
        let opts = JsonRestore {
            source_schema: dumped,
            target,
            catalog: self.parts.catalog,
            plan: &sql,
            scope: &scope,
            keep_history: facts.records_exist,
            keep_previous_as: keep_previous,
            lock_timeout: self.lock_timeout,
            reconnect: Some(self.parts.session),
            defer_post_data: true,
        };
        if opened.in_place && whole.is_none() {
            // Into the live tables, which the load holds locked, as the tool: nobody writes
            // meanwhile, and there is nothing to swap.
            crate::jsonl::restore(session, opened.rows()?, &opts)
                .await
                .with_context(restoring)?;
            return Ok(Restored {
                kept_as: keep_previous.map(str::to_string),
                application_writes: None,
            });
        }

        // Everything loads into a staging schema of its own, committed while the application
        // cannot see it, as the loader role: a login that can create and write only there (the
        // second wall behind the guard). The live schema is not touched until the swap.
        let live = target.schema().filter(|_| facts.target_exists);
        let references_from: Vec<&str> = live.into_iter().chain([dumped]).collect();
        let load = self
            .load(&opened, whole, &sql, &opts, &references_from, Some(jobs.max(1)))
            .await
            .with_context(restoring)?;
        let Load {
            mut loading,
            staged,
            builders,
            deferred,
            ..
        } = load;
        failpoint("loaded");
        // The keys, indexes and foreign keys, on --jobs connections at once: the staging schema is
        // private until the swap.
        post::run(&builders, &deferred).await.with_context(restoring)?;
        failpoint("built");
        if !sql.history.is_empty() {
            builders[0]
                .batch_execute(&format!("BEGIN;\n{}COMMIT;", sql.history))
                .await
                .map_err(|e| anyhow::anyhow!("{}", crate::pg::connect::describe_pg_error_without_data(&e)))
                .context("carrying the history over")
                .with_context(restoring)?;
        }
        drop(builders);
        failpoint("history");
        // The restored schema becomes the tenant owner's; then the tool swaps it in.
        let owner = owner_for(session, target_name).await?;
        loading.hand_over(&owner).await.with_context(restoring)?;
        failpoint("handed-over");
        let unwritten = opened.writes.as_ref().filter(|_| maintenance);
        swap(session, &sql, self.parts.session, unwritten).await?;
        staged.swapped();
        failpoint("swapped");
        if let Err(e) = loading.close().await {
            tracing::warn!("the restore is done, but the loader role could not be put back to rest: {e:#}");
        }
        let (kept_as, application_writes) = settle_previous(
            session,
            target,
            sql.kept_as.clone(),
            opened.writes.as_ref(),
            self.lock_timeout,
        )
        .await;
        Ok(Restored {
            kept_as,
            application_writes,
        })
    }

    /// Loads `opened` as a restore would, into a staging schema that is then dropped (or, rows
    /// only where the live schema cannot complete them, into temporary copies of the live tables,
    /// rolled back): every table's row count.
    /// The live schema is never touched.
    pub async fn verify(&self, opened: Opened) -> Result<Counts> {
        let (session, source) = (&self.client, &opened.source);
        lock::lock_with_timeout(session, &source.source_schema, self.lock_timeout).await?;
        let facts = self.facts(source, &Target::Scratch).await?;
        let sql = plan(
            source,
            &Target::Scratch,
            self.parts.catalog,
            &facts,
            self.lock_timeout,
            &self.mark,
        );
        let loading_what = || format!("loading {} inside a rolled-back transaction", source.key);
        let whole = match opened.in_place {
            true => self.completed(&opened).await.with_context(loading_what)?,
            false => None,
        };
        let dumped = self.dumped(&opened, whole.is_some());
        let scope = self.scope_of(dumped, &sql).await?;
        let opts = JsonRestore {
            source_schema: dumped,
            target: &Target::Scratch,
            catalog: self.parts.catalog,
            plan: &sql,
            scope: &scope,
            keep_history: false,
            keep_previous_as: None,
            lock_timeout: self.lock_timeout,
            reconnect: None,
            defer_post_data: false,
        };
        if opened.in_place && whole.is_none() {
            // Into temporary copies of the live tables, rolled back.
            return Ok(crate::jsonl::restore(session, opened.rows()?, &opts)
                .await
                .with_context(loading_what)?
                .0);
        }
        let mut load = self
            .load(&opened, whole, &sql, &opts, &[dumped], None)
            .await
            .with_context(loading_what)?;
        // A rows-only backup is checked on what it holds (the rest is the live schema's).
        if let (true, Some(header)) = (opened.in_place, &opened.header) {
            load.counts.retain(|t, _| header.tables.iter().any(|h| h.name == *t));
        }
        load.loading.close().await?;
        load.staged.discard().await?;
        Ok(load.counts)
    }

    /// A rows-only backup completed from the tenant's live schema into one whole-schema stream
    /// ([`super::rows`]), so that it loads like the rest; `None` when the live schema is gone or
    /// holds what the native format cannot create (it then loads into the live tables).
    async fn completed(&self, opened: &Opened) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        super::rows::whole_schema(
            self.parts.session,
            &opened.tenant.schema_name,
            &opened.source.source_schema,
            opened.rows()?,
            self.lock_timeout,
            self.parts.clock.now(),
            &self.mark,
        )
        .await
    }

    /// The schema the loaded stream was taken of: the backup's, or for a rows-only backup
    /// completed from the live schema, the tenant's.
    fn dumped<'o>(&self, opened: &'o Opened, completed: bool) -> &'o str {
        match completed {
            true => &opened.tenant.schema_name,
            false => &opened.source.source_schema,
        }
    }

    /// The guard's scope for a dump of schema `dumped`, aimed at the plan's staging schema.
    async fn scope_of(&self, dumped: &str, sql: &Plan) -> Result<Scope> {
        Ok(Scope::load(&self.client, dumped, lock::timeout_ms(self.lock_timeout))
            .await?
            .staged(&sql.staging))
    }

    /// The load into the plan's staging schema, as the loader role, through psql (plain and
    /// custom) or the driver (json: the fetched object, or `input` when given), every format by
    /// the same steps. A restore (`jobs`) opens its
    /// builders' connections while the loader's login window is open, commits, and gets the last
    /// part back to build on them; a verify loads in one transaction that is rolled back.
    async fn load(
        &self,
        opened: &Opened,
        input: Option<Box<dyn std::io::BufRead + Send>>,
        sql: &Plan,
        opts: &JsonRestore<'_>,
        references_from: &[&str],
        jobs: Option<usize>,
    ) -> Result<Load> {
        let (source, lock_timeout) = (&opened.source, self.lock_timeout);
        let (mut loading, staged) = open_load(
            &self.client,
            self.parts.session,
            &sql.staging,
            references_from,
            lock_timeout,
        )
        .await?;
        failpoint("staged");
        let builders = match jobs {
            Some(jobs) => post::connect(loading.target()?, jobs, &self.mark, lock_timeout).await?,
            None => Vec::new(),
        };
        let (counts, deferred) = match &opened.tools {
            None => {
                // Through the driver, on a connection of its own: the tool's session, which holds
                // the tenant's lock, is left for the swap whatever becomes of the load's.
                let input = match input {
                    Some(input) => input,
                    None => open_decompressed(opened.file.path(), source, &opened.shown)?,
                };
                let client = loading.connect().await?;
                prepare_session(&client, &self.mark, lock_timeout).await?;
                // Every connection of the load is open: no other can log in as the loader.
                loading.seal().await?;
                // A restore's rows load on its builders' connections at once; a verify's in one
                // transaction on this one.
                match crate::jsonl::restore_on(&client, &builders, input, opts).await? {
                    (counts, Loaded::Staged(deferred)) => (counts, deferred),
                    (_, Loaded::InPlace) => anyhow::bail!("internal: a json backup loaded in place after all"),
                }
            }
            Some(tools) => {
                let ran = through_psql_as_loader(
                    &mut loading,
                    builders.len(),
                    tools,
                    self.parts.session,
                    opts.scope.clone(),
                    opened.file.path(),
                    source,
                    sql,
                    jobs.is_some(),
                    &self.watch,
                    &opened.shown,
                )
                .await?;
                if let Some(note) = &ran.note {
                    tracing::warn!("{note}");
                }
                (ran.counts, ran.deferred)
            }
        };
        Ok(Load {
            loading,
            staged,
            builders,
            counts,
            deferred,
        })
    }
}

/// A load into a staging schema, committed or rolled back.
struct Load {
    loading: LoaderSession,
    staged: Staged,
    /// The connections the last part is built on (a restore's).
    builders: Vec<Client>,
    counts: Counts,
    /// The last part, held back to be built on `builders`.
    deferred: Vec<Deferred>,
}

impl Opened {
    /// The rows of a rows-only backup, as the native format's version 2 stream.
    fn rows(&self) -> Result<Box<dyn std::io::BufRead + Send>> {
        match &self.dumpdata {
            Some(d) => Ok(d.stream()),
            None => open_decompressed(self.file.path(), &self.source, &self.shown),
        }
    }
}

/// After the swap: how many rows the application wrote to the tenant while the restore ran (they
/// are in the previous schema, set aside), and the previous schema dropped if `--drop-previous`
/// asked for it and nothing was written there. For the drop, the previous schema's tables are
/// locked first (within `--lock-timeout`), so the count is exact and nothing can be written
/// between it and the DROP. Acknowledged writes are never dropped silently: the schema is kept and
/// the report says so.
async fn settle_previous(
    client: &Client,
    target: &Target,
    kept: Option<String>,
    writes: Option<&Writes>,
    lock_timeout: Duration,
) -> (Option<String>, Option<i64>) {
    let (Some(previous), Some(writes)) = (kept, writes) else {
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
async fn drop_unless_written(client: &Client, previous: &str, writes: &Writes, lock_timeout: Duration) -> Result<i64> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'",
            lock::timeout_ms(lock_timeout)
        ))
        .await?;
    let result = async {
        if !writes.is(client, previous).await? {
            anyhow::bail!("the tenant's schema was made again while the restore ran, so what the application wrote to it cannot be counted");
        }
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

/// In a debug build, the process kills itself (SIGKILL: no destructor, no cleanup runs) at the
/// step named by `TENANT_BACKUP_KILL_AT`, so the tests can show that a kill at every step leaves
/// the tenant as it was. Release builds have no such step.
fn failpoint(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TENANT_BACKUP_KILL_AT").is_ok_and(|at| at == step) {
        // SAFETY: kill(2) on the process itself, with a constant signal; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}
