//! The `generate` stage: samples several candidate answers per prompt from the base model with
//! the sft adapter, for `score` to rank into preference pairs.
//!
//! A run is a pure function of its settings and seed: candidate `j` of the prompt with id `id`
//! samples from a stream derived from (seed, id, j), whatever batch it lands in, and prompts
//! are processed in fixed chunks of `checkpoint_every` that are appended to a candidates file
//! in the partial directory. A run killed at any point continues after its last complete chunk
//! and ends with the same file as an uninterrupted one.

pub mod artifact;
mod config;
mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use config::GenerateConfig;

use artifact::{
    read_candidates, CandidateRecord, GeneratedCandidate, CANDIDATES_FILE, SUMMARY_FILE,
};
use config::Split;
use report::GenerateSummary;

use crate::base::{apply_stack_for_decode, BaseModel, BaseModelError, ModelStack, MODEL_KINDS};
use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::ingest::artifact::{self as ingest, ExamplesError, TRAIN_FILE, VAL_FILE};
use crate::llm::{FinishReason, GenerationConfig, Generator, LlmError};
use crate::progress::Bar;
/// What the partial directory records besides the candidates: [`RunState`].
const STATE_FILE: &str = "run.json";
/// Bumped when the partial layout or meaning changes: older partial files are ignored.
const STATE_FORMAT: u32 = 1;

/// The `generate` stage.
pub struct Generate;

/// Why generate failed. Messages name the file, prompt or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error(transparent)]
    Ingest(#[from] ExamplesError),
    #[error("generate: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error(
        "[generate] the {split} split has no rows; use split = \"both\" or check the ingest stage"
    )]
    NoPrompts { split: &'static str },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("generate: stopped after {0} prompts as asked (a simulated crash)")]
    Interrupted(usize),
}

fn llm(context: impl Into<String>) -> impl FnOnce(LlmError) -> GenerateError {
    let context = context.into();
    move |source| GenerateError::Llm {
        context,
        source: Box::new(source),
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl Stage for Generate {
    const NAME: &'static str = "generate";
    const VERSION: u32 = 2;
    const ABOUT: &'static str =
        "sample candidate answers per prompt from base + sft adapter, seeded and resumable";
    const STARTER: &'static str = r#"[generate]
# split = "train"          # prompts from "train", "val" or "both" (train first)
# limit = 200              # a seeded random sample of this many prompts (default: all)
# candidates = 4           # answers sampled per prompt
# max_new_tokens = 128     # length limit of each answer
# temperature = 0.8        # 0 is greedy (then candidates must be 1)
# top_p = 0.95
# top_k = 50               # 0 keeps every token
# min_p = 0.0
# repetition_penalty = 1.0 # 1 disables it
# stop = []                # texts that end an answer (cut before them)
# seed = 42                # default: [project] seed
# batch_size = 16          # sequences decoded together (candidates of several prompts)
# checkpoint_every = 16    # prompts per chunk appended to the partial file (resume point)
# exact = false            # true: decode with the f32 weights instead of 8-bit copies
"#;
    type Config = GenerateConfig;

    fn inputs(cfg: &GenerateConfig, _pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![
            Input::one("data", cfg.data.as_deref(), "ingest", &["ingest"]),
            Input::one("model", cfg.model.as_deref(), "sft", MODEL_KINDS).following("model"),
        ])
    }

    fn validate(cfg: &GenerateConfig) -> Result<(), ConfigIssue> {
        config::validate(cfg)
    }

    fn run(cfg: &GenerateConfig, cx: &mut StageContext) -> StageResult {
        run_generate(cfg, cx, Hooks::default())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        report::show(dir, out)
    }
}

/// Test-only interventions in a run.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Hooks {
    /// Stop with [`GenerateError::Interrupted`] once this many prompts are on disk.
    pub stop_after: Option<usize>,
}

/// The partial directory's bookkeeping, rewritten after every chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: u32,
    /// The run this belongs to (settings, seed, prompts, model).
    fingerprint: String,
    /// Seconds spent generating so far, over every attempt.
    generate_seconds: f64,
}

/// One prompt to answer.
#[derive(Debug, Clone)]
pub(crate) struct Prompt {
    pub row: ingest::Example,
    pub ids: Vec<u32>,
    /// The seed of this prompt's candidates (derived from the run's seed and the prompt id).
    pub seed: u64,
}

