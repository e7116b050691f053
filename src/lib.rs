//! ollama-tools: turn Hugging Face PEFT LoRA adapters into something llama.cpp and Ollama run exactly.
//!
//! One module per concept: [`peft`] reads adapters, [`arch`] holds the per-architecture tables,
//! [`gguf`] reads and writes the container, [`base`] describes the base model whatever its source
//! ([`ollama`] speaks to Ollama's server and store, [`registry`] downloads a model's GGUF from an Ollama
//! registry), [`validate`] checks an adapter against a base, [`chat_template`] reads and maps a fine-tune's
//! own chat template,
//! [`convert`] plans and writes GGUF LoRA adapters, [`cache`] keeps what runs built, [`quant`] converts ggml tensor blocks to and from
//! f32, [`quant_mix`] gives each tensor the type llama-quantize would, [`vocab`] resizes a merged model's
//! tokenizer to a fine-tune's added tokens, [`cli`] is the command line on top. The library
//! never prints; it reports through [`progress::Progress`].

pub mod arch;
pub mod base;
pub mod cache;
pub mod chat_template;
pub mod cli;
pub mod convert;
pub mod create;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod merge;
pub mod modelfile;
pub mod ollama;
pub mod output;
pub mod peft;
pub mod pipeline;
pub mod progress;
pub mod quant;
pub mod quant_mix;
pub mod registry;
pub mod validate;
pub mod vocab;

pub use error::{Error, Result};
