//! Tests of batched generation: on a tiny random model in f64 (so batching cannot flip a
//! choice by rounding) and, for the greedy reference, on SmolLM2 against transformers.

use std::sync::OnceLock;

use candle_core::DType;
use serde_json::Value;

use crate::llm::decode::generator::{FinishReason, Generation, GenerationConfig, Generator};
use crate::llm::decode::sampler::SamplingParams;
use crate::llm::model::config::Architecture;
use crate::llm::model::decoder::LlamaModel;
use crate::llm::testing::{
    random_weights, smollm2_fixture, smollm2_model, tiny_config, tiny_tokenizer,
};
use crate::llm::text::tokenizer::TextTokenizer;

/// A two-layer random model over the tiny byte-level vocabulary, in f64.
fn tiny() -> &'static (LlamaModel, TextTokenizer) {
    static TINY: OnceLock<(LlamaModel, TextTokenizer)> = OnceLock::new();
    TINY.get_or_init(|| {
        let tokenizer = tiny_tokenizer();
        let config = tiny_config(Architecture::Llama, tokenizer.vocab_size(), true);
        let tensors = random_weights(&config, 3)
            .into_map()
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
            .collect();
        let model = LlamaModel::from_tensors(&config, tensors).unwrap();
        (model, tokenizer)
    })
}

fn prompts(tok: &TextTokenizer) -> Vec<Vec<u32>> {
    [
        "the cat",
        "hello there, how are",
        "or",
        "a much longer prompt than the others",
    ]
    .iter()
    .map(|p| tok.encode(p, false).unwrap())
    .collect()
}

fn run(prompts: &[Vec<u32>], first_row: u64, config: &GenerationConfig) -> Vec<Generation> {
    let (model, tok) = tiny();
    Generator::new(model, tok)
        .generate(prompts, first_row, config, &mut |_, _| {})
        .unwrap()
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        ignore_eos: true,
        ..GenerationConfig::default()
    }
}

fn sampled(seed: u64) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 12,
        seed,
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            ..SamplingParams::default()
        },
        ..GenerationConfig::default()
    }
}

#[test]
fn greedy_batch_equals_greedy_one_by_one() {
    let (_, tok) = tiny();
    let ps = prompts(tok);
    let batch = run(&ps, 0, &greedy(10));
    for (i, p) in ps.iter().enumerate() {
        let alone = run(std::slice::from_ref(p), 0, &greedy(10));
        assert_eq!(alone[0].tokens, batch[i].tokens, "prompt {i}");
        assert_eq!(alone[0].text, batch[i].text, "prompt {i}");
        assert!((alone[0].mean_logprob - batch[i].mean_logprob).abs() < 1e-9);
    }
    assert!(batch.iter().all(|g| g.token_count() == 10));
    assert!(batch
        .iter()
        .all(|g| g.finish_reason == FinishReason::Length));
}

#[test]
fn sampling_is_seeded_per_row_and_independent_of_the_batch() {
    let (_, tok) = tiny();
    let p = tok.encode("the cat", false).unwrap();
    let four = vec![p.clone(); 4];
    let a = run(&four, 0, &sampled(5));
    let b = run(&four, 0, &sampled(5));
    assert_eq!(a, b, "same seed, same output");
    assert_ne!(a[0].tokens, a[1].tokens, "rows of one prompt differ");
    let c = run(&four, 0, &sampled(6));
    assert_ne!(a[0].tokens, c[0].tokens, "another seed, another sample");
    // Row 2 alone (told it is row 2) samples what it sampled inside the batch.
    let alone = run(std::slice::from_ref(&p), 2, &sampled(5));
    assert_eq!(alone[0].tokens, a[2].tokens);
}

#[test]
fn stop_strings_trim_the_text_and_end_the_sequence() {
    let (_, tok) = tiny();
    let p = vec![tok.encode("hello", false).unwrap()];
    let full = run(&p, 0, &greedy(24)).remove(0);
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 8, "{:?}", full.text);
    let stop: String = chars[5..8].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let config = GenerationConfig {
        stop_strings: vec![stop.clone()],
        ..greedy(24)
    };
    let mut streamed = String::new();
    let (model, tok2) = tiny();
    let stopped = Generator::new(model, tok2)
        .generate(&p, 0, &config, &mut |_, t| streamed.push_str(t))
        .unwrap()
        .remove(0);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(streamed, stopped.text, "the stop string is never streamed");
    assert!(stopped.token_count() < full.token_count());
}

