//! Training machinery shared by the trainer stages (sft, orpo, dpo): the step loop (`driver`),
//! the settings and checks their tables share (LoRA, run length, fitting rows into
//! `max_seq_len`), the preference pairs and starting model of orpo and dpo, the learning-rate
//! schedule, AdamW with savable state, gradient accumulation and clipping, length-grouped
//! batching planned from the seed, atomic checkpoints, NEFTune noise, the metrics log (and
//! its TensorBoard event file),
//! evaluation, greedy samples and the peak-memory probe.

pub mod batching;
pub mod chart;
pub mod checkpoint;
pub mod driver;
pub mod eval;
pub mod fit;
pub mod grads;
pub mod greedy;
pub mod lora_settings;
pub mod lora_state;
pub mod memory;
pub mod metrics;
pub mod neftune;
pub mod optim;
pub mod output;
pub mod pairs;
pub mod policy;
pub mod preference;
pub mod resume;
pub mod rng;
pub mod schedule;
pub mod settings;
pub mod step;
pub mod tensorboard;
pub mod validate;

pub use batching::{Plan, PlannedStep, RunLength};
pub use eval::EvalResult;
pub use metrics::{MetricRecord, MetricsLog};
pub use optim::{AdamW, AdamWParams};
pub use schedule::{LrScheduler, Schedule};
pub use step::{StepFailure, StepOutcome, Trainer};
