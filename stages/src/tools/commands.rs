//! `pipe generate`, `pipe chat` and `pipe bench` as [`Tool`]s: their arguments mapped onto the
//! tools' options, the model found through the engine — the pipeline's `[model] path` by
//! default, a stage's committed artifact for `--stage`.

use std::io::IsTerminal;

use clap::{CommandFactory, FromArgMatches};

use super::args::{BenchArgs, ChatArgs, GenerateArgs, ModelArgs, SamplingArgs};
use super::{
    run_bench, run_chat, run_generate, BenchOptions, ChatOptions, GenerateOptions, ModelOptions,
};
use crate::llm::device::DeviceChoice;
use crate::llm::template::{check_template_kwargs, TemplateKwargs};
use crate::llm::{GenerationConfig, LlmError, SamplingParams};
use crate::tool::{Tool, ToolError, ToolHost};

/// The table and key holding the pipeline's base model.
const MODEL_TABLE: &str = "model";
const MODEL_PATH_KEY: &str = "path";
const MODEL_TEMPLATE_KWARGS_KEY: &str = "template_kwargs";

/// `pipe generate`.
pub struct Generate;
/// `pipe chat`.
pub struct Chat;
/// `pipe bench`.
pub struct Bench;

impl Tool for Generate {
    fn command(&self) -> clap::Command {
        GenerateArgs::command()
    }

    fn run(&self, matches: &clap::ArgMatches, host: &dyn ToolHost) -> Result<(), ToolError> {
        let args = parsed::<GenerateArgs>(matches)?;
        let options = GenerateOptions {
            model: model_options(&args.model, host)?,
            prompt: args.prompt.clone(),
            system: args.system.clone(),
            raw: args.raw,
            generation: generation_config(&args.sampling, 256, 0.0, 1.0),
        };
        let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
        run_generate(&options, &mut out, &mut log).map_err(failed)?;
        Ok(())
    }
}

impl Tool for Chat {
    fn command(&self) -> clap::Command {
        ChatArgs::command()
    }

    fn run(&self, matches: &clap::ArgMatches, host: &dyn ToolHost) -> Result<(), ToolError> {
        let args = parsed::<ChatArgs>(matches)?;
        let stdin = std::io::stdin();
        let options = ChatOptions {
            model: model_options(&args.model, host)?,
            system: args.system.clone(),
            generation: generation_config(&args.sampling, 512, 0.2, 0.9),
            interactive: stdin.is_terminal(),
        };
        let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
        run_chat(&options, &mut stdin.lock(), &mut out, &mut log).map_err(failed)?;
        Ok(())
    }
}

impl Tool for Bench {
    fn command(&self) -> clap::Command {
        BenchArgs::command()
    }

    fn run(&self, matches: &clap::ArgMatches, host: &dyn ToolHost) -> Result<(), ToolError> {
        let args = parsed::<BenchArgs>(matches)?;
        let phase = args
            .phase
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: LlmError| ToolError::Usage(format!("{e}")))?;
        let mut model = model_options(&args.model, host)?;
        model.random_weights = args.random_weights.then_some(0);
        let options = BenchOptions {
            model,
            batch: args.batch,
            seq: args.seq,
            steps: args.steps,
            decode_tokens: args.decode_tokens,
            json: args.json.clone(),
            phase,
            self_command: host.own_command(),
        };
        run_bench(&options, &mut std::io::stdout()).map_err(failed)?;
        Ok(())
    }
}

/// The arguments of a subcommand parsed by its own clap command.
fn parsed<A: FromArgMatches>(matches: &clap::ArgMatches) -> Result<A, ToolError> {
    A::from_arg_matches(matches).map_err(|e| ToolError::Usage(e.to_string()))
}

