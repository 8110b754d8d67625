//! `pipe generate`, `pipe chat` and `pipe bench`: the engine's part is finding the model —
//! the pipeline's `[model] path` as the default, and a stage's committed artifact for
//! `--stage` — then the tools in pipe-stages do the work.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use pipe_stages::llm::device::DeviceChoice;
use pipe_stages::llm::{GenerationConfig, SamplingParams};
use pipe_stages::tools::{self, BenchOptions, ChatOptions, GenerateOptions, ModelOptions};
use pipe_stages::DynStage;

use crate::cli::{BenchArgs, ChatArgs, Cli, GenerateArgs, ModelArgs, SamplingArgs};
use crate::config::{Override, PipelineConfig};
use crate::error::{PipeError, Result};
use crate::runner::Workspace;
use crate::show::current_entry;

/// The table and key holding the pipeline's base model.
const MODEL_TABLE: &str = "model";
const MODEL_PATH_KEY: &str = "path";

pub fn generate(cli: &Cli, args: &GenerateArgs, registry: &[Box<dyn DynStage>]) -> Result<()> {
    let options = GenerateOptions {
        model: model_options(cli, &args.model, registry)?,
        prompt: args.prompt.clone(),
        system: args.system.clone(),
        raw: args.raw,
        generation: generation_config(&args.sampling, 256, 0.0, 1.0),
    };
    let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
    tools::run_generate(&options, &mut out, &mut log).map_err(tool_error)?;
    Ok(())
}

pub fn chat(cli: &Cli, args: &ChatArgs, registry: &[Box<dyn DynStage>]) -> Result<()> {
    let stdin = std::io::stdin();
    let options = ChatOptions {
        model: model_options(cli, &args.model, registry)?,
        system: args.system.clone(),
        generation: generation_config(&args.sampling, 512, 0.2, 0.9),
        interactive: stdin.is_terminal(),
    };
    let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
    tools::run_chat(&options, &mut stdin.lock(), &mut out, &mut log).map_err(tool_error)?;
    Ok(())
}

/// `own_argv`: the command line is this process's own, so phases can re-run it as children.
pub fn bench(
    cli: &Cli,
    args: &BenchArgs,
    registry: &[Box<dyn DynStage>],
    own_argv: bool,
) -> Result<()> {
    let phase = args
        .phase
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| PipeError::Usage(format!("{e}")))?;
    let options = BenchOptions {
        model: model_options(cli, &args.model, registry)?,
        batch: args.batch,
        seq: args.seq,
        steps: args.steps,
        decode_tokens: args.decode_tokens,
        json: args.json.clone(),
        phase,
        self_command: own_argv.then(|| std::env::args_os().collect()),
    };
    tools::run_bench(&options, &mut std::io::stdout()).map_err(tool_error)?;
    Ok(())
}

fn tool_error(e: pipe_stages::llm::LlmError) -> PipeError {
    PipeError::Tool(e.to_string())
}

fn generation_config(
    s: &SamplingArgs,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: s.max_new_tokens.unwrap_or(max_new_tokens),
        sampling: SamplingParams {
            temperature: s.temperature.unwrap_or(temperature),
            top_k: s.top_k,
            top_p: s.top_p.unwrap_or(top_p),
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
        },
        seed: s.seed,
        stop_strings: s.stop.clone(),
        ..GenerationConfig::default()
    }
}

/// The model the command names, or the pipeline's; `--stage` resolved to an artifact dir.
fn model_options(
    cli: &Cli,
    args: &ModelArgs,
    registry: &[Box<dyn DynStage>],
) -> Result<ModelOptions> {
    let device: DeviceChoice = args
        .device
        .parse()
        .map_err(|e| PipeError::Usage(format!("--device: {e}")))?;
    let cwd = std::env::current_dir().map_err(|e| PipeError::io(".", e))?;
    let adapters = args.adapters.iter().map(|a| cwd.join(a)).collect();
    let needs_pipeline = args.stage.is_some() || args.model.is_none();
    let ws = if needs_pipeline || cli.config.exists() {
        Some(load_workspace(cli, registry)?)
    } else {
        None
    };
    let (model, model_root) = match (&args.model, ws.as_ref().and_then(pipeline_model)) {
        (Some(m), _) => (Some(m.clone()), cwd),
        (None, Some(m)) => (
            Some(m),
            ws.as_ref().map(|w| w.config.root.clone()).unwrap_or(cwd),
        ),
        (None, None) => return Err(no_model(&cli.config)),
    };
    let stage_dir = match (&args.stage, &ws) {
        (Some(stage), Some(ws)) => Some(stage_artifact(ws, stage)?),
        _ => None,
    };
    Ok(ModelOptions {
        model,
        model_root,
        adapters,
        stage_dir,
        device,
        template: args.template.clone(),
        exact: args.exact,
    })
}

fn load_workspace<'r>(cli: &Cli, registry: &'r [Box<dyn DynStage>]) -> Result<Workspace<'r>> {
    let overrides = cli
        .set
        .iter()
        .map(|raw| Override::parse(raw))
        .collect::<Result<Vec<_>>>()?;
    let config = PipelineConfig::load(&cli.config, &overrides, registry)?;
    Workspace::new(config, registry)
}

/// `[model] path`, when the pipeline has a model table.
fn pipeline_model(ws: &Workspace) -> Option<String> {
    ws.config
        .stages
        .get(MODEL_TABLE)?
        .canonical
        .get(MODEL_PATH_KEY)?
        .as_str()
        .map(str::to_string)
}

fn no_model(config: &Path) -> PipeError {
    PipeError::Usage(format!(
        "no model: pass --model PATH (a GGUF file or an HF directory) or `hf:org/name`; {} has no `[{MODEL_TABLE}]` table with `{MODEL_PATH_KEY}`",
        config.display()
    ))
}

/// The committed artifact directory of `stage`: its current key's, else its latest.
fn stage_artifact(ws: &Workspace, stage: &str) -> Result<PathBuf> {
    Ok(current_entry(ws, stage, "--stage")?.dir)
}
