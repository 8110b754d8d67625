//! The earlier assistant turns of a multi-turn prompt, located in its rendered text and its
//! token ids, so a trainer can learn every assistant turn (TRL's assistant-only loss).
//!
//! Templates are not all prefix-preserving (Qwen3 renders the last answer with an empty think
//! block and earlier ones without), so the turns are not found by rendering growing prefixes.
//! The whole conversation is rendered once with every assistant content wrapped in markers; the
//! markers give where each content sits in the real render, and the end-of-turn text the
//! template puts after the final answer is the one learned after each earlier answer too.

use std::ops::Range;

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::text::template::ChatMessage;
use crate::llm::text::tokenizer::TextTokenizer;

/// Private-use text no tokenizer or dataset gives a meaning; a content holding it is refused.
const OPEN: &str = "\u{E000}pipe-turn\u{E001}";
const CLOSE: &str = "\u{E001}pipe-turn\u{E000}";

/// The conversation with every assistant content wrapped in the markers; refuses a content
/// that already holds one (it would be read as a turn boundary).
pub(super) fn marked(messages: &[ChatMessage]) -> Result<Vec<ChatMessage>, String> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.content.contains(OPEN) || m.content.contains(CLOSE) {
                return Err(format!(
                    "message {} holds the private-use text pipe marks turns with; remove the \
                     U+E000/U+E001 characters from the row",
                    i + 1
                ));
            }
            Ok(if m.role == "assistant" {
                ChatMessage::assistant(format!("{OPEN}{}{CLOSE}", m.content))
            } else {
                m.clone()
            })
        })
        .collect()
}

/// The render without the markers and the byte range each marked content took in it.
pub(super) fn unmark(rendered: &str) -> Result<(String, Vec<Range<usize>>), String> {
    let mut text = String::with_capacity(rendered.len());
    let mut spans = Vec::new();
    let mut rest = rendered;
    while let Some(open) = rest.find(OPEN) {
        text.push_str(&rest[..open]);
        let inner = &rest[open + OPEN.len()..];
        let close = inner
            .find(CLOSE)
            .ok_or("the template cut an assistant turn's text")?;
        if inner[..close].contains(OPEN) {
            return Err("the template nests assistant turns".into());
        }
        let start = text.len();
        text.push_str(&inner[..close]);
        spans.push(start..text.len());
        rest = &inner[close + CLOSE.len()..];
    }
    if rest.contains(CLOSE) {
        return Err("the template cut an assistant turn's text".into());
    }
    text.push_str(rest);
    Ok((text, spans))
}

/// Byte ranges of `prompt_text` that the earlier assistant turns of `conversation` (which ends
/// with the final answer) take, each with the end-of-turn text that follows the final answer
/// when it follows them too. `full_text` is the plain render of `conversation`.
pub(super) fn earlier_turns(
    conversation: &[ChatMessage],
    marked_render: &str,
    full_text: &str,
    prompt_text: &str,
) -> Result<Vec<Range<usize>>, String> {
    let (text, spans) = unmark(marked_render)?;
    if text != full_text {
        return Err(
            "the template changes the text of an assistant turn (it trims or rewrites \
                    it), so the turns cannot be located"
                .into(),
        );
    }
    let answers = conversation
        .iter()
        .filter(|m| m.role == "assistant")
        .count();
    if spans.len() != answers {
        return Err(format!(
            "the template renders {} of the conversation's {answers} assistant turns",
            spans.len()
        ));
    }
    let Some((last, earlier)) = spans.split_last() else {
        return Ok(Vec::new());
    };
    let end_of_turn = &full_text[last.end..];
    let mut turns = Vec::with_capacity(earlier.len());
    for span in earlier {
        if span.end > prompt_text.len() {
            return Err("an earlier assistant turn is not part of the prompt's render".into());
        }
        let closed = !end_of_turn.is_empty() && prompt_text[span.end..].starts_with(end_of_turn);
        let end = span.end + if closed { end_of_turn.len() } else { 0 };
        if end > span.start {
            turns.push(span.start..end);
        }
    }
    Ok(turns)
}

/// Tokenizes `text` in pieces cut at the `turns` byte ranges (as the prompt and the completion
/// are tokenized apart), returning the ids and the token range of each turn. A turn that would
/// start at the first token loses that token: nothing precedes it to predict it.
pub(super) fn encode_with_turns(
    tokenizer: &TextTokenizer,
    text: &str,
    turns: &[Range<usize>],
) -> LlmResult<(Vec<u32>, Vec<Range<usize>>)> {
    let mut ids: Vec<u32> = Vec::new();
    let mut targets = Vec::with_capacity(turns.len());
    let mut at = 0;
    let push = |piece: &str, ids: &mut Vec<u32>| -> LlmResult<Range<usize>> {
        let start = ids.len();
        if !piece.is_empty() {
            let piece_ids = if start == 0 {
                tokenizer.encode(piece, false)?
            } else {
                tokenizer.encode_continuation(piece)?
            };
            ids.extend(piece_ids);
        }
        Ok(start..ids.len())
    };
    for turn in turns {
        if turn.start < at || turn.end > text.len() {
            return Err(LlmError::Invalid(format!(
                "assistant turns out of order at byte {}",
                turn.start
            )));
        }
        push(&text[at..turn.start], &mut ids)?;
        let range = push(&text[turn.clone()], &mut ids)?;
        let range = range.start.max(1)..range.end;
        if !range.is_empty() {
            targets.push(range);
        }
        at = turn.end;
    }
    push(&text[at..], &mut ids)?;
    Ok((ids, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    #[test]
    fn unmark_finds_each_content() {
        let rendered = format!("<u>q</u><a>{OPEN}one{CLOSE}</a><u>r</u><a>{OPEN}two{CLOSE}</a>");
        let (text, spans) = unmark(&rendered).unwrap();
        assert_eq!(text, "<u>q</u><a>one</a><u>r</u><a>two</a>");
        assert_eq!(
            spans.iter().map(|s| &text[s.clone()]).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert!(unmark(&format!("{OPEN}cut")).is_err());
        assert!(unmark(&format!("x{CLOSE}")).is_err());
    }

    #[test]
    fn earlier_turns_take_the_end_of_turn_text() {
        let conversation = chat(&[
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("assistant", "a2"),
        ]);
        let render = |c: &[ChatMessage]| -> String {
            c.iter()
                .map(|m| format!("<{}>{}</s>\n", m.role, m.content))
                .collect()
        };
        let full = render(&conversation);
        let marked_render = render(&marked(&conversation).unwrap());
        let prompt = format!("{}<assistant>", render(&conversation[..3]));
        let turns = earlier_turns(&conversation, &marked_render, &full, &prompt).unwrap();
        assert_eq!(
            turns.iter().map(|t| &prompt[t.clone()]).collect::<Vec<_>>(),
            ["a1</s>\n"]
        );
    }

    #[test]
    fn a_template_that_rewrites_answers_is_refused() {
        let conversation = chat(&[
            ("user", "q"),
            ("assistant", "a"),
            ("user", "r"),
            ("assistant", "b"),
        ]);
        let marked_render = format!("q{OPEN}a{CLOSE}r{OPEN}b{CLOSE}");
        let err = earlier_turns(&conversation, &marked_render, "qAra", "qAr").unwrap_err();
        assert!(err.contains("changes the text"), "{err}");
        let err = marked(&chat(&[("user", OPEN)])).unwrap_err();
        assert!(err.contains("message 1"), "{err}");
    }
}
