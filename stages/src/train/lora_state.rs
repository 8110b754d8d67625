//! The trainable LoRA matrices of a model as named tensors, for checkpoints: saved and set
//! back in place, so a resumed run continues from exactly the interrupted weights.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::llm::{LlamaModel, LlmError, LlmResult};

/// `model.layers.3.self_attn.q_proj.lora_A` style names with the current values.
pub fn lora_tensors(model: &LlamaModel) -> Vec<(String, Tensor)> {
    model
        .lora_layers()
        .into_iter()
        .flat_map(|(layer, module, l)| {
            let base = module.module_path(layer);
            [
                (format!("{base}.lora_A"), l.a().as_tensor().detach()),
                (format!("{base}.lora_B"), l.b().as_tensor().detach()),
            ]
        })
        .collect()
}

/// Sets every attached LoRA matrix to its saved value; errors name a missing or misshapen one.
pub fn restore_lora(model: &LlamaModel, saved: &HashMap<String, Tensor>) -> LlmResult<()> {
    for (layer, module, l) in model.lora_layers() {
        let base = module.module_path(layer);
        for (suffix, var) in [("lora_A", l.a()), ("lora_B", l.b())] {
            let name = format!("{base}.{suffix}");
            let value = saved
                .get(&name)
                .ok_or_else(|| LlmError::tensor(&name, "missing from the checkpoint"))?;
            if value.dims() != var.dims() {
                return Err(LlmError::tensor(
                    &name,
                    format!(
                        "checkpoint shape {:?}, model {:?}",
                        value.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&value.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}
