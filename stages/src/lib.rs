//! The stages of pipe and the LLM engine they share; the engine crate (`pipe`) drives them
//! through the [`Stage`] contract and the [`registry`] without knowing any ML.

pub mod contract;
pub mod eval;
pub mod generate;
pub mod ingest;
pub mod jsonl;
pub mod llm;
pub mod merge;
pub mod model;
pub mod orpo;
pub mod progress;
pub mod score;
pub mod scoring;
pub mod sft;
pub mod tabular;
pub mod testkit;
pub mod tools;
pub mod train;

pub use contract::{
    erase, ConfigIssue, ConfigProblem, DynStage, LoadedConfig, Stage, StageContext, StageError,
    StageResult,
};
pub use progress::{Bar, NullProgress, Progress};

/// Every fully implemented stage, in pipeline order. Adding a stage: one file plus one line here.
pub fn registry() -> Vec<Box<dyn DynStage>> {
    vec![
        erase::<ingest::Ingest>(),
        erase::<model::Model>(),
        erase::<sft::Sft>(),
        erase::<generate::Generate>(),
        erase::<score::Score>(),
        erase::<orpo::Orpo>(),
        erase::<merge::Merge>(),
        erase::<eval::Eval>(),
    ]
}
