//! Preference pairs for ORPO from scored candidates: per prompt, chosen = the best candidate,
//! rejected = the worst, kept only when the scores are far enough apart.
//!
//! - The pool is the prompt's distinct candidate texts (an exact duplicate counts once) plus,
//!   with `include_reference = true`, the reference answer. The reference is a candidate like
//!   any other, scored by the same scorers: the similarity scorers (`reference`, `embedding`)
//!   give it exactly 1, the best possible, while `rules` and `command` judge it as they judge
//!   any answer. So it is usually the chosen answer, and a generated answer beats it only
//!   where the rules or the judge prefer it. The reference comes first in the pool, so it wins
//!   ties for best.
//! - Ties: chosen is the first best in pool order, rejected the first worst.
//! - Dropped, counted by reason: fewer than 2 distinct candidates; all scores equal; a margin
//!   (chosen − rejected) below `min_margin`.

use serde::{Deserialize, Serialize};

use super::error::ScoringError;

/// Scores closer than this count as equal (float noise, not a preference).
const EQUAL: f64 = 1e-12;

/// A candidate answer with its combined score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredText {
    pub text: String,
    pub score: f64,
}

/// Everything scored for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCandidates {
    /// The prompt's id (ingest's example id).
    pub id: String,
    pub prompt: String,
    pub system: Option<String>,
    /// The turns before `prompt` of a multi-turn row.
    pub history: Vec<crate::llm::ChatMessage>,
    /// The reference answer scored as a candidate; used when `include_reference` is set.
    pub reference: Option<ScoredText>,
    /// The generated answers.
    pub candidates: Vec<ScoredText>,
}

/// Where a pair's text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextSource {
    /// Sampled from the model by `generate`.
    Generated,
    /// The dataset's reference answer.
    Reference,
    /// A row of `extra_pairs`.
    Extra,
}

/// One preference pair: a line of the score stage's pairs file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// The prompt's id (generated pairs) or a content hash (extra pairs).
    pub id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The turns before `prompt` of a multi-turn row (the context it is asked in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::llm::ChatMessage>,
    pub chosen: String,
    pub rejected: String,
    /// Combined scores; absent for extra pairs, which are not scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_score: Option<f64>,
    pub chosen_source: TextSource,
    pub rejected_source: TextSource,
}

/// Why a prompt yielded no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    FewerThanTwo,
    AllEqual,
    MarginTooSmall,
}

/// Prompts that yielded no pair, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDrops {
    pub fewer_than_two: usize,
    pub all_equal: usize,
    pub margin_too_small: usize,
}

impl PairDrops {
    pub fn total(&self) -> usize {
        self.fewer_than_two + self.all_equal + self.margin_too_small
    }

    fn count(&mut self, reason: DropReason) {
        match reason {
            DropReason::FewerThanTwo => self.fewer_than_two += 1,
            DropReason::AllEqual => self.all_equal += 1,
            DropReason::MarginTooSmall => self.margin_too_small += 1,
        }
    }

    /// `3 with fewer than 2 candidates, 1 with all scores equal`, or `none`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.fewer_than_two, "with fewer than 2 distinct candidates"),
            (self.all_equal, "with all scores equal"),
            (self.margin_too_small, "with a margin below min_margin"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The pairs built from a batch of prompts and what was dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairSet {
    pub pairs: Vec<Pair>,
    pub drops: PairDrops,
}

/// Builds chosen/rejected pairs; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairBuilder {
    include_reference: bool,
    min_margin: f64,
}

/// A pool entry: text, score, source.
struct Entry<'a> {
    text: &'a str,
    score: f64,
    source: TextSource,
}

impl PairBuilder {
    pub fn new(include_reference: bool, min_margin: f64) -> Self {
        Self {
            include_reference,
            min_margin,
        }
    }

    /// One pair per prompt where possible; the others are counted in `drops`.
    pub fn build(&self, prompts: &[PromptCandidates]) -> Result<PairSet, ScoringError> {
        let mut set = PairSet::default();
        for p in prompts {
            match self.pair(p)? {
                Ok(pair) => set.pairs.push(pair),
                Err(reason) => set.drops.count(reason),
            }
        }
        Ok(set)
    }

