//! Tests of the model math on tiny random models in f64: LoRA gradients against finite
//! differences, no silently dropped gradient, KV cache against the full forward, padding
//! invariance, and the family variants.

use candle_core::{DType, Device, Tensor, Var};

use crate::llm::model::config::Architecture;
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::lora::{LoraConfig, Mode, TargetModule};
use crate::llm::objectives::batch::{Example, TargetMask, TokenBatch};
use crate::llm::objectives::loss::{sft_loss, TargetLogProbs, DEFAULT_CHUNK};
use crate::llm::testing::micro::{max_abs_diff, micro_config, micro_model, random_tensors};

fn lora_all(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        target_modules: TargetModule::ALL.to_vec(),
        use_rslora: false,
        seed: 3,
    }
}

fn examples() -> Vec<Example> {
    vec![
        Example::new(vec![1, 5, 9, 12], vec![7, 3, 2]),
        Example::new(vec![1, 30], vec![4, 2]),
        Example::new(vec![1, 8, 8, 8, 17, 6], vec![11, 25, 19, 2]),
    ]
}

/// Makes every B nonzero (deterministically), so A receives gradient too.
fn randomize_b(model: &LlamaModel) {
    for (i, (_, _, lora)) in model.lora_layers().into_iter().enumerate() {
        let b = lora.b();
        let n = b.elem_count();
        let v: Vec<f64> = (0..n)
            .map(|j| 0.05 * (((i * 31 + j * 7) % 13) as f64 - 6.0) / 6.0)
            .collect();
        let t = Tensor::from_vec(v, b.shape(), &Device::Cpu).unwrap();
        b.set(&t).unwrap();
    }
}

