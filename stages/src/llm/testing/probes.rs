//! What the reference-fixture tests measure on a model, shared by the SmolLM2 and the
//! architecture fixtures: per-sequence NLL and last logits, greedy continuations through the
//! generator's cached path, and one decode step's logits.

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;

use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::Mode;
use crate::llm::objectives::batch::{Example, TargetMask, TokenBatch};
use crate::llm::objectives::loss::{TargetLogProbs, DEFAULT_CHUNK};

/// A fixture's JSON list of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Per sequence: mean next-token NLL over all positions, and the last position's logits.
pub fn nll_and_last_logits(
    model: &LlamaModel,
    seqs: &[Vec<u32>],
    pad: u32,
) -> Vec<(f64, Vec<f32>)> {
    let examples: Vec<Example> = seqs
        .iter()
        .map(|s| Example::new(s[..1].to_vec(), s[1..].to_vec()))
        .collect();
    let batch = TokenBatch::new(&examples, pad, model.device()).unwrap();
    let hidden = model
        .hidden_states(&batch.input_ids, Some(&batch.attention_mask), Mode::Eval)
        .unwrap();
    let select = vec![TargetMask::Sequence; seqs.len()];
    let lp = TargetLogProbs::from_hidden(model, &hidden, &batch, &select, DEFAULT_CHUNK)
        .unwrap()
        .mean_per_sequence(TargetMask::Sequence)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    seqs.iter()
        .enumerate()
        .map(|(b, s)| {
            let last = hidden.i((b, s.len() - 1)).unwrap();
            let logits = model.logits(&last).unwrap().to_vec1::<f32>().unwrap();
            (-(lp[b] as f64), logits)
        })
        .collect()
}

/// Greedy continuations of several prompts at once: left-padded prefill, then one cached
/// step per token (the path the generator uses).
pub fn greedy_batch(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    steps: usize,
    pad: u32,
) -> Vec<Vec<u32>> {
    let len = prompts.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for p in prompts {
        let n = len - p.len();
        ids.extend(std::iter::repeat_n(pad, n).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, n).chain(std::iter::repeat_n(1, p.len())));
    }
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(ids, (prompts.len(), len), &dev).unwrap();
    let mask = Tensor::from_vec(mask, (prompts.len(), len), &dev).unwrap();
    let mut cache = model.new_cache();
    let mut logits = model
        .forward_cached(&ids, Some(&mask), &mut cache)
        .unwrap()
        .i((.., len - 1))
        .unwrap();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        let next = logits
            .argmax(1)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        for (o, &n) in out.iter_mut().zip(&next) {
            o.push(n);
        }
        let step = Tensor::from_vec(next, (prompts.len(), 1), &dev).unwrap();
        logits = model
            .forward_cached(&step, None, &mut cache)
            .unwrap()
            .i((.., 0))
            .unwrap();
    }
    out
}

/// The last position's logits through the decode path: the sequence minus its last token
/// prefilled, then one cached step of a single row (the skinny kernels, 8-bit when packed).
pub fn decode_step_logits(model: &LlamaModel, seq: &[u32]) -> Vec<f32> {
    let dev = Device::Cpu;
    let (head, last) = seq.split_at(seq.len() - 1);
    let mut cache = model.new_cache();
    let head = Tensor::new(head, &dev).unwrap().unsqueeze(0).unwrap();
    model.forward_cached_last(&head, None, &mut cache).unwrap();
    let step = Tensor::new(last, &dev).unwrap().unsqueeze(0).unwrap();
    model
        .forward_cached_last(&step, None, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}
