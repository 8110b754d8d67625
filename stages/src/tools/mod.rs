//! The model tools behind `pipe generate`, `pipe chat` and `pipe bench`: plain option structs
//! in, text and reports out, so the CLI crate only maps its arguments onto them.

pub mod bench;
pub mod chat;
pub mod generate;
pub mod session;

pub use bench::{run_bench, BenchOptions, BenchPhase, BenchReport, PhaseResult};
pub use chat::{run_chat, ChatOptions, ChatSummary};
pub use generate::{run_generate, GenerateOptions};
pub use session::{ModelOptions, ModelSession};
