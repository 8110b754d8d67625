//! The comparison as an aligned text table (metrics equal in every row are folded into one
//! line below it) and as CSV (every column).

use serde_json::Value;

use super::{Comparison, Row};

/// A param value as a cell: strings bare, numbers and the rest as JSON.
pub fn param_cell(value: Option<&Value>) -> String {
    match value {
        None => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A metric value as a cell: integers whole, other numbers with four significant digits.
pub fn metric_cell(value: Option<&Value>) -> String {
    match value {
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => number(f),
            _ => n.to_string(),
        },
        other => param_cell(other),
    }
}

fn number(f: f64) -> String {
    let a = f.abs();
    if !f.is_finite() {
        f.to_string()
    } else if f == f.trunc() && a < 1e15 {
        format!("{f:.0}")
    } else if a >= 1e-3 {
        let decimals = (3.0 - a.log10().floor()).max(0.0) as usize;
        format!("{f:.decimals$}")
    } else {
        format!("{f:.3e}")
    }
}

/// The metrics whose value is the same in every row (only when there are several rows).
fn constant_metrics(c: &Comparison) -> Vec<String> {
    if c.rows.len() < 2 {
        return Vec::new();
    }
    c.metrics
        .iter()
        .filter(|m| {
            let first = c.rows[0].metrics.get(*m);
            c.rows.iter().all(|r| r.metrics.get(*m) == first)
        })
        .cloned()
        .collect()
}

/// The aligned table: `*` marks the latest sweep's rows.
pub fn to_text(c: &Comparison) -> String {
    let constant = constant_metrics(c);
    let metrics: Vec<&String> = c
        .metrics
        .iter()
        .filter(|m| !constant.contains(*m))
        .collect();
    let mut header = vec![String::new(), "key".to_string(), "created".to_string()];
    header.extend(c.params.iter().cloned());
    header.extend(metrics.iter().map(|m| m.to_string()));
    let mut lines = vec![header];
    for r in &c.rows {
        lines.push(text_row(r, &c.params, &metrics));
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric_from = 3 + c.params.len();
    let mut out = heading(c);
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i >= numeric_from {
                    format!("{cell:>w$}", w = widths[i])
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !constant.is_empty() {
        let same: Vec<String> = constant
            .iter()
            .map(|m| format!("{m}={}", metric_cell(c.rows[0].metrics.get(m))))
            .collect();
        out.push_str(&format!("same in every row: {}\n", same.join(", ")));
    }
    out
}

fn heading(c: &Comparison) -> String {
    let in_sweep = c.rows.iter().filter(|r| r.in_sweep).count();
    let mut s = format!("{}: {} artifact(s)", c.stage, c.rows.len());
    if let Some(id) = &c.sweep {
        s.push_str(&format!(", * = {in_sweep} of the latest sweep ({id})"));
    }
    if c.params.is_empty() && c.rows.len() > 1 {
        s.push_str("; their params are equal (they differ in code or inputs only)");
    }
    s.push('\n');
    s
}

fn text_row(r: &Row, params: &[String], metrics: &[&String]) -> Vec<String> {
    let mut cells = vec![
        if r.in_sweep { "*" } else { "" }.to_string(),
        r.key.clone(),
        r.created(),
    ];
    cells.extend(params.iter().map(|p| param_cell(r.params.get(p))));
    cells.extend(metrics.iter().map(|m| metric_cell(r.metrics.get(*m))));
    cells
}

/// Every column, one row per artifact; numbers at full precision.
pub fn to_csv(c: &Comparison) -> String {
    let mut header = vec![
        "key".to_string(),
        "created".to_string(),
        "in_sweep".to_string(),
    ];
    header.extend(c.params.iter().cloned());
    header.extend(c.metrics.iter().cloned());
    let mut out = csv_line(&header);
    for r in &c.rows {
        let mut cells = vec![r.key.clone(), r.created(), r.in_sweep.to_string()];
        cells.extend(c.params.iter().map(|p| csv_value(r.params.get(p))));
        cells.extend(c.metrics.iter().map(|m| csv_value(r.metrics.get(m))));
        out.push_str(&csv_line(&cells));
    }
    out
}

fn csv_value(value: Option<&Value>) -> String {
    match value {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    quoted.join(",") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn comparison() -> Comparison {
        let row = |key: &str, beta: f64, acc: f64, in_sweep: bool| Row {
            key: key.into(),
            created_at_ms: 1_795_000_000_000,
            in_sweep,
            params: BTreeMap::from([
                ("orpo.beta".to_string(), json!(beta)),
                ("orpo.note".to_string(), json!("a, \"b\"")),
            ]),
            metrics: BTreeMap::from([
                ("accuracy".to_string(), json!(acc)),
                ("steps".to_string(), json!(40)),
            ]),
        };
        Comparison {
            stage: "orpo".into(),
            sweep: Some("1-abc".into()),
            params: vec!["orpo.beta".into(), "orpo.note".into()],
            metrics: vec!["accuracy".into(), "steps".into()],
            rows: vec![row("k1", 0.1, 0.625, true), row("k2", 0.2, 0.75, false)],
        }
    }

    #[test]
    fn text_folds_constant_metrics_and_marks_the_sweep() {
        let text = to_text(&comparison());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "orpo: 2 artifact(s), * = 1 of the latest sweep (1-abc)"
        );
        assert!(lines[1].contains("orpo.beta") && lines[1].contains("accuracy"));
        assert!(!lines[1].contains("steps"), "{text}");
        assert!(
            lines[2].starts_with("*  k1   2026-11-18 11:06  0.1 "),
            "{text}"
        );
        assert!(lines[2].ends_with("0.6250"), "{text}");
        assert!(lines[3].starts_with("   k2"), "{text}");
        assert_eq!(lines[4], "same in every row: steps=40");
    }

    #[test]
    fn csv_quotes_and_keeps_every_column() {
        let csv = to_csv(&comparison());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "key,created,in_sweep,orpo.beta,orpo.note,accuracy,steps"
        );
        assert_eq!(
            lines[1],
            "k1,2026-11-18 11:06,true,0.1,\"a, \"\"b\"\"\",0.625,40"
        );
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(number(0.612345), "0.6123");
        assert_eq!(number(12.34567), "12.35");
        assert_eq!(number(126.27), "126.3");
        assert_eq!(number(40.0), "40");
        assert_eq!(number(12345.67), "12346");
        assert_eq!(number(0.0123), "0.01230");
        assert_eq!(number(5e-5), "5.000e-5");
        assert_eq!(number(-0.25), "-0.2500");
    }
}
