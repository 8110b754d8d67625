//! Batched text generation with the KV cache: left-padded prompts are prefilled together,
//! then every unfinished sequence advances one token per step until it emits an end token,
//! hits a stop string or reaches `max_new_tokens`. Finished sequences leave the batch so the
//! rest run faster; new text streams out through a callback as it becomes complete.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::error::{LlmError, LlmResult};
use super::kv_cache::KvCache;
use super::model::LlamaModel;
use super::sampler::{Sampler, SamplingParams};
use super::text_stream::TextStream;
use super::tokenizer::TextTokenizer;

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Seeds every sequence's sampler together with the sequence's row index.
    pub seed: u64,
    /// Texts that end a sequence; the text is cut before them.
    pub stop_strings: Vec<String>,
    /// Token ids that end a sequence, besides the model's own end tokens.
    pub extra_eos_ids: Vec<u32>,
    /// Never stop at an end token (benchmarks that need an exact length).
    pub ignore_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            seed: 0,
            stop_strings: Vec::new(),
            extra_eos_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model emitted an end token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` (or the model's context) was reached.
    Length,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The new text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Every generated id, the end token included.
    pub tokens: Vec<u32>,
    /// Mean log-probability of `tokens` under the model (raw logits, before sampling
    /// transforms); 0 when nothing was generated.
    pub mean_logprob: f64,
    pub finish_reason: FinishReason,
}

impl Generation {
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

/// Generates with one model and its tokenizer.
pub struct Generator<'a> {
    model: &'a LlamaModel,
    tokenizer: &'a TextTokenizer,
}

/// The state of one sequence while it is being generated.
struct Row {
    sampler: Sampler,
    stream: TextStream,
    tokens: Vec<u32>,
    logprob_sum: f64,
    finish: Option<FinishReason>,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a LlamaModel, tokenizer: &'a TextTokenizer) -> Self {
        Generator { model, tokenizer }
    }

    /// The ids that end a sequence: the model config's, the tokenizer's EOS, and `extra`.
    pub fn eos_ids(&self, extra: &[u32]) -> Vec<u32> {
        let mut ids = self.model.config().eos_token_ids.clone();
        ids.extend(self.tokenizer.eos_id());
        ids.extend_from_slice(extra);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Generates a continuation of each prompt (token ids, e.g. a rendered chat prompt).
    /// `first_row` is the index of `prompts[0]` in the whole request: sequence `i` samples
    /// from a stream seeded by `(config.seed, first_row + i)`, so splitting a request into
    /// batches does not change what is sampled. `on_text(i, text)` receives new text of
    /// sequence `i` as soon as it is complete.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        first_row: u64,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> LlmResult<Vec<Generation>> {
        config.sampling.validate()?;
        let max_new = self.check_request(prompts, config)?;
        let eos = if config.ignore_eos {
            Vec::new()
        } else {
            self.eos_ids(&config.extra_eos_ids)
        };
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                sampler: Sampler::new(&config.sampling, config.seed, first_row + i as u64, p),
                stream: TextStream::new(&config.stop_strings),
                tokens: Vec::new(),
                logprob_sum: 0.0,
                finish: None,
            })
            .collect();
        let mut cache = self.model.new_cache();
        let (ids, mask) = self.left_padded(prompts)?;
        let mut logits = self
            .model
            .forward_cached_last(&ids, Some(&mask), &mut cache)?;
        // Indices (into `rows`) of the sequences still in the batch, in batch order.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        loop {
            let table = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            for (&r, row_logits) in active.iter().zip(&table) {
                self.advance(&mut rows[r], r, row_logits, &eos, max_new, on_text)?;
            }
            let keep: Vec<usize> = (0..active.len())
                .filter(|&j| rows[active[j]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.retain_rows(&keep)?;
                active = keep.iter().map(|&j| active[j]).collect();
            }
            logits = self.step(&rows, &active, &mut cache)?;
        }
        rows.into_iter()
            .enumerate()
            .map(|(i, row)| self.finish(i, row, on_text))
            .collect()
    }

    /// Validates the prompts and returns the number of new tokens the context allows.
    fn check_request(&self, prompts: &[Vec<u32>], config: &GenerationConfig) -> LlmResult<usize> {
        if prompts.is_empty() {
            return Err(LlmError::Invalid("generate: no prompts".into()));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(LlmError::Invalid(format!(
                "generate: prompt {i} is empty; it needs at least one token (e.g. BOS)"
            )));
        }
        if config.max_new_tokens == 0 {
            return Err(LlmError::Invalid(
                "generate: max_new_tokens must be at least 1".into(),
            ));
        }
        let context = self.model.config().max_position_embeddings;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest >= context {
            return Err(LlmError::Invalid(format!(
                "generate: a prompt of {longest} tokens leaves no room in the model's context of {context} tokens; shorten it"
            )));
        }
        Ok(config.max_new_tokens.min(context - longest))
    }

    /// `[batch, longest]` ids padded on the left, and the mask of real tokens.
    fn left_padded(&self, prompts: &[Vec<u32>]) -> LlmResult<(Tensor, Tensor)> {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad = self
            .model
            .config()
            .pad_token_id
            .or_else(|| self.tokenizer.pad_id())
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(prompts.len() * longest);
        let mut mask = Vec::with_capacity(prompts.len() * longest);
        for p in prompts {
            let padding = longest - p.len();
            ids.extend(std::iter::repeat_n(pad, padding).chain(p.iter().copied()));
            mask.extend(std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1, p.len())));
        }
        let device = self.model.device();
        let shape = (prompts.len(), longest);
        Ok((
            Tensor::from_vec(ids, shape, device)?,
            Tensor::from_vec(mask, shape, device)?,
        ))
    }

    /// Samples row `r`'s next token and updates its text and finish state.
    fn advance(
        &self,
        row: &mut Row,
        r: usize,
        logits: &[f32],
        eos: &[u32],
        max_new: usize,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> LlmResult<()> {
        let pick = row.sampler.pick(logits)?;
        row.tokens.push(pick.token);
        row.logprob_sum += pick.logprob;
        if eos.contains(&pick.token) {
            row.finish = Some(FinishReason::Eos);
            return Ok(());
        }
        let delta = row.stream.push(self.tokenizer, pick.token)?;
        if !delta.text.is_empty() {
            on_text(r, &delta.text);
        }
        if delta.stopped {
            row.finish = Some(FinishReason::Stop);
        } else if row.tokens.len() >= max_new {
            row.finish = Some(FinishReason::Length);
        }
        Ok(())
    }

    /// One decode step for the `active` rows: their last tokens in, next logits out.
    fn step(&self, rows: &[Row], active: &[usize], cache: &mut KvCache) -> LlmResult<Tensor> {
        let last: Vec<u32> = active
            .iter()
            .map(|&r| rows[r].tokens.last().copied().unwrap_or(0))
            .collect();
        let input = Tensor::from_vec(last, (active.len(), 1), self.model.device())?;
        self.model.forward_cached_last(&input, None, cache)
    }

    /// Flushes the row's held-back text and packs its result.
    fn finish(
        &self,
        i: usize,
        mut row: Row,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> LlmResult<Generation> {
        let rest = row.stream.finish(self.tokenizer)?;
        if !rest.text.is_empty() {
            on_text(i, &rest.text);
        }
        let n = row.tokens.len();
        Ok(Generation {
            text: row.stream.text().to_string(),
            mean_logprob: if n == 0 {
                0.0
            } else {
                row.logprob_sum / n as f64
            },
            tokens: row.tokens,
            finish_reason: row.finish.unwrap_or(FinishReason::Length),
        })
    }
}
