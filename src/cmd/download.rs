//! `download --tenant S (--id N | --latest | --file KEY) [-o PATH] [--decompress]`

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::app::context::Context;
use crate::app::output::human_size;
use crate::cli::DownloadArgs;
use crate::cmd::Outcome;
use crate::outln;
use crate::restore::access::{check_access, open_decrypted, open_plain};
use crate::restore::{fetch_verified, resolve_at, Which};
use crate::{stop, usage};

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
    let mut source = resolve_at(
        &ctx.catalog,
        &client,
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
        &client,
        ctx.storage.as_ref(),
        args.allow(),
    )
    .await?;
    drop(client);
    let dest: Option<PathBuf> = if to_stdout {
        None
    } else {
        let name = source.key.rsplit('/').next().unwrap_or(&source.key);
        // Written decrypted: the name loses `.age` (and the compression's suffix with --decompress).
        let name = name.trim_end_matches(".age");
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
    let shown = ctx.shown(&source.source_schema);
    let file = fetch_verified(ctx.storage.as_ref(), &source, &shown).await?;
    let (src, compression, decompress) = (file.path().to_path_buf(), source.compression, args.decompress);
    let decrypt = source.decrypt.clone();
    // What the written file must hold: the object, or what the dumper produced (an encrypted
    // object's decrypted size is not recorded; age itself refuses a truncated or altered one).
    let expected = if decompress {
        source.manifest.as_ref().map(|m| m.uncompressed_size)
    } else if decrypt.is_some() {
        None
    } else {
        Some(file.as_file().metadata().context("reading the downloaded file")?.len())
    };
    let dest2 = dest.clone();
    // The rename into place and the report below are one step for a stop (stop::commit_point).
    let written = stop::blocking(move || -> Result<u64> {
        let mut reader: Box<dyn Read> = if decompress {
            open_plain(&src, compression, decrypt.as_ref())?
        } else {
            open_decrypted(&src, decrypt.as_ref())?
        };
        match &dest2 {
            Some(path) => write_complete(&mut reader, path, expected),
            None => write_stdout(&mut reader),
        }
    })
    .await
    .context("the download task panicked")??;
    if let Some(path) = dest {
        if ctx.output.json {
            ctx.output
                .json(&serde_json::json!({ "key": source.key, "path": path, "bytes": written }))?;
        } else {
            outln!("{} → {} ({})", source.key, path.display(), human_size(written))?;
        }
    }
    Ok(Outcome::Done)
}

/// Writes to a temporary file beside `path` (0600, as every `NamedTempFile`), checks its size and
/// renames it into place only then: `path` never holds a partial backup, whatever fails.
fn write_complete(reader: &mut dyn Read, path: &Path, expected: Option<u64>) -> Result<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let failed = || format!("writing {} (nothing was left there)", path.display());
    let mut out = BufWriter::new(tmp.as_file_mut());
    let written = stop::copy(reader, &mut out).with_context(failed)?;
    out.flush().with_context(failed)?;
    drop(out);
    if let Some(want) = expected.filter(|w| *w != written) {
        anyhow::bail!(
            "the backup holds {want} bytes but {written} were written: {} was not created",
            path.display()
        );
    }
    tmp.as_file().sync_all().with_context(failed)?;
    stop::commit_point().with_context(|| format!("{} was not created", path.display()))?;
    tmp.persist_noclobber(path)
        .map_err(|e| e.error)
        .with_context(|| format!("putting {} in place (nothing was left there)", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(written)
}

/// Streams to stdout. A reader that goes away (`download -o - | head`) is not an error.
fn write_stdout(reader: &mut dyn Read) -> Result<u64> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    match stop::copy(reader, &mut out).and_then(|n| out.flush().map(|()| n)) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing the backup to stdout")),
    }
}
