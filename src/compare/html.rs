//! `pipe compare --html FILE`: one self-contained page with the comparison table, the training
//! curves of the rows overlaid (from the per-step logs their artifacts and upstream artifacts
//! hold) and each artifact's own view (its stage's `pipe show` text) side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::table::{metric_cell, param_cell};
use super::Comparison;
use crate::runner::Workspace;

/// The per-step log a training stage writes: JSON lines with a `step` field and numbers.
pub const TRAINING_LOG: &str = "metrics.jsonl";

const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The whole page.
pub fn page(ws: &Workspace, c: &Comparison) -> String {
    let mut s = String::new();
    let title = format!("pipe compare {}", c.stage);
    let _ = write!(
        s,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    s.push_str(&table(c));
    s.push_str(&curves(ws, c));
    s.push_str(&views(ws, c));
    s.push_str("</body></html>\n");
    s
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}\
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.sweep{background:#eef6ff}\
.charts,.views{display:flex;flex-wrap:wrap;gap:14px}.views{flex-wrap:nowrap;overflow-x:auto}\
.chart{border:1px solid #ddd;padding:6px}.chart h4{margin:0 0 4px 0;font-size:13px}\
.view pre{font-size:11px;background:#f7f7f7;padding:8px;margin:0}\
.legend span{display:inline-block;margin-right:12px;font-size:12px}";

/// A short label for row `i`: its number and its differing params.
fn row_label(c: &Comparison, i: usize) -> String {
    let r = &c.rows[i];
    let params: Vec<String> = c
        .params
        .iter()
        .filter_map(|p| {
            r.params
                .get(p)
                .map(|v| format!("{p}={}", param_cell(Some(v))))
        })
        .collect();
    format!("#{} {}", i + 1, params.join(" "))
        .trim_end()
        .to_string()
}

fn table(c: &Comparison) -> String {
    let mut s = String::from("<table><tr><th>#</th><th>key</th><th>created</th>");
    for name in c.params.iter().chain(&c.metrics) {
        let _ = write!(s, "<th>{}</th>", escape(name));
    }
    s.push_str("</tr>\n");
    for (i, r) in c.rows.iter().enumerate() {
        let class = if r.in_sweep { " class=\"sweep\"" } else { "" };
        let _ = write!(
            s,
            "<tr{class}><td>{}</td><td><code>{}</code></td><td>{}</td>",
            i + 1,
            escape(&r.key),
            escape(&r.created())
        );
        for p in &c.params {
            let _ = write!(s, "<td>{}</td>", escape(&param_cell(r.params.get(p))));
        }
        for m in &c.metrics {
            let _ = write!(
                s,
                "<td class=\"n\">{}</td>",
                escape(&metric_cell(r.metrics.get(m)))
            );
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    if c.sweep.is_some() {
        s.push_str("<p>Highlighted rows belong to the latest sweep.</p>\n");
    }
    s
}

/// One artifact's per-step log and the rows that read it.
struct Log {
    key: String,
    rows: Vec<usize>,
    /// (step, metric -> value).
    records: Vec<(f64, BTreeMap<String, f64>)>,
}

fn curves(ws: &Workspace, c: &Comparison) -> String {
    let logs = collect_logs(ws, c);
    if logs.is_empty() {
        return String::from("<h2>Training curves</h2><p>No artifact of these rows or of what they were made from has a training log.</p>\n");
    }
    let mut s = String::from("<h2>Training curves</h2>\n");
    let order = ws.dag.order();
    let mut stages: Vec<&String> = logs.keys().collect();
    stages.sort_by_key(|st| {
        order
            .iter()
            .position(|o| *o == st.as_str())
            .unwrap_or(usize::MAX)
    });
    for stage in stages {
        let logs = &logs[stage];
        let shared = if logs.len() == 1 && logs[0].rows.len() == c.rows.len() && c.rows.len() > 1 {
            " (one artifact, shared by every row)"
        } else {
            ""
        };
        let _ = writeln!(s, "<h3>{}{shared}</h3>", escape(stage));
        s.push_str("<div class=\"legend\">");
        for (i, log) in logs.iter().enumerate() {
            let rows: Vec<String> = log.rows.iter().map(|r| row_label(c, *r)).collect();
            let _ = write!(
                s,
                "<span style=\"color:{}\">&#9632; {} <code>{}</code></span>",
                COLORS[i % COLORS.len()],
                escape(&rows.join("; ")),
                escape(&log.key)
            );
        }
        s.push_str("</div>\n<div class=\"charts\">\n");
        for field in fields(logs) {
            let series: Vec<Vec<(f64, f64)>> = logs
                .iter()
                .map(|l| {
                    l.records
                        .iter()
                        .filter_map(|(step, m)| m.get(&field).map(|v| (*step, *v)))
                        .filter(|(_, v)| v.is_finite())
                        .collect()
                })
                .collect();
            s.push_str(&chart(&field, &series));
        }
        s.push_str("</div>\n");
    }
    s
}

/// Every numeric field of the logs but the step and epoch counters, first seen first.
fn fields(logs: &[Log]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for log in logs {
        for (_, m) in &log.records {
            for k in m.keys() {
                if !out.contains(k) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

/// Stage -> the distinct logs the rows read (their own artifact's and their upstreams').
fn collect_logs(ws: &Workspace, c: &Comparison) -> BTreeMap<String, Vec<Log>> {
    let mut by_stage: BTreeMap<String, Vec<Log>> = BTreeMap::new();
    for (i, r) in c.rows.iter().enumerate() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![(c.stage.clone(), r.key.clone())];
        while let Some((stage, key)) = stack.pop() {
            if !seen.insert((stage.clone(), key.clone())) {
                continue;
            }
            let Some(entry) = ws.store.lookup(&stage, &key) else {
                continue;
            };
            stack.extend(entry.manifest.inputs.upstream.clone());
            let logs = by_stage.entry(stage.clone()).or_default();
            if let Some(log) = logs.iter_mut().find(|l| l.key == key) {
                log.rows.push(i);
                continue;
            }
            if let Some(records) = read_log(&entry.dir.join(TRAINING_LOG)) {
                logs.push(Log {
                    key,
                    rows: vec![i],
                    records,
                });
            }
        }
    }
    by_stage.retain(|_, logs| !logs.is_empty());
    by_stage
}

/// The numeric fields of each line with a `step`; `None` when there is no log.
fn read_log(path: &Path) -> Option<Vec<(f64, BTreeMap<String, f64>)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let records = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Map<String, Value>>(line).ok())
        .filter_map(|obj| {
            let step = obj.get("step")?.as_f64()?;
            let values = obj
                .iter()
                .filter(|(k, _)| *k != "step" && *k != "epoch")
                .filter_map(|(k, v)| v.as_f64().map(|f| (k.clone(), f)))
                .collect();
            Some((step, values))
        })
        .collect();
    Some(records)
}

/// An SVG line chart of `series` (one colour each, in legend order).
fn chart(title: &str, series: &[Vec<(f64, f64)>]) -> String {
    const W: f64 = 360.0;
    const H: f64 = 180.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 18.0;
    let points: Vec<(f64, f64)> = series.iter().flatten().copied().collect();
    let mut s = format!("<div class=\"chart\"><h4>{}</h4>", escape(title));
    if points.is_empty() {
        s.push_str("<p>no values</p></div>\n");
        return s;
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let (y_lo, y_hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let span = if y_hi > y_lo { y_hi - y_lo } else { 1.0 };
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - 6.0);
    let y = |v: f64| 6.0 + (y_hi - v) / span * (H - BOTTOM - 12.0);
    let _ = write!(
        s,
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"10\">\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"6\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"{tx}\" y=\"12\" text-anchor=\"end\">{hi}</text>\
         <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">{lo}</text>\
         <text x=\"{LEFT}\" y=\"{H}\">0</text>\
         <text x=\"{r}\" y=\"{H}\" text-anchor=\"end\">step {xm}</text>",
        b = H - BOTTOM,
        r = W - 6.0,
        tx = LEFT - 4.0,
        hi = short(y_hi),
        lo = short(y_lo),
        xm = x_max
    );
    for (i, points) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        if points.len() <= 30 {
            for (a, b) in points {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{color}\"/>",
                    x(*a),
                    y(*b)
                );
            }
        }
    }
    s.push_str("</svg></div>\n");
    s
}

fn short(v: f64) -> String {
    metric_cell(serde_json::Number::from_f64(v).map(Value::Number).as_ref())
}

/// Each row's own view (its stage's `pipe show` text), side by side.
fn views(ws: &Workspace, c: &Comparison) -> String {
    let Some(stage) = ws.registry.iter().find(|s| s.name() == c.stage) else {
        return String::new();
    };
    let mut s = format!(
        "<h2>{} side by side</h2>\n<div class=\"views\">\n",
        escape(&c.stage)
    );
    for (i, r) in c.rows.iter().enumerate() {
        let Some(entry) = ws.store.lookup(&c.stage, &r.key) else {
            continue;
        };
        let mut text = Vec::new();
        let shown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stage.show(&entry.dir, &mut text)
        }));
        let body = match shown {
            Ok(Ok(())) => String::from_utf8_lossy(&text).into_owned(),
            Ok(Err(e)) => format!("cannot show this artifact: {e}"),
            Err(_) => "cannot show this artifact: its stage's view failed".to_string(),
        };
        let _ = writeln!(
            s,
            "<div class=\"view\"><h4>{}</h4><pre>{}</pre></div>",
            escape(&row_label(c, i)),
            escape(&body)
        );
    }
    s.push_str("</div>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_one_line_per_series_and_skip_empty_ones() {
        let svg = chart(
            "train/loss <x>",
            &[vec![(1.0, 2.0), (2.0, 1.0)], vec![(1.0, 3.0)], vec![]],
        );
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("train/loss &lt;x&gt;"));
        assert!(
            svg.contains(">3</text>") && svg.contains(">1</text>"),
            "{svg}"
        );
        assert!(chart("none", &[vec![]]).contains("no values"));
    }

    #[test]
    fn logs_keep_numbers_of_lines_with_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRAINING_LOG);
        std::fs::write(
            &path,
            "{\"step\":0,\"epoch\":0,\"eval_loss\":2.5}\n{\"step\":1,\"loss\":2.0,\"note\":\"x\"}\n{\"loss\":1}\n{torn",
        )
        .unwrap();
        let records = read_log(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].1,
            BTreeMap::from([("eval_loss".to_string(), 2.5)])
        );
        assert_eq!(records[1].1, BTreeMap::from([("loss".to_string(), 2.0)]));
        assert!(read_log(&dir.path().join("none")).is_none());
    }
}
