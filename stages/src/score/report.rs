//! What score writes besides the pairs, and `pipe show score`: the scored prompts, the stats
//! (distributions per scorer, pairs kept, drops by reason), histograms and pairs side by side.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::artifact::{read_pairs, PAIRS_FILE, STATS_FILE};
use super::distributions_of;
use crate::scoring::{
    render_distributions, Distribution, Pair, PairDrops, PairSet, ScoreConfig, Scorers, Scores,
    TextSource,
};
use crate::text::{one_line, wrap};

/// A text with its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredCandidate {
    pub text: String,
    pub scores: Scores,
}

/// One line of `scores.jsonl`: a prompt, its reference answer and its candidates, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredPrompt {
    pub id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The turns before `prompt` of a multi-turn row (the context it is asked in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::llm::ChatMessage>,
    /// The reference answer scored as a candidate of its own prompt.
    pub reference: ScoredCandidate,
    /// The generated candidates, in generate's order.
    pub candidates: Vec<ScoredCandidate>,
}

/// Where the chosen (or rejected) answers of the generated pairs came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    pub reference: usize,
    pub generated: usize,
}

impl SourceCounts {
    fn count(&mut self, source: TextSource) {
        match source {
            TextSource::Reference => self.reference += 1,
            _ => self.generated += 1,
        }
    }
}

/// `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    pub prompts: usize,
    pub candidates: usize,
    /// The enabled scorers and their weights.
    pub scorers: BTreeMap<String, f64>,
    pub include_reference: bool,
    pub min_margin: f64,
    /// Over the generated candidates: `combined`, each scorer, each part (`reference.chrf`,
    /// `rules.<name>`).
    pub distributions: BTreeMap<String, Distribution>,
    /// The same over the reference answers.
    pub reference_distributions: BTreeMap<String, Distribution>,
    /// Lines of `pairs.jsonl`: generated + extra.
    pub pairs: usize,
    pub generated_pairs: usize,
    pub extra_pairs: usize,
    /// Prompts that yielded no pair, by reason.
    pub dropped: PairDrops,
    pub dropped_total: usize,
    pub chosen_source: SourceCounts,
    pub rejected_source: SourceCounts,
    /// Mean chosen − rejected over the generated pairs.
    pub mean_margin: Option<f64>,
    pub seconds: f64,
}

pub(super) fn stats(
    cfg: &ScoreConfig,
    scorers: &Scorers,
    scored: &[super::ScoredPrompt],
    set: &PairSet,
    extra: usize,
    started: Instant,
) -> ScoreStats {
    let mut chosen_source = SourceCounts::default();
    let mut rejected_source = SourceCounts::default();
    let mut margins = Vec::new();
    for p in &set.pairs {
        chosen_source.count(p.chosen_source);
        rejected_source.count(p.rejected_source);
        if let (Some(c), Some(r)) = (p.chosen_score, p.rejected_score) {
            margins.push(c - r);
        }
    }
    ScoreStats {
        prompts: scored.len(),
        candidates: scored.iter().map(|p| p.candidates.len()).sum(),
        scorers: scorers
            .weights()
            .iter()
            .map(|(k, w)| (k.name().to_string(), *w))
            .collect(),
        include_reference: cfg.include_reference,
        min_margin: cfg.min_margin,
        distributions: distributions_of(
            scored
                .iter()
                .flat_map(|p| p.candidates.iter().map(|c| &c.scores)),
        ),
        reference_distributions: distributions_of(scored.iter().map(|p| &p.reference.scores)),
        pairs: set.pairs.len() + extra,
        generated_pairs: set.pairs.len(),
        extra_pairs: extra,
        dropped: set.drops,
        dropped_total: set.drops.total(),
        chosen_source,
        rejected_source,
        mean_margin: (!margins.is_empty())
            .then(|| margins.iter().sum::<f64>() / margins.len() as f64),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// `pipe show score`: the counts, the histograms, and a few pairs side by side.
pub fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let text = std::fs::read_to_string(dir.join(STATS_FILE))?;
    let s: ScoreStats = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    let scorers: Vec<String> = s.scorers.iter().map(|(k, w)| format!("{k} ×{w}")).collect();
    writeln!(
        out,
        "scored      {} prompts, {} candidates",
        s.prompts, s.candidates
    )?;
    writeln!(out, "scorers     {}", scorers.join(", "))?;
    writeln!(
        out,
        "pairs       {} ({} generated, {} extra); min_margin {}, include_reference {}",
        s.pairs, s.generated_pairs, s.extra_pairs, s.min_margin, s.include_reference
    )?;
    writeln!(
        out,
        "dropped     {} prompts: {}",
        s.dropped_total,
        s.dropped.describe()
    )?;
    writeln!(
        out,
        "chosen      {} reference, {} generated; rejected {} reference, {} generated; mean margin {}",
        s.chosen_source.reference,
        s.chosen_source.generated,
        s.rejected_source.reference,
        s.rejected_source.generated,
        s.mean_margin
            .map(|m| format!("{m:.3}"))
            .unwrap_or_else(|| "-".into())
    )?;
    writeln!(out)?;
    writeln!(out, "generated candidates:")?;
    write!(out, "{}", render_distributions(&s.distributions, 30))?;
    if let Some(d) = s.reference_distributions.get("combined") {
        writeln!(out, "{}", d.summary("reference answers (combined)"))?;
    }
    let pairs = read_pairs(&dir.join(PAIRS_FILE)).map_err(std::io::Error::other)?;
    for p in pairs.iter().take(3) {
        writeln!(out)?;
        write_pair(p, out)?;
    }
    Ok(())
}

const COLUMN: usize = 48;

/// A pair's prompt, then chosen and rejected in two columns.
fn write_pair(p: &Pair, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "[{}] {}", p.id, one_line(&p.prompt, 150))?;
    let head = |label: &str, score: Option<f64>, source: TextSource| {
        let score = score.map(|s| format!(" {s:.3}")).unwrap_or_default();
        format!("{label}{score} ({})", source_name(source))
    };
    let left = wrap(&p.chosen, COLUMN, 8);
    let right = wrap(&p.rejected, COLUMN, 8);
    writeln!(
        out,
        "  {:<COLUMN$} │ {}",
        head("chosen", p.chosen_score, p.chosen_source),
        head("rejected", p.rejected_score, p.rejected_source)
    )?;
    for i in 0..left.len().max(right.len()) {
        let l = left.get(i).map(String::as_str).unwrap_or("");
        let r = right.get(i).map(String::as_str).unwrap_or("");
        let pad = COLUMN.saturating_sub(l.chars().count());
        writeln!(out, "  {l}{} │ {r}", " ".repeat(pad))?;
    }
    Ok(())
}

fn source_name(s: TextSource) -> &'static str {
    match s {
        TextSource::Generated => "generated",
        TextSource::Reference => "reference",
        TextSource::Extra => "extra",
    }
}