    /// The pair for one prompt, or why there is none. Non-finite scores are an error.
    pub fn pair(&self, p: &PromptCandidates) -> Result<Result<Pair, DropReason>, ScoringError> {
        let pool = self.pool(p)?;
        if pool.len() < 2 {
            return Ok(Err(DropReason::FewerThanTwo));
        }
        let chosen = first_by(&pool, |a, b| a > b);
        let rejected = first_by(&pool, |a, b| a < b);
        let margin = pool[chosen].score - pool[rejected].score;
        if margin <= EQUAL {
            return Ok(Err(DropReason::AllEqual));
        }
        if margin + EQUAL < self.min_margin {
            return Ok(Err(DropReason::MarginTooSmall));
        }
        let (c, r) = (&pool[chosen], &pool[rejected]);
        Ok(Ok(Pair {
            id: p.id.clone(),
            prompt: p.prompt.clone(),
            system: p.system.clone(),
            history: p.history.clone(),
            chosen: c.text.to_string(),
            rejected: r.text.to_string(),
            chosen_score: Some(c.score),
            rejected_score: Some(r.score),
            chosen_source: c.source,
            rejected_source: r.source,
        }))
    }

    /// The reference (if included) then the distinct generated texts, scores checked.
    fn pool<'a>(&self, p: &'a PromptCandidates) -> Result<Vec<Entry<'a>>, ScoringError> {
        let reference = p
            .reference
            .as_ref()
            .filter(|_| self.include_reference)
            .map(|r| (r, TextSource::Reference));
        let generated = p.candidates.iter().map(|c| (c, TextSource::Generated));
        let mut pool: Vec<Entry<'a>> = Vec::new();
        for (scored, source) in reference.into_iter().chain(generated) {
            if !scored.score.is_finite() {
                return Err(ScoringError::NonFiniteScore {
                    prompt_id: p.id.clone(),
                    what: match source {
                        TextSource::Reference => "the reference".into(),
                        _ => format!("candidate {:?}", preview(&scored.text)),
                    },
                    score: scored.score,
                });
            }
            if pool.iter().all(|e| e.text != scored.text) {
                pool.push(Entry {
                    text: &scored.text,
                    score: scored.score,
                    source,
                });
            }
        }
        Ok(pool)
    }
}

