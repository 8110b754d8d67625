//! Folding LoRA adapters into base weights, `W' = W + scale·B·A`, one adapter after the other
//! (the pipeline's final model is base + SFT adapter + ORPO adapter).

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::peft::PeftAdapter;
use crate::llm::model::decoder::LlamaModel;

/// Merges `adapters`, in order, into HF-named `weights` (e.g. before exporting an HF dir).
/// Each adapted weight must exist with the adapter's shape; sums are taken in f64 and rounded
/// once to the weight's dtype.
pub fn merge_adapters(
    weights: &mut HashMap<String, Tensor>,
    adapters: &[PeftAdapter],
) -> LlmResult<()> {
    for (i, adapter) in adapters.iter().enumerate() {
        for &(layer, module) in adapter.weights.keys() {
            let name = format!("{}.weight", module.module_path(layer));
            let w = weights.get(&name).ok_or_else(|| LlmError::Tensor {
                name: name.clone(),
                message: format!(
                    "adapter {i} adapts this weight but the base model has no such tensor"
                ),
            })?;
            let Some(delta) = adapter.delta(layer, module)? else {
                continue;
            };
            if delta.dims() != w.dims() {
                return Err(LlmError::Tensor {
                    name,
                    message: format!(
                        "adapter {i} gives an update of shape {:?} for a weight of shape {:?}: was it trained on another base model?",
                        delta.dims(),
                        w.dims()
                    ),
                });
            }
            let merged = (w.to_dtype(DType::F64)? + delta)?.to_dtype(w.dtype())?;
            weights.insert(name, merged);
        }
    }
    Ok(())
}

/// Merges `adapters`, in order, into the base weights of `model` (attached, unmerged LoRA is
/// left as it is).
pub fn merge_adapters_into_model(
    model: &mut LlamaModel,
    adapters: &[PeftAdapter],
) -> LlmResult<()> {
    for adapter in adapters {
        for &(layer, module) in adapter.weights.keys() {
            if let Some(delta) = adapter.delta(layer, module)? {
                model.add_to_weight(layer, module, &delta)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::config::Architecture;
    use crate::llm::model::lora::{LoraConfig, Mode, TargetModule};
    use crate::llm::testing::micro::{max_abs_diff, micro_model};
    use candle_core::Device;

    fn adapter_for(model: &LlamaModel, seed: u64, modules: Vec<TargetModule>) -> PeftAdapter {
        let mut m = model.clone();
        m.remove_lora();
        m.attach_lora(&LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: modules,
            use_rslora: seed.is_multiple_of(2),
            seed,
        })
        .unwrap();
        for (_, _, l) in m.lora_layers() {
            l.b()
                .set(&Tensor::randn(0f64, 0.1, l.b().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        PeftAdapter::from_model(&m, "base").unwrap()
    }

    #[test]
    fn two_adapters_merged_in_order_equal_applying_them() {
        let base = micro_model(Architecture::Qwen2, DType::F64);
        let first = adapter_for(&base, 1, TargetModule::ALL.to_vec());
        let second = adapter_for(&base, 2, vec![TargetModule::VProj, TargetModule::UpProj]);
        let ids = Tensor::new(&[[1u32, 4, 2, 8]], &Device::Cpu).unwrap();

        // Reference: first merged, second applied as LoRA on top.
        let mut reference = base.clone();
        merge_adapters_into_model(&mut reference, std::slice::from_ref(&first)).unwrap();
        second.attach_to(&mut reference).unwrap();
        let want = reference.forward(&ids, None, Mode::Eval).unwrap();

        let mut weights = base.weights();
        merge_adapters(&mut weights, &[first, second]).unwrap();
        let merged = LlamaModel::from_tensors(base.config(), weights).unwrap();
        let got = merged.forward(&ids, None, Mode::Eval).unwrap();
        assert!(max_abs_diff(&want, &got) < 1e-10);
    }

    #[test]
    fn adapter_for_another_model_is_refused() {
        let base = micro_model(Architecture::Llama, DType::F64);
        let adapter = adapter_for(&base, 1, vec![TargetModule::QProj]);
        let mut weights = base.weights();
        weights.remove("model.layers.1.self_attn.q_proj.weight");
        let err = merge_adapters(&mut weights, &[adapter]).unwrap_err();
        assert!(
            err.to_string()
                .contains("model.layers.1.self_attn.q_proj.weight"),
            "{err}"
        );
    }
}
