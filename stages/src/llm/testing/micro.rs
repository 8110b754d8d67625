//! Tiny random models for tests (the engine's and the stages'): small enough for f64 finite
//! differences, shaped like the real families (GQA, optional q/k/v bias, tied or untied lm_head).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::llm::model::config::{Architecture, LayerType, ModelConfig};
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::family::NormForm;
use crate::llm::model::lora::TargetModule;

/// 2 layers, hidden 16, 4 heads over 2 kv heads, vocab 32.
pub fn micro_config(architecture: Architecture) -> ModelConfig {
    let gemma = architecture == Architecture::Gemma3;
    ModelConfig {
        architecture,
        vocab_size: 32,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        // Gemma-3-1b attends with one kv head (multi-query attention).
        num_key_value_heads: if gemma { 1 } else { 2 },
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: architecture == Architecture::Llama,
        attention_bias: architecture == Architecture::Qwen2,
        // Gemma-3: a sliding-window layer (window 3, its own rope base) before a global one,
        // and a score scale that differs from head_dim's.
        sliding_window: gemma.then_some(3),
        layer_types: gemma.then(|| vec![LayerType::SlidingAttention, LayerType::FullAttention]),
        rope_local_theta: gemma.then_some(100.0),
        query_pre_attn_scalar: gemma.then_some(8.0),
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(0),
    }
}

/// Random weights with HF names for `config`, deterministic in `seed`.
pub fn random_tensors(config: &ModelConfig, seed: u64, dtype: DType) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f64, offset: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| offset + scale * rng.random_range(-1.0..1.0))
            .collect();
        let t = Tensor::from_vec(v, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("random tensor");
        out.insert(name, t);
    };
    let (h, v, i) = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    );
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    put("model.embed_tokens.weight".into(), &[v, h], 1.0, 0.0);
    for l in 0..config.num_hidden_layers {
        for m in TargetModule::ALL {
            let shape = match m {
                TargetModule::QProj => [q, h],
                TargetModule::KProj | TargetModule::VProj => [kv, h],
                TargetModule::OProj => [h, q],
                TargetModule::GateProj | TargetModule::UpProj => [i, h],
                TargetModule::DownProj => [h, i],
            };
            let scale = 1.0 / (shape[1] as f64).sqrt();
            put(format!("{}.weight", m.module_path(l)), &shape, scale, 0.0);
            let biased = matches!(
                m,
                TargetModule::QProj | TargetModule::KProj | TargetModule::VProj
            );
            if config.attention_bias && biased {
                put(format!("{}.bias", m.module_path(l)), &shape[..1], 0.1, 0.0);
            }
        }
        // Gemma stores its norm weights as offsets from one.
        let family = config.architecture.family();
        let norm_offset = match family.norm {
            NormForm::Weight => 1.0,
            NormForm::OnePlusWeight => 0.0,
        };
        for &(slot, name) in family.layer_norms {
            let width = if slot.per_head() { config.head_dim } else { h };
            put(
                format!("model.layers.{l}.{name}.weight"),
                &[width],
                0.2,
                norm_offset,
            );
        }
    }
    let norm_offset = match config.architecture.family().norm {
        NormForm::Weight => 1.0,
        NormForm::OnePlusWeight => 0.0,
    };
    put("model.norm.weight".into(), &[h], 0.2, norm_offset);
    if !config.tie_word_embeddings {
        put("lm_head.weight".into(), &[v, h], 0.5, 0.0);
    }
    out
}

/// A tiny random model of `architecture` in `dtype`.
pub fn micro_model(architecture: Architecture, dtype: DType) -> LlamaModel {
    let config = micro_config(architecture);
    LlamaModel::from_tensors(&config, random_tensors(&config, 42, dtype)).expect("tiny model")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
