//! pipe: the generic incremental engine (config, DAG, fingerprints, artifact store, runner) and
//! the CLI over it. It knows no ML: stages come from `pipe-stages` through its registry.

pub mod app;
pub mod cli;
pub mod compare;
pub mod config;
pub mod dag;
pub mod digest;
pub mod error;
pub mod executor;
pub mod fingerprint;
pub mod gc;
pub mod instances;
pub mod lock;
pub mod remote;
pub mod report;
pub mod runner;
pub mod show;
pub mod status;
pub mod store;
pub mod sweep;
pub mod tool_host;
pub mod ui;
pub mod verify;
pub mod wiring;

pub use app::main_with;
pub use error::{PipeError, Result};
