//! Child programs (psql, pg_restore) that never outlive the tool: [`crate::stop::Child`], killed
//! (with their process group) when the Rust side lets go of them (an error, a panic, a cancelled
//! task), interrupted by a stop, and killed by the kernel when the tool itself dies
//! (`PR_SET_PDEATHSIG`), so no psql is ever left holding a restore's transaction open.

use std::process::Command;

pub use crate::stop::Child as Owned;

impl Owned {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Owned> {
        crate::stop::spawn(cmd)
    }
}
