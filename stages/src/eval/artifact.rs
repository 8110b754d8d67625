//! What eval writes; no stage reads it, but its files are named here like every stage's.

/// The scores, NLL and win rates of every model.
pub const EVAL_FILE: &str = "eval.json";
/// Every model's answer to every val prompt, with its scores.
pub const ANSWERS_FILE: &str = "answers.jsonl";
/// The self-contained HTML report.
pub const REPORT_FILE: &str = "report.html";
