//! The kernels inside the whole model: a LoRA model's logits, its SFT loss (fused lm_head
//! log-probs) and every LoRA gradient are the same with the fused kernels as with the plain
//! composition, in training (dropout on) and through the KV cache.

use candle_core::{DType, Device, Tensor};

use super::with_kernels;
use crate::llm::model::config::Architecture;
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::{LoraConfig, Mode, TargetModule};
use crate::llm::objectives::batch::{Example, TokenBatch};
use crate::llm::objectives::loss::{sft_loss, DEFAULT_CHUNK};
use crate::llm::testing::micro::{max_abs_diff, micro_model};

fn lora_model(arch: Architecture) -> LlamaModel {
    let mut model = micro_model(arch, DType::F64);
    model
        .attach_lora(&LoraConfig {
            r: 3,
            alpha: 6.0,
            dropout: 0.2,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 5,
        })
        .unwrap();
    // B starts at zero; give it values so every LoRA path carries signal.
    for (i, var) in model.trainable_vars().iter().enumerate() {
        let shape = var.as_tensor().shape().clone();
        let v = Tensor::randn(0f64, 0.3, shape, &Device::Cpu).unwrap();
        if i % 2 == 1 {
            var.set(&v).unwrap();
        }
    }
    model
}

fn batch() -> TokenBatch {
    let examples = vec![
        Example::new(vec![1, 5, 9, 3], vec![7, 8, 2]),
        Example::new(vec![1, 4], vec![11, 12, 13, 14, 2]),
    ];
    TokenBatch::new(&examples, 0, &Device::Cpu).unwrap()
}

#[test]
fn fused_and_plain_models_agree_on_logits_loss_and_lora_gradients() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma3,
    ] {
        let model = lora_model(arch);
        let batch = batch();
        let mode = Mode::Train { seed: 3 };
        let run = |on: bool| {
            with_kernels(on, || {
                let logits = model
                    .forward(&batch.input_ids, Some(&batch.attention_mask), mode)
                    .unwrap();
                let loss = sft_loss(&model, &batch, mode, DEFAULT_CHUNK).unwrap();
                let grads = loss.loss.backward().unwrap();
                let g: Vec<Tensor> = model
                    .trainable_vars()
                    .iter()
                    .map(|v| {
                        grads
                            .get(v)
                            .expect("every LoRA tensor gets a gradient")
                            .clone()
                    })
                    .collect();
                (logits, loss.loss.to_scalar::<f64>().unwrap(), g)
            })
        };
        let (fused_logits, fused_loss, fused_grads) = run(true);
        let (plain_logits, plain_loss, plain_grads) = run(false);
        assert!(
            max_abs_diff(&fused_logits, &plain_logits) < 1e-10,
            "{arch:?}"
        );
        assert!((fused_loss - plain_loss).abs() < 1e-10, "{arch:?}");
        for (i, (a, b)) in fused_grads.iter().zip(&plain_grads).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < 1e-10, "{arch:?}: gradient {i} differs by {d:e}");
        }
    }
}

#[test]
fn fused_cached_generation_steps_match_the_plain_ones() {
    let model = lora_model(Architecture::Llama);
    let ids = Tensor::new(&[[0u32, 3, 5, 7], [2, 4, 6, 8]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0u32, 1, 1, 1], [1, 1, 1, 1]], &Device::Cpu).unwrap();
    let step = Tensor::new(&[[9u32], [10]], &Device::Cpu).unwrap();
    let run = |on: bool| {
        with_kernels(on, || {
            let mut cache = model.new_cache();
            let first = model
                .forward_cached_last(&ids, Some(&mask), &mut cache)
                .unwrap();
            let second = model.forward_cached_last(&step, None, &mut cache).unwrap();
            (first, second)
        })
    };
    let (f1, f2) = run(true);
    let (p1, p2) = run(false);
    assert!(max_abs_diff(&f1, &p1) < 1e-10);
    assert!(max_abs_diff(&f2, &p2) < 1e-10);
}
