//! The `model` stage: names the base model once for the whole pipeline, checks that it loads
//! (architecture, weights, tokenizer, chat template) and records what every ML stage needs
//! in `model.json` ([`artifact`]). Downstream stages load the base through
//! [`crate::base::BaseModel`], so they all use the same weights, tokenizer, chat template and
//! default system prompt.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod artifact;

use artifact::{read_info, ModelInfo, TemplateInfo, MODEL_FILE};

use crate::base::{chat_messages, BaseModelError};
use crate::contract::{ConfigIssue, Stage, StageContext, StageResult};
use crate::llm::template::{
    check_template_kwargs, TemplateKwargs, MODEL_TEMPLATE, NAMED_TEMPLATES,
};
use crate::llm::{
    load_model, ChatTemplate, DeviceChoice, LlamaModel, LoadedModel, ModelConfig, ModelSpec,
    TextTokenizer,
};

/// The `model` stage.
pub struct Model;

/// The `[model]` table of pipeline.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStageConfig {
    /// A local .gguf file or HF directory (relative to the workspace), or `hf:org/name[@rev]`.
    pub path: String,
    /// `model` (the model's own), a named fallback, or a path to a .jinja file.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The system prompt of rows that have none; `None`: the template's own default.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Extra variables for the chat template, as `apply_chat_template(**kwargs)` passes them:
    /// `enable_thinking = false` (Qwen3), `date_string = "26 Jul 2024"` (Llama-3.x). Empty:
    /// none, as transformers' default.
    #[serde(default, skip_serializing_if = "TemplateKwargs::is_empty")]
    pub template_kwargs: TemplateKwargs,
    /// Where every ML stage runs: `auto` (a CUDA GPU when the build has CUDA and one is
    /// present, else the CPU), `cpu` or `cuda:N`. Part of every downstream key: the same
    /// training on another device gives slightly different numbers.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub device: DeviceChoice,
}

fn is_auto(d: &DeviceChoice) -> bool {
    *d == DeviceChoice::Auto
}

/// Why the model stage (or a stage loading its output) failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Base(#[from] BaseModelError),
    #[error("[model] `chat_template`: cannot read {}: {source}", path.display())]
    TemplateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Stage for Model {
    const NAME: &'static str = "model";
    // 2: model.json's config gained the layer pattern, local rope and rope scaling kinds.
    const VERSION: u32 = 2;
    const ABOUT: &'static str =
        "check the base model (weights, tokenizer, chat template) every ML stage trains or runs";
    const STARTER: &'static str = r#"[model]
# The base model: a local GGUF file or HF directory (config.json, tokenizer.json,
# *.safetensors), relative to this file, or "hf:org/name[@revision][:file.gguf]" from the
# Hugging Face cache (downloaded when missing unless HF_HUB_OFFLINE=1; pin @revision: a hub
# model is keyed by its spec, a local one by its content).
path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
# chat_template = "model"  # "model" (the model's own, the default), a fallback for models
#                          # without one ("chatml", "llama3", "zephyr", "alpaca"), or a path
#                          # to a .jinja file; every stage renders conversations with it
# system_prompt = "You are a concise Unix expert."  # for rows without their own system
#                          # prompt (default: none, the template's own default applies)
# template_kwargs = { enable_thinking = false }  # extra template variables, as transformers'
#                          # apply_chat_template(**kwargs): Qwen3's enable_thinking, Llama-3's
#                          # date_string (default: none; Llama-3 then dates prompts today)
# device = "auto"          # "auto" (a CUDA GPU when built with --features cuda), "cpu", "cuda:0"
"#;
    type Config = ModelStageConfig;

    fn external_inputs(cfg: &ModelStageConfig) -> Vec<PathBuf> {
        let mut inputs = Vec::new();
        // A hub model is keyed by its spec alone: resolving it here could download it (keys
        // are computed by `pipe status` too), and a key that changed once the download
        // completed would re-run everything downstream. Pin `@revision` to fix the content.
        if let Ok(ModelSpec::Local(path)) = ModelSpec::parse(&cfg.path) {
            inputs.push(path);
        }
        if let Some(TemplateChoice::File(path)) = cfg.chat_template.as_deref().map(choice) {
            inputs.push(path);
        }
        inputs
    }

    /// The device `auto` resolves to here: training on a GPU gives other numbers than on the
    /// CPU, so the two never share artifacts.
    fn environment(cfg: &ModelStageConfig, gpus: bool) -> BTreeMap<String, String> {
        let device = if gpus {
            cfg.device.resolve_given_gpus(true)
        } else {
            cfg.device.resolve()
        };
        BTreeMap::from([("device".to_string(), device.to_string())])
    }

    fn validate(cfg: &ModelStageConfig) -> Result<(), ConfigIssue> {
        validate_config(cfg)
    }

    fn run(cfg: &ModelStageConfig, cx: &mut StageContext) -> StageResult {
        run_model(cfg, cx)
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        let info = read_info(&dir.join(MODEL_FILE)).map_err(std::io::Error::other)?;
        write_info(&info, out)
    }
}

