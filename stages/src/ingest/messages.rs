//! The `messages` layout: a chat (`messages: [{role, content}]` or ShareGPT's
//! `conversations: [{from, value}]`) kept whole: its last answer is the row's response, the
//! user turn before it the prompt, and the turns before that the row's history.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{IngestConfig, Layout};
use super::error::IngestError;
use super::mapping::{clean_text, missing_column, role_need};
use super::read::{Candidate, Loaded};
use crate::llm::ChatMessage;
use crate::tabular::{self, JsonRecord};

/// A chat role, with ShareGPT's names folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    System,
    User,
    Assistant,
    Other,
}

pub(super) fn role_of(name: &str) -> Role {
    match name.to_ascii_lowercase().as_str() {
        "system" => Role::System,
        "user" | "human" => Role::User,
        "assistant" | "gpt" | "model" | "bot" => Role::Assistant,
        _ => Role::Other,
    }
}

pub(super) fn load_messages(
    cfg: &IngestConfig,
    records: &[JsonRecord],
    file: &str,
) -> Result<Loaded, IngestError> {
    let category = cfg
        .category
        .as_ref()
        .map(|name| role_need("category", Some(name), "", Layout::Messages, true));
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let mut row = chat_conversation(record, file)?;
        if let Some(need) = &category {
            let value = tabular::text_field(record, &need.name, file)?.ok_or_else(|| {
                let available: Vec<String> = record.fields.keys().cloned().collect();
                missing_column(
                    file,
                    Some(record.location),
                    need,
                    &available,
                    Layout::Messages,
                )
            })?;
            row.category = clean_text(&value);
        }
        rows.push(row);
    }
    let mut columns = BTreeMap::new();
    columns.insert(
        "messages".to_string(),
        "last assistant turn after a user turn → response, that user turn → prompt, \
         the turns before → history"
            .to_string(),
    );
    if let Some(need) = &category {
        columns.insert("category".to_string(), need.name.clone());
    }
    Ok(Loaded {
        rows,
        layout: Layout::Messages,
        columns,
        has_category: category.is_some(),
    })
}

/// The conversation of one record: the system turns before the dialogue, the last answer
/// that follows a user turn (the response), that user turn (the prompt) and the user and
/// assistant turns before it (the history). Turns after that answer, system turns inside the
/// dialogue and turns of other roles are not kept: the row is marked `truncated`.
pub(super) fn chat_conversation(record: &JsonRecord, file: &str) -> Result<Candidate, IngestError> {
    let bad = |message: String| IngestError::BadRecord {
        file: file.to_string(),
        location: record.location,
        message,
    };
    let turns = match record
        .fields
        .get("messages")
        .or_else(|| record.fields.get("conversations"))
    {
        Some(Value::Array(turns)) => turns,
        Some(other) => {
            return Err(bad(format!(
                "`messages` is {}, expected an array of {{\"role\", \"content\"}} objects",
                tabular::kind_name(other)
            )))
        }
        None => {
            return Err(bad(format!(
                "layout \"messages\" needs a `messages` (or `conversations`) array, but the \
                 record has: {}; set `layout` to \"alpaca\" or \"columns\" in [ingest]",
                record.field_names()
            )))
        }
    };
    let turns = turns
        .iter()
        .enumerate()
        .map(|(i, turn)| turn_parts(turn).map_err(|m| bad(format!("message {}: {m}", i + 1))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(conversation_row(record.row, &turns))
}

/// Splits parsed turns into system, history, prompt and response (see [`chat_conversation`]).
fn conversation_row(source_row: u64, turns: &[(Role, String)]) -> Candidate {
    let opening = turns
        .iter()
        .take_while(|(role, _)| *role == Role::System)
        .count();
    let system: Vec<String> = turns[..opening]
        .iter()
        .map(|(_, content)| clean_text(content))
        .filter(|s| !s.is_empty())
        .collect();
    let dialogue: Vec<&(Role, String)> = turns[opening..]
        .iter()
        .filter(|(role, _)| matches!(role, Role::User | Role::Assistant))
        .collect();
    // The answer must directly follow its question: a later assistant turn may answer
    // something else.
    let answer = (1..dialogue.len())
        .rev()
        .find(|&i| dialogue[i].0 == Role::Assistant && dialogue[i - 1].0 == Role::User);
    let (history, prompt, response) = match answer {
        Some(i) => (
            dialogue[..i - 1]
                .iter()
                .map(|(role, content)| chat_message(*role, content))
                .collect(),
            clean_text(&dialogue[i - 1].1),
            clean_text(&dialogue[i].1),
        ),
        None => {
            let last_user = dialogue.iter().rev().find(|(role, _)| *role == Role::User);
            let prompt = last_user.map(|(_, c)| clean_text(c)).unwrap_or_default();
            (Vec::new(), prompt, String::new())
        }
    };
    let used = opening + answer.map_or(0, |i| i + 1);
    Candidate {
        source_row,
        prompt,
        response,
        system: system.join("\n\n"),
        category: String::new(),
        truncated: turns.len() > used,
        rejected: String::new(),
        filter: String::new(),
        history,
    }
}

/// A kept dialogue turn as the chat template sees it.
pub(super) fn chat_message(role: Role, content: &str) -> ChatMessage {
    let text = clean_text(content);
    match role {
        Role::Assistant => ChatMessage::assistant(text),
        _ => ChatMessage::user(text),
    }
}

/// `(role, content)` of one chat turn (`role`/`content`, or ShareGPT `from`/`value`).
pub(super) fn turn_parts(turn: &Value) -> Result<(Role, String), String> {
    let Value::Object(fields) = turn else {
        return Err(format!(
            "is {}, expected an object with `role` and `content`",
            tabular::kind_name(turn)
        ));
    };
    let role = match fields.get("role").or_else(|| fields.get("from")) {
        Some(Value::String(r)) => role_of(r),
        Some(other) => {
            return Err(format!(
                "`role` is {}, expected text",
                tabular::kind_name(other)
            ))
        }
        None => return Err("has no `role` (or `from`)".into()),
    };
    let content = match fields.get("content").or_else(|| fields.get("value")) {
        Some(value) => tabular::value_text(value)
            .ok_or_else(|| format!("`content` is {}, expected text", tabular::kind_name(value)))?,
        None => return Err("has no `content` (or `value`)".into()),
    };
    Ok((role, content))
}