/// The index of the first entry that no later entry beats by `better`.
fn first_by(pool: &[Entry<'_>], better: impl Fn(f64, f64) -> bool) -> usize {
    let mut best = 0;
    for (i, e) in pool.iter().enumerate().skip(1) {
        if better(e.score, pool[best].score) {
            best = i;
        }
    }
    best
}

/// The first 40 characters of a text, for messages.
fn preview(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(40).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(text: &str, score: f64) -> ScoredText {
        ScoredText {
            text: text.into(),
            score,
        }
    }

    fn prompt(reference: Option<f64>, candidates: &[(&str, f64)]) -> PromptCandidates {
        PromptCandidates {
            id: "p1".into(),
            prompt: "What does ls do?".into(),
            system: None,
            history: Vec::new(),
            reference: reference.map(|s| scored("list directory contents", s)),
            candidates: candidates.iter().map(|&(t, s)| scored(t, s)).collect(),
        }
    }

    #[test]
    fn chosen_is_best_rejected_is_worst() {
        let b = PairBuilder::new(false, 0.1);
        let p = prompt(Some(1.0), &[("a", 0.4), ("b", 0.9), ("c", 0.2), ("d", 0.5)]);
        let pair = b.pair(&p).unwrap().unwrap();
        assert_eq!((pair.chosen.as_str(), pair.rejected.as_str()), ("b", "c"));
        assert_eq!(
            (pair.chosen_score, pair.rejected_score),
            (Some(0.9), Some(0.2))
        );
        assert_eq!(pair.chosen_source, TextSource::Generated);
    }

    #[test]
    fn the_reference_competes_when_included() {
        let b = PairBuilder::new(true, 0.1);
        let p = prompt(Some(1.0), &[("a", 0.4), ("b", 0.9)]);
        let pair = b.pair(&p).unwrap().unwrap();
        assert_eq!(pair.chosen, "list directory contents");
        assert_eq!(pair.chosen_source, TextSource::Reference);
        assert_eq!(pair.rejected, "a");
        // A single generated answer is enough with the reference.
        let one = prompt(Some(1.0), &[("a", 0.4)]);
        assert_eq!(b.pair(&one).unwrap().unwrap().rejected, "a");
        assert_eq!(
            PairBuilder::new(false, 0.1).pair(&one).unwrap(),
            Err(DropReason::FewerThanTwo)
        );
        // Where the rules or a judge mark the reference down, a generated answer can win and
        // the reference can even be the rejected one.
        let judged = prompt(Some(0.3), &[("a", 0.6), ("b", 0.8)]);
        let pair = b.pair(&judged).unwrap().unwrap();
        assert_eq!(
            (pair.chosen.as_str(), pair.rejected_source),
            ("b", TextSource::Reference)
        );
    }

    #[test]
    fn the_reference_wins_ties_for_best() {
        let b = PairBuilder::new(true, 0.0);
        let p = prompt(Some(1.0), &[("a", 1.0), ("b", 0.5)]);
        let pair = b.pair(&p).unwrap().unwrap();
        assert_eq!(pair.chosen_source, TextSource::Reference);
        assert_eq!(pair.rejected, "b");
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let b = PairBuilder::new(false, 0.2);
        let prompts = [
            prompt(None, &[]),
            prompt(None, &[("only", 0.5)]),
            // Duplicates count once: one distinct text.
            prompt(None, &[("same", 0.5), ("same", 0.5)]),
            prompt(None, &[("a", 0.5), ("b", 0.5), ("c", 0.5)]),
            prompt(None, &[("a", 0.5), ("b", 0.6)]),
            prompt(None, &[("a", 0.1), ("b", 0.3)]),
            prompt(None, &[("a", 0.1), ("b", 0.9)]),
        ];
        let set = b.build(&prompts).unwrap();
        assert_eq!(set.pairs.len(), 2);
        assert_eq!(
            set.drops,
            PairDrops {
                fewer_than_two: 3,
                all_equal: 1,
                margin_too_small: 1
            }
        );
        assert_eq!(set.drops.total(), 5);
        assert_eq!(
            set.drops.describe(),
            "3 with fewer than 2 distinct candidates, 1 with all scores equal, 1 with a margin below min_margin"
        );
        // 0.3 − 0.1 is 0.19999999999999998 in floats: the 0.2 margin counts as met.
        assert_eq!(set.pairs[0].chosen, "b");
    }

    #[test]
    fn a_zero_margin_keeps_any_difference_but_not_ties() {
        let b = PairBuilder::new(false, 0.0);
        let p = prompt(None, &[("a", 0.5), ("b", 0.5000001)]);
        assert!(b.pair(&p).unwrap().is_ok());
        let p = prompt(None, &[("a", 0.5), ("b", 0.5)]);
        assert_eq!(b.pair(&p).unwrap(), Err(DropReason::AllEqual));
    }

    #[test]
    fn non_finite_scores_are_errors_naming_the_prompt() {
        let b = PairBuilder::new(true, 0.0);
        let p = prompt(Some(1.0), &[("a", f64::NAN)]);
        let err = b.pair(&p).unwrap_err().to_string();
        assert_eq!(
            err,
            "prompt `p1`: candidate \"a\" has a non-finite score (NaN); scores must be numbers in [0, 1]"
        );
    }

    #[test]
    fn pairs_serialise_as_jsonl_rows() {
        let b = PairBuilder::new(true, 0.0);
        let pair = b.pair(&prompt(Some(1.0), &[("a", 0.25)])).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&pair).unwrap(),
            r#"{"id":"p1","prompt":"What does ls do?","chosen":"list directory contents","rejected":"a","chosen_score":1.0,"rejected_score":0.25,"chosen_source":"reference","rejected_source":"generated"}"#
        );
    }
}
