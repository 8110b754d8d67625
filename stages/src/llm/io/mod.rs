//! Models and adapters on disk: what a spec names and where it resolves (local path or the
//! hub cache), HF directories, safetensors and GGUF files in and out, PEFT adapters.
//! Dependencies point one way: spec → hub → hf_files, loader → spec.

pub mod base_ref;
pub mod export;
pub mod gguf;
pub mod gguf_header;
pub mod hf_files;
pub mod hub;
pub mod loader;
pub mod merge;
pub mod peft;
pub mod spec;
pub mod weights;
