//! Cleaning: empty and duplicate rows dropped and counted, ids from the content hash.

use std::collections::HashSet;

use super::artifact::Example;
use super::read::Candidate;
use super::stats::Drops;

/// blake3 over system \0 prompt \0 response (and the rejected answer and history a row may
/// have): the duplicate key and the source of the id.
pub(super) fn content_hash(row: &Candidate) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(row.system.as_bytes());
    hasher.update(b"\0");
    hasher.update(row.prompt.as_bytes());
    hasher.update(b"\0");
    hasher.update(row.response.as_bytes());
    // Only preference rows have one: every other row keeps the id it always had.
    if !row.rejected.is_empty() {
        hasher.update(b"\0");
        hasher.update(row.rejected.as_bytes());
    }
    // Likewise only multi-turn rows: the same last exchange after another history is
    // another row.
    for turn in &row.history {
        hasher.update(b"\0history\0");
        hasher.update(turn.role.as_bytes());
        hasher.update(b"\0");
        hasher.update(turn.content.as_bytes());
    }
    hasher.finalize()
}

/// Drops empty and duplicate rows (keeping the first occurrence), counting each reason; with
/// `preference`, also pairs without a rejected answer or with two equal answers.
pub(super) fn clean(rows: Vec<Candidate>, preference: bool) -> (Vec<Example>, Drops) {
    let mut drops = Drops::default();
    let mut seen = HashSet::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        if row.prompt.is_empty() {
            drops.empty_prompt += 1;
            continue;
        }
        if row.response.is_empty() {
            drops.empty_response += 1;
            continue;
        }
        if preference && row.rejected.is_empty() {
            drops.empty_rejected += 1;
            continue;
        }
        if preference && row.rejected == row.response {
            drops.same_answers += 1;
            continue;
        }
        let hash = content_hash(&row);
        if !seen.insert(*hash.as_bytes()) {
            drops.duplicate += 1;
            continue;
        }
        kept.push(Example {
            id: hash.to_hex()[..16].to_string(),
            prompt: row.prompt,
            response: row.response,
            system: non_empty(row.system),
            category: non_empty(row.category),
            source_row: row.source_row,
            rejected: non_empty(row.rejected),
            history: row.history,
        });
    }
    (kept, drops)
}

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}
