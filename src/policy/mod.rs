//! Pure decisions, no I/O: when a tenant is due, and which backups retention removes.

pub mod retention;
pub mod schedule;
