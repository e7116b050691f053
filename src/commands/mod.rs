//! The workflows that chain formats, servers and the engine: create-from-base and fetch-adapter.

pub mod create;
pub mod fetch;