pub(crate) fn run_generate(
    cfg: &GenerateConfig,
    cx: &mut StageContext,
    hooks: Hooks,
) -> StageResult {
    let started = Instant::now();
    let seed = cfg.seed.unwrap_or(cx.seed());
    // The device `[model] device` names, like every ML stage.
    let stack = ModelStack::from_chain(cx.chain("model")?)?;
    let (base, device) =
        BaseModel::open(&stack.base, cx.workspace()).map_err(GenerateError::from)?;
    let rows = read_split(cx.input("data")?, cfg.split)?;
    let rows = select(rows, cfg.limit, seed);
    let prompts = render(&base, rows, seed)?;
    let BaseModel {
        info,
        mut model,
        tokenizer,
        ..
    } = base;
    // The top adapter attached, not merged: the 8-bit decode copies then hold the weights
    // below exactly and its factors are added in f32 (merged weights would be rounded).
    apply_stack_for_decode(&mut model, &stack, &device).map_err(llm(format!(
        "cannot load the model {}",
        stack.describe(&info.name)
    )))?;
    if !cfg.exact {
        model
            .pack_for_decode()
            .map_err(llm("cannot pack the weights for decoding"))?;
    }
    let generation = generation_config(cfg, &info.eos_token_ids);
    let partial = cx.partial_dir().map_err(|source| GenerateError::Write {
        path: PathBuf::from("the partial directory under artifacts/.partial/generate"),
        source,
    })?;
    let fingerprint = fingerprint(cfg, seed, &prompts, &info.name);
    let mut resume = Resume::open(partial, &fingerprint, cfg.checkpoint_every)?;
    if resume.done > 0 {
        cx.progress().info(&format!(
            "generate: resuming after {} of {} prompts from {}",
            resume.done,
            prompts.len(),
            partial.display()
        ));
    }
    cx.progress().info(&format!(
        "generate: {} prompts from the {} split × {} candidates, up to {} new tokens, temperature {}",
        prompts.len(),
        cfg.split.name(),
        cfg.candidates,
        cfg.max_new_tokens,
        cfg.temperature
    ));
    let generator = Generator::new(&model, &tokenizer);
    let bar = cx.progress().bar(Some(prompts.len() as u64), "prompts");
    bar.set_position(resume.done as u64);
    let resumed_from = resume.done;
    let mut session = Session {
        cfg,
        generator: &generator,
        generation: &generation,
        bar: bar.as_ref(),
        tokens: 0,
        seconds: 0.0,
    };
    while resume.done < prompts.len() {
        let end = (resume.done + cfg.checkpoint_every).min(prompts.len());
        let records = session.chunk(&prompts[resume.done..end])?;
        resume.append(&records)?;
        if hooks.stop_after.is_some_and(|n| resume.done >= n) {
            return Err(GenerateError::Interrupted(resume.done).into());
        }
    }
    bar.finish();
    let out = cx.out_dir().to_path_buf();
    let records = read_candidates(&resume.file)?;
    std::fs::copy(&resume.file, out.join(CANDIDATES_FILE))
        .map_err(write_error(&out.join(CANDIDATES_FILE)))?;
    let summary = summarize(
        cfg,
        seed,
        &records,
        resume.state.generate_seconds,
        started.elapsed().as_secs_f64(),
        resumed_from,
    );
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    cx.progress().info(&format!(
        "generate: {} candidates for {} prompts, {} tokens at {:.1} tok/s ({})",
        summary.candidates,
        summary.prompts,
        summary.tokens,
        summary.tokens_per_s,
        report::finish_counts(&summary.finish_reasons)
    ));
    cx.set_metric("prompts", summary.prompts);
    cx.set_metric("candidates", summary.candidates);
    cx.set_metric("tokens", summary.tokens);
    cx.set_metric("tok_s", summary.tokens_per_s);
    Ok(())
}

/// The rows of the configured split(s), train first.
fn read_split(ingest_dir: &Path, split: Split) -> Result<Vec<ingest::Example>, GenerateError> {
    let mut rows = Vec::new();
    if matches!(split, Split::Train | Split::Both) {
        rows.extend(ingest::read_examples(&ingest_dir.join(TRAIN_FILE))?);
    }
    if matches!(split, Split::Val | Split::Both) {
        rows.extend(ingest::read_examples(&ingest_dir.join(VAL_FILE))?);
    }
    if rows.is_empty() {
        return Err(GenerateError::NoPrompts {
            split: split.name(),
        });
    }
    Ok(rows)
}

/// All rows in file order, or with `limit` a seeded random sample of that many: the rows
/// ordered by a hash of (seed, id), first `limit` kept. A row's place depends only on its own
/// id, so raising `limit` keeps every prompt of the smaller sample (and its candidates).
pub(crate) fn select(
    rows: Vec<ingest::Example>,
    limit: Option<usize>,
    seed: u64,
) -> Vec<ingest::Example> {
    ingest::seeded_sample(rows, limit, seed)
}

