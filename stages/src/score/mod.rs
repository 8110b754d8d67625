//! The `score` stage: rates generate's candidates (and each prompt's reference answer) with the
//! configured scorers of [`crate::scoring`], turns them into chosen/rejected pairs for orpo,
//! and records the effective scorers so that `eval` rebuilds exactly the same ones
//! ([`crate::scoring::load_scorers`], [`crate::scoring::score_answers`]).

pub mod artifact;
mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use artifact::{Pair, PAIRS_FILE, SCORERS_FILE, SCORES_FILE, STATS_FILE};
use report::{ScoredCandidate, ScoredPrompt};

use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::generate::artifact::{
    read_candidates, CandidateRecord, CandidatesError, CANDIDATES_FILE,
};
use crate::progress::Progress;
use crate::scoring::{
    distributions, read_extra_pairs, PairBuilder, PromptCandidates, ScoreConfig, ScoreInput,
    ScoredText, Scorers, ScorersConfig, Scores, ScoringError,
};

/// Script extensions: an `argv` entry with one of them is a file the command runs, hashed
/// into the key like `inputs`.
const SCRIPT_EXTENSIONS: &[&str] = &["py", "sh", "bash", "js", "mjs", "rb", "pl", "lua", "r"];

/// The `score` stage.
pub struct Score;

/// Why score failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Generate(#[from] CandidatesError),
    #[error(transparent)]
    Scoring(#[from] ScoringError),
    #[error("{}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ScoreError + '_ {
    move |source| ScoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl Stage for Score {
    const NAME: &'static str = "score";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "score generated candidates (reference, embedding, rules, command) into preference pairs";
    const STARTER: &'static str = r#"[score]
# include_reference = true # the reference answer competes as a candidate (usually chosen)
# min_margin = 0.05        # keep a pair only if chosen − rejected ≥ this (scores in [0, 1])
# With no scorer table, `reference` runs alone with its defaults.

[score.reference]          # ROUGE-L F1 and chrF against the reference answer
# weight = 1.0

# [score.embedding]        # cosine of sentence embeddings (scripts/fetch-embedder.sh)
# model = "models/all-MiniLM-L6-v2"

# [score.rules]            # weighted share of rules passed
# [[score.rules.rule]]
# max_tokens = 120
# [[score.rules.rule]]
# must_not_match = "(?i)as an ai"

# [score.command]          # an external judge: JSONL rows on stdin, one number per row out
# argv = ["python3", "judges/judge.py"]
# scale = [0, 10]

# [score.extra_pairs]      # hand-made pairs (CSV: prompt, chosen, rejected[, system])
# path = "data/extra_pairs.csv"
"#;
    type Config = ScoreConfig;

    fn inputs(cfg: &ScoreConfig, _pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![Input::one(
            "candidates",
            cfg.candidates.as_deref(),
            "generate",
            &["generate"],
        )])
    }

    fn external_inputs(cfg: &ScoreConfig) -> Vec<PathBuf> {
        let mut inputs = cfg.external_inputs();
        for script in command_scripts(&cfg.scorers()) {
            if !inputs.contains(&script) {
                inputs.push(script);
            }
        }
        inputs
    }

    fn optional_inputs(cfg: &ScoreConfig) -> Vec<PathBuf> {
        let scorers = cfg.scorers();
        let Some(command) = &scorers.command else {
            return Vec::new();
        };
        let required = command_scripts(&scorers);
        argv_paths(&command.argv)
            .into_iter()
            .filter(|p| !required.contains(p))
            .collect()
    }

    fn validate(cfg: &ScoreConfig) -> Result<(), ConfigIssue> {
        cfg.validate()
    }

    fn run(cfg: &ScoreConfig, cx: &mut StageContext) -> StageResult {
        run_score(cfg, cx).map_err(Into::into)
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        report::show(dir, out)
    }
}

