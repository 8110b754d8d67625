//! The `messages` layout: a chat (`messages: [{role, content}]` or ShareGPT's
//! `conversations: [{from, value}]`) reduced to its first user/assistant exchange.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{IngestConfig, Layout};
use super::error::IngestError;
use super::mapping::{clean_text, missing_column, role_need};
use super::read::{Candidate, Loaded};
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
        let mut row = chat_exchange(record, file)?;
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
        "first user turn → prompt, next assistant turn → response".to_string(),
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

/// The first user turn, the assistant turn after it, and the system turns before it.
pub(super) fn chat_exchange(record: &JsonRecord, file: &str) -> Result<Candidate, IngestError> {
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
    let first_user = turns.iter().position(|(role, _)| *role == Role::User);
    let system: Vec<String> = turns[..first_user.unwrap_or(turns.len())]
        .iter()
        .filter(|(role, _)| *role == Role::System)
        .map(|(_, content)| clean_text(content))
        .filter(|s| !s.is_empty())
        .collect();
    let system_turns = turns[..first_user.unwrap_or(turns.len())]
        .iter()
        .filter(|(role, _)| *role == Role::System)
        .count();
    let prompt = first_user.map(|u| clean_text(&turns[u].1));
    // The answer must be the very next turn: a later assistant turn may answer something else.
    let response = first_user
        .and_then(|u| turns.get(u + 1))
        .filter(|(role, _)| *role == Role::Assistant)
        .map(|(_, content)| clean_text(content));
    let used = system_turns + usize::from(prompt.is_some()) + usize::from(response.is_some());
    Ok(Candidate {
        source_row: record.row,
        prompt: prompt.unwrap_or_default(),
        response: response.unwrap_or_default(),
        system: system.join("\n\n"),
        category: String::new(),
        truncated: turns.len() > used,
        rejected: String::new(),
        filter: String::new(),
    })
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
