//! ollama-tools: turn Hugging Face PEFT LoRA adapters into something llama.cpp and Ollama run exactly.
//!
//! One module per concept: [`peft`] reads adapters, [`arch`] holds the per-architecture tables,
//! [`gguf`] reads and writes the container, [`base`] describes the base model whatever its source,
//! [`convert`] plans and writes GGUF LoRA adapters, [`cli`] is the command line on top. The library
//! never prints; it reports through [`progress::Progress`].

pub mod arch;
pub mod base;
pub mod cli;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod peft;
pub mod progress;

pub use error::{Error, Result};
