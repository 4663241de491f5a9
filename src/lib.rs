//! walseal: encrypted, compressed WAL archiving and restore for PostgreSQL.
#![forbid(unsafe_code)]

pub mod error;
pub mod keys;
pub mod seal;
