//! `download --tenant S (--id N | --latest | --file KEY) [-o PATH] [--decompress]`

use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::app::context::Context;
use crate::app::output::human_size;
use crate::cli::DownloadArgs;
use crate::cmd::Outcome;
use crate::restore::{fetch_verified, resolve, Which};
use crate::usage;

pub async fn run(args: DownloadArgs, ctx: &Context) -> Result<Outcome> {
    let which = match (args.id, args.latest, &args.file) {
        (Some(id), _, _) => Which::Id(id),
        (_, true, _) => Which::Latest,
        (_, _, Some(key)) => Which::Key(key.clone()),
        _ => return Err(usage!("say which backup: --id N, --latest or --file KEY")),
    };
    let to_stdout = args.output.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let client = ctx.connect().await?;
    let tenant = ctx.catalog.tenant(&client, &args.tenant).await?;
    let source = resolve(&ctx.catalog, &client, ctx.storage.as_ref(), &tenant, &which, None).await?;
    drop(client);
    let dest: Option<PathBuf> = if to_stdout {
        None
    } else {
        let name = source.key.rsplit('/').next().unwrap_or(&source.key);
        let name = if args.decompress {
            name.trim_end_matches(".zst").trim_end_matches(".gz")
        } else {
            name
        };
        let path = args.output.clone().unwrap_or_else(|| PathBuf::from(name));
        if path.exists() {
            return Err(usage!("{} already exists: choose another -o PATH", path.display()));
        }
        Some(path)
    };

    // Downloaded to a temporary file and checked against the manifest before anything is written.
    let file = fetch_verified(ctx.storage.as_ref(), &source).await?;
    let (src, compression, decompress) = (file.path().to_path_buf(), source.compression, args.decompress);
    let dest2 = dest.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<u64> {
        let input = BufReader::new(std::fs::File::open(&src)?);
        let mut reader: Box<dyn std::io::Read> = if decompress {
            compression.decoder(input)?
        } else {
            Box::new(input)
        };
        let mut out: Box<dyn Write> = match &dest2 {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create_new(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout().lock()),
        };
        let n = std::io::copy(&mut reader, &mut out).context("writing the backup")?;
        out.flush()?;
        Ok(n)
    })
    .await
    .context("the download task panicked")??;
    if let Some(path) = dest {
        if ctx.output.json {
            ctx.output
                .json(&serde_json::json!({ "key": source.key, "path": path, "bytes": written }))?;
        } else {
            println!("{} → {} ({})", source.key, path.display(), human_size(written));
        }
    }
    Ok(Outcome::Done)
}
