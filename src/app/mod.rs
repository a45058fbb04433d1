//! The command-line face every command shares: the resolved context, output, progress and logs.

pub mod alerts;
pub mod context;
pub mod logging;
pub mod output;
pub mod progress;
