//! Greedy decoding through the model's KV cache, for the before/after samples of a training
//! run: prefill the prompt once, then one token per step until an end-of-sequence id.

use candle_core::{Tensor, D};

use crate::llm::{LlamaModel, LlmResult};

/// The tokens generated after `prompt` (at most `max_new`, without the stop token).
pub fn greedy(
    model: &LlamaModel,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> LlmResult<Vec<u32>> {
    let mut out = Vec::new();
    if prompt.is_empty() || max_new == 0 {
        return Ok(out);
    }
    let device = model.device();
    let mut cache = model.new_cache();
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    for _ in 0..max_new {
        let logits = model.forward_cached_last(&input, None, &mut cache)?;
        let next = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0];
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    Ok(out)
}