/// 64 bits of blake3 over (purpose, seed, id): stable across platforms and versions.
fn id_hash(seed: u64, purpose: &[u8], id: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(purpose);
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The seed of one prompt's candidates; candidate `j` samples from stream (this, j).
pub(crate) fn prompt_seed(seed: u64, id: &str) -> u64 {
    id_hash(seed, b"candidates", id)
}

/// Renders every prompt through the chat template with the generation prompt on.
fn render(
    base: &BaseModel,
    rows: Vec<ingest::Example>,
    seed: u64,
) -> Result<Vec<Prompt>, GenerateError> {
    rows.into_iter()
        .map(|row| {
            let ids = base
                .render_prompt(row.system.as_deref(), &row.history, &row.prompt)
                .map_err(llm(format!(
                    "row id {} (source row {}): cannot render it with the chat template",
                    row.id, row.source_row
                )))?;
            Ok(Prompt {
                seed: prompt_seed(seed, &row.id),
                row,
                ids,
            })
        })
        .collect()
}

fn generation_config(cfg: &GenerateConfig, eos: &[u32]) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: cfg.max_new_tokens,
        sampling: cfg.sampling(),
        seed: 0,
        stop_strings: cfg.stop.clone(),
        extra_eos_ids: eos.to_vec(),
        ignore_eos: false,
    }
}

/// Identifies a run: a partial file of anything else (settings, seed, prompts, base) is not
/// continued.
fn fingerprint(cfg: &GenerateConfig, seed: u64, prompts: &[Prompt], base: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&STATE_FORMAT.to_le_bytes());
    h.update(serde_json::to_string(cfg).unwrap_or_default().as_bytes());
    h.update(&seed.to_le_bytes());
    h.update(base.as_bytes());
    for p in prompts {
        h.update(p.row.id.as_bytes());
        h.update(&(p.ids.len() as u64).to_le_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Generation over chunks of prompts, with the running token rate for the bar.
struct Session<'a> {
    cfg: &'a GenerateConfig,
    generator: &'a Generator<'a>,
    generation: &'a GenerationConfig,
    bar: &'a dyn Bar,
    tokens: usize,
    seconds: f64,
}

impl Session<'_> {
    /// The candidates of one chunk of prompts, in prompt order. Sequences are grouped into
    /// batches of `batch_size` by prompt length (less padding); each samples from its own
    /// (prompt seed, candidate) stream, so the grouping does not change what is sampled.
    fn chunk(&mut self, prompts: &[Prompt]) -> Result<Vec<CandidateRecord>, GenerateError> {
        let n = self.cfg.candidates;
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| (prompts[i].ids.len(), i));
        let sequences: Vec<(usize, usize)> = order
            .iter()
            .flat_map(|&p| (0..n).map(move |j| (p, j)))
            .collect();
        let mut results: Vec<Vec<Option<GeneratedCandidate>>> = vec![vec![None; n]; prompts.len()];
        let mut finished = vec![0usize; prompts.len()];
        for batch in sequences.chunks(self.cfg.batch_size) {
            let ids: Vec<Vec<u32>> = batch.iter().map(|&(p, _)| prompts[p].ids.clone()).collect();
            let streams: Vec<(u64, u64)> = batch
                .iter()
                .map(|&(p, j)| (prompts[p].seed, j as u64))
                .collect();
            let clock = Instant::now();
            let (out, _) = self
                .generator
                .generate_streams(&ids, &streams, self.generation, &mut |_, _| {})
                .map_err(llm(format!(
                    "prompt id {} (source row {})",
                    prompts[batch[0].0].row.id, prompts[batch[0].0].row.source_row
                )))?;
            self.seconds += clock.elapsed().as_secs_f64();
            for (&(p, j), g) in batch.iter().zip(out) {
                self.tokens += g.token_count();
                results[p][j] = Some(GeneratedCandidate {
                    text: g.text.trim().to_string(),
                    tokens: g.token_count(),
                    mean_logprob: g.mean_logprob,
                    finish_reason: g.finish_reason,
                });
                finished[p] += 1;
                if finished[p] == n {
                    self.bar.inc(1);
                }
            }
            self.bar.set_message(format!(
                "{:.1} tok/s",
                self.tokens as f64 / self.seconds.max(1e-9)
            ));
        }
        Ok(prompts
            .iter()
            .zip(results)
            .map(|(p, c)| CandidateRecord {
                id: p.row.id.clone(),
                prompt: p.row.prompt.clone(),
                system: p.row.system.clone(),
                history: p.row.history.clone(),
                reference: p.row.response.clone(),
                candidates: c.into_iter().flatten().collect(),
            })
            .collect())
    }
}

/// The candidates file in the partial directory and how far it got.
struct Resume {
    file: PathBuf,
    state_file: PathBuf,
    state: RunState,
    /// Prompts on disk.
    done: usize,
    started: Instant,
}

