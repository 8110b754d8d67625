//! What sft hands the stages after it: the adapter directory (PEFT format, applies to the
//! base model) and the files of its run. Nothing else of sft is visible to them.

/// The trained LoRA adapter, a PEFT directory.
pub const ADAPTER_DIR: &str = "adapter";
/// The training log, one JSON object a step (TRL's `log_history`).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's summary (`pipe show sft`).
pub const SUMMARY_FILE: &str = "summary.json";
/// Val prompts answered before and after training.
pub const SAMPLES_FILE: &str = "samples.jsonl";
