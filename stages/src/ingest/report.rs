//! `pipe show ingest`: the counts, drops, categories and lengths of `stats.json`.

use std::io::Write;

use super::stats::IngestStats;

/// `pipe show ingest`: counts, drops, categories and lengths from `stats.json`.
pub(super) fn write_stats(s: &IngestStats, out: &mut dyn Write) -> std::io::Result<()> {
    let delimiter = s
        .delimiter
        .as_deref()
        .map_or_else(String::new, |d| format!(", delimiter {d:?}"));
    writeln!(
        out,
        "source      {} ({}, {}, layout {}{delimiter})",
        s.file, s.format, s.encoding, s.layout
    )?;
    writeln!(out, "columns")?;
    for (role, column) in &s.columns {
        writeln!(out, "  {role:<15} {column:?}")?;
    }
    writeln!(out, "rows        {:>8} read", s.rows_read)?;
    writeln!(out, "            {:>8} dropped", s.dropped.total())?;
    for (n, why) in [
        (s.dropped.empty_prompt, "empty prompt"),
        (s.dropped.empty_response, "empty response"),
        (s.dropped.duplicate, "duplicate"),
    ] {
        if n > 0 {
            writeln!(out, "              {n:>8} {why}")?;
        }
    }
    if s.sampled_out > 0 {
        writeln!(out, "            {:>8} left out by max_rows", s.sampled_out)?;
    }
    if s.truncated_conversations > 0 {
        writeln!(
            out,
            "            {:>8} chats with turns not kept (after the last answer, or of other roles)",
            s.truncated_conversations
        )?;
    }
    if s.multi_turn > 0 {
        writeln!(
            out,
            "            {:>8} multi-turn rows (every assistant turn trained)",
            s.multi_turn
        )?;
    }
    let share = if s.rows_out > 0 {
        100.0 * s.val as f64 / s.rows_out as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "            {:>8} written: {} train, {} val ({share:.1}% val, seed {})",
        s.rows_out, s.train, s.val, s.seed
    )?;
    if !s.categories.is_empty() {
        let width = s
            .categories
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(8);
        let how = if s.stratified {
            "stratified"
        } else {
            "not stratified"
        };
        writeln!(out, "categories ({how})")?;
        writeln!(out, "  {:<width$} {:>8} {:>8}", "category", "train", "val")?;
        for (name, c) in &s.categories {
            writeln!(out, "  {name:<width$} {:>8} {:>8}", c.train, c.val)?;
        }
    }
    writeln!(out, "lengths (characters)")?;
    writeln!(
        out,
        "  {:<10} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p90", "p99", "max"
    )?;
    for (name, p) in &s.lengths {
        writeln!(
            out,
            "  {name:<10} {:>8} {:>8} {:>8} {:>8}",
            p.p50, p.p90, p.p99, p.max
        )?;
    }
    Ok(())
}
