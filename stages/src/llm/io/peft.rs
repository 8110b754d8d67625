//! LoRA adapters in Hugging Face PEFT's on-disk format (`adapter_config.json` +
//! `adapter_model.safetensors`), so adapters trained by pipe load in PEFT and PEFT's load here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::base_ref::check_portable;
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::{lora_scale, LoraConfig, TargetModule};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const NAME_PREFIX: &str = "base_model.model.";

/// The part of PEFT's `LoraConfig` that pipe reads; other fields are ignored on read (PEFT adds
/// fields every release) and written with PEFT's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// A list of module names, or a regex / `all-linear` (then the tensors tell which).
    #[serde(default)]
    pub target_modules: Option<Value>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Value>,
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
}

impl AdapterConfig {
    /// Reads the text of an `adapter_config.json` (`path` names it in errors), refusing what
    /// pipe cannot apply faithfully.
    pub fn parse(text: &str, path: &Path) -> LlmResult<Self> {
        let config: AdapterConfig = serde_json::from_str(text)
            .map_err(|e| LlmError::bad_file(path, format!("not a PEFT adapter config: {e}")))?;
        check_supported(&config, path)?;
        Ok(config)
    }
}

fn bias_none() -> String {
    "none".into()
}

/// One adapted projection's matrices: A `[r, in]`, B `[out, r]`.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub a: Tensor,
    pub b: Tensor,
}

/// A LoRA adapter: its config and its matrices by (layer, projection).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    pub weights: BTreeMap<(usize, TargetModule), LoraWeights>,
}

impl PeftAdapter {
    /// The adapter attached to `model`, for saving. `base_model_name_or_path` must already be
    /// portable (see `portable_base_reference`).
    pub fn from_model(model: &LlamaModel, base_model_name_or_path: &str) -> LlmResult<Self> {
        check_portable(base_model_name_or_path)?;
        let lora = model.lora_config().ok_or_else(|| {
            LlmError::Invalid("the model has no LoRA attached: nothing to save".into())
        })?;
        let mut weights = BTreeMap::new();
        for (layer, module, l) in model.lora_layers() {
            weights.insert(
                (layer, module),
                LoraWeights {
                    a: l.a().as_tensor().detach(),
                    b: l.b().as_tensor().detach(),
                },
            );
        }
        let modules: Vec<TargetModule> = {
            let mut m: Vec<_> = weights.keys().map(|&(_, m)| m).collect();
            m.sort();
            m.dedup();
            m
        };
        Ok(Self {
            config: AdapterConfig {
                peft_type: "LORA".into(),
                task_type: Some("CAUSAL_LM".into()),
                base_model_name_or_path: Some(base_model_name_or_path.to_string()),
                r: lora.r,
                lora_alpha: lora.alpha,
                lora_dropout: lora.dropout,
                target_modules: Some(json!(modules
                    .iter()
                    .map(|m| m.hf_name())
                    .collect::<Vec<_>>())),
                use_rslora: lora.use_rslora,
                bias: bias_none(),
                fan_in_fan_out: false,
                use_dora: false,
                modules_to_save: None,
                // As PEFT writes them (`{}`), so a saved config reads back equal.
                rank_pattern: Some(BTreeMap::new()),
                alpha_pattern: Some(BTreeMap::new()),
                layers_to_transform: None,
            },
            weights,
        })
    }

    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        lora_scale(
            self.config.lora_alpha,
            self.config.r,
            self.config.use_rslora,
        )
    }

    /// The equivalent [`LoraConfig`] (target modules from the tensors present).
    pub fn lora_config(&self) -> LoraConfig {
        let mut modules: Vec<TargetModule> = self.weights.keys().map(|&(_, m)| m).collect();
        modules.sort();
        modules.dedup();
        LoraConfig {
            r: self.config.r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            target_modules: modules,
            use_rslora: self.config.use_rslora,
            seed: 0,
        }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    pub fn save(&self, dir: &Path) -> LlmResult<()> {
        if let Some(base) = &self.config.base_model_name_or_path {
            check_portable(base)?;
        }
        std::fs::create_dir_all(dir).map_err(|source| LlmError::io(dir, source))?;
        let config_path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.config_json())
            .map_err(|e| LlmError::bad_file(&config_path, e.to_string()))?;
        std::fs::write(&config_path, text + "\n").map_err(|s| LlmError::io(&config_path, s))?;
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for (&(layer, module), w) in &self.weights {
            let base = format!("{NAME_PREFIX}{}", module.module_path(layer));
            tensors.insert(format!("{base}.lora_A.weight"), w.a.contiguous()?);
            tensors.insert(format!("{base}.lora_B.weight"), w.b.contiguous()?);
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        // PEFT/transformers expect the `format: pt` metadata torch writes.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(&tensors, Some(metadata), &weights_path)
            .map_err(|e| LlmError::bad_file(&weights_path, e.to_string()))?;
        Ok(())
    }

    /// `adapter_config.json` with PEFT's field names and defaults (sorted keys, as PEFT writes).
    /// Only fields every PEFT release since 0.9 accepts, so older versions load it too.
    pub fn config_json(&self) -> Value {
        let c = &self.config;
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": c.base_model_name_or_path,
            "bias": c.bias,
            "fan_in_fan_out": c.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": integral_or_float(c.lora_alpha),
            "lora_dropout": c.lora_dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": c.peft_type,
            "r": c.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": c.target_modules,
            "task_type": c.task_type,
            "use_dora": c.use_dora,
            "use_rslora": c.use_rslora,
        })
    }

    /// Reads a PEFT LoRA adapter directory. Refuses what pipe cannot apply faithfully (DoRA,
    /// per-module rank/alpha patterns, trained biases, modules_to_save, fan_in_fan_out).
    pub fn load(dir: &Path, device: &Device) -> LlmResult<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|s| LlmError::io(&config_path, s))?;
        let config = AdapterConfig::parse(&text, &config_path)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| LlmError::bad_file(&weights_path, e.to_string()))?;
        let weights = parse_tensors(tensors, &config, &weights_path)?;
        Ok(Self { config, weights })
    }

    /// Attaches this adapter (unmerged, trainable: its matrices become `Var`s, e.g. to resume
    /// training) to `model`, replacing any attached one.
    pub fn attach_to(&self, model: &mut LlamaModel) -> LlmResult<()> {
        model.remove_lora();
        let lora = self.lora_config();
        for (&(layer, module), w) in &self.weights {
            model.attach_lora_weights(&lora, layer, module, &w.a, &w.b)?;
        }
        Ok(())
    }

    /// `scale·B·A` of one projection, `[out, in]`, in f64 so a merge rounds only once.
    pub fn delta(&self, layer: usize, module: TargetModule) -> LlmResult<Option<Tensor>> {
        let Some(w) = self.weights.get(&(layer, module)) else {
            return Ok(None);
        };
        let b = w.b.to_dtype(DType::F64)?;
        let a = w.a.to_dtype(DType::F64)?;
        Ok(Some((b.matmul(&a)? * self.scale())?))
    }
}

