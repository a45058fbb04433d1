//! `keys init | status | forget --tenant S | rotate [--to RECIPIENT]`

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, Result};

use crate::app::context::Context;
use crate::app::output::table;
use crate::cli::KeysCommand;
use crate::cmd::Outcome;
use crate::crypto::{MasterRecipient, NewMaster};
use crate::usage;

/// `keys init` needs no database: it only makes keys.
pub fn init() -> Result<Outcome> {
    let m = NewMaster::generate();
    println!("BACKUP_AGE_IDENTITY={}", m.identity.secret_string().expose());
    println!("BACKUP_AGE_RECIPIENT={}", m.identity.recipient().as_string());
    println!("BACKUP_SIGNING_KEY={}", m.signing_key.expose());
    eprintln!(
        "Store these three lines as secrets now; they are shown once.\n\
         * The cron job (backups) needs BACKUP_AGE_RECIPIENT and BACKUP_SIGNING_KEY only.\n\
         * Where backups are read (restore, verify, download) set BACKUP_AGE_IDENTITY too, or keep it\n\
           in a file readable only by you and pass --identity FILE.\n\
         * Lose BACKUP_AGE_IDENTITY and every encrypted backup is lost with it: keep a copy offline."
    );
    Ok(Outcome::Done)
}

pub async fn run(cmd: KeysCommand, ctx: &Context) -> Result<Outcome> {
    let client = ctx.connect_session().await?;
    match cmd {
        KeysCommand::Init => init(),
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
                print!("{}", table(&["tenant", "key"], &rows));
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
                println!(
                    "{tenant}: key forgotten ({in_bucket} copy(ies) deleted from the bucket too); its encrypted backups can no longer be read (cleanup can still delete them). Copies this tool did not write live on: the database provider's own backups until their retention ends, and earlier versions of .keys/{tenant}/ in a bucket with versioning or object lock (see the README)."
                );
            } else {
                println!("{tenant}: had no key; nothing changed");
            }
            Ok(Outcome::Done)
        }
        KeysCommand::Rotate { to } => {
            let old = ctx.keys.identity.as_ref().ok_or_else(|| {
                usage!("keys rotate needs the current master identity: set BACKUP_AGE_IDENTITY or pass --identity FILE")
            })?;
            let (new, generated) = match to {
                Some(raw) => (MasterRecipient::parse(&raw)?, None),
                None => {
                    let m = NewMaster::generate();
                    (m.identity.recipient(), Some(m))
                }
            };
            let n = ctx.key_store.rotate(&client, ctx.storage.as_ref(), old, &new).await?;
            if let Some(m) = generated {
                println!("BACKUP_AGE_IDENTITY={}", m.identity.secret_string().expose());
                println!("BACKUP_AGE_RECIPIENT={}", new.as_string());
            }
            eprintln!(
                "{n} tenant key(s) re-wrapped to {}. Replace BACKUP_AGE_RECIPIENT (the cron job) and BACKUP_AGE_IDENTITY (where backups are read) with the new ones; every backup stays readable with the new identity. BACKUP_SIGNING_KEY is unchanged.",
                new.as_string()
            );
            Ok(Outcome::Done)
        }
    }
}
