//! The `merge` stage: folds the adapter stack of the instance it names (`model`: by default
//! the one adapter stage no other builds on; base + sft + orpo in the demo) into the base
//! weights and exports the final model as an HF directory (`model/`, loadable by transformers and by
//! `pipe chat --stage merge`), both adapters as portable PEFT directories (`adapters/`), and
//! optionally a llama.cpp GGUF (`model.gguf`). Every export is loaded back and run on a probe
//! prompt against the in-memory merged model (see `fidelity`); the figures are in the summary.

pub mod artifact;
mod fidelity;
mod gguf;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use fidelity::{Fidelity, ProbeFigures, ProbeRun};
pub use gguf::{GgufExport, GgufType, TokenizerSource};

use crate::base::{BaseModel, BaseModelError, ModelStack, ADAPTER_KINDS};
use crate::contract::{ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use crate::llm::{
    load_model_path, merge_adapters, portable_base_reference, ExportDtype, GgufFile, HfExport,
    LlamaModel, LlmError, ModelFormat, ModelWeights, PeftAdapter,
};
use crate::model::artifact::ModelInfo;

use artifact::{ADAPTERS_DIR, GGUF_FILE, MODEL_DIR, SUMMARY_FILE};

/// The `merge` stage.
pub struct Merge;

/// A training stage's name and its adapter directory.
pub type StageAdapter = (String, PathBuf);

/// `[merge]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// The adapter stage whose model it folds and exports (default: the one adapter stage no
    /// other adapter stage builds on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The element type of `model/model.safetensors`.
    #[serde(default)]
    pub dtype: ExportDtype,
    /// Also write `model.gguf` in this type.
    #[serde(default)]
    pub gguf: GgufType,
}

/// Why merge failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Model(#[from] BaseModelError),
    #[error("merge: {context}: {source}")]
    Llm {
        context: String,
        #[source]
        source: Box<LlmError>,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn llm(context: impl Into<String>) -> impl FnOnce(LlmError) -> MergeError {
    let context = context.into();
    move |source| MergeError::Llm {
        context,
        source: Box::new(source),
    }
}

/// One merged adapter, as the summary lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedAdapter {
    pub stage: String,
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    /// Adapted projections (layers × modules).
    pub projections: usize,
}

/// One exported file or directory and how faithfully it reproduces the merged model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportCheck {
    pub path: String,
    pub format: String,
    pub bytes: u64,
    /// Against the in-memory merged model, on the probe prompt.
    #[serde(flatten)]
    pub fidelity: Fidelity,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeSummary {
    pub base_model: String,
    pub adapters: Vec<MergedAdapter>,
    pub dtype: ExportDtype,
    pub gguf: GgufType,
    pub exports: Vec<ExportCheck>,
    pub probe_tokens: usize,
    /// The merged model's own figures on the probe (what other runtimes are checked against).
    pub probe: ProbeFigures,
    pub seconds: f64,
}

impl Stage for Merge {
    const NAME: &'static str = "merge";
    const VERSION: u32 = 3;
    const ABOUT: &'static str =
        "folds the adapter stack of the model it names into the base: HF directory, PEFT adapters, optional GGUF";
    const STARTER: &'static str = r#"[merge]
# dtype = "bf16"           # model/model.safetensors in "f32", "bf16" or "f16"
# gguf = "none"            # also write model.gguf for llama.cpp: "none", "f16" or "q8_0"
"#;
    type Config = MergeConfig;

    fn inputs(cfg: &MergeConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        let default = match pipeline.single_top(ADAPTER_KINDS, "model") {
            Ok(top) => top.unwrap_or_else(|| "sft".to_string()),
            Err(tops) => {
                return Err(ConfigIssue::new(
                    "model",
                    format!(
                        "several adapter stages could be the final model ({}); say which one merge folds: model = \"{}\"",
                        tops.join(", "),
                        tops[0]
                    ),
                ))
            }
        };
        Ok(vec![Input::one(
            "model",
            cfg.model.as_deref(),
            &default,
            ADAPTER_KINDS,
        )
        .following("model")])
    }

    fn run(cfg: &MergeConfig, cx: &mut StageContext) -> StageResult {
        let started = Instant::now();
        let stack = ModelStack::from_chain(cx.chain("model")?)?;
        let adapter_dirs: Vec<StageAdapter> = stack
            .adapters
            .iter()
            .map(|a| (a.instance.clone(), a.dir.clone()))
            .collect();
        // An adapter that a later stage continued training is kept for reference only.
        let kept: Vec<StageAdapter> = stack
            .replaced
            .iter()
            .map(|a| (a.instance.clone(), a.dir.clone()))
            .collect();
        let mut summary = merge(
            cfg,
            &stack.base,
            cx.workspace(),
            &adapter_dirs,
            &kept,
            cx.out_dir(),
            cx.progress(),
        )?;
        summary.seconds = started.elapsed().as_secs_f64();
        write_json(&cx.out_dir().join(SUMMARY_FILE), &summary)?;
        for check in &summary.exports {
            let f = &check.fidelity;
            cx.set_metric(
                &format!("{}_max_logit_diff", check.format),
                f.max_logit_diff,
            );
            cx.set_metric(&format!("{}_nll_diff", check.format), f.nll_diff);
        }
        cx.set_metric("seconds", summary.seconds);
        Ok(())
    }

