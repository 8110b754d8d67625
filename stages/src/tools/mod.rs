//! The model tools behind `pipe generate`, `pipe chat` and `pipe bench`: their clap arguments
//! ([`args`]), the [`crate::tool::Tool`]s the binary registers ([`commands`]), and plain option
//! structs in, text and reports out.

pub mod args;
pub mod bench;
pub mod chat;
pub mod commands;
pub mod generate;
pub mod session;

pub use bench::{run_bench, BenchOptions, BenchPhase, BenchReport, PhaseResult};
pub use chat::{run_chat, ChatOptions, ChatSummary};
pub use generate::{run_generate, GenerateOptions};
pub use session::{ModelOptions, ModelSession};