impl Resume {
    /// Continues a partial file of the same run (cut back to its last complete chunk), or
    /// starts a new one.
    fn open(partial: &Path, fingerprint: &str, chunk: usize) -> Result<Self, GenerateError> {
        let file = partial.join(CANDIDATES_FILE);
        let state_file = partial.join(STATE_FILE);
        let previous = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|t| serde_json::from_str::<RunState>(&t).ok())
            .filter(|s| s.format == STATE_FORMAT && s.fingerprint == fingerprint);
        let (state, done) = match previous {
            Some(state) if file.is_file() => {
                let done = truncate_to_chunks(&file, chunk)?;
                (state, done)
            }
            _ => {
                std::fs::write(&file, "").map_err(write_error(&file))?;
                let state = RunState {
                    format: STATE_FORMAT,
                    fingerprint: fingerprint.to_string(),
                    generate_seconds: 0.0,
                };
                (state, 0)
            }
        };
        let resume = Resume {
            file,
            state_file,
            state,
            done,
            started: Instant::now(),
        };
        resume.save_state()?;
        Ok(resume)
    }

    /// Appends a chunk's records (flushed to disk) and updates the state.
    fn append(&mut self, records: &[CandidateRecord]) -> Result<(), GenerateError> {
        let mut text = String::new();
        for r in records {
            let line = serde_json::to_string(r)
                .map_err(|e| write_error(&self.file)(std::io::Error::other(e)))?;
            text.push_str(&line);
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.file)
            .map_err(write_error(&self.file))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(write_error(&self.file))?;
        self.done += records.len();
        self.state.generate_seconds += self.started.elapsed().as_secs_f64();
        self.started = Instant::now();
        self.save_state()
    }

    /// Writes the state to a temp file and renames it: never half a state.
    fn save_state(&self) -> Result<(), GenerateError> {
        let tmp = self.state_file.with_extension("json.tmp");
        let text = serde_json::to_string(&self.state)
            .map_err(|e| write_error(&tmp)(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(write_error(&tmp))?;
        std::fs::rename(&tmp, &self.state_file).map_err(write_error(&self.state_file))
    }
}

/// Keeps the file's complete, parseable lines up to the last whole chunk of `chunk` prompts
/// (a torn last line or a half-written chunk is cut off) and returns how many prompts remain.
/// Whole chunks only: a chunk batches its prompts together, so redoing a whole chunk samples
/// exactly what an uninterrupted run sampled.
pub(crate) fn truncate_to_chunks(file: &Path, chunk: usize) -> Result<usize, GenerateError> {
    let bytes = std::fs::read(file).map_err(|e| GenerateError::Read {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut ends = Vec::new();
    let mut start = 0;
    while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = &bytes[start..start + nl];
        if serde_json::from_slice::<CandidateRecord>(line).is_err() {
            break;
        }
        start += nl + 1;
        ends.push(start);
    }
    let done = ends.len() - ends.len() % chunk.max(1);
    let keep = if done == 0 { 0 } else { ends[done - 1] };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(write_error(file))?;
    f.set_len(keep as u64).map_err(write_error(file))?;
    Ok(done)
}

fn summarize(
    cfg: &GenerateConfig,
    seed: u64,
    records: &[CandidateRecord],
    generate_seconds: f64,
    wall_seconds: f64,
    resumed_from: usize,
) -> GenerateSummary {
    let mut finish_reasons: BTreeMap<String, usize> =
        [FinishReason::Eos, FinishReason::Stop, FinishReason::Length]
            .iter()
            .map(|r| (r.as_str().to_string(), 0))
            .collect();
    let mut tokens = 0;
    let mut candidates = 0;
    let mut all_distinct = 0;
    for r in records {
        let mut texts: Vec<&str> = r.candidates.iter().map(|c| c.text.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        if texts.len() == r.candidates.len() {
            all_distinct += 1;
        }
        for c in &r.candidates {
            tokens += c.tokens;
            candidates += 1;
            *finish_reasons
                .entry(c.finish_reason.as_str().to_string())
                .or_default() += 1;
        }
    }
    GenerateSummary {
        prompts: records.len(),
        candidates,
        tokens,
        mean_tokens: tokens as f64 / candidates.max(1) as f64,
        prompts_with_distinct_candidates: all_distinct,
        finish_reasons,
        generate_seconds,
        wall_seconds,
        tokens_per_s: tokens as f64 / generate_seconds.max(1e-9),
        resumed_from_prompt: (resumed_from > 0).then_some(resumed_from),
        seed,
        split: cfg.split,
        settings: GenerateConfig {
            seed: Some(seed),
            ..cfg.clone()
        },
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), GenerateError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| write_error(path)(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(write_error(path))
}