fn loss_value(model: &LlamaModel, batch: &TokenBatch) -> f64 {
    sft_loss(model, batch, Mode::Eval, DEFAULT_CHUNK)
        .unwrap()
        .loss
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn lora_gradients_equal_central_finite_differences() {
    let mut model = micro_model(Architecture::Llama, DType::F64);
    model.attach_lora(&lora_all(2)).unwrap();
    randomize_b(&model);
    let batch = TokenBatch::new(&examples(), 0, &Device::Cpu).unwrap();
    let loss = sft_loss(&model, &batch, Mode::Eval, 4).unwrap().loss;
    let grads = loss.backward().unwrap();
    let h = 1e-5;
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (layer, module, lora) in model.lora_layers() {
        for (which, var) in [("A", lora.a()), ("B", lora.b())] {
            let g = grads
                .get(var)
                .expect("gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let n = var.elem_count();
            for &j in &[0, n / 2, n - 1] {
                let fd = finite_difference(&model, &batch, var, j, h);
                let err = (g[j] - fd).abs() / fd.abs().max(1e-3);
                worst = worst.max(err);
                assert!(
                    err < 1e-5,
                    "layer {layer} {module} lora_{which}[{j}]: analytic {} vs finite difference {fd}",
                    g[j]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 7 * 2 * 3);
    eprintln!("worst relative gradient error {worst:e}");
}

fn finite_difference(model: &LlamaModel, batch: &TokenBatch, var: &Var, j: usize, h: f64) -> f64 {
    finite_difference_of(|| loss_value(model, batch), var, j, h)
}

/// Central difference of `loss` in entry `j` of `var` (restored afterwards).
fn finite_difference_of(loss: impl Fn() -> f64, var: &Var, j: usize, h: f64) -> f64 {
    let original = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eval_at = |delta: f64| {
        let mut v = original.clone();
        v[j] += delta;
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        loss()
    };
    let fd = (eval_at(h) - eval_at(-h)) / (2.0 * h);
    eval_at(0.0);
    fd
}

#[test]
fn every_lora_tensor_of_every_layer_and_module_gets_a_gradient() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Mistral,
        Architecture::Qwen3,
        Architecture::Gemma3,
    ] {
        let mut model = micro_model(arch, DType::F64);
        model.attach_lora(&lora_all(2)).unwrap();
        let batch = TokenBatch::new(&examples(), 0, &Device::Cpu).unwrap();
        // Fresh adapter (B = 0): B must already receive gradient everywhere.
        let grads = sft_loss(&model, &batch, Mode::Eval, 3)
            .unwrap()
            .loss
            .backward()
            .unwrap();
        for (layer, module, lora) in model.lora_layers() {
            assert_nonzero(
                &grads,
                lora.b(),
                &format!("{arch:?} layer {layer} {module} lora_B"),
            );
        }
        randomize_b(&model);
        let grads = sft_loss(&model, &batch, Mode::Train { seed: 1 }, 3)
            .unwrap()
            .loss
            .backward()
            .unwrap();
        let mut count = 0;
        for (layer, module, lora) in model.lora_layers() {
            assert_nonzero(
                &grads,
                lora.a(),
                &format!("{arch:?} layer {layer} {module} lora_A"),
            );
            assert_nonzero(
                &grads,
                lora.b(),
                &format!("{arch:?} layer {layer} {module} lora_B"),
            );
            count += 1;
        }
        assert_eq!(count, 2 * 7);
        assert_eq!(model.trainable_vars().len(), 2 * 7 * 2);
    }
}

fn assert_nonzero(grads: &candle_core::backprop::GradStore, var: &Var, what: &str) {
    let g = grads
        .get(var)
        .unwrap_or_else(|| panic!("{what}: no gradient at all"));
    let norm = g
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(norm > 0.0, "{what}: gradient is zero");
}

#[test]
fn kv_cache_steps_give_the_full_forward_logits() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma3,
    ] {
        let mut model = micro_model(arch, DType::F64);
        model.attach_lora(&lora_all(2)).unwrap();
        randomize_b(&model);
        let ids: Vec<u32> = vec![1, 4, 9, 16, 25, 3, 8, 13, 21];
        let full = model
            .forward(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
                Mode::Eval,
            )
            .unwrap();
        let mut cache = model.new_cache();
        let prefill = Tensor::new(&ids[..5], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut pieces = vec![model.forward_cached(&prefill, None, &mut cache).unwrap()];
        for &id in &ids[5..] {
            let step = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            pieces.push(model.forward_cached(&step, None, &mut cache).unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        let incremental = Tensor::cat(&pieces, 1).unwrap();
        let mut cache = model.new_cache();
        let last = model
            .forward_cached_last(&prefill, None, &mut cache)
            .unwrap();
        let want_last = full.get(0).unwrap().get(4).unwrap().unsqueeze(0).unwrap();
        assert!(max_abs_diff(&last, &want_last) < 1e-10);
        let diff = max_abs_diff(&full, &incremental);
        assert!(diff < 1e-10, "{arch:?}: cached logits differ by {diff}");
    }
}

#[test]
fn left_padded_batched_generation_matches_single_sequences() {
    let model = micro_model(Architecture::Llama, DType::F64);
    let seqs: [&[u32]; 2] = [&[1, 7, 7, 3], &[1, 20]];
    let next: [u32; 2] = [5, 6];
    // Batched: left-pad the prompts, prefill, then one step each.
    let ids = Tensor::new(&[[1u32, 7, 7, 3], [0, 0, 1, 20]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1], [0, 0, 1, 1]], &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let prefill = model.forward_cached(&ids, Some(&mask), &mut cache).unwrap();
    let step = model
        .forward_cached(
            &Tensor::new(&[[next[0]], [next[1]]], &Device::Cpu).unwrap(),
            None,
            &mut cache,
        )
        .unwrap();
    for (b, seq) in seqs.iter().enumerate() {
        let mut all: Vec<u32> = seq.to_vec();
        all.push(next[b]);
        let single = model
            .forward(
                &Tensor::new(all.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
                Mode::Eval,
            )
            .unwrap();
        let n = seq.len();
        let last_prompt = prefill.get(b).unwrap().get(3).unwrap();
        let want = single.get(0).unwrap().get(n - 1).unwrap();
        let d1 = max_abs_diff(&last_prompt, &want);
        let got_step = step.get(b).unwrap().get(0).unwrap();
        let want_step = single.get(0).unwrap().get(n).unwrap();
        let d2 = max_abs_diff(&got_step, &want_step);
        assert!(
            d1 < 1e-10 && d2 < 1e-10,
            "sequence {b}: prefill {d1}, step {d2}"
        );
    }
}

#[test]
fn right_padded_batch_gives_the_same_per_sequence_losses_as_one_by_one() {
    let mut model = micro_model(Architecture::Qwen2, DType::F32);
    model.attach_lora(&lora_all(2)).unwrap();
    let exs = examples();
    let batch = TokenBatch::new(&exs, 0, &Device::Cpu).unwrap();
    let select = vec![TargetMask::Completion; exs.len()];
    let batched = TargetLogProbs::compute(&model, &batch, &select, Mode::Eval, 5)
        .unwrap()
        .mean_per_sequence(TargetMask::Completion)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, ex) in exs.iter().enumerate() {
        let one = TokenBatch::new(std::slice::from_ref(ex), 0, &Device::Cpu).unwrap();
        let single =
            TargetLogProbs::compute(&model, &one, &[TargetMask::Completion], Mode::Eval, 5)
                .unwrap()
                .mean_per_sequence(TargetMask::Completion)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
        assert!(
            (batched[i] - single).abs() < 1e-4,
            "example {i}: batched {} vs alone {single}",
            batched[i]
        );
    }
}

#[test]
fn family_variants_run_qwen2_bias_untied_head_mistral_window() {
    let qwen = micro_model(Architecture::Qwen2, DType::F32);
    assert!(!qwen.config().tie_word_embeddings && qwen.config().attention_bias);
    assert!(qwen
        .weights()
        .contains_key("model.layers.1.self_attn.k_proj.bias"));
    assert!(qwen.weights().contains_key("lm_head.weight"));
    let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
    let logits = qwen.forward(&ids, None, Mode::Eval).unwrap();
    assert_eq!(logits.dims(), &[1, 4, 32]);

    // Mistral with a sliding window shorter than the sequence: the cache must apply it too.
    let mut config = micro_config(Architecture::Mistral);
    config.sliding_window = Some(3);
    let model = LlamaModel::from_tensors(&config, random_tensors(&config, 5, DType::F64)).unwrap();
    let ids: Vec<u32> = vec![1, 9, 8, 7, 6, 5];
    let full = model
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
            Mode::Eval,
        )
        .unwrap();
    let mut unwindowed = config.clone();
    unwindowed.sliding_window = None;
    let plain =
        LlamaModel::from_tensors(&unwindowed, random_tensors(&config, 5, DType::F64)).unwrap();
    let plain_logits = plain
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
            Mode::Eval,
        )
        .unwrap();
    assert!(
        max_abs_diff(&full, &plain_logits) > 1e-6,
        "the window must change late positions"
    );
    let mut cache = model.new_cache();
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(
            model
                .forward_cached(
                    &Tensor::new(&[[id]], &Device::Cpu).unwrap(),
                    None,
                    &mut cache,
                )
                .unwrap(),
        );
    }
    assert!(max_abs_diff(&full, &Tensor::cat(&pieces, 1).unwrap()) < 1e-10);
}

#[test]
fn llama3_rope_scaling_runs() {
    let mut config = micro_config(Architecture::Llama);
    config.rope_scaling = Some(crate::llm::model::config::RopeScaling::Llama3(
        crate::llm::model::config::Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        },
    ));
    let model = LlamaModel::from_tensors(&config, random_tensors(&config, 1, DType::F32)).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    assert_eq!(
        model.forward(&ids, None, Mode::Eval).unwrap().dims(),
        &[1, 3, 32]
    );
}