/// How `chat_template` is to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateChoice {
    Model,
    Named(String),
    File(PathBuf),
}

fn choice(value: &str) -> TemplateChoice {
    let value = value.trim();
    if value == MODEL_TEMPLATE {
        TemplateChoice::Model
    } else if NAMED_TEMPLATES.iter().any(|(n, _)| *n == value) {
        TemplateChoice::Named(value.to_string())
    } else {
        TemplateChoice::File(PathBuf::from(value))
    }
}

fn validate_config(cfg: &ModelStageConfig) -> Result<(), ConfigIssue> {
    ModelSpec::parse(&cfg.path).map_err(|e| ConfigIssue::new("path", e.to_string()))?;
    if let Some(t) = &cfg.chat_template {
        let names: Vec<&str> = NAMED_TEMPLATES.iter().map(|(n, _)| *n).collect();
        let is_file = |p: &Path| {
            p.extension().is_some_and(|e| e == "jinja" || e == "j2") || p.components().count() > 1
        };
        match choice(t) {
            TemplateChoice::File(p) if t.trim().is_empty() || !is_file(&p) => {
                return Err(ConfigIssue::new(
                    "chat_template",
                    format!(
                        "`{t}` is neither `model`, a known template ({}) nor a path to a .jinja file",
                        names.join(", ")
                    ),
                ))
            }
            _ => {}
        }
    }
    check_template_kwargs(&cfg.template_kwargs)
        .map_err(|message| ConfigIssue::new("template_kwargs", message))?;
    if cfg
        .system_prompt
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err(ConfigIssue::new(
            "system_prompt",
            "is empty; remove the key to use the template's default",
        ));
    }
    Ok(())
}

fn run_model(cfg: &ModelStageConfig, cx: &mut StageContext) -> StageResult {
    let spec = ModelSpec::parse(&cfg.path).map_err(BaseModelError::Load)?;
    cx.progress().info(&format!("model: loading {spec}"));
    let resolved_device = cfg.device.resolve();
    // `open` on the choice itself: `auto` in a job given GPUs explains a build without CUDA.
    let device = cfg.device.open().map_err(BaseModelError::Device)?;
    let loaded = load_model(&spec, cx.workspace(), &device).map_err(BaseModelError::Load)?;
    let template = resolve_template(cfg, &loaded, cx.workspace())?;
    let compiled = ChatTemplate::new(&template.source, &template.text, loaded.tokenizer.special())
        .and_then(|t| t.with_kwargs(template.kwargs.clone()))
        .map_err(BaseModelError::Template)?;
    // A render now catches a template that cannot render a plain exchange (or the system
    // prompt) before any training starts.
    let messages = chat_messages(cfg.system_prompt.as_deref(), None, &[], "ping");
    compiled
        .render_prompt_completion(&messages, "pong", &loaded.tokenizer)
        .map_err(BaseModelError::Template)?;
    let parameters = loaded
        .weights
        .tensors()
        .values()
        .map(|t| t.elem_count() as u64)
        .sum();
    let info = ModelInfo {
        spec: spec.to_string(),
        revision: spec.snapshot_revision(&loaded.source.path),
        path: std::path::absolute(&loaded.source.path).unwrap_or(loaded.source.path.clone()),
        name: loaded.source.name.clone(),
        format: loaded.source.format,
        tokenizer_vocab_size: loaded.tokenizer.vocab_size(),
        eos_token_ids: eos_ids(&loaded.config, &loaded.tokenizer),
        pad_token_id: pad_id(&loaded.config, &loaded.tokenizer),
        config: loaded.config.clone(),
        chat_template: template,
        system_prompt: cfg.system_prompt.clone(),
        parameters,
        device: resolved_device,
    };
    // Building the model checks every tensor against the architecture.
    LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map())
        .map_err(BaseModelError::Load)?;
    let path = cx.out_dir().join(MODEL_FILE);
    let text = serde_json::to_string_pretty(&info).map_err(|e| ModelError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| ModelError::Write {
        path: path.clone(),
        source,
    })?;
    cx.progress().info(&format!(
        "model: {} ({:?}, {} layers, hidden {}, {:.1}M parameters), chat template `{}`",
        info.name,
        info.config.architecture,
        info.config.num_hidden_layers,
        info.config.hidden_size,
        info.parameters as f64 / 1e6,
        info.chat_template.source
    ));
    cx.set_metric("parameters", info.parameters);
    cx.set_metric("layers", info.config.num_hidden_layers);
    Ok(())
}