fn integral_or_float(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn check_supported(c: &AdapterConfig, path: &Path) -> LlmResult<()> {
    let refuse = |what: &str| {
        Err(LlmError::bad_file(
            path,
            format!("{what}; pipe supports plain LoRA adapters"),
        ))
    };
    if c.peft_type != "LORA" {
        return refuse(&format!("peft_type is `{}`, not LORA", c.peft_type));
    }
    if c.r == 0 {
        return refuse("r is 0");
    }
    if c.use_dora {
        return refuse("use_dora is true (DoRA)");
    }
    if c.fan_in_fan_out {
        return refuse("fan_in_fan_out is true (Conv1D-style weights)");
    }
    if c.bias != "none" {
        return refuse(&format!("bias is `{}` (trained biases)", c.bias));
    }
    if c.rank_pattern.as_ref().is_some_and(|m| !m.is_empty())
        || c.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty())
    {
        return refuse("rank_pattern/alpha_pattern give per-module ranks");
    }
    if c.modules_to_save.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("modules_to_save holds fully trained modules");
    }
    Ok(())
}

/// Groups `base_model.model.model.layers.N.<parent>.<proj>.lora_{A,B}.weight` into pairs.
fn parse_tensors(
    tensors: HashMap<String, Tensor>,
    config: &AdapterConfig,
    path: &Path,
) -> LlmResult<BTreeMap<(usize, TargetModule), LoraWeights>> {
    let mut halves: BTreeMap<(usize, TargetModule), (Option<Tensor>, Option<Tensor>)> =
        BTreeMap::new();
    for (name, tensor) in tensors {
        let (layer, module, is_a) = parse_name(&name).ok_or_else(|| {
            LlmError::bad_file(
                path,
                format!("tensor `{name}` is not a LoRA matrix of a Llama-family projection"),
            )
        })?;
        let entry = halves.entry((layer, module)).or_default();
        if is_a {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    if halves.is_empty() {
        return Err(LlmError::bad_file(path, "no LoRA tensors"));
    }
    let mut out = BTreeMap::new();
    for ((layer, module), pair) in halves {
        let name = format!("{NAME_PREFIX}{}", module.module_path(layer));
        let (Some(a), Some(b)) = pair else {
            return Err(LlmError::bad_file(
                path,
                format!("`{name}` has only one of lora_A and lora_B"),
            ));
        };
        let ok =
            a.rank() == 2 && b.rank() == 2 && a.dims()[0] == config.r && b.dims()[1] == config.r;
        if !ok {
            return Err(LlmError::bad_file(
                path,
                format!(
                    "`{name}`: lora_A {:?} / lora_B {:?} do not match r = {}",
                    a.dims(),
                    b.dims(),
                    config.r
                ),
            ));
        }
        out.insert((layer, module), LoraWeights { a, b });
    }
    Ok(out)
}

/// `(layer, module, is_A)` from a PEFT tensor name.
fn parse_name(name: &str) -> Option<(usize, TargetModule, bool)> {
    let rest = name
        .strip_prefix(NAME_PREFIX)?
        .strip_prefix("model.layers.")?;
    let (rest, is_a) = if let Some(r) = rest.strip_suffix(".lora_A.weight") {
        (r, true)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, false)
    };
    let mut parts = rest.split('.');
    let layer: usize = parts.next()?.parse().ok()?;
    let parent = parts.next()?;
    let module = TargetModule::from_hf_name(parts.next()?)?;
    (parts.next().is_none() && module.parent() == parent).then_some((layer, module, is_a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::config::Architecture;
    use crate::llm::testing::micro::{max_abs_diff, micro_model};
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/smollm2/peft_adapter"
        ))
    }

    #[test]
    fn written_adapter_reads_back_identically_with_peft_field_names() -> LlmResult<()> {
        let mut model = micro_model(Architecture::Llama, DType::F32);
        model.attach_lora(&LoraConfig {
            r: 2,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec![
                TargetModule::QProj,
                TargetModule::VProj,
                TargetModule::DownProj,
            ],
            use_rslora: false,
            seed: 9,
        })?;
        for (_, _, l) in model.lora_layers() {
            let b = Tensor::randn(0f32, 1.0, l.b().shape(), &Device::Cpu)?;
            l.b().set(&b)?;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        let base = crate::llm::io::base_ref::portable_base_reference(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            &dir,
        )?;
        let adapter = PeftAdapter::from_model(&model, &base)?;
        adapter.save(&dir)?;

        let back = PeftAdapter::load(&dir, &Device::Cpu)?;
        assert_eq!(back.config, adapter.config);
        assert_eq!(back.weights.len(), 2 * 3);
        for (key, w) in &adapter.weights {
            let r = &back.weights[key];
            assert_eq!(max_abs_diff(&w.a, &r.a), 0.0, "{key:?} A");
            assert_eq!(max_abs_diff(&w.b, &r.b), 0.0, "{key:?} B");
        }
        assert_eq!(
            back.lora_config().target_modules,
            adapter.lora_config().target_modules
        );

        // Field names as PEFT writes them, and nothing pipe-specific.
        let ours: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        let peft: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join(CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        for (key, value) in ours.as_object().unwrap() {
            assert!(peft.get(key).is_some(), "`{key}` is not a PEFT field");
            if ![
                "base_model_name_or_path",
                "r",
                "lora_alpha",
                "lora_dropout",
                "target_modules",
            ]
            .contains(&key.as_str())
            {
                assert_eq!(value, &peft[key], "`{key}` differs from PEFT's default");
            }
        }
        assert_eq!(ours["lora_alpha"], json!(16));
        assert_eq!(
            ours["base_model_name_or_path"],
            json!("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        let names = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu)?;
        assert!(names.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
        Ok(())
    }

    #[test]
    fn absolute_base_paths_are_refused_on_save() {
        let mut model = micro_model(Architecture::Llama, DType::F32);
        model
            .attach_lora(&LoraConfig {
                r: 1,
                alpha: 1.0,
                dropout: 0.0,
                target_modules: vec![TargetModule::QProj],
                use_rslora: false,
                seed: 0,
            })
            .unwrap();
        let err = PeftAdapter::from_model(&model, "/root/.cache/x").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn reads_the_peft_fixture_adapter() -> LlmResult<()> {
        let adapter = PeftAdapter::load(&fixture_dir(), &Device::Cpu)?;
        assert_eq!(adapter.config.r, 4);
        assert_eq!(adapter.scale(), 2.0);
        assert_eq!(adapter.weights.len(), 30 * 7);
        let w = &adapter.weights[&(0, TargetModule::KProj)];
        assert_eq!((w.a.dims(), w.b.dims()), (&[4, 576][..], &[192, 4][..]));
        assert_eq!(
            adapter.lora_config().target_modules,
            TargetModule::ALL.to_vec()
        );
        Ok(())
    }

    #[test]
    fn unsupported_adapters_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join(CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        cfg["use_dora"] = json!(true);
        std::fs::write(tmp.path().join(CONFIG_FILE), cfg.to_string()).unwrap();
        let err = PeftAdapter::load(tmp.path(), &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("DoRA"), "{err}");
        assert_eq!(
            parse_name("base_model.model.model.layers.3.mlp.q_proj.lora_A.weight"),
            None
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight"),
            Some((3, TargetModule::QProj, false))
        );
    }
}
