//! The `eval` stage: the val split answered greedily, with the same settings, by every model
//! it compares (`models`: by default the base, the adapter stages on the path to merge, and
//! the merged model); every answer scored against the reference with the score stage's own
//! scorers (the reference scorer when the pipeline has no score stage); each model's NLL and
//! perplexity on the reference answers; pairwise win rates. Writes `eval.json`,
//! `answers.jsonl` and `report.html`.
//!
//! A merge instance is evaluated through its exported `model/` directory, loaded back as a
//! user would load it, so the evaluation also covers the export.

pub mod artifact;
mod report;
mod results;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use artifact::{ANSWERS_FILE, EVAL_FILE, REPORT_FILE};
use report::{read_metrics, render, TrainingLog};
use results::{mean_scores, win_rates, AnswerRecord, EvalResults, ModelAnswer, ModelResult};

use crate::base::{apply_stack_for_decode, BaseModel, BaseModelError, ModelStack};
use crate::contract::{ConfigIssue, Input, Link, Pipeline, Stage, StageContext, StageResult};
use crate::dpo::artifact::METRICS_FILE as DPO_METRICS_FILE;
use crate::ingest::artifact::{self as ingest, ExamplesError, VAL_FILE};
use crate::llm::{
    load_model_path, Example, GenerationConfig, Generator, LlamaModel, LlmError, SamplingParams,
    TokenBatch,
};
use crate::merge::artifact::MODEL_DIR as MERGED_MODEL_DIR;
use crate::orpo::artifact::METRICS_FILE as ORPO_METRICS_FILE;
use crate::progress::Progress;
use crate::score::artifact::SCORERS_FILE;
use crate::scoring::{
    load_scorers, score_answers, Answer, SavedScorersError, ScoreConfig, Scorers, Scores,
    ScoringError,
};
use crate::sft::artifact::METRICS_FILE as SFT_METRICS_FILE;
use crate::train::eval::completion_loss;

