//! What merge hands the stages and tools after it: the merged model as an HF directory (what
//! eval loads as the final model and `pipe chat --stage merge` opens), the GGUF export, the
//! adapters it folded, and its summary. Nothing else of merge is visible to them.

/// The merged HF model directory.
pub const MODEL_DIR: &str = "model";
/// The GGUF export, when `gguf` is not `none`.
pub const GGUF_FILE: &str = "model.gguf";
/// The adapters, one PEFT directory per training stage, in merge order.
pub const ADAPTERS_DIR: &str = "adapters";
/// The merge's summary: adapters, exports and how faithfully each reproduces the model.
pub const SUMMARY_FILE: &str = "summary.json";
