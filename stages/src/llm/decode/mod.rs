//! Generation: the KV cache, the sampler and the batched generator.

pub mod generator;
pub mod kv_cache;
pub mod sampler;

#[cfg(test)]
mod generator_tests;