/// The `eval` stage.
pub struct Eval;

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The ingest instance whose val rows it answers (default `ingest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The models compared, in report order (default: the base, every adapter stage on the
    /// path to merge below its top, and the merge instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The score instance whose scorers judge the answers (default `score` when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorers: Option<String>,
    /// Evaluate a seeded sample of N val rows (default: all): the same rows for every model.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Prompts generated together (and reference answers scored together for the NLL).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Tokens per row for the NLL; longer rows lose prompt tokens from the left.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Prompts shown with every model's answer in report.html.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Decode with the exact f32 weights instead of 8-bit copies (slower).
    #[serde(default)]
    pub exact: bool,
}

fn default_max_new_tokens() -> usize {
    128
}
fn default_batch_size() -> usize {
    8
}
fn default_max_seq_len() -> usize {
    512
}
fn default_samples() -> usize {
    12
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            data: None,
            models: None,
            scorers: None,
            limit: None,
            max_new_tokens: default_max_new_tokens(),
            batch_size: default_batch_size(),
            max_seq_len: default_max_seq_len(),
            samples: default_samples(),
            exact: false,
        }
    }
}

/// Why eval failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error(transparent)]
    Ingest(#[from] ExamplesError),
    /// Boxed: the largest variants, and `Result<_, EvalError>` is returned everywhere.
    #[error(transparent)]
    Score(Box<SavedScorersError>),
    #[error(transparent)]
    Scoring(Box<ScoringError>),
    #[error("eval: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error("eval: {0} has no rows: nothing to evaluate")]
    Empty(String),
    #[error("eval: {0}")]
    Inputs(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<SavedScorersError> for EvalError {
    fn from(e: SavedScorersError) -> Self {
        EvalError::Score(Box::new(e))
    }
}

impl From<ScoringError> for EvalError {
    fn from(e: ScoringError) -> Self {
        EvalError::Scoring(Box::new(e))
    }
}

fn llm(context: impl Into<String>) -> impl FnOnce(LlmError) -> EvalError {
    let context = context.into();
    move |source| EvalError::Llm {
        context,
        source: Box::new(source),
    }
}

impl Stage for Eval {
    const NAME: &'static str = "eval";
    /// 3: `limit` takes a seeded sample of the val rows (was: the first N); any set of models.
    /// 4: report.html draws the curves of every training instance, not only the first two.
    const VERSION: u32 = 4;
    const ABOUT: &'static str =
        "compares models (base vs sft vs final by default) on the val split: scores, NLL, win rates, report.html";
    const STARTER: &'static str = r#"[eval]
# limit = 32               # evaluate a seeded sample of N val rows (default: all)
# max_new_tokens = 128     # greedy answers of every model, same settings
# batch_size = 8           # prompts generated together
# max_seq_len = 512        # tokens per row for the NLL of the reference answers
# samples = 12             # prompts shown side by side in report.html
# exact = false            # true: decode with exact f32 weights (slower)
"#;
    type Config = EvalConfig;

    fn inputs(cfg: &EvalConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        let mut inputs = vec![
            Input::one("data", cfg.data.as_deref(), "ingest", &["ingest"]),
            Input::many(
                "models",
                cfg.models.as_deref(),
                // A written list needs no default (which may be ambiguous: two variants).
                match (&cfg.models, default_models(pipeline)) {
                    (_, Ok(default)) => default,
                    (Some(_), Err(_)) => Vec::new(),
                    (None, Err(issue)) => return Err(issue),
                },
                EVAL_MODEL_KINDS,
            )
            .following("model"),
        ];
        let default_scorers = pipeline.kind_of("score") == Some("score");
        if cfg.scorers.is_some() || default_scorers {
            inputs.push(Input::one(
                "scorers",
                cfg.scorers.as_deref(),
                "score",
                &["score"],
            ));
        }
        Ok(inputs)
    }

    fn validate(cfg: &EvalConfig) -> Result<(), ConfigIssue> {
        if let Some(models) = &cfg.models {
            if models.len() < 2 {
                return Err(ConfigIssue::new(
                    "models",
                    "name at least two models to compare, e.g. [\"model\", \"sft\"]",
                ));
            }
            if let Some(dup) = models
                .iter()
                .enumerate()
                .find_map(|(i, m)| models[..i].contains(m).then_some(m))
            {
                return Err(ConfigIssue::new(
                    "models",
                    format!("`{dup}` is named twice"),
                ));
            }
        }
        for (key, value) in [
            ("max_new_tokens", cfg.max_new_tokens),
            ("batch_size", cfg.batch_size),
            ("max_seq_len", cfg.max_seq_len),
        ] {
            if value == 0 {
                return Err(ConfigIssue::new(key, "must be at least 1"));
            }
        }
        if cfg.limit == Some(0) {
            return Err(ConfigIssue::new(
                "limit",
                "must be at least 1 (leave it out for every val row)",
            ));
        }
        Ok(())
    }

    fn run(cfg: &EvalConfig, cx: &mut StageContext) -> StageResult {
        let inputs = Inputs::of(cx)?;
        let results = evaluate(cfg, &inputs, cx.workspace(), cx.out_dir(), cx.progress())?;
        for m in &results.models {
            cx.set_metric(&format!("{}_score", m.name), m.score);
            cx.set_metric(&format!("{}_val_nll", m.name), m.val_nll);
        }
        // The last model against the first: final vs base in the demo.
        let (first, last) = (results.models.first(), results.models.last());
        if let (Some(a), Some(b)) = (first, last) {
            if let Some(w) = results
                .win_rates
                .iter()
                .find(|w| w.a == a.name && w.b == b.name)
            {
                cx.set_metric(&format!("{}_vs_{}_win_rate", b.name, a.name), w.b_win_rate);
            }
        }
        cx.set_metric("seconds", results.seconds);
        Ok(())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        let text = std::fs::read_to_string(dir.join(EVAL_FILE))?;
        let r: EvalResults = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        results::write_table(&r, out)?;
        writeln!(out, "report      {}", dir.join(REPORT_FILE).display())
    }
}

/// The kinds eval can compare: anything that yields a model, and merge's export.
const EVAL_MODEL_KINDS: &[&str] = &["model", "sft", "orpo", "dpo", "merge"];

/// The default `models`: the base, then every adapter stage on the path to the merge
/// instance below its top (which the merged model stands for), then the merge; without a
/// merge, the base and the adapter stages up to the one no other builds on.
fn default_models(pipeline: &Pipeline) -> Result<Vec<String>, ConfigIssue> {
    let ambiguous = |what: &str, names: &[String]| {
        ConfigIssue::new(
            "models",
            format!(
                "the pipeline has several {what} ({}); say which models eval compares: models = [\"model\", …]",
                names.join(", ")
            ),
        )
    };
    let merges: Vec<String> = pipeline
        .of_kinds(&["merge"])
        .into_iter()
        .map(String::from)
        .collect();
    let (top, merged) = match merges.as_slice() {
        [one] => (one.clone(), true),
        [] => match pipeline.single_top(crate::base::ADAPTER_KINDS, "model") {
            Ok(Some(top)) => (top, false),
            Ok(None) => return Ok(vec!["model".into()]),
            Err(tops) => return Err(ambiguous("adapter stages on top", &tops)),
        },
        _ => return Err(ambiguous("merge instances", &merges)),
    };
    let mut chain = pipeline.chain(&top, "model");
    chain.reverse();
    if merged && chain.len() > 2 {
        // The adapter stage just below the merge is what the merge exports.
        chain.remove(chain.len() - 2);
    }
    Ok(chain)
}

/// The committed artifact directories eval reads.
pub struct Inputs {
    /// The ingest artifact whose val rows it answers.
    pub data: PathBuf,
    /// The models compared, in report order.
    pub models: Vec<EvalModel>,
    /// The score artifact whose `scorers.json` it rebuilds; `None`: the reference scorer.
    pub scorers: Option<PathBuf>,
    /// The adapter instances on the models' chains, each once and base first
    /// ([`trained_links`]): the report draws the training curves of every one.
    pub trained: Vec<Link>,
    /// Seeds the sample of val rows `limit` takes (the project seed).
    pub seed: u64,
}

/// The adapter instances on the models' `chains` (each listed top first, as the engine gives
/// them), each once: chains in models order, each walked from the base up, so an sft's curves
/// come before those of the orpo trained on it.
fn trained_links(chains: &[Vec<Link>]) -> Vec<Link> {
    let mut trained: Vec<Link> = Vec::new();
    for link in chains.iter().flat_map(|chain| chain.iter().rev()) {
        if crate::base::ADAPTER_KINDS.contains(&link.kind.as_str()) && !trained.contains(link) {
            trained.push(link.clone());
        }
    }
    trained
}

/// One model eval compares.
pub struct EvalModel {
    /// Its name in the tables: the instance's, except `base` for the instance `model` and
    /// `final` for the instance `merge`.
    pub name: String,
    pub source: ModelSource,
}

/// Where a compared model's weights come from.
pub enum ModelSource {
    /// The base and adapters of a model stack.
    Stack(ModelStack),
    /// A merge artifact's exported `model/`.
    Merged(PathBuf),
}

impl Inputs {
    /// The inputs of a running eval instance.
    pub fn of(cx: &StageContext) -> StageResult<Self> {
        let mut models = Vec::new();
        for chain in cx.chains("models") {
            let top = &chain[0];
            let source = if top.kind == "merge" {
                ModelSource::Merged(top.dir.join(MERGED_MODEL_DIR))
            } else {
                ModelSource::Stack(ModelStack::from_chain(chain)?)
            };
            models.push(EvalModel {
                name: display_name(top),
                source,
            });
        }
        Ok(Self {
            data: cx.input("data")?.to_path_buf(),
            models,
            seed: cx.seed(),
            scorers: cx
                .has_input("scorers")
                .then(|| cx.input("scorers"))
                .transpose()?
                .map(Path::to_path_buf),
            trained: trained_links(cx.chains("models")),
        })
    }

    /// The `model` artifact every compared model builds on (they must share one: the rows
    /// are rendered once, with its template).
    fn base(&self) -> Result<PathBuf, EvalError> {
        let mut bases = self.models.iter().filter_map(|m| match &m.source {
            ModelSource::Stack(s) => Some(s.base.clone()),
            ModelSource::Merged(_) => None,
        });
        let first = bases.next().ok_or_else(|| {
            EvalError::Inputs("eval compares no model built on a `model` instance; add the base (\"model\") to `models`".into())
        })?;
        if bases.any(|b| b != first) {
            return Err(EvalError::Inputs(
                "the compared models stand on different `model` instances; eval renders every prompt once, with one base's template".into(),
            ));
        }
        Ok(first)
    }
}

/// A model's name in eval's tables.
fn display_name(link: &Link) -> String {
    match (link.kind.as_str(), link.instance.as_str()) {
        ("model", "model") => "base".into(),
        ("merge", "merge") => "final".into(),
        (_, name) => name.into(),
    }
}

/// One val row, rendered once for every model.
struct Row {
    example: ingest::Example,
    prompt_ids: Vec<u32>,
    /// Prompt + reference answer for the NLL; `None` when the answer alone does not fit.
    nll: Option<Example>,
}

/// One model's generations and loss.
struct ModelRun {
    description: String,
    answers: Vec<crate::llm::Generation>,
    nll: crate::train::EvalResult,
    seconds: f64,
}

/// Runs the whole evaluation and writes every output file into `out`.
pub fn evaluate(
    cfg: &EvalConfig,
    inputs: &Inputs,
    workspace: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<EvalResults, EvalError> {
    let started = Instant::now();
    let (base, device) = BaseModel::open(&inputs.base()?, workspace)?;
    let val_path = inputs.data.join(VAL_FILE);
    let mut val = ingest::read_examples(&val_path)?;
    val = ingest::seeded_sample(val, cfg.limit, inputs.seed);
    if val.is_empty() {
        return Err(EvalError::Empty(val_path.display().to_string()));
    }
    let rows = render_rows(&base, val, cfg.max_seq_len)?;
    let nll_rows_dropped = rows.iter().filter(|r| r.nll.is_none()).count();
    let batches = nll_batches(&rows, cfg.batch_size, base.info.pad_token_id, &device)?;
    let generation = GenerationConfig {
        max_new_tokens: cfg.max_new_tokens,
        sampling: SamplingParams::default(),
        seed: 0,
        stop_strings: Vec::new(),
        extra_eos_ids: base.info.eos_token_ids.clone(),
        ignore_eos: false,
    };
    progress.info(&format!(
        "eval: {} val prompts × {} models, greedy, up to {} new tokens",
        rows.len(),
        inputs.models.len(),
        cfg.max_new_tokens
    ));

    let BaseModel {
        info,
        model: base_model,
        tokenizer,
        ..
    } = base;
    let names: Vec<&str> = inputs.models.iter().map(|m| m.name.as_str()).collect();
    let mut runs = Vec::new();
    for m in &inputs.models {
        let name = m.name.as_str();
        let (model, description) = match &m.source {
            ModelSource::Stack(stack) => (
                with_stack(&base_model, stack, &device)?,
                stack.describe(&info.name),
            ),
            ModelSource::Merged(dir) => {
                let loaded = load_model_path(dir, &device).map_err(llm(format!(
                    "cannot load the merged model {}",
                    dir.display()
                )))?;
                let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map())
                    .map_err(llm("cannot build the merged model"))?;
                (model, format!("merged: {}", dir.display()))
            }
        };
        let run = run_model(
            name,
            model,
            description,
            &rows,
            &batches,
            cfg,
            &generation,
            &tokenizer,
            progress,
        )?;
        runs.push(run);
    }

    let scorers = match &inputs.scorers {
        Some(dir) => load_scorers(&dir.join(SCORERS_FILE), workspace)?,
        None => Scorers::new(&ScoreConfig::default().scorers(), workspace)?,
    };
    let ids: Vec<String> = names
        .iter()
        .flat_map(|m| rows.iter().map(move |r| format!("{}/{m}", r.example.id)))
        .collect();
    let answers: Vec<Answer<'_>> = runs
        .iter()
        .flat_map(|run| run.answers.iter().zip(&rows))
        .zip(&ids)
        .map(|((g, row), id)| Answer {
            id,
            prompt: &row.example.prompt,
            history: &row.example.history,
            reference: &row.example.response,
            answer: &g.text,
        })
        .collect();
    progress.info(&format!("eval: scoring {} answers", answers.len()));
    let scores = score_answers(&scorers, &answers, progress)?;
    let per_model: Vec<&[Scores]> = scores.chunks(rows.len()).collect();

    let records = answer_records(&rows, &names, &runs, &per_model);
    let categories: Vec<Option<&str>> =
        rows.iter().map(|r| r.example.category.as_deref()).collect();
    let models: Vec<ModelResult> = names
        .iter()
        .zip(&runs)
        .zip(&per_model)
        .map(|((name, run), scores)| model_result(name, run, scores, &categories))
        .collect();
    let results = EvalResults {
        prompts: rows.len(),
        nll_rows_dropped,
        max_new_tokens: cfg.max_new_tokens,
        win_rates: win_rates(&records, &names),
        models,
        seconds: started.elapsed().as_secs_f64(),
        categories: results::category_counts(&categories),
    };
    write_outputs(out, &results, &records, inputs, cfg.samples)?;
    for m in &results.models {
        progress.info(&format!(
            "eval: {:<5} score {:.4}, val NLL {:.4} (ppl {:.2})",
            m.name, m.score, m.val_nll, m.val_ppl
        ));
    }
    Ok(results)
}

/// A copy of the base with a stack's adapters: the top one attached unmerged (so the 8-bit
/// decode copies hold the weights below exactly and it is added in f32), the others merged.
fn with_stack(
    base: &LlamaModel,
    stack: &ModelStack,
    device: &Device,
) -> Result<LlamaModel, EvalError> {
    let mut model = base.clone();
    apply_stack_for_decode(&mut model, stack, device)
        .map_err(llm(format!("cannot load {}", stack.describe("the base"))))?;
    Ok(model)
}

/// Renders every row: the generation prompt, and prompt + reference for the NLL (prompt
/// tokens cut from the left when too long, as sft does).
fn render_rows(
    base: &BaseModel,
    val: Vec<ingest::Example>,
    max_seq_len: usize,
) -> Result<Vec<Row>, EvalError> {
    val.into_iter()
        .map(|example| {
            let context = || {
                format!(
                    "cannot render val row id {} (source row {})",
                    example.id, example.source_row
                )
            };
            let prompt_ids = base
                .render_prompt(example.system.as_deref(), &example.history, &example.prompt)
                .map_err(llm(context()))?;
            let rendered = base
                .render_example(
                    example.system.as_deref(),
                    &example.history,
                    &example.prompt,
                    &example.response,
                )
                .map_err(llm(context()))?;
            let completion = rendered.completion_ids;
            let mut prompt = rendered.prompt_ids;
            let nll = if completion.is_empty() || completion.len() >= max_seq_len {
                None
            } else {
                let keep = max_seq_len - completion.len();
                if prompt.len() > keep {
                    prompt.drain(..prompt.len() - keep);
                }
                Some(Example::new(prompt, completion))
            };
            Ok(Row {
                example,
                prompt_ids,
                nll,
            })
        })
        .collect()
}

/// The NLL rows in batches of similar length (fixed, so every model scores the same batches).
fn nll_batches(
    rows: &[Row],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<Vec<TokenBatch>, EvalError> {
    let mut examples: Vec<&Example> = rows.iter().filter_map(|r| r.nll.as_ref()).collect();
    examples.sort_by_key(|e| e.prompt.len() + e.completion.len());
    examples
        .chunks(batch_size)
        .map(|chunk| {
            let owned: Vec<Example> = chunk.iter().map(|e| (*e).clone()).collect();
            TokenBatch::new(&owned, pad, device).map_err(llm("cannot batch the val rows"))
        })
        .collect()
}

/// NLL first (exact weights), then greedy answers with the 8-bit decode copies.
#[allow(clippy::too_many_arguments)]
fn run_model(
    name: &str,
    mut model: LlamaModel,
    description: String,
    rows: &[Row],
    batches: &[TokenBatch],
    cfg: &EvalConfig,
    generation: &GenerationConfig,
    tokenizer: &crate::llm::TextTokenizer,
    progress: &dyn Progress,
) -> Result<ModelRun, EvalError> {
    let nll = completion_loss(&model, batches).map_err(llm(format!("{name}: val NLL")))?;
    if !cfg.exact {
        model
            .pack_for_decode()
            .map_err(llm("cannot pack the weights for decoding"))?;
    }
    let started = Instant::now();
    let generator = Generator::new(&model, tokenizer);
    // Prompts of similar length together: less padding in the prefill.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].prompt_ids.len());
    let mut answers: Vec<Option<crate::llm::Generation>> = vec![None; rows.len()];
    let bar = progress.bar(Some(rows.len() as u64), &format!("{name} answers"));
    for chunk in order.chunks(cfg.batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].prompt_ids.clone()).collect();
        let out = generator
            .generate(&prompts, chunk[0] as u64, generation, &mut |_, _| {})
            .map_err(llm(format!("{name}: generation")))?;
        for (&i, g) in chunk.iter().zip(out) {
            answers[i] = Some(g);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let answers = answers
        .into_iter()
        .map(|a| a.ok_or_else(|| llm(name)(LlmError::Invalid("a prompt got no answer".into()))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelRun {
        description,
        answers,
        nll,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn answer_records(
    rows: &[Row],
    names: &[&str],
    runs: &[ModelRun],
    scores: &[&[Scores]],
) -> Vec<AnswerRecord> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| AnswerRecord {
            id: row.example.id.clone(),
            source_row: row.example.source_row,
            prompt: row.example.prompt.clone(),
            history: row.example.history.clone(),
            reference: row.example.response.clone(),
            answers: names
                .iter()
                .zip(runs)
                .zip(scores)
                .map(|((name, run), scores)| {
                    let g = &run.answers[i];
                    (
                        name.to_string(),
                        ModelAnswer {
                            text: g.text.clone(),
                            tokens: g.token_count(),
                            finish_reason: g.finish_reason.as_str().to_string(),
                            scores: scores[i].clone(),
                        },
                    )
                })
                .collect(),
        })
        .collect()
}

fn model_result(
    name: &str,
    run: &ModelRun,
    scores: &[Scores],
    categories: &[Option<&str>],
) -> ModelResult {
    let refs: Vec<&Scores> = scores.iter().collect();
    let (score, scorers) = mean_scores(&refs);
    let tokens: usize = run.answers.iter().map(|g| g.token_count()).sum();
    let mut finish_reasons = BTreeMap::new();
    for g in &run.answers {
        *finish_reasons
            .entry(g.finish_reason.as_str().to_string())
            .or_insert(0) += 1;
    }
    ModelResult {
        name: name.to_string(),
        description: run.description.clone(),
        score,
        scorers,
        val_nll: run.nll.loss,
        val_ppl: run.nll.perplexity,
        nll_tokens: run.nll.tokens,
        mean_answer_tokens: tokens as f64 / run.answers.len().max(1) as f64,
        finish_reasons,
        generate_seconds: run.seconds,
        tokens_per_s: tokens as f64 / run.seconds.max(1e-9),
        categories: results::category_scores(categories, scores),
    }
}

fn write_outputs(
    out: &Path,
    results: &EvalResults,
    records: &[AnswerRecord],
    inputs: &Inputs,
    samples: usize,
) -> Result<(), EvalError> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| EvalError::Write { path, source })
    };
    let json_error = |name: &str, e: serde_json::Error| EvalError::Write {
        path: out.join(name),
        source: std::io::Error::other(e),
    };
    let eval_json = serde_json::to_string_pretty(results).map_err(|e| json_error(EVAL_FILE, e))?;
    write(EVAL_FILE, eval_json + "\n")?;
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r).map_err(|e| json_error(ANSWERS_FILE, e))?);
        lines.push('\n');
    }
    write(ANSWERS_FILE, lines)?;
    let logs: Vec<TrainingLog> = inputs
        .trained
        .iter()
        .map(|l| {
            let metrics = match l.kind.as_str() {
                "sft" => SFT_METRICS_FILE,
                "dpo" => DPO_METRICS_FILE,
                _ => ORPO_METRICS_FILE,
            };
            TrainingLog {
                instance: l.instance.clone(),
                kind: l.kind.clone(),
                lines: read_metrics(&l.dir.join(metrics)),
            }
        })
        .collect();
    let names: Vec<&str> = results.models.iter().map(|m| m.name.as_str()).collect();
    write(
        REPORT_FILE,
        render(
            &format!("pipe eval: {}", names.join(" vs ")),
            results,
            &logs,
            records,
            samples,
        ),
    )
}
