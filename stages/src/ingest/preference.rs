//! TRL's conversational preference form: `chosen` and `rejected` are message lists that share
//! the prompt turns (and an optional explicit `prompt` list); the pair is the last user turn,
//! the turns before it (the history), the system turn if any, and the two final answers.

use super::config::IngestConfig;
use super::error::IngestError;
use super::read::{Candidate, Loaded};
use crate::llm::ChatMessage;
use crate::tabular::JsonRecord;

/// Reads every record of the conversational form into candidates.
pub(super) fn load_conversational(
    cfg: &IngestConfig,
    records: &[JsonRecord],
    file: &str,
) -> Result<Loaded, IngestError> {
    let chosen_key = cfg.chosen.as_deref().unwrap_or("chosen");
    let rejected_key = cfg.rejected.as_deref().unwrap_or("rejected");
    let rows = records
        .iter()
        .map(|record| conversational_row(record, (chosen_key, rejected_key), cfg, file))
        .collect::<Result<Vec<_>, _>>()?;
    let mut columns = std::collections::BTreeMap::new();
    columns.insert("chosen".to_string(), format!("{chosen_key} (messages)"));
    columns.insert("rejected".to_string(), format!("{rejected_key} (messages)"));
    if let Some(c) = &cfg.category {
        columns.insert("category".to_string(), c.clone());
    }
    Ok(Loaded {
        rows,
        layout: super::config::Layout::Preference,
        columns,
        has_category: cfg.category.is_some(),
    })
}

fn conversational_row(
    record: &JsonRecord,
    (chosen_key, rejected_key): (&str, &str),
    cfg: &IngestConfig,
    file: &str,
) -> Result<Candidate, IngestError> {
    let bad = |message: String| IngestError::BadRecord {
        file: file.to_string(),
        location: record.location,
        message,
    };
    let turns = |key: &str| -> Result<Vec<(String, String)>, IngestError> {
        let value = record
            .fields
            .get(key)
            .ok_or_else(|| bad(format!("no field `{key}`")))?;
        let list = value
            .as_array()
            .ok_or_else(|| bad(format!("`{key}` is not a list of messages")))?;
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |name: &str| m.get(name).and_then(|v| v.as_str());
                match (field("role"), field("content")) {
                    (Some(r), Some(c)) => Ok((r.to_string(), c.trim().to_string())),
                    _ => Err(bad(format!(
                        "`{key}[{i}]` is not a {{role, content}} message"
                    ))),
                }
            })
            .collect()
    };
    // An explicit `prompt` list holds the shared turns; else they prefix both answers.
    let prompt_turns = match record.fields.get("prompt") {
        Some(v) if v.is_array() => turns("prompt")?,
        _ => Vec::new(),
    };
    let chosen = turns(chosen_key)?;
    let rejected = turns(rejected_key)?;
    let mut context: Vec<(String, String)> = prompt_turns;
    let shared = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(a, b)| a == b)
        .count();
    context.extend(chosen[..shared].iter().cloned());
    let answer = |list: &[(String, String)], key: &str| -> Result<String, IngestError> {
        match list.last() {
            Some((role, content)) if role == "assistant" && list.len() > shared => {
                Ok(content.clone())
            }
            _ => Err(bad(format!(
                "`{key}` does not end in an assistant answer after the shared turns"
            ))),
        }
    };
    let last_user = context
        .iter()
        .rposition(|(r, _)| r == "user")
        .ok_or_else(|| bad("no user turn before the answers".into()))?;
    let prompt = context[last_user].1.clone();
    let history = context[..last_user]
        .iter()
        .filter_map(|(role, content)| match role.as_str() {
            "user" => Some(ChatMessage::user(content.as_str())),
            "assistant" => Some(ChatMessage::assistant(content.as_str())),
            _ => None,
        })
        .collect();
    let system = context
        .iter()
        .find(|(r, _)| r == "system")
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    let category = match &cfg.category {
        Some(name) => record
            .fields
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .trim()
            .to_string(),
        None => String::new(),
    };
    Ok(Candidate {
        source_row: record.row,
        prompt,
        response: answer(&chosen, chosen_key)?,
        system,
        category,
        truncated: false,
        history,
        rejected: answer(&rejected, rejected_key)?,
        filter: match &cfg.filter {
            Some(f) => record
                .fields
                .get(&f.column)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .trim()
                .to_string(),
            None => String::new(),
        },
    })
}