#[test]
fn bad_weights_and_inputs_are_errors_naming_the_culprit() {
    let config = micro_config(Architecture::Llama);
    let mut tensors = random_tensors(&config, 1, DType::F32);
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    let err = LlamaModel::from_tensors(&config, tensors).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );

    let mut tensors = random_tensors(&config, 1, DType::F32);
    tensors.insert(
        "model.layers.0.self_attn.q_proj.weight".into(),
        Tensor::zeros((3, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = LlamaModel::from_tensors(&config, tensors).unwrap_err();
    assert!(
        err.to_string().contains("q_proj") && err.to_string().contains("[16, 16]"),
        "{err}"
    );

    let mut tensors = random_tensors(&config, 1, DType::F32);
    tensors.insert(
        "model.layers.7.mlp.up_proj.weight".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = LlamaModel::from_tensors(&config, tensors).unwrap_err();
    assert!(err.to_string().contains("model.layers.7"), "{err}");

    let model = micro_model(Architecture::Llama, DType::F32);
    let too_big = Tensor::new(&[[1u32, 99]], &Device::Cpu).unwrap();
    assert!(model
        .forward(&too_big, None, Mode::Eval)
        .unwrap_err()
        .to_string()
        .contains("99"));
    let bad_mask = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
    assert!(model.forward(&ids, Some(&bad_mask), Mode::Eval).is_err());
}

#[test]
fn merging_lora_gives_the_same_logits_as_applying_it() {
    let mut model = micro_model(Architecture::Qwen2, DType::F64);
    model.attach_lora(&lora_all(3)).unwrap();
    randomize_b(&model);
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    let applied = model.forward(&ids, None, Mode::Eval).unwrap();
    model.merge_lora().unwrap();
    assert!(model.trainable_vars().is_empty());
    let merged = model.forward(&ids, None, Mode::Eval).unwrap();
    assert!(max_abs_diff(&applied, &merged) < 1e-10);
}

#[test]
fn builds_from_the_loaders_tensor_layout_for_every_family() {
    for (arch, tied) in [
        (Architecture::Llama, true),
        (Architecture::Mistral, false),
        (Architecture::Qwen2, false),
    ] {
        let config = crate::llm::testing::tiny_config(arch, 300, tied);
        let weights = crate::llm::testing::random_weights(&config, 3);
        let model = LlamaModel::from_tensors(&config, weights.into_map()).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 299]], &Device::Cpu).unwrap();
        let logits = model.forward(&ids, None, Mode::Eval).unwrap();
        assert_eq!(logits.dims(), &[1, 3, 300], "{arch:?}");
    }
}