/// `argv` entries (after the program) that name a relative script file, e.g. `judge.py` in
/// `["python3", "judges/judge.py"]`; the program itself when it is a relative path with a `/`.
fn command_scripts(cfg: &ScorersConfig) -> Vec<PathBuf> {
    let Some(command) = &cfg.command else {
        return Vec::new();
    };
    command
        .argv
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let p = Path::new(a.as_str());
            let script = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            let program_path = *i == 0 && a.contains('/');
            p.is_relative()
                && !a.starts_with('-')
                && !a.contains(char::is_whitespace)
                && (script || program_path)
        })
        .map(|(_, a)| PathBuf::from(a))
        .collect()
}

/// Every `argv` element that may name a file the command reads: the program when it is a
/// path (with a `/`), each later argument that is not an option, and the value of each
/// `--option=value`. Those that name a file are part of the key (see `optional_inputs`).
fn argv_paths(argv: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        let candidate = match path_part(arg) {
            Some(_) if i == 0 && !arg.contains('/') => None,
            other => other,
        };
        if let Some(path) = candidate.map(PathBuf::from) {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// The part of one argument that may be a path: all of it, or what follows `=` in an option.
fn path_part(arg: &str) -> Option<&str> {
    let part = match arg.strip_prefix('-') {
        Some(_) => arg.split_once('=')?.1,
        None => arg,
    };
    (!part.is_empty() && !part.contains('\0')).then_some(part)
}

fn run_score(cfg: &ScoreConfig, cx: &mut StageContext) -> Result<(), ScoreError> {
    let started = Instant::now();
    let workspace = cx.workspace().to_path_buf();
    let records = read_candidates(&cx.input("candidates").map_err(read)?.join(CANDIDATES_FILE))?;
    let effective = resolved_scorers(&cfg.scorers(), &workspace);
    let scorers = Scorers::new(&effective, &workspace)?;
    let names: Vec<String> = scorers
        .weights()
        .iter()
        .map(|(k, w)| format!("{} ×{w}", k.name()))
        .collect();
    cx.progress().info(&format!(
        "score: {} prompts, {} candidates, scorers {}",
        records.len(),
        records.iter().map(|r| r.candidates.len()).sum::<usize>(),
        names.join(", ")
    ));
    let scored = score_records(&scorers, &records, cx.progress())?;
    let prompts: Vec<PromptCandidates> = scored.iter().map(pool).collect();
    let set = PairBuilder::new(cfg.include_reference, cfg.min_margin).build(&prompts)?;
    let extra = match &cfg.extra_pairs {
        Some(extra) => read_extra_pairs(extra, &workspace)?,
        None => Vec::new(),
    };
    let out = cx.out_dir().to_path_buf();
    write_jsonl(&out.join(SCORES_FILE), &scored)?;
    let pairs: Vec<&Pair> = set.pairs.iter().chain(&extra).collect();
    write_jsonl(&out.join(PAIRS_FILE), &pairs)?;
    write_json(&out.join(SCORERS_FILE), &effective)?;
    let stats = report::stats(cfg, &scorers, &scored, &set, extra.len(), started);
    write_json(&out.join(STATS_FILE), &stats)?;
    cx.progress().info(&format!(
        "score: {} pairs from {} prompts ({} dropped: {}), {} extra; mean combined score {:.3}",
        set.pairs.len(),
        scored.len(),
        set.drops.total(),
        set.drops.describe(),
        extra.len(),
        stats
            .distributions
            .get("combined")
            .map(|d| d.mean)
            .unwrap_or(f64::NAN)
    ));
    cx.set_metric("pairs", pairs.len());
    cx.set_metric("dropped", set.drops.total());
    if let Some(d) = stats.distributions.get("combined") {
        cx.set_metric("mean_combined", d.mean);
    }
    Ok(())
}

fn read(e: crate::contract::StageError) -> ScoreError {
    ScoreError::Read {
        path: PathBuf::from("generate"),
        message: e.to_string(),
    }
}

/// Scores every candidate of every record, and each reference answer as a candidate of its
/// own prompt (the similarity scorers give it 1; rules and the command judge it), in one
/// batch so a command scorer starts once.
fn score_records(
    scorers: &Scorers,
    records: &[CandidateRecord],
    progress: &dyn Progress,
) -> Result<Vec<ScoredPrompt>, ScoreError> {
    let ids: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            std::iter::once(format!("{}/reference", r.id))
                .chain((0..r.candidates.len()).map(|j| format!("{}/{j}", r.id)))
                .collect()
        })
        .collect();
    let mut inputs = Vec::new();
    for (r, ids) in records.iter().zip(&ids) {
        let texts = std::iter::once(r.reference.as_str())
            .chain(r.candidates.iter().map(|c| c.text.as_str()));
        for (id, candidate) in ids.iter().zip(texts) {
            inputs.push(ScoreInput {
                id,
                prompt: &r.prompt,
                history: &r.history,
                reference: &r.reference,
                candidate,
            });
        }
    }
    let mut scores = scorers.score(&inputs, progress)?.into_iter();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let reference = scores.next().ok_or_else(short)?;
        let candidates = r
            .candidates
            .iter()
            .map(|c| {
                Ok(ScoredCandidate {
                    text: c.text.clone(),
                    scores: scores.next().ok_or_else(short)?,
                })
            })
            .collect::<Result<Vec<_>, ScoreError>>()?;
        out.push(ScoredPrompt {
            id: r.id.clone(),
            prompt: r.prompt.clone(),
            system: r.system.clone(),
            history: r.history.clone(),
            reference: ScoredCandidate {
                text: r.reference.clone(),
                scores: reference,
            },
            candidates,
        });
    }
    Ok(out)
}

