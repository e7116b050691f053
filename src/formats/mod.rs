//! The file formats, read and written: what a file says and the bytes to write, with no network and no
//! policy.

pub mod chat_template;
pub mod gguf;
pub mod modelfile;
pub mod peft;
pub(crate) mod vocab;
