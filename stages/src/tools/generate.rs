//! `pipe generate`: one prompt through the model's chat template (or raw), the answer streamed
//! to the terminal as it is generated, and a one-line summary on stderr.

use super::session::{ModelOptions, ModelSession};
use crate::llm::generate::GenerationTimings;
use crate::llm::{ChatMessage, Generation, GenerationConfig, Generator, LlmError, LlmResult};
use std::io::Write;

/// What `pipe generate` was asked.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub model: ModelOptions,
    pub prompt: String,
    pub system: Option<String>,
    /// Feed `prompt` as plain text (plus BOS if the tokenizer adds one), without the template.
    pub raw: bool,
    pub generation: GenerationConfig,
}

/// Loads the model, generates, streams the text to `out` and a summary to `log`.
pub fn run_generate(
    options: &GenerateOptions,
    out: &mut dyn Write,
    log: &mut dyn Write,
) -> LlmResult<Generation> {
    let session = ModelSession::open(&options.model)?;
    let prompt_ids = prompt_ids(&session, options)?;
    let mut config = options.generation.clone();
    config.extra_eos_ids.extend(session.end_of_turn_ids());
    let mut write_error = None;
    let (generation, timings) = Generator::new(&session.model, &session.tokenizer).generate_one(
        &prompt_ids,
        0,
        &config,
        &mut |text| {
            if write_error.is_none() {
                write_error = out
                    .write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .err();
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(LlmError::io("<stdout>", e));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        log,
        "[{}]",
        summary(&generation, &timings, prompt_ids.len())
    );
    Ok(generation)
}

/// The prompt's ids: rendered through the chat template, or the raw text.
fn prompt_ids(session: &ModelSession, options: &GenerateOptions) -> LlmResult<Vec<u32>> {
    if options.prompt.trim().is_empty() {
        return Err(LlmError::Invalid(
            "the prompt is empty; pass --prompt TEXT".into(),
        ));
    }
    if options.raw {
        let add_bos = session.tokenizer.special().add_bos;
        return session.tokenizer.encode(&options.prompt, add_bos);
    }
    let template = session.chat_template()?;
    let messages = ChatMessage::prompt(options.system.as_deref(), &options.prompt);
    let text = template.render(&messages, true)?;
    session.tokenizer.encode(&text, false)
}

/// `12 prompt tokens at 800 tok/s, 40 tokens at 61.2 tok/s, finish: eos`.
pub fn summary(
    generation: &Generation,
    timings: &GenerationTimings,
    prompt_tokens: usize,
) -> String {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    format!(
        "{prompt_tokens} prompt tokens at {:.0} tok/s, {} tokens at {:.1} tok/s, finish: {}",
        rate(prompt_tokens, timings.prefill_s),
        generation.token_count(),
        rate(timings.decode_tokens, timings.decode_s),
        generation.finish_reason
    )
}
