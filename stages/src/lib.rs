//! The stages of pipe and the LLM engine they share; the engine crate (`pipe`) drives them
//! through the [`Stage`] contract and the [`registry`] without knowing any ML.

pub mod contract;
pub mod ingest;
pub mod llm;
pub mod progress;
pub mod tabular;
pub mod tools;

pub use contract::{
    erase, ConfigIssue, ConfigProblem, DynStage, LoadedConfig, Stage, StageContext, StageError,
    StageResult,
};
pub use progress::{Bar, NullProgress, Progress};

/// Every fully implemented stage, in pipeline order. Adding a stage: one file plus one line here.
pub fn registry() -> Vec<Box<dyn DynStage>> {
    vec![erase::<ingest::Ingest>()]
}
