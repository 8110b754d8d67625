//! The scoring library of the `score` stage (and of `eval`): scorers that rate a candidate
//! answer against its prompt's reference answer, a combiner that folds them into one score per
//! candidate, preference-pair building for ORPO, and score statistics.
//!
//! # Scorers
//!
//! Every scorer maps a candidate to a score in [0, 1]:
//!
//! | scorer | what it measures | needs |
//! |---|---|---|
//! | `reference` | lexical similarity to the reference: weighted mean of ROUGE-L F1 ([`rouge`]) and chrF ([`chrf`]); the default | nothing |
//! | `embedding` | cosine of sentence embeddings (mean pooling + L2 norm, as sentence-transformers), clamped at 0 ([`embedding`]) | a BERT-family model directory (`scripts/fetch-embedder.sh`: all-MiniLM-L6-v2) |
//! | `rules` | weighted share of rules passed: regexes that must / must not match, token or character bounds, valid JSON ([`rules`]) | nothing |
//! | `command` | an external program reading JSONL rows `{id, prompt, reference, candidate}` on stdin, printing one number per row ([`command`]) | the program |
//!
//! The combined score is the weighted mean Σ wᵢ·sᵢ / Σ wᵢ of the enabled scorers
//! ([`Scorers`]); each scorer's score and its parts (ROUGE-L, chrF, each rule) are kept for
//! the stats ([`stats`]). Tokens (ROUGE-L, token bounds) are Unicode words, with Han, Kana and
//! Hangul split into characters, so Korean and Chinese are scored meaningfully ([`tokens`]).
//!
//! # Configuration (`[score]` in pipeline.toml)
//!
//! A scorer is enabled by its table; with none, `reference` runs alone with its defaults.
//! Every table refuses unknown keys.
//!
//! ```toml
//! [score]
//! include_reference = true    # the reference answer competes as a candidate (see pairs)
//! min_margin = 0.05           # keep a pair only if chosen − rejected ≥ this
//!
//! [score.reference]           # ROUGE-L F1 and chrF against the reference answer
//! weight = 1.0                # weight in the combined score (0: computed for stats only)
//! rouge_l_weight = 1.0        # mix within the scorer (default: the plain mean)
//! chrf_weight = 1.0
//! chrf_order = 6              # sacrebleu's chrF defaults
//! chrf_beta = 2.0
//!
//! [score.embedding]           # cosine similarity of sentence embeddings
//! weight = 1.0
//! model = "models/all-MiniLM-L6-v2"   # config.json, model.safetensors, tokenizer.json
//! batch_size = 32
//! # max_length = 256          # default: the model's max_seq_length
//!
//! [score.rules]               # weighted share of rules passed
//! weight = 1.0
//! [[score.rules.rule]]
//! name = "not too long"       # optional; default: the check written out
//! max_tokens = 200            # or min_tokens; min_chars / max_chars
//! [[score.rules.rule]]
//! must_not_match = "(?i)as an ai"
//! weight = 2.0                # the rule's weight among the rules
//! [[score.rules.rule]]
//! must_match = "`[^`]+`"      # one check per rule; json = true checks the whole answer
//!
//! [score.command]             # an external judge
//! weight = 1.0
//! argv = ["python3", "judges/judge.py"]  # no shell; runs in the workspace root
//! timeout_secs = 600          # for the whole batch; the process group is killed after
//! scale = [0, 10]             # the printed range, mapped onto [0, 1]; outside it is an error
//! inputs = ["judges/judge.py"]           # files hashed into the cache key
//!
//! [score.extra_pairs]         # hand-made pairs, added as they are
//! path = "data/extra_pairs.csv"
//! # encoding = "auto"  delimiter = ","  prompt = "prompt"  chosen = "chosen"
//! # rejected = "rejected"  system = "system"
//! ```
//!
//! Types: [`ScoreConfig`] is the whole table; [`ScorersConfig`] the scorer part, reusable by
//! `eval`. Their `validate` methods return [`crate::ConfigIssue`]s keyed like
//! `rules.rule.2.must_match` (rules count from 1).
//!
//! # Pairs
//!
//! [`PairBuilder`]: per prompt, chosen = the best candidate, rejected = the worst, kept if
//! chosen − rejected ≥ `min_margin`; drops are counted by reason ([`PairDrops`]). With
//! `include_reference`, the reference answer is scored as a candidate (pass it as both
//! `reference` and `candidate` to [`Scorers::score`]): the similarity scorers give it exactly
//! 1, the best possible, and the rules and the command judge it like any answer.
//! [`read_extra_pairs`] reads `extra_pairs` with ingest's CSV reader.
//!
//! # Saved scorers
//!
//! The score stage saves its effective scorers; [`load_scorers`] rebuilds them from that file
//! and [`score_answers`] scores other answers (eval's) on the same scale.

pub mod chrf;
pub mod command;
pub mod config;
pub mod embedder;
pub mod embedding;
pub mod error;
pub mod extra_pairs;
pub mod pairs;
pub mod reference;
pub mod rouge;
pub mod rules;
pub mod saved;
pub mod scorers;
pub mod stats;
pub mod tokens;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use chrf::Chrf;
pub use command::{CommandConfig, CommandScorer};
pub use config::{ScoreConfig, ScorersConfig};
pub use embedder::Embedder;
pub use embedding::{EmbeddingConfig, EmbeddingScorer};
pub use error::ScoringError;
pub use extra_pairs::{read_extra_pairs, ExtraPairsConfig};
pub use pairs::{
    DropReason, Pair, PairBuilder, PairDrops, PairSet, PromptCandidates, ScoredText, TextSource,
};
pub use reference::{ReferenceConfig, ReferenceScore, ReferenceScorer};
pub use rouge::RougeL;
pub use rules::{RuleConfig, RulesConfig, RulesOutcome, RulesScorer};
pub use saved::{load_scorers, score_answers, Answer, SavedScorersError};
pub use scorers::{ScorerKind, Scorers};
pub use stats::{distributions, render_distributions, Distribution};

/// One candidate to score, with what the scorers compare it to. `id` names the row in the
/// command scorer's input and in errors (e.g. `<example id>/<sample number>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScoreInput<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    /// The turns before `prompt` of a multi-turn row (a judge needs the context).
    pub history: &'a [crate::llm::ChatMessage],
    pub reference: &'a str,
    pub candidate: &'a str,
}

/// A candidate's scores, each in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The weighted mean of the scorers' scores.
    pub combined: f64,
    /// Each enabled scorer's score, by name (`reference`, `embedding`, `rules`, `command`).
    pub scorers: BTreeMap<String, f64>,
    /// Parts of scorers: `reference.rouge_l`, `reference.chrf`, `rules.<name>` (1 passed,
    /// 0 failed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, f64>,
}