fn failed(e: LlmError) -> ToolError {
    ToolError::Failed(e.to_string())
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
/// The pipeline is read when the command needs it, and whenever it exists (so a broken one is
/// reported rather than silently ignored).
fn model_options(args: &ModelArgs, host: &dyn ToolHost) -> Result<ModelOptions, ToolError> {
    let device: DeviceChoice = args
        .device
        .parse()
        .map_err(|e| ToolError::Usage(format!("--device: {e}")))?;
    let cwd = std::env::current_dir().map_err(|e| ToolError::Failed(format!(".: {e}")))?;
    let adapters = args.adapters.iter().map(|a| cwd.join(a)).collect();
    // The directory of pipeline.toml: a `model` artifact's spec is relative to it.
    let workspace = match host.config_path().parent() {
        Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
        _ => cwd.clone(),
    };
    let needs_pipeline = args.stage.is_some() || args.model.is_none();
    let pipeline_model = if needs_pipeline || host.config_path().exists() {
        pipeline_model(host)?
    } else {
        None
    };
    // The pipeline's template kwargs go with the pipeline's model, not with `--model`.
    let (model, model_root, mut kwargs) = match (&args.model, pipeline_model) {
        (Some(m), _) => (Some(m.clone()), cwd, TemplateKwargs::new()),
        (None, Some(pipeline)) => (Some(pipeline.path), pipeline.root, pipeline.template_kwargs),
        (None, None) => return Err(no_model(host)),
    };
    kwargs.extend(parse_template_kwargs(&args.template_kwargs)?);
    check_template_kwargs(&kwargs)
        .map_err(|e| ToolError::Usage(format!("--template-kwarg: {e}")))?;
    let stage = match &args.stage {
        Some(stage) => Some(
            host.artifact_chain(stage, "model", "--stage")
                .map_err(ToolError::Host)?,
        ),
        None => None,
    };

    Ok(ModelOptions {
        model,
        model_root,
        adapters,
        stage,
        workspace,
        device,
        template: args.template.clone(),
        template_kwargs: kwargs,
        exact: args.exact,
        random_weights: None,
    })
}

/// What the pipeline's `[model]` table gives a model command.
struct PipelineModel {
    path: String,
    /// The workspace root, which `path` is relative to.
    root: std::path::PathBuf,
    template_kwargs: TemplateKwargs,
}

/// `[model] path`, the workspace root and `[model] template_kwargs`, when the pipeline has a
/// model table with a path.
fn pipeline_model(host: &dyn ToolHost) -> Result<Option<PipelineModel>, ToolError> {
    let Some((config, root)) = host.table(MODEL_TABLE).map_err(ToolError::Host)? else {
        return Ok(None);
    };
    let Some(path) = config.get(MODEL_PATH_KEY).and_then(|p| p.as_str()) else {
        return Ok(None);
    };
    let template_kwargs = match config.get(MODEL_TEMPLATE_KWARGS_KEY) {
        None => TemplateKwargs::new(),
        Some(serde_json::Value::Object(map)) => map.clone().into_iter().collect(),
        Some(_) => {
            return Err(ToolError::Usage(format!(
                "[{MODEL_TABLE}] `{MODEL_TEMPLATE_KWARGS_KEY}` must be a table, e.g. {{ enable_thinking = false }}"
            )))
        }
    };
    Ok(Some(PipelineModel {
        path: path.to_string(),
        root,
        template_kwargs,
    }))
}

/// `--template-kwarg KEY=VALUE` pairs: VALUE as JSON when it parses (`false`, `3`,
/// `"26 Jul 2024"`), else as the text itself.
fn parse_template_kwargs(pairs: &[String]) -> Result<TemplateKwargs, ToolError> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .filter(|(key, _)| !key.trim().is_empty())
                .ok_or_else(|| {
                    ToolError::Usage(format!("--template-kwarg `{pair}`: expected KEY=VALUE"))
                })?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
            Ok((key.trim().to_string(), value))
        })
        .collect()
}

fn no_model(host: &dyn ToolHost) -> ToolError {
    ToolError::Usage(format!(
        "no model: pass --model PATH (a GGUF file or an HF directory) or `hf:org/name`; {} has no `[{MODEL_TABLE}]` table with `{MODEL_PATH_KEY}`",
        host.config_path().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_kwargs_parse_json_values_else_text() {
        let pairs = [
            "enable_thinking=false".to_string(),
            "date_string=26 Jul 2024".to_string(),
            "n=3".to_string(),
            "quoted=\"x=y\"".to_string(),
        ];
        let kwargs = parse_template_kwargs(&pairs).unwrap();
        assert_eq!(kwargs["enable_thinking"], serde_json::json!(false));
        assert_eq!(kwargs["date_string"], serde_json::json!("26 Jul 2024"));
        assert_eq!(kwargs["n"], serde_json::json!(3));
        assert_eq!(kwargs["quoted"], serde_json::json!("x=y"));
        for bad in ["novalue", "=x"] {
            let err = parse_template_kwargs(&[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        }
    }
}
