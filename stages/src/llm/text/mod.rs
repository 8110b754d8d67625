//! Text in and out of the model: the tokenizer, the chat template every stage renders with,
//! and incremental detokenization of generated text.

mod pyjson;
pub mod spm;
pub mod template;
pub mod text_stream;
pub mod tokenizer;
mod turns;