    fn show(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
        let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
        match serde_json::from_str::<MergeSummary>(&text) {
            Ok(s) => write_summary(&s, out),
            // An artifact of an earlier merge version: its files are still listed above.
            Err(e) => writeln!(
                out,
                "summary.json is in an older format ({e}); `pipe run --from merge` rewrites it"
            ),
        }
    }
}

/// Merges the adapters in `adapter_dirs` (stage name, PEFT dir) in order into the base model of
/// the `model` artifact and writes every export into `out`; the adapters in `kept` are only
/// copied into `adapters/`.
pub fn merge(
    cfg: &MergeConfig,
    model_dir: &Path,
    workspace: &Path,
    adapter_dirs: &[StageAdapter],
    kept: &[StageAdapter],
    out: &Path,
    progress: &dyn crate::Progress,
) -> Result<MergeSummary, MergeError> {
    let device = Device::Cpu;
    let base = BaseModel::load(model_dir, workspace, &device)?;
    let adapters = adapter_dirs
        .iter()
        .map(|(stage, dir)| {
            PeftAdapter::load(dir, &device)
                .map_err(llm(format!("cannot read the {stage} adapter")))
                .map(|a| (stage.clone(), a))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut weights = base.model.weights();
    let plain: Vec<PeftAdapter> = adapters.iter().map(|(_, a)| a.clone()).collect();
    merge_adapters(&mut weights, &plain).map_err(llm("cannot merge the adapters"))?;
    let merged = LlamaModel::from_tensors(base.model.config(), weights.clone())
        .map_err(llm("cannot build the merged model"))?;
    progress.info(&format!(
        "merge: {} + {}",
        base.info.name,
        adapters
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    ));
    let probe = probe_ids(&base)?;
    let reference = ProbeRun::of(&merged, &probe).map_err(llm("cannot run the probe"))?;
    let mut exports = Vec::new();

    let model_out = out.join(MODEL_DIR);
    let hf_weights = ModelWeights::new(weights.clone());
    HfExport {
        config: base.model.config(),
        weights: &hf_weights,
        tokenizer: &base.tokenizer,
        chat_template: Some(&base.info.chat_template.text),
        dtype: cfg.dtype,
    }
    .write(&model_out)
    .map_err(llm("cannot write the HF model directory"))?;
    exports.push(check_export(
        &model_out,
        &format!("hf_{}", dtype_name(cfg.dtype)),
        out,
        &probe,
        &reference,
    )?);
    progress.info(&format!(
        "merge: wrote {MODEL_DIR}/ ({}), {}",
        dtype_name(cfg.dtype),
        describe(&exports[0].fidelity)
    ));

    if cfg.gguf != GgufType::None {
        let path = out.join(GGUF_FILE);
        write_gguf(cfg.gguf, &base, &weights, &path)?;
        let check = check_export(
            &path,
            &format!("gguf_{}", cfg.gguf.name()),
            out,
            &probe,
            &reference,
        )?;
        progress.info(&format!(
            "merge: wrote {GGUF_FILE} ({}), {}",
            cfg.gguf.name(),
            describe(&check.fidelity)
        ));
        exports.push(check);
    }

    let mut summary_adapters = Vec::new();
    for (stage, adapter) in &adapters {
        let dir = out.join(ADAPTERS_DIR).join(stage);
        copy_adapter(adapter, &base.info, &dir)?;
        summary_adapters.push(describe_adapter(stage, adapter));
    }
    for (stage, dir) in kept {
        let adapter = PeftAdapter::load(dir, &device)
            .map_err(llm(format!("cannot read the {stage} adapter")))?;
        copy_adapter(&adapter, &base.info, &out.join(ADAPTERS_DIR).join(stage))?;
    }
    Ok(MergeSummary {
        base_model: base.info.name.clone(),
        adapters: summary_adapters,
        dtype: cfg.dtype,
        gguf: cfg.gguf,
        exports,
        probe_tokens: probe.len(),
        probe: reference.figures(&probe),
        seconds: 0.0,
    })
}

/// Writes the GGUF with the base's own tokenizer metadata when the base was a GGUF.
fn write_gguf(
    dtype: GgufType,
    base: &BaseModel,
    weights: &std::collections::HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), MergeError> {
    let sorted: BTreeMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let source_gguf = match base.info.format {
        ModelFormat::Gguf => {
            Some(GgufFile::open(&base.info.path).map_err(llm("cannot reopen the base GGUF"))?)
        }
        ModelFormat::HfDir => None,
    };
    let tokenizer = match &source_gguf {
        Some(g) => TokenizerSource::Gguf(g),
        None => TokenizerSource::Hf(&base.tokenizer),
    };
    GgufExport {
        config: base.model.config(),
        weights: &sorted,
        tokenizer,
        chat_template: Some(&base.info.chat_template.text),
        name: &base.info.name,
        dtype,
    }
    .write(path)
    .map_err(llm("cannot write the GGUF"))
}

/// The adapter re-saved under `dir`, its base reference made portable from there.
fn copy_adapter(adapter: &PeftAdapter, info: &ModelInfo, dir: &Path) -> Result<(), MergeError> {
    let mut adapter = adapter.clone();
    // As sft names it: the spec's portable name, else a path relative to the adapter.
    let reference = if crate::llm::base_ref::check_portable(&info.name).is_ok() {
        info.name.clone()
    } else {
        portable_base_reference(&info.path.to_string_lossy(), dir)
            .map_err(llm("cannot name the base model portably"))?
    };
    adapter.config.base_model_name_or_path = Some(reference);
    adapter
        .save(dir)
        .map_err(llm(format!("cannot write {}", dir.display())))
}

fn describe_adapter(stage: &str, adapter: &PeftAdapter) -> MergedAdapter {
    let config = adapter.lora_config();
    MergedAdapter {
        stage: stage.to_string(),
        r: config.r,
        alpha: config.alpha,
        use_rslora: config.use_rslora,
        target_modules: config
            .target_modules
            .iter()
            .map(|m| m.hf_name().to_string())
            .collect(),
        projections: adapter.weights.len(),
    }
}

/// A short chat prompt rendered with the model's template: the probe of every export check.
fn probe_ids(base: &BaseModel) -> Result<Vec<u32>, MergeError> {
    let mut ids = base
        .render_prompt(None, &[], "What does the ls command do?")
        .map_err(llm("cannot render the probe prompt"))?;
    ids.truncate(64);
    Ok(ids)
}

/// Loads an export back with pipe's own loader and runs the probe on it.
fn check_export(
    path: &Path,
    format: &str,
    out: &Path,
    probe: &[u32],
    reference: &ProbeRun,
) -> Result<ExportCheck, MergeError> {
    let loaded = load_model_path(path, &Device::Cpu).map_err(llm(format!(
        "cannot load the export {} back",
        path.display()
    )))?;
    let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map())
        .map_err(llm("cannot build the exported model"))?;
    let run = ProbeRun::of(&model, probe).map_err(llm("cannot run the probe on the export"))?;
    Ok(ExportCheck {
        path: path
            .strip_prefix(out)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        format: format.to_string(),
        bytes: size_of(path),
        fidelity: run.against(reference),
    })
}

/// One line of an export's figures.
fn describe(f: &Fidelity) -> String {
    format!(
        "probe NLL within {:.1e}, top-10 logits within {:.1e} (all logits {:.1e}), greedy {}/{} tokens the same",
        f.nll_diff, f.top10_logit_diff, f.max_logit_diff, f.greedy_agree, f.greedy_tokens
    )
}

/// Bytes of a file, or of every file under a directory.
fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| size_of(&e.path()))
            .sum()
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

