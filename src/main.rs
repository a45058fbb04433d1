use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tenant_backup::cli::Cli;
use tenant_backup::cmd::{self, Outcome};
use tenant_backup::error::{is_closed_stdout, is_usage};
use tenant_backup::stop;

fn main() -> ExitCode {
    // `.env` in the working directory, for local development; real environment variables win.
    // Read before the flags are parsed (its values are their defaults), so --no-dotenv is looked
    // for by hand; clap knows it too, for --help and BACKUP_NO_DOTENV.
    let mut dotenv_read = None;
    if !no_dotenv() {
        match dotenvy::from_path(".env") {
            Ok(()) => dotenv_read = Some(std::env::current_dir().unwrap_or_default().join(".env")),
            Err(err) if err.not_found() => {}
            Err(err) => {
                eprintln!("error: {}", dotenv_problem(&err));
                return ExitCode::from(2);
            }
        }
    }
    let cli = Cli::parse();
    tenant_backup::app::logging::init(cli.output.verbose, cli.output.quiet);
    if let Some(path) = dotenv_read {
        tracing::debug!("read settings from {} (--no-dotenv not to)", path.display());
    }
    if let Err(err) = tenant_backup::retry::configure_from_env() {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let left_unchanged = cmd::left_unchanged(&cli.command);
    // One thread for the async side: the work is I/O, and the heavy lifting (compression, checksums,
    // the json codec) runs on blocking threads. A driver connection and its reader then hand each
    // row over without waking another thread, which made json dumps ~20% cheaper.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let ended = runtime.block_on(stop::or_signal(cmd::run(cli)));
    // Blocking threads get a moment to end: a spool file goes when its thread lets go of it.
    runtime.shutdown_timeout(Duration::from_secs(3));
    match ended {
        Ok(Ok(outcome)) => {
            if let Some(signal) = stop::requested() {
                tracing::warn!(
                    "{} arrived while the work was committing; it was finished first",
                    signal.name()
                );
            }
            ExitCode::from(if outcome == Outcome::Done { 0 } else { 1 })
        }
        // The reader of our results went away (`list | head`): it has what it wanted.
        Ok(Err(err)) if is_closed_stdout(&err) => ExitCode::SUCCESS,
        Ok(Err(err)) => match stop::requested() {
            // The work refused to commit because of the stop.
            Some(signal) => stopped(signal, &left_unchanged, false, true),
            None => {
                eprintln!("error: {err:#}");
                ExitCode::from(if is_usage(&err) { 2 } else { 1 })
            }
        },
        Err(stop) => stopped(stop.signal, &left_unchanged, stop.commit_interrupted, stop.cleaned_up),
    }
}

/// `--no-dotenv` before the first `--`, or `BACKUP_NO_DOTENV` set to something true.
fn no_dotenv() -> bool {
    let flag = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--no-dotenv");
    let env = std::env::var("BACKUP_NO_DOTENV").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    });
    flag || env
}

/// The one line a stop prints, and its exit code (128 + the signal).
fn stopped(signal: stop::Signal, left_unchanged: &str, commit_interrupted: bool, cleaned_up: bool) -> ExitCode {
    let name = signal.name();
    if commit_interrupted {
        eprintln!("stopped by {name} while committing: whether that commit went through is not known; check with `tenant-backup list`");
    } else if !cleaned_up {
        eprintln!("stopped by {name}: {left_unchanged}, but a clean-up failed (see above)");
    } else {
        eprintln!("stopped by {name}: {left_unchanged}");
    }
    ExitCode::from(signal.exit_code())
}

/// What is wrong with `.env`, by line number: dotenvy's own message quotes the line, which may
/// hold a password.
fn dotenv_problem(err: &dotenvy::Error) -> String {
    match err {
        dotenvy::Error::LineParse(bad, _) => {
            let line = std::fs::read_to_string(".env")
                .ok()
                .and_then(|content| Some(content[..content.find(bad.as_str())?].matches('\n').count() + 1));
            match line {
                Some(n) => format!(".env line {n} is not KEY=VALUE: fix or remove that line"),
                None => ".env has a line that is not KEY=VALUE: fix or remove it".to_string(),
            }
        }
        other => format!("reading .env: {other}"),
    }
}