/// The template text and where it came from; errors say how to fix the choice.
fn resolve_template(
    cfg: &ModelStageConfig,
    loaded: &LoadedModel,
    workspace: &Path,
) -> Result<TemplateInfo, ModelError> {
    let mut info = template_text(cfg, loaded, workspace)?;
    info.kwargs = cfg.template_kwargs.clone();
    pin_template_date(&mut info, chrono::Local::now().date_naive());
    Ok(info)
}

/// A template that reads today's date (Llama-3.x's "Today Date" header through
/// `strftime_now`) gets the date the model stage ran as `date_string`, recorded in model.json
/// with the other kwargs: every later stage renders the same prompts, whatever the day, as a
/// cached artifact promises. A `date_string` the user set stays.
fn pin_template_date(info: &mut TemplateInfo, today: chrono::NaiveDate) {
    if info.text.contains("strftime_now") && !info.kwargs.contains_key("date_string") {
        let date = today.format("%d %b %Y").to_string();
        info.kwargs
            .insert("date_string".to_string(), serde_json::Value::String(date));
    }
}

/// The chosen template's text and where it came from.
fn template_text(
    cfg: &ModelStageConfig,
    loaded: &LoadedModel,
    workspace: &Path,
) -> Result<TemplateInfo, ModelError> {
    let chosen = cfg.chat_template.as_deref().map(choice);
    match chosen.unwrap_or(TemplateChoice::Model) {
        TemplateChoice::Model => {
            let compiled = loaded.template(None).map_err(BaseModelError::Template)?;
            Ok(TemplateInfo {
                source: MODEL_TEMPLATE.to_string(),
                text: compiled.source().to_string(),
                kwargs: TemplateKwargs::new(),
            })
        }
        TemplateChoice::Named(name) => {
            let compiled = loaded
                .template(Some(&name))
                .map_err(BaseModelError::Template)?;
            Ok(TemplateInfo {
                source: name,
                text: compiled.source().to_string(),
                kwargs: TemplateKwargs::new(),
            })
        }
        TemplateChoice::File(path) => {
            let full = workspace.join(&path);
            let text = std::fs::read_to_string(&full)
                .map_err(|source| ModelError::TemplateFile { path: full, source })?;
            Ok(TemplateInfo {
                source: format!("file:{}", path.display()),
                text,
                kwargs: TemplateKwargs::new(),
            })
        }
    }
}