#[test]
fn end_tokens_finish_a_sequence_and_count_in_the_output() {
    let (_, tok) = tiny();
    let p = vec![tok.encode("hello", false).unwrap()];
    let full = run(&p, 0, &greedy(8)).remove(0);
    let third = full.tokens[2];
    let first_at = full.tokens.iter().position(|&t| t == third).unwrap();
    let config = GenerationConfig {
        extra_eos_ids: vec![third],
        ignore_eos: false,
        ..greedy(8)
    };
    let ended = run(&p, 0, &config).remove(0);
    assert_eq!(ended.finish_reason, FinishReason::Eos);
    assert_eq!(ended.tokens, full.tokens[..=first_at]);
}

#[test]
fn streamed_text_is_the_final_text_row_by_row() {
    let (model, tok) = tiny();
    let ps = prompts(tok);
    let mut streamed = vec![String::new(); ps.len()];
    let out = Generator::new(model, tok)
        .generate(&ps, 0, &sampled(1), &mut |i, t| streamed[i].push_str(t))
        .unwrap();
    for (g, s) in out.iter().zip(&streamed) {
        assert_eq!(&g.text, s);
        assert!(g.mean_logprob < 0.0 && g.mean_logprob.is_finite());
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let (model, tok) = tiny();
    let g = Generator::new(model, tok);
    let mut sink = |_: usize, _: &str| {};
    assert!(g.generate(&[], 0, &greedy(4), &mut sink).is_err());
    let err = g.generate(&[vec![]], 0, &greedy(4), &mut sink).unwrap_err();
    assert!(err.to_string().contains("prompt 0 is empty"), "{err}");
    let too_long = vec![vec![5u32; 600]];
    let err = g.generate(&too_long, 0, &greedy(4), &mut sink).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let bad = GenerationConfig {
        sampling: SamplingParams {
            top_p: 2.0,
            ..SamplingParams::default()
        },
        ..greedy(4)
    };
    assert!(g.generate(&[vec![5]], 0, &bad, &mut sink).is_err());
}

/// Below this top1-top2 margin the reference's greedy choice may flip on rounding.
const TIE_MARGIN: f64 = 0.05;

#[test]
fn fixture_greedy_generation_matches_transformers() {
    let loaded = smollm2_model();
    let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.tensors().clone()).unwrap();
    let text = std::fs::read_to_string(smollm2_fixture("forward.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let as_ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| as_ids(&c["ids"])).collect();
    let out = Generator::new(&model, &loaded.tokenizer)
        .generate(&prompts, 0, &greedy(24), &mut |_, _| {})
        .unwrap();
    let mut compared = 0;
    for (case, got) in cases.iter().zip(&out) {
        let want = as_ids(&case["greedy"]);
        let margins: Vec<f64> = case["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        for (step, (&w, &m)) in want.iter().zip(&margins).enumerate() {
            if m < TIE_MARGIN {
                break;
            }
            assert_eq!(got.tokens[step], w, "{}: step {step}", case["name"]);
            compared += 1;
        }
    }
    assert!(
        compared >= 24,
        "only {compared} greedy tokens were comparable"
    );
}

#[test]
fn explicit_streams_share_the_prefill_of_identical_prompts_and_sample_the_same() {
    let (model, tok) = tiny();
    let all = prompts(tok);
    // Two prompts, three candidates each, interleaved: prefilled as two rows, decoded as six.
    let batch: Vec<Vec<u32>> = [0, 1, 0, 1, 0, 1].iter().map(|&i| all[i].clone()).collect();
    let streams: Vec<(u64, u64)> = [(10, 0), (20, 0), (10, 1), (20, 1), (10, 2), (20, 2)].to_vec();
    let generator = Generator::new(model, tok);
    let (shared, _) = generator
        .generate_streams(&batch, &streams, &sampled(0), &mut |_, _| {})
        .unwrap();
    // Each sequence alone, through the unshared path, with the same stream.
    for (i, (p, &(seed, row))) in batch.iter().zip(&streams).enumerate() {
        let alone = run(std::slice::from_ref(p), row, &sampled(seed));
        assert_eq!(alone[0], shared[i], "sequence {i}");
    }
    assert_ne!(
        shared[0].tokens, shared[2].tokens,
        "candidates of one prompt differ"
    );
    let err = generator
        .generate_streams(&batch, &streams[..2], &sampled(0), &mut |_, _| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("2 sampler streams for 6 prompts"),
        "{err}"
    );
}
