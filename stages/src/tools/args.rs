//! The command-line arguments of the model tools (`pipe generate`, `chat`, `bench`), as clap
//! derives; [`super::commands`] carries them out.

use std::path::PathBuf;

use clap::{Args, Parser};

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
    /// A variable for the chat template (repeatable), as transformers' `apply_chat_template`
    /// kwargs: `enable_thinking=false`, `date_string="26 Jul 2024"`. VALUE is read as JSON when
    /// it parses, else as text. Adds to (or replaces) the pipeline's `[model] template_kwargs`.
    #[arg(long = "template-kwarg", value_name = "KEY=VALUE")]
    pub template_kwargs: Vec<String>,
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

/// Generate an answer to one prompt, streamed to the terminal.
#[derive(Debug, Parser)]
#[command(name = "generate")]
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

/// Chat with the model, turn by turn (/reset starts over, /exit or Ctrl-D leaves).
#[derive(Debug, Parser)]
#[command(name = "chat")]
pub struct ChatArgs {
    /// A system message opening the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Measure training and generation speed and peak memory on this machine.
#[derive(Debug, Parser)]
#[command(name = "bench")]
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
    /// Seeded random weights instead of the checkpoint's: `--model` may be an HF directory
    /// with only config.json and tokenizer.json, to measure any model shape.
    #[arg(long)]
    pub random_weights: bool,
    /// Run one phase in this process and print its result as JSON (used internally: each
    /// phase runs in a child process so its peak memory is its own).
    #[arg(long, hide = true, value_name = "PHASE")]
    pub phase: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}
