//! `pipe bench`: how fast this machine trains and generates with a model, and how much memory
//! it takes. Four phases — a LoRA training step (forward + backward + AdamW, r=16 on all
//! seven projections), prompt processing, and decoding at batch 1 and 8 — each in its own
//! child process when possible, so every phase's peak RSS is its own and not the maximum of
//! everything that ran before it.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Instant;

use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::session::{ModelOptions, ModelSession};
use crate::llm::device::device_name;
use crate::llm::loss::{sft_loss, DEFAULT_CHUNK};
use crate::llm::{
    Example, GenerationConfig, Generator, LlmError, LlmResult, LoraConfig, Mode, SamplingParams,
    TargetModule, TokenBatch,
};

/// The phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchPhase {
    Train,
    Prefill,
    Decode1,
    Decode8,
}

impl BenchPhase {
    pub const ALL: [BenchPhase; 4] = [
        BenchPhase::Train,
        BenchPhase::Prefill,
        BenchPhase::Decode1,
        BenchPhase::Decode8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BenchPhase::Train => "train",
            BenchPhase::Prefill => "prefill",
            BenchPhase::Decode1 => "decode-1",
            BenchPhase::Decode8 => "decode-8",
        }
    }
}

impl FromStr for BenchPhase {
    type Err = LlmError;
    fn from_str(s: &str) -> LlmResult<Self> {
        BenchPhase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                LlmError::Invalid(format!(
                    "unknown bench phase `{s}`: one of train, prefill, decode-1, decode-8"
                ))
            })
    }
}

/// What `pipe bench` was asked.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: ModelOptions,
    /// Training batch: sequences of `seq` tokens.
    pub batch: usize,
    pub seq: usize,
    /// Timed repetitions per phase (after one untimed warm-up).
    pub steps: usize,
    /// Tokens each sequence generates in the decode phases.
    pub decode_tokens: usize,
    /// Write the report as JSON here too.
    pub json: Option<PathBuf>,
    /// Run only this phase, in this process, and print its result as one JSON line (what the
    /// child processes do).
    pub phase: Option<BenchPhase>,
    /// The command line that re-runs this benchmark (program first); each phase runs as this
    /// plus `--phase NAME`. `None` runs every phase in this process.
    pub self_command: Option<Vec<OsString>>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: ModelOptions::default(),
            batch: 4,
            seq: 256,
            steps: 3,
            decode_tokens: 128,
            json: None,
            phase: None,
            self_command: None,
        }
    }
}

/// One phase's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    pub phase: BenchPhase,
    /// `BxT` of the measured work.
    pub shape: String,
    pub tokens_per_s: f64,
    /// Mean seconds per timed repetition.
    pub seconds: f64,
    /// Peak resident memory of the process that ran the phase (VmHWM), model load included.
    pub peak_rss_mb: f64,
    /// Whether the phase ran in a process of its own (else its peak includes earlier phases).
    pub isolated: bool,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub phases: Vec<PhaseResult>,
}

