//! `keys init | status | forget --tenant S | rotate [--to RECIPIENT]`

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::app::context::Context;
use crate::app::output::table;
use crate::cli::KeysCommand;
use crate::cmd::Outcome;
use crate::crypto::{identity_file, MasterRecipient, NewMaster};
use crate::usage;
use crate::{out, outln};

/// Writes `lines` to stdout, failing (not panicking) when stdout cannot take them: a full disk, a
/// closed pipe, a dropped session.
fn show(lines: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}")?;
    }
    out.flush()
}

/// `keys init` needs no database: it only makes keys. With `--save-identity FILE` the identity is
/// in FILE, durably, before anything is printed.
pub fn init(save: Option<&Path>) -> Result<Outcome> {
    let m = NewMaster::generate();
    if let Some(path) = save {
        identity_file::save(path, &m.identity, "tenant-backup keys init")?;
        eprintln!("The master identity is in {} (mode 0600).", path.display());
    }
    let lines = [
        format!("BACKUP_AGE_IDENTITY={}", m.identity.secret_string().expose()),
        format!("BACKUP_AGE_RECIPIENT={}", m.identity.recipient().as_string()),
        format!("BACKUP_SIGNING_KEY={}", m.signing_key.expose()),
    ];
    show(&lines).context(
        "the new keys could not be printed (is stdout full or closed?): nothing uses them yet; run `tenant-backup keys init` again",
    )?;
    eprintln!(
        "Store these three lines as secrets now; they are shown once.\n\
         * The cron job (backups) needs BACKUP_AGE_RECIPIENT and BACKUP_SIGNING_KEY only.\n\
         * Where backups are read (restore, verify, download) set BACKUP_AGE_IDENTITY too, or keep it\n\
           in a file readable only by you (mode 0600) and pass --identity FILE.\n\
         * Lose BACKUP_AGE_IDENTITY and every encrypted backup is lost with it: keep a copy offline."
    );
    Ok(Outcome::Done)
}

pub async fn run(cmd: KeysCommand, ctx: &Context) -> Result<Outcome> {
    let client = ctx.connect_session().await?;
    match cmd {
        KeysCommand::Init { save_identity } => init(save_identity.as_deref()),
        KeysCommand::Status => {
            let with_keys = ctx.key_store.tenants(&client).await?;
            let tenants = ctx.catalog.tenants(&client).await?;
            let mut rows = Vec::new();
            for t in &tenants {
                let state = match (&ctx.keys.identity, with_keys.contains(&t.schema_name)) {
                    (_, false) => "no key (backups so far are not encrypted)".to_string(),
                    (None, true) => "key stored (set BACKUP_AGE_IDENTITY to check it)".to_string(),
                    (Some(id), true) => match ctx.key_store.identity_for(&client, &t.schema_name, id).await {
                        Ok(_) => "key stored, readable with this identity".to_string(),
                        Err(e) => format!("key stored, NOT readable: {e:#}"),
                    },
                };
                rows.push(vec![t.schema_name.clone(), state]);
            }
            for gone in with_keys
                .iter()
                .filter(|k| !tenants.iter().any(|t| &t.schema_name == *k))
            {
                rows.push(vec![
                    gone.clone(),
                    "key stored for a tenant not in the tenant table".into(),
                ]);
            }
            if ctx.output.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"tenant": r[0], "key": r[1]}))
                    .collect();
                ctx.output.json(&v)?;
            } else {
                out!("{}", table(&["tenant", "key"], &rows))?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::Forget { tenant, yes } => {
            crate::pg::sql::check_tenant_schema_name(&tenant)?;
            if !yes {
                if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
                    return Err(usage!(
                        "keys forget makes every backup of {tenant} unreadable, forever: pass --yes to confirm when not on a terminal"
                    ));
                }
                eprint!(
                    "Every encrypted backup of {tenant}, in every bucket and copy, becomes unreadable forever.\nType the tenant's name ({tenant}) to forget its key, anything else to stop: "
                );
                std::io::stderr().flush().ok();
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the confirmation")?;
                if line.trim() != tenant {
                    return Err(usage!("not confirmed: the key is kept"));
                }
            }
            // The bucket's copies first: should that fail, the row is still there and the same
            // command finishes the job.
            let in_bucket = crate::crypto::bucket::forget(ctx.storage.as_ref(), &tenant)
                .await
                .with_context(|| format!("nothing was forgotten in the database; run `keys forget --tenant {tenant}` again once {} can be reached", ctx.storage.describe()))?;
            if ctx.key_store.forget(&client, &tenant).await? || in_bucket > 0 {
                outln!(
                    "{tenant}: key forgotten ({in_bucket} copy(ies) deleted from the bucket too); its encrypted backups can no longer be read (cleanup can still delete them). Copies this tool did not write live on: the database provider's own backups until their retention ends, and earlier versions of .keys/{tenant}/ in a bucket with versioning or object lock (see docs/encryption.md)."
                )?;
            } else {
                outln!("{tenant}: had no key; nothing changed")?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::Rotate { to, save_identity } => {
            let old = ctx.keys.identity.as_ref().ok_or_else(|| {
                usage!("keys rotate needs the current master identity: set BACKUP_AGE_IDENTITY or pass --identity FILE")
            })?;
            // The new identity is in its file, synced, before any key is wrapped to it; a file
            // already there is a rotation that was stopped, finished now.
            let (new, saved) = match (to, save_identity) {
                (Some(raw), _) => (MasterRecipient::parse(&raw)?, None),
                (None, Some(path)) if identity_file::exists(&path) => {
                    let id = identity_file::read(&path, "--save-identity")?;
                    eprintln!("{} exists: finishing the rotation to the identity it holds", path.display());
                    (id.recipient(), Some((id, path)))
                }
                (None, Some(path)) => {
                    let id = NewMaster::generate().identity;
                    identity_file::save(&path, &id, "tenant-backup keys rotate")?;
                    (id.recipient(), Some((id, path)))
                }
                (None, None) => {
                    return Err(usage!(
                        "keys rotate makes a new master identity: name the file it is written to first, with --save-identity FILE, or re-wrap to a recipient you hold with --to age1…"
                    ))
                }
            };
            let n = ctx.key_store.rotate(&client, ctx.storage.as_ref(), old, &new).await?;
            eprintln!(
                "{n} tenant key(s) re-wrapped to {}. Replace BACKUP_AGE_RECIPIENT (the cron job) and BACKUP_AGE_IDENTITY (where backups are read) with the new ones; every backup stays readable with the new identity. BACKUP_SIGNING_KEY is unchanged.",
                new.as_string()
            );
            if let Some((id, path)) = saved {
                let lines = [
                    format!("BACKUP_AGE_IDENTITY={}", id.secret_string().expose()),
                    format!("BACKUP_AGE_RECIPIENT={}", new.as_string()),
                ];
                show(&lines).with_context(|| {
                    format!(
                        "the rotation is done, but the new keys could not be printed (is stdout full or closed?): the new master identity is in {}, and `age-keygen -y {}` prints its recipient",
                        path.display(),
                        path.display()
                    )
                })?;
            }
            Ok(Outcome::Done)
        }
    }
}
