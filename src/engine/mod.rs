//! The domain: from an adapter and a base model to tensors, streamed tensor by tensor so that memory
//! stays flat as models grow.

pub mod arch;
pub mod base;
pub(crate) mod cache;
pub mod convert;
pub mod merge;
pub mod output;
pub(crate) mod pipeline;
pub mod quant;
pub mod quant_mix;
pub mod validate;