/// Runs the benchmark (or one phase of it) and prints the table to `out`.
pub fn run_bench(options: &BenchOptions, out: &mut dyn Write) -> LlmResult<BenchReport> {
    check_options(options)?;
    if let Some(phase) = options.phase {
        let session = ModelSession::open(&options.model)?;
        let mut result = run_phase(&session, options, phase)?;
        result.isolated = true;
        let line = serde_json::to_string(&result)
            .map_err(|e| LlmError::Invalid(format!("bench: cannot encode the result: {e}")))?;
        writeln!(out, "{line}").map_err(|e| LlmError::io("<stdout>", e))?;
        return Ok(BenchReport {
            model: session.description,
            device: device_name(session.model.device()),
            threads: candle_core::utils::get_num_threads(),
            phases: vec![result],
        });
    }
    let report = match &options.self_command {
        Some(command) => run_in_children(options, command)?,
        None => run_in_process(options)?,
    };
    write_table(&report, out).map_err(|e| LlmError::io("<stdout>", e))?;
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| LlmError::Invalid(format!("bench: cannot encode the report: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| LlmError::io(path, e))?;
    }
    Ok(report)
}

fn check_options(o: &BenchOptions) -> LlmResult<()> {
    let zero = [
        ("--batch", o.batch),
        ("--seq", o.seq),
        ("--steps", o.steps),
        ("--decode-tokens", o.decode_tokens),
    ]
    .into_iter()
    .find(|(_, v)| *v == 0);
    match zero {
        Some((name, _)) => Err(LlmError::Invalid(format!(
            "bench: {name} must be at least 1"
        ))),
        None if o.seq < 2 => Err(LlmError::Invalid(
            "bench: --seq must be at least 2 (a prompt token and a target)".into(),
        )),
        None => Ok(()),
    }
}

/// Every phase in a child process: `self_command --phase NAME`, reading its JSON line.
fn run_in_children(options: &BenchOptions, command: &[OsString]) -> LlmResult<BenchReport> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| LlmError::Invalid("bench: empty self command".into()))?;
    let mut phases = Vec::new();
    for phase in BenchPhase::ALL {
        let output = Command::new(program)
            .args(args)
            .args(["--phase", phase.name()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| LlmError::io(PathBuf::from(program), e))?;
        if !output.status.success() {
            return Err(LlmError::Invalid(format!(
                "bench: phase {} failed ({}); see the error above",
                phase.name(),
                output.status
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let result: PhaseResult = serde_json::from_str(line).map_err(|e| {
            LlmError::Invalid(format!(
                "bench: phase {} printed no result ({e}): {line:?}",
                phase.name()
            ))
        })?;
        phases.push(result);
    }
    let session_name = describe_model(&options.model);
    Ok(BenchReport {
        model: session_name,
        device: options.model.device.to_string(),
        threads: candle_core::utils::get_num_threads(),
        phases,
    })
}

/// Every phase in this process, the training step first so at least its peak is its own.
fn run_in_process(options: &BenchOptions) -> LlmResult<BenchReport> {
    let session = ModelSession::open(&options.model)?;
    let mut phases = Vec::new();
    for (i, phase) in BenchPhase::ALL.into_iter().enumerate() {
        let mut result = run_phase(&session, options, phase)?;
        result.isolated = i == 0;
        phases.push(result);
    }
    Ok(BenchReport {
        model: session.description.clone(),
        device: device_name(session.model.device()),
        threads: candle_core::utils::get_num_threads(),
        phases,
    })
}

fn describe_model(model: &ModelOptions) -> String {
    let mut name = model
        .model
        .clone()
        .unwrap_or_else(|| "(stage model)".into());
    for a in &model.adapters {
        name.push_str(&format!(" + {}", a.display()));
    }
    name
}

fn run_phase(
    session: &ModelSession,
    options: &BenchOptions,
    phase: BenchPhase,
) -> LlmResult<PhaseResult> {
    let (shape, tokens, seconds) = match phase {
        BenchPhase::Train => train_steps(session, options)?,
        BenchPhase::Prefill => prefill(session, options)?,
        BenchPhase::Decode1 => decode(session, options, 1)?,
        BenchPhase::Decode8 => decode(session, options, 8)?,
    };
    Ok(PhaseResult {
        phase,
        shape,
        tokens_per_s: tokens as f64 / seconds.max(1e-12),
        seconds: seconds / options.steps as f64,
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        isolated: false,
    })
}

/// Deterministic pseudo-random ids in the ordinary part of the vocabulary.
fn token_ids(n: usize, salt: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(200).max(1);
    (0..n)
        .map(|i| (100 + (i * 7919 + salt * 104_729 + i * i * 31) % span) as u32)
        .collect()
}

/// LoRA r=16 (alpha 32, dropout 0.05) on all seven projections; full-sequence loss.
fn train_steps(session: &ModelSession, options: &BenchOptions) -> LlmResult<(String, usize, f64)> {
    let mut model = session.model.clone();
    model.attach_lora(&LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.05,
        target_modules: TargetModule::ALL.to_vec(),
        use_rslora: false,
        seed: 0,
    })?;
    let vocab = model.config().vocab_size;
    let examples: Vec<Example> = (0..options.batch)
        .map(|b| {
            let ids = token_ids(options.seq, b, vocab);
            Example::new(ids[..1].to_vec(), ids[1..].to_vec())
        })
        .collect();
    let batch = TokenBatch::new(&examples, 0, model.device())?;
    let params = ParamsAdamW {
        lr: 1e-4,
        ..ParamsAdamW::default()
    };
    let mut optimizer = AdamW::new(model.trainable_vars(), params)?;
    let mut step = |seed: u64| -> LlmResult<()> {
        let loss = sft_loss(&model, &batch, Mode::Train { seed }, DEFAULT_CHUNK)?;
        optimizer.backward_step(&loss.loss)?;
        Ok(())
    };
    step(0)?;
    let start = Instant::now();
    for s in 0..options.steps {
        step(s as u64 + 1)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens = options.batch * options.seq * options.steps;
    Ok((
        format!("{}x{}", options.batch, options.seq),
        tokens,
        seconds,
    ))
}

/// One prompt of `seq` tokens through the cached forward (the prefill of generation).
fn prefill(session: &ModelSession, options: &BenchOptions) -> LlmResult<(String, usize, f64)> {
    let model = &session.model;
    let ids = token_ids(options.seq, 99, model.config().vocab_size);
    let input = candle_core::Tensor::from_vec(ids, (1, options.seq), model.device())?;
    let run = || -> LlmResult<()> {
        let mut cache = model.new_cache();
        model.forward_cached_last(&input, None, &mut cache)?;
        Ok(())
    };
    run()?;
    let start = Instant::now();
    for _ in 0..options.steps {
        run()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok((
        format!("1x{}", options.seq),
        options.seq * options.steps,
        seconds,
    ))
}

/// `rows` sequences generating `decode_tokens` each after a short prompt: greedy at batch 1,
/// sampled (t=0.8, top-p 0.95) otherwise. Only the decode steps are timed.
fn decode(
    session: &ModelSession,
    options: &BenchOptions,
    rows: usize,
) -> LlmResult<(String, usize, f64)> {
    let model = &session.model;
    let prompt = token_ids(16, 7, model.config().vocab_size);
    let prompts = vec![prompt; rows];
    let sampling = if rows == 1 {
        SamplingParams::default()
    } else {
        SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            ..SamplingParams::default()
        }
    };
    let config = GenerationConfig {
        max_new_tokens: options.decode_tokens,
        sampling,
        ignore_eos: true,
        ..GenerationConfig::default()
    };
    let generator = Generator::new(model, &session.tokenizer);
    let warm_up = GenerationConfig {
        max_new_tokens: 4.min(options.decode_tokens),
        ..config.clone()
    };
    generator.generate(&prompts, 0, &warm_up, &mut |_, _| {})?;
    let (mut tokens, mut seconds) = (0, 0.0);
    for s in 0..options.steps {
        let (_, t) =
            generator.generate_timed(&prompts, (s * rows) as u64, &config, &mut |_, _| {})?;
        tokens += t.decode_tokens;
        seconds += t.decode_s;
    }
    Ok((format!("{rows}x{}", options.decode_tokens), tokens, seconds))
}

/// VmHWM of this process in MB, from /proc (Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn write_table(report: &BenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "model {} on {}, {} threads",
        report.model, report.device, report.threads
    )?;
    writeln!(
        out,
        "{:<10} {:>9} {:>10} {:>12} {:>13}",
        "phase", "shape", "tok/s", "s/repeat", "peak RSS MB"
    )?;
    for p in &report.phases {
        let note = if p.isolated { "" } else { " (cumulative)" };
        writeln!(
            out,
            "{:<10} {:>9} {:>10.1} {:>12.3} {:>13.0}{note}",
            p.phase.name(),
            p.shape,
            p.tokens_per_s,
            p.seconds,
            p.peak_rss_mb
        )?;
    }
    Ok(())
}
