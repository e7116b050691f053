#![warn(missing_docs)]
//! ollama-tools: turn Hugging Face PEFT LoRA adapters into something llama.cpp and Ollama run exactly.
//!
//! The modules follow the data (see `docs/DESIGN.md`): [`formats`] reads and writes the files (PEFT
//! adapters, GGUF, Modelfiles, chat templates, tokenizer metadata), [`remote`] talks to the servers (the
//! Hugging Face Hub, Ollama, an Ollama registry), [`engine`] is the domain (architecture tables, the
//! base model's description, validation, conversion, merging, ggml's quantizers, the cache), and
//! [`commands`] chains them into the two workflows, create-from-base and fetch-adapter. [`cli`] is the
//! command line on top. The library never prints; it reports through [`progress::Progress`].

pub mod cli;
pub mod commands;
pub mod engine;
pub mod error;
pub mod formats;
pub mod progress;
pub mod remote;

pub use error::{Error, ErrorKind, Result};
