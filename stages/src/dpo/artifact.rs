//! What dpo hands the stages after it: the adapter directory (PEFT format), the files of its
//! run, and what the adapter applies to, as `summary.json` records it. Nothing else of dpo is
//! visible to them.

/// The trained LoRA adapter, a PEFT directory.
pub const ADAPTER_DIR: &str = "adapter";
/// The training log, one JSON object a step (TRL's `log_history`).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's summary; its `adapter_applies_to` field is one of the two values below.
pub const SUMMARY_FILE: &str = "summary.json";
/// The summary key naming what the adapter applies to.
pub const APPLIES_TO_KEY: &str = "adapter_applies_to";
/// `init = "new"`: the adapter applies to the base with the sft adapter folded in.
pub const APPLIES_TO_BASE_SFT: &str = "base+sft";
/// `init = "continue_sft"`: the adapter is the sft adapter trained further; it applies to the
/// base alone.
pub const APPLIES_TO_BASE: &str = "base";