/// The config's eos ids plus the tokenizer's, so generation stops at either.
fn eos_ids(config: &ModelConfig, tokenizer: &TextTokenizer) -> Vec<u32> {
    let mut ids = config.eos_token_ids.clone();
    if let Some(id) = tokenizer.eos_id() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Padding is masked out, so any valid id works; prefer the model's own pad token.
fn pad_id(config: &ModelConfig, tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .pad_id()
        .or(config.pad_token_id)
        .or_else(|| config.eos_token_ids.first().copied())
        .unwrap_or(0)
        .min(config.vocab_size.saturating_sub(1) as u32)
}

/// `pipe show model`.
fn write_info(info: &ModelInfo, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &info.config;
    writeln!(out, "model       {} ({:?})", info.name, info.format)?;
    writeln!(out, "spec        {}", info.spec)?;
    writeln!(out, "file        {}", info.path.display())?;
    writeln!(
        out,
        "arch        {:?}: {} layers, hidden {}, {} heads ({} kv, dim {}), mlp {}",
        c.architecture,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size
    )?;
    writeln!(
        out,
        "            vocab {} (tokenizer {}), rope theta {}, context {}, tied embeddings {}",
        c.vocab_size,
        info.tokenizer_vocab_size,
        c.rope_theta,
        c.max_position_embeddings,
        c.tie_word_embeddings
    )?;
    if let Some(scaling) = &c.rope_scaling {
        writeln!(out, "            rope scaling {}", scaling.to_hf_json())?;
    }
    if let Some(window) = c.sliding_window {
        let sliding = (0..c.num_hidden_layers)
            .filter(|&i| c.layer_window(i).is_some())
            .count();
        let local = c
            .rope_local_theta
            .map(|t| format!(", rope theta {t} there"))
            .unwrap_or_default();
        writeln!(
            out,
            "            sliding window {window} on {sliding} of {} layers{local}",
            c.num_hidden_layers
        )?;
    }
    writeln!(out, "parameters  {:.1}M", info.parameters as f64 / 1e6)?;
    writeln!(
        out,
        "tokens      eos {:?}, pad {}",
        info.eos_token_ids, info.pad_token_id
    )?;
    writeln!(
        out,
        "system      {}",
        info.system_prompt
            .as_deref()
            .unwrap_or("(none: the template's default)")
    )?;
    writeln!(out, "template    {}", info.chat_template.source)?;
    if !info.chat_template.kwargs.is_empty() {
        let kwargs = serde_json::to_string(&info.chat_template.kwargs).unwrap_or_default();
        writeln!(out, "kwargs      {kwargs}")?;
    }
    for line in info.chat_template.text.lines().take(20) {
        writeln!(out, "  | {line}")?;
    }
    let lines = info.chat_template.text.lines().count();
    if lines > 20 {
        writeln!(out, "  | ... ({} more lines)", lines - 20)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::BaseModel;
    use crate::contract::pick_table;
    use crate::llm::ModelFormat;
    use crate::progress::NullProgress;
    use candle_core::Device;

    fn config(toml: &str) -> ModelStageConfig {
        pick_table(toml, "model").unwrap()
    }

    fn run_in(workspace: &Path, toml: &str) -> Result<(tempfile::TempDir, ModelInfo), String> {
        let cfg = config(toml);
        validate_config(&cfg).map_err(|i| format!("{}: {}", i.key, i.message))?;
        let out = tempfile::tempdir().unwrap();
        let mut cx = StageContext::new(
            workspace.to_path_buf(),
            out.path().to_path_buf(),
            out.path().join("partial"),
            Vec::new(),
            1,
            &NullProgress,
        );
        Model::run(&cfg, &mut cx).map_err(|e| e.to_string())?;
        let info = read_info(&out.path().join(MODEL_FILE)).unwrap();
        Ok((out, info))
    }

    #[test]
    fn tiny_hf_dir_is_described_and_loads_back() {
        let ws = tempfile::tempdir().unwrap();
        crate::testkit::write_tiny_model(&ws.path().join("tiny"), 1).unwrap();
        let (out, info) = run_in(
            ws.path(),
            "[model]\npath = \"tiny\"\nsystem_prompt = \"Be brief.\"\n",
        )
        .unwrap();
        assert_eq!(info.name, "tiny");
        assert_eq!(info.format, ModelFormat::HfDir);
        assert_eq!(info.chat_template.source, "model");
        assert!(info.chat_template.text.contains("<|im_start|>"));
        assert!(info.parameters > 10_000);
        assert_eq!(info.eos_token_ids, vec![crate::testkit::TINY_EOS]);
        let base = BaseModel::load(out.path(), ws.path(), &Device::Cpu).unwrap();
        let pc = base.render_example(None, &[], "hi", "ok").unwrap();
        assert!(
            pc.prompt_text.starts_with("<|im_start|>system\nBe brief."),
            "{}",
            pc.prompt_text
        );
        assert_eq!(base.render_prompt(None, &[], "hi").unwrap(), pc.prompt_ids);
        let own = base
            .render_example(Some("Row system."), &[], "hi", "ok")
            .unwrap();
        assert!(own.prompt_text.contains("Row system."));
        let mut shown = Vec::new();
        Model::show(out.path(), &mut shown).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            shown.contains("Be brief.") && shown.contains("template    model"),
            "{shown}"
        );
    }

    #[test]
    fn named_and_file_templates_and_their_inputs() {
        let ws = tempfile::tempdir().unwrap();
        crate::testkit::write_tiny_model(&ws.path().join("tiny"), 1).unwrap();
        let (_, info) = run_in(
            ws.path(),
            "[model]\npath = \"tiny\"\nchat_template = \"zephyr\"\n",
        )
        .unwrap();
        assert_eq!(info.chat_template.source, "zephyr");
        std::fs::create_dir_all(ws.path().join("t")).unwrap();
        std::fs::write(
            ws.path().join("t/mine.jinja"),
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        )
        .unwrap();
        let toml = "[model]\npath = \"tiny\"\nchat_template = \"t/mine.jinja\"\n";
        let (_, info) = run_in(ws.path(), toml).unwrap();
        assert_eq!(info.chat_template.source, "file:t/mine.jinja");
        assert_eq!(
            Model::external_inputs(&config(toml)),
            vec![PathBuf::from("tiny"), PathBuf::from("t/mine.jinja")]
        );
    }

    /// A template that reads today's date is pinned to the day the model stage ran; a
    /// user's `date_string` and templates without a date are left alone.
    #[test]
    fn a_dated_template_is_pinned_to_the_day_the_model_stage_ran() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let info = |text: &str, kwargs: TemplateKwargs| TemplateInfo {
            source: "model".into(),
            text: text.into(),
            kwargs,
        };
        let llama = "{%- set date_string = strftime_now(\"%d %b %Y\") %}";
        let mut dated = info(llama, TemplateKwargs::new());
        pin_template_date(&mut dated, day);
        assert_eq!(dated.kwargs["date_string"], "03 Dec 2026");
        let set = TemplateKwargs::from([("date_string".to_string(), "26 Jul 2024".into())]);
        let mut kept = info(llama, set.clone());
        pin_template_date(&mut kept, day);
        assert_eq!(kept.kwargs, set);
        let mut undated = info("{{ messages }}", TemplateKwargs::new());
        pin_template_date(&mut undated, day);
        assert!(undated.kwargs.is_empty());
    }

    /// `template_kwargs` reach every render downstream (Qwen3's `enable_thinking` here), are
    /// recorded in model.json and shown; without them the template sees them undefined.
    #[test]
    fn template_kwargs_reach_downstream_renders() {
        let ws = tempfile::tempdir().unwrap();
        crate::testkit::write_tiny_model(&ws.path().join("tiny"), 1).unwrap();
        std::fs::create_dir_all(ws.path().join("t")).unwrap();
        std::fs::write(
            ws.path().join("t/think.jinja"),
            "{% set nothink = enable_thinking is defined and enable_thinking is false %}{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and nothink %}<nothink>{% endif %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% if nothink %}<nothink>{% endif %}{% endif %}",
        )
        .unwrap();
        let toml = "[model]\npath = \"tiny\"\nchat_template = \"t/think.jinja\"\n";
        let (out, info) = run_in(ws.path(), toml).unwrap();
        assert!(info.chat_template.kwargs.is_empty());
        let base = BaseModel::load(out.path(), ws.path(), &Device::Cpu).unwrap();
        let pc = base.render_example(None, &[], "hi", "ok").unwrap();
        assert_eq!(pc.prompt_text, "<user>hi<assistant>");

        let with = format!("{toml}template_kwargs = {{ enable_thinking = false }}\n");
        let (out, info) = run_in(ws.path(), &with).unwrap();
        assert_eq!(
            info.chat_template.kwargs["enable_thinking"],
            serde_json::Value::Bool(false)
        );
        let base = BaseModel::load(out.path(), ws.path(), &Device::Cpu).unwrap();
        let pc = base.render_example(None, &[], "hi", "ok").unwrap();
        assert_eq!(pc.prompt_text, "<user>hi<assistant><nothink>");
        let mut shown = Vec::new();
        Model::show(out.path(), &mut shown).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            shown.contains(r#"kwargs      {"enable_thinking":false}"#),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let ws = tempfile::tempdir().unwrap();
        let err = run_in(ws.path(), "[model]\npath = \"nope.gguf\"\n").unwrap_err();
        assert!(
            err.contains("[model] `path`") && err.contains("does not exist"),
            "{err}"
        );
        let err = run_in(
            ws.path(),
            "[model]\npath = \"x\"\nchat_template = \"vicuna\"\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("chat_template:") && err.contains("chatml"),
            "{err}"
        );
        let err = run_in(ws.path(), "[model]\npath = \"hf:bad\"\n").unwrap_err();
        assert!(err.starts_with("path:"), "{err}");
        let err = run_in(ws.path(), "[model]\npath = \"x\"\nsystem_prompt = \" \"\n").unwrap_err();
        assert!(err.starts_with("system_prompt:"), "{err}");
        let err = run_in(
            ws.path(),
            "[model]\npath = \"x\"\ntemplate_kwargs = { messages = [] }\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("template_kwargs:") && err.contains("`messages`"),
            "{err}"
        );
        crate::testkit::write_tiny_model(&ws.path().join("tiny"), 1).unwrap();
        let err = run_in(
            ws.path(),
            "[model]\npath = \"tiny\"\nchat_template = \"no/such.jinja\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("`chat_template`") && err.contains("no/such.jinja"),
            "{err}"
        );
    }

    #[test]
    fn device_is_recorded_and_opened_by_downstream_stages() {
        let ws = tempfile::tempdir().unwrap();
        crate::testkit::write_tiny_model(&ws.path().join("tiny"), 1).unwrap();
        let (out, info) =
            run_in(ws.path(), "[model]\npath = \"tiny\"\ndevice = \"cpu\"\n").unwrap();
        assert_eq!(info.device, DeviceChoice::Cpu);
        let (_, device) = BaseModel::open(out.path(), ws.path()).unwrap();
        assert!(device.is_cpu());
        let (_, info) = run_in(ws.path(), "[model]\npath = \"tiny\"\n").unwrap();
        assert_eq!(
            info.device,
            DeviceChoice::Auto.resolve(),
            "the default, recorded as what it resolved to"
        );
        let cfg: ModelStageConfig = pick_table("[model]\npath = \"tiny\"\n", "model").unwrap();
        let keyed = Model::environment(&cfg, false);
        assert_eq!(keyed["device"], DeviceChoice::Auto.resolve().to_string());
        // A job given GPUs is keyed as on a GPU node; an explicit device stays as written.
        assert_eq!(Model::environment(&cfg, true)["device"], "cuda:0");
        let on_cpu: ModelStageConfig =
            pick_table("[model]\npath = \"tiny\"\ndevice = \"cpu\"\n", "model").unwrap();
        assert_eq!(Model::environment(&on_cpu, true)["device"], "cpu");
        let bad: Result<ModelStageConfig, _> =
            pick_table("[model]\npath = \"tiny\"\ndevice = \"tpu\"\n", "model");
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
        if !DeviceChoice::cuda_compiled() {
            let err =
                run_in(ws.path(), "[model]\npath = \"tiny\"\ndevice = \"cuda:0\"\n").unwrap_err();
            assert!(
                err.contains("`device`") && err.contains("--features cuda"),
                "{err}"
            );
        }
    }

    #[test]
    fn smollm2_gguf_is_described() {
        let path = crate::llm::testing::smollm2_gguf_path();
        let ws = path.parent().unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (_, info) = run_in(ws, &format!("[model]\npath = \"{name}\"\n")).unwrap();
        assert_eq!(info.name, name);
        assert_eq!(info.config.num_hidden_layers, 30);
        assert_eq!(info.eos_token_ids, vec![2]);
        assert!(
            (134_000_000..136_000_000).contains(&info.parameters),
            "{}",
            info.parameters
        );
    }
}
