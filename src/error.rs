//! Errors that decide the exit code.

/// Bad usage or configuration, found before anything was touched: the process exits with code 2.
/// The message says what to do next.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError(message.into())
    }
}

/// `Err(usage!("..."))` in any function returning `anyhow::Result`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::UsageError::new(format!($($arg)*)))
    };
}

/// True when the error, or anything in its chain, is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<UsageError>().is_some())
}

/// Stdout was closed by its reader (`tenant-backup list | head`): the command ends quietly with
/// exit 0, as ripgrep does. Only writes of results to stdout produce it (`outln!`), never a pipe
/// to a child program, whose end is a real failure.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct ClosedStdout;

/// True when the error, or anything in its chain, is [`ClosedStdout`].
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<ClosedStdout>().is_some())
}
