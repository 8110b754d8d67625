//! Evaluation of a model on held-out batches: the token-weighted mean completion loss and its
//! perplexity, in evaluation mode (no dropout, no noise, no graph kept).

use serde::{Deserialize, Serialize};

use crate::llm::loss::{sft_loss, DEFAULT_CHUNK};
use crate::llm::{LlamaModel, LlmResult, Mode, TokenBatch};

/// The result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean negative log-likelihood per completion token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Completion tokens scored.
    pub tokens: usize,
}

/// Scores every batch (the caller keeps them fixed across evaluations so results compare).
pub fn completion_loss(model: &LlamaModel, batches: &[TokenBatch]) -> LlmResult<EvalResult> {
    let mut sum = 0.0;
    let mut tokens = 0;
    for batch in batches {
        let out = sft_loss(model, batch, Mode::Eval, DEFAULT_CHUNK)?;
        let mean = out
            .loss
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        sum += mean * out.tokens as f64;
        tokens += out.tokens;
    }
    let loss = if tokens > 0 {
        sum / tokens as f64
    } else {
        f64::NAN
    };
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    })
}
