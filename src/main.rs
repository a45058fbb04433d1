use std::process::ExitCode;

use clap::Parser;
use tenant_backup::cli::Cli;
use tenant_backup::cmd::{self, Outcome};
use tenant_backup::error::is_usage;

fn main() -> ExitCode {
    // `.env` in the working directory, for local development; real environment variables win.
    if let Err(err) = dotenvy::from_path(".env") {
        if !err.not_found() {
            eprintln!("error: {}", dotenv_problem(&err));
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    tenant_backup::app::logging::init(&cli.output);
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
    match runtime.block_on(cmd::run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(if is_usage(&err) { 2 } else { 1 })
        }
    }
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