fn dtype_name(dtype: ExportDtype) -> &'static str {
    match dtype {
        ExportDtype::F32 => "f32",
        ExportDtype::Bf16 => "bf16",
        ExportDtype::F16 => "f16",
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), MergeError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| MergeError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| MergeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `pipe show merge`.
fn write_summary(s: &MergeSummary, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "base        {}", s.base_model)?;
    for a in &s.adapters {
        writeln!(
            out,
            "+ {:<9} r {}, alpha {}{}, {} projections ({})",
            a.stage,
            a.r,
            a.alpha,
            if a.use_rslora { " (rslora)" } else { "" },
            a.projections,
            a.target_modules.join(" ")
        )?;
    }
    writeln!(
        out,
        "exports, run on a {}-token probe against the merged f32 model:",
        s.probe_tokens
    )?;
    writeln!(
        out,
        "  {:<16} {:<10} {:>8}  {:>8}  {:>8}  {:>8}  greedy",
        "path", "format", "MB", "|ΔNLL|", "top-10 Δ", "max Δ"
    )?;
    for e in &s.exports {
        let f = &e.fidelity;
        writeln!(
            out,
            "  {:<16} {:<10} {:>8.1}  {:>8.1e}  {:>8.1e}  {:>8.1e}  {}/{}{}",
            e.path,
            e.format,
            e.bytes as f64 / 1e6,
            f.nll_diff,
            f.top10_logit_diff,
            f.max_logit_diff,
            f.greedy_agree,
            f.greedy_tokens,
            if f.same_argmax {
                ""
            } else {
                "  (next token differs!)"
            }
        )?;
    }
    writeln!(out, "adapters    {ADAPTERS_DIR}/<stage>/ (PEFT)")?;
    writeln!(out, "time        {:.1} s", s.seconds)
}
