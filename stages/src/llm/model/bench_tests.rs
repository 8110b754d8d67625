//! Stopwatch measurements (ignored tests; run with `--ignored --nocapture`): what the
//! frozen-linear op saves on a LoRA training step of the real SmolLM2-135M.

use std::time::{Duration, Instant};

use candle_core::Device;

use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::frozen_linear::bench::set_plain_matmul;
use crate::llm::model::lora::{LoraConfig, Mode, TargetModule};
use crate::llm::objectives::batch::{Example, TokenBatch};
use crate::llm::objectives::loss::{sft_loss, DEFAULT_CHUNK};
use crate::llm::testing::smollm2_model;

/// One forward + backward of a completion loss over `batch`.
fn step(model: &LlamaModel, batch: &TokenBatch) -> Duration {
    let start = Instant::now();
    let loss = sft_loss(model, batch, Mode::Train { seed: 1 }, DEFAULT_CHUNK).unwrap();
    let grads = loss.loss.backward().unwrap();
    assert!(grads.get(&model.trainable_vars()[0]).is_some());
    start.elapsed()
}

#[test]
#[ignore = "stopwatch; run with --ignored --nocapture"]
fn frozen_linear_speedup_on_a_lora_step() {
    let loaded = smollm2_model();
    let mut model =
        LlamaModel::from_tensors(&loaded.config, loaded.weights.tensors().clone()).unwrap();
    model
        .attach_lora(&LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 0,
        })
        .unwrap();
    // 4 sequences of 128 tokens, half prompt, half completion.
    let examples: Vec<Example> = (0..4u32)
        .map(|s| {
            Example::new(
                (0..64).map(|i| 100 + (s * 977 + i * 31) % 40000).collect(),
                (0..64).map(|i| 100 + (s * 353 + i * 17) % 40000).collect(),
            )
        })
        .collect();
    let batch = TokenBatch::new(&examples, 0, &Device::Cpu).unwrap();
    step(&model, &batch); // warm-up
    let (mut frozen, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        set_plain_matmul(false);
        frozen.push(step(&model, &batch));
        set_plain_matmul(true);
        plain.push(step(&model, &batch));
    }
    set_plain_matmul(false);
    frozen.sort();
    plain.sort();
    let (f, p) = (frozen[1].as_secs_f64(), plain[1].as_secs_f64());
    eprintln!(
        "LoRA step (SmolLM2-135M, r=16 on all 7 projections, 4x128 tokens), median of 3: frozen-linear op {f:.3} s, plain matmul {p:.3} s, speedup {:.2}x ({:.0}% of the plain step saved)",
        p / f,
        100.0 * (1.0 - f / p)
    );
}

#[test]
#[ignore = "stopwatch; run with --ignored --nocapture"]
fn where_a_lora_step_spends_its_time() {
    use candle_core::{DType, Tensor};
    let loaded = smollm2_model();
    let mut model =
        LlamaModel::from_tensors(&loaded.config, loaded.weights.tensors().clone()).unwrap();
    model
        .attach_lora(&LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 0,
        })
        .unwrap();
    let examples: Vec<Example> = (0..4u32)
        .map(|s| {
            Example::new(
                (0..64).map(|i| 100 + (s * 977 + i * 31) % 40000).collect(),
                (0..64).map(|i| 100 + (s * 353 + i * 17) % 40000).collect(),
            )
        })
        .collect();
    let batch = TokenBatch::new(&examples, 0, &Device::Cpu).unwrap();
    // Raw GEMM throughput for reference: [512, 576] x [576, 1536].
    let a = Tensor::randn(0f32, 1.0, (512, 576), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (576, 1536), &Device::Cpu).unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        a.matmul(&b).unwrap();
    }
    let gflops = 20.0 * 2.0 * 512.0 * 576.0 * 1536.0 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    let hidden = model
        .hidden_states(&batch.input_ids, Some(&batch.attention_mask), Mode::Eval)
        .unwrap();
    let fwd = t.elapsed();
    let t = Instant::now();
    let loss = sft_loss(&model, &batch, Mode::Train { seed: 1 }, DEFAULT_CHUNK).unwrap();
    let fwd_loss = t.elapsed();
    let t = Instant::now();
    loss.loss.backward().unwrap();
    let bwd = t.elapsed();
    eprintln!(
        "gemm {gflops:.1} GFLOP/s; hidden states {:.2} s; forward+loss {:.2} s; backward {:.2} s ({:?})",
        fwd.as_secs_f64(),
        fwd_loss.as_secs_f64(),
        bwd.as_secs_f64(),
        hidden.dtype() == DType::F32
    );
}