fn short() -> ScoreError {
    ScoreError::Read {
        path: PathBuf::from("scorers"),
        message: "the scorers returned fewer scores than rows".into(),
    }
}

/// The pair builder's view of a scored prompt: combined scores only.
fn pool(p: &ScoredPrompt) -> PromptCandidates {
    let scored = |c: &ScoredCandidate| ScoredText {
        text: c.text.clone(),
        score: c.scores.combined,
    };
    PromptCandidates {
        id: p.id.clone(),
        prompt: p.prompt.clone(),
        system: p.system.clone(),
        history: p.history.clone(),
        reference: Some(scored(&p.reference)),
        candidates: p.candidates.iter().map(scored).collect(),
    }
}

/// The scorers with every workspace-relative path made absolute (the embedding model, the
/// command's inputs, its program and script arguments), so they can be rebuilt from the
/// artifact alone.
pub fn resolved_scorers(cfg: &ScorersConfig, workspace: &Path) -> ScorersConfig {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::path::absolute(workspace.join(p)).unwrap_or_else(|_| workspace.join(p))
        }
    };
    let mut cfg = cfg.effective();
    if let Some(e) = &mut cfg.embedding {
        e.model = abs(&e.model);
    }
    if let Some(c) = &mut cfg.command {
        c.inputs = c.inputs.iter().map(|p| abs(p)).collect();
        // Every argument naming a file of the workspace (the key's), so eval runs the same.
        for (i, arg) in c.argv.iter_mut().enumerate() {
            let Some(part) = path_part(arg) else {
                continue;
            };
            let path = Path::new(part);
            let is_program = i == 0;
            if path.is_relative()
                && (!is_program || part.contains('/'))
                && workspace.join(path).is_file()
            {
                let prefix = &arg[..arg.len() - part.len()];
                *arg = format!("{prefix}{}", abs(path).to_string_lossy());
            }
        }
    }
    cfg
}

/// Distributions of the combined score and each scorer over `rows`.
pub(crate) fn distributions_of<'a>(
    rows: impl Iterator<Item = &'a Scores>,
) -> BTreeMap<String, crate::scoring::Distribution> {
    let all: Vec<Scores> = rows.cloned().collect();
    distributions(&all)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ScoreError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| write_error(path)(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(write_error(path))
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), ScoreError> {
    let mut text = String::new();
    for row in rows {
        let line =
            serde_json::to_string(row).map_err(|e| write_error(path)(std::io::Error::other(e)))?;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(write_error(path))
}
