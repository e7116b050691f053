//! The servers this tool talks to. Every wait has a timeout ([`crate::error::Patience`]) and every
//! length a server sends is bounded by what really arrives.

pub mod hub;
pub mod ollama;
pub mod registry;
