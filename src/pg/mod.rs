//! Everything that speaks to PostgreSQL: connection targets, TLS, the tenant and history tables,
//! advisory locks, SQL quoting, PostgreSQL's client programs and the plain-dump scanner.

pub mod catalog;
pub mod connect;
pub mod dumpscan;
pub mod lock;
pub mod sql;
pub mod target;
pub mod tls;
pub mod tools;
pub mod xact;
