//! The command line, as clap derives only; `app.rs` carries the commands out.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fine-tune small LLMs as a DAG of content-hashed, cached stages.
#[derive(Debug, Parser)]
#[command(name = "pipe", version, about, propagate_version = true)]
pub struct Cli {
    /// The pipeline file; its directory is the workspace root.
    #[arg(
        long,
        global = true,
        default_value = "pipeline.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Override a config key, checked like the file (repeatable): -s ingest.val_fraction=0.1
    #[arg(short = 's', long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only errors and what was asked for.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every stage whose inputs changed; skip the rest.
    Run(RunArgs),
    /// Every stage: cached, stale (and why), corrupt, or never run.
    Status(StatusArgs),
    /// Re-hash every artifact in the store and compare it with its manifest; mark the corrupt.
    Verify,
    /// A stage's artifact: manifest, metrics, files and sample rows.
    Show(ShowArgs),
    /// The stage graph.
    Dag(DagArgs),
    /// Delete old artifacts and checkpoints (lists them and asks first).
    Gc(GcArgs),
    /// Write a commented starter pipeline.toml.
    Init(InitArgs),
    /// Generate an answer to one prompt, streamed to the terminal.
    Generate(GenerateArgs),
    /// Chat with the model, turn by turn (/reset starts over, /exit or Ctrl-D leaves).
    Chat(ChatArgs),
    /// Measure training and generation speed and peak memory on this machine.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Re-run this stage and everything downstream; reuse the latest artifacts above it.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// Stop after this stage (runs only it and what it needs).
    #[arg(long, value_name = "STAGE")]
    pub to: Option<String>,
    /// Run just this stage, reading its upstreams' latest artifacts.
    #[arg(long, value_name = "STAGE")]
    pub only: Option<String>,
    /// Re-run the selected stages even if cached.
    #[arg(long)]
    pub force: bool,
    /// Show what would run, and why, without running anything.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The stage to show.
    pub stage: String,
    /// An artifact key (or a unique prefix); default: the current key if cached, else the latest.
    #[arg(long)]
    pub key: Option<String>,
    /// Print the manifest as JSON only.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DagArgs {
    /// Graphviz dot output.
    #[arg(long, conflicts_with = "mermaid")]
    pub dot: bool,
    /// Mermaid flowchart output.
    #[arg(long)]
    pub mermaid: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also re-hash the outputs of every cached stage and compare them with their manifests.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep this many of the most recent artifacts of each stage, besides the current ones
    /// and what they were made from.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub keep: usize,
    /// Keep only the current artifacts (and what they were made from); also delete
    /// checkpoints younger than a day.
    #[arg(long, conflicts_with = "keep")]
    pub all: bool,
    /// Delete without asking (needed when there is no terminal to ask on).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only list what would be deleted.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Which model a model command talks to.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file, an HF model directory or `hf:org/name[@rev]`; default: the pipeline's
    /// `[model] path`.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// A PEFT LoRA adapter directory merged into the model (repeatable; merged in order).
    #[arg(long = "adapter", value_name = "DIR")]
    pub adapters: Vec<PathBuf>,
    /// Use a stage's artifact (current, else latest): its `adapter/` on top of the model, or
    /// its merged `model/`.
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
    /// `auto`, `cpu` or `cuda:N`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// Chat template: `model` (the model's own) or `chatml`, `llama3`, `zephyr`, `alpaca`.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// Decode with the exact f32 weights instead of 8-bit copies (about 2x slower on a CPU;
    /// the copies are exact for a GGUF's weights and one adapter, within ~0.1 on merged weights).
    #[arg(long)]
    pub exact: bool,
}

/// How tokens are chosen and when generation stops.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Stop after this many new tokens.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// 0 is greedy; higher samples more freely. Default: 0 for generate, 0.2 for chat.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample only among the most likely tokens holding this probability mass. Default: 1
    /// for generate, 0.9 for chat.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Drop tokens less likely than this share of the most likely one.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f64,
    /// Penalise tokens already in the conversation (1: off; 1.1 is mild).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub repetition_penalty: f64,
    /// Seeds sampling: the same seed gives the same text.
    #[arg(long, default_value_t = 42, value_name = "S")]
    pub seed: u64,
    /// Stop when this text appears, and cut it off (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The user's message (or the raw text with --raw).
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: String,
    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A system message opening the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Training batch size (sequences per step).
    #[arg(long, default_value_t = 4, value_name = "B")]
    pub batch: usize,
    /// Tokens per training sequence and per prompt in the prefill phase.
    #[arg(long, default_value_t = 256, value_name = "T")]
    pub seq: usize,
    /// Timed repetitions per phase, after one warm-up.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub steps: usize,
    /// Tokens each sequence generates in the decode phases.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub decode_tokens: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run one phase in this process and print its result as JSON (used internally: each
    /// phase runs in a child process so its peak memory is its own).
    #[arg(long, hide = true, value_name = "PHASE")]
    pub phase: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}
