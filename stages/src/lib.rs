//! The stages of pipe and the LLM engine they share; the engine crate (`pipe`) drives them
//! through the [`Stage`] contract and the [`registry`], and carries the model tools through
//! the [`Tool`] contract and [`tools`], without knowing any ML.
//!
//! Floors, from the bottom: the LLM engine (`llm`); shared machinery (`contract`, `tool`,
//! `progress`, `tabular`, `jsonl`, `text`, `base`, `train`, `scoring`); then the stages, one
//! folder per kind, side by side. A stage reads another only through that kind's `artifact`
//! module (file names, record types, readers); the tools read artifacts the same way.

pub mod base;
pub mod contract;
mod dpo;
mod eval;
mod generate;
mod ingest;
pub mod inputs;
pub mod jsonl;
pub mod llm;
mod merge;
mod model;
mod orpo;
pub mod progress;
mod score;
pub mod scoring;
mod sft;
pub mod tabular;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod text;
pub mod tool;
pub mod tools;
pub mod train;

pub use contract::{
    erase, ConfigIssue, ConfigProblem, DynStage, Input, InputDirs, Link, LoadedConfig, Pipeline,
    Stage, StageContext, StageError, StageResult,
};
pub use progress::{Bar, NullProgress, Progress};
pub use tool::{HostError, Tool, ToolError, ToolHost};

/// Every fully implemented stage, in pipeline order. Adding a stage: one folder plus one line
/// here.
pub fn registry() -> Vec<Box<dyn DynStage>> {
    vec![
        erase::<ingest::Ingest>(),
        erase::<model::Model>(),
        erase::<sft::Sft>(),
        erase::<generate::Generate>(),
        erase::<score::Score>(),
        erase::<orpo::Orpo>(),
        erase::<dpo::Dpo>(),
        erase::<merge::Merge>(),
        erase::<eval::Eval>(),
    ]
}

/// The subcommands of `pipe` that are not stages: the model tools, in help order.
pub fn tools() -> Vec<Box<dyn Tool>> {
    vec![
        Box::new(tools::commands::Generate),
        Box::new(tools::commands::Chat),
        Box::new(tools::commands::Bench),
    ]
}

/// Sets the process up for model work (thread counts, allocator; see
/// [`llm::runtime::configure_process`]) and runs `main` on a worker of the global thread pool
/// ([`llm::runtime::on_pool`]). The binary's `main` is this around the engine.
pub fn run_process<R: Send>(main: impl FnOnce() -> R + Send) -> R {
    llm::runtime::configure_process();
    llm::runtime::on_pool(main)
}