#[test]
fn orpo_gradients_equal_central_finite_differences_in_both_nll_variants() {
    use crate::llm::objectives::orpo::{orpo_loss, OrpoConfig, OrpoNll, PreferencePair};
    let mut model = micro_model(Architecture::Qwen2, DType::F64);
    model.attach_lora(&lora_all(2)).unwrap();
    randomize_b(&model);
    let pairs = vec![
        PreferencePair {
            prompt: vec![1, 5, 9],
            chosen: vec![7, 3, 2],
            rejected: vec![4, 2],
        },
        PreferencePair {
            prompt: vec![1, 30, 12, 12],
            chosen: vec![11, 2],
            rejected: vec![19, 25, 6, 2],
        },
    ];
    for nll in [OrpoNll::Completion, OrpoNll::FullSequence] {
        let config = OrpoConfig { beta: 0.5, nll };
        let loss = || {
            orpo_loss(&model, &pairs, 0, &config, Mode::Eval, 4)
                .unwrap()
                .loss
                .to_scalar::<f64>()
                .unwrap()
        };
        let out = orpo_loss(&model, &pairs, 0, &config, Mode::Eval, 4).unwrap();
        let grads = out.loss.backward().unwrap();
        for (layer, module, lora) in model.lora_layers().into_iter().step_by(3) {
            for var in [lora.a(), lora.b()] {
                let g = grads
                    .get(var)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let j = var.elem_count() / 3;
                let fd = finite_difference_of(loss, var, j, 1e-5);
                let err = (g[j] - fd).abs() / fd.abs().max(1e-3);
                assert!(
                    err < 1e-5,
                    "{nll:?} layer {layer} {module}: {} vs {fd}",
                    g[j]
                );
            }
        }
    }
}

#[test]
fn half_precision_weights_are_refused_with_a_hint() {
    let config = micro_config(Architecture::Llama);
    let err =
        LlamaModel::from_tensors(&config, random_tensors(&config, 1, DType::BF16)).unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
}
