//! What generate writes and how `pipe show generate` prints it: the candidates file's records,
//! the summary, and a view of both.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::artifact::{read_candidates, CANDIDATES_FILE, SUMMARY_FILE};
use super::config::{GenerateConfig, Split};
use crate::text::one_line;

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSummary {
    pub prompts: usize,
    pub candidates: usize,
    /// Generated tokens, every candidate together.
    pub tokens: usize,
    pub mean_tokens: f64,
    /// Prompts whose candidates are pairwise different texts.
    pub prompts_with_distinct_candidates: usize,
    /// Candidates by why they ended: `eos`, `stop`, `length`.
    pub finish_reasons: BTreeMap<String, usize>,
    /// Time spent generating, over every attempt of a resumed run.
    pub generate_seconds: f64,
    /// Wall time of the attempt that finished (loading included).
    pub wall_seconds: f64,
    /// `tokens / generate_seconds`.
    pub tokens_per_s: f64,
    /// Prompts already on disk when this attempt started, if it resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_prompt: Option<usize>,
    pub seed: u64,
    pub split: Split,
    /// The effective settings (the seed filled in).
    pub settings: GenerateConfig,
}

/// `12 eos, 3 length`.
pub fn finish_counts(counts: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `pipe show generate`: the summary and the first two prompts with their candidates.
pub fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
    let s: GenerateSummary = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    writeln!(
        out,
        "prompts     {} from the {} split, {} candidates each (seed {})",
        s.prompts,
        s.split.name(),
        s.settings.candidates,
        s.seed
    )?;
    writeln!(
        out,
        "sampling    temperature {}, top_p {}, top_k {}, min_p {}, repetition_penalty {}, max_new_tokens {}",
        s.settings.temperature,
        s.settings.top_p,
        s.settings.top_k,
        s.settings.min_p,
        s.settings.repetition_penalty,
        s.settings.max_new_tokens
    )?;
    writeln!(
        out,
        "tokens      {} ({:.1} per candidate) in {:.1} s: {:.1} tok/s; wall {:.1} s",
        s.tokens, s.mean_tokens, s.generate_seconds, s.tokens_per_s, s.wall_seconds
    )?;
    writeln!(out, "finished    {}", finish_counts(&s.finish_reasons))?;
    writeln!(
        out,
        "distinct    {} of {} prompts have pairwise different candidates",
        s.prompts_with_distinct_candidates, s.prompts
    )?;
    let records = read_candidates(&dir.join(CANDIDATES_FILE)).map_err(std::io::Error::other)?;
    for r in records.iter().take(2) {
        writeln!(out)?;
        writeln!(out, "[{}] {}", r.id, one_line(&r.prompt, 200))?;
        writeln!(out, "  reference: {}", one_line(&r.reference, 200))?;
        for (j, c) in r.candidates.iter().enumerate() {
            writeln!(
                out,
                "  #{j} ({} tokens, {}, logp {:.2}): {}",
                c.tokens,
                c.finish_reason,
                c.mean_logprob,
                one_line(&c.text, 200)
            )?;
        }
    }
    Ok(())
}
