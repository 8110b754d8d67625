//! `report.html`: one self-contained page (inline CSS and SVG, no script, nothing fetched) with
//! the score table, the win rates, the training curves of every sft, orpo and dpo instance on
//! the compared models' paths (from each one's `metrics.jsonl`: the loss, and a preference
//! stage's reward accuracy and margin) and answers side by side. Every text from the data
//! (prompts, answers, instance and model names) is HTML-escaped.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value as Json;

use super::results::{scorer_names, AnswerRecord, EvalResults};

/// One curve: a name, a colour and its (step, value) points.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// One training instance's log, as read from its `metrics.jsonl`.
pub struct TrainingLog {
    /// The instance's name in pipeline.toml.
    pub instance: String,
    /// Its kind: `sft`, or a preference stage (`orpo`, `dpo`: both log TRL's reward metrics).
    pub kind: String,
    pub lines: Vec<Json>,
}

impl TrainingLog {
    /// A chart's title: the kind (`SFT loss`), after the instance's name when that is not
    /// the kind's (`sft_hi: SFT loss`), so that instances of one kind can be told apart.
    fn title(&self, chart: &str) -> String {
        let kind = self.kind.to_uppercase();
        if self.instance == self.kind {
            format!("{kind} {chart}")
        } else {
            format!("{}: {kind} {chart}", self.instance)
        }
    }

    /// Its charts: the loss, and for a preference stage its reward accuracy and margin.
    fn charts(&self) -> Vec<(String, Vec<Series>)> {
        let pair = |train: &str, eval: &str, key: &str| {
            vec![
                line(train, TRAIN, series(&self.lines, key)),
                line(eval, EVAL, series(&self.lines, &format!("eval_{key}"))),
            ]
        };
        let mut charts = vec![(self.title("loss"), pair("train loss", "eval loss", "loss"))];
        if self.kind != "sft" {
            charts.push((
                self.title("reward accuracy"),
                pair("train", "eval", "rewards/accuracies"),
            ));
            charts.push((
                self.title("reward margin"),
                pair("train", "eval", "rewards/margins"),
            ));
        }
        charts
    }
}

/// Reads a `metrics.jsonl` as generic JSON lines (sft and orpo log different keys); a missing
/// file gives no lines, a bad line is skipped (the report is a view, not a validator).
pub fn read_metrics(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The (step, value) points of `key` over the log lines that have it.
pub fn series(lines: &[Json], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const TRAIN: &str = "#2563eb";
const EVAL: &str = "#dc2626";

/// The whole page; `logs` are drawn in their order, each log's charts together.
pub fn render(
    title: &str,
    results: &EvalResults,
    logs: &[TrainingLog],
    records: &[AnswerRecord],
    samples: usize,
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    let _ = writeln!(
        html,
        "<p class=\"sub\">{} val prompts, greedy decoding, up to {} new tokens; scores in [0, 1] \
         against the reference answer; NLL and perplexity of the reference answers.</p>",
        results.prompts, results.max_new_tokens
    );
    html.push_str(&score_table(results));
    html.push_str(&category_table(results));
    html.push_str(&win_table(results));
    if !logs.is_empty() {
        html.push_str("<h2>Training</h2>\n<div class=\"charts\">\n");
        for (title, lines) in logs.iter().flat_map(TrainingLog::charts) {
            html.push_str(&line_chart(&title, &lines));
        }
        html.push_str("</div>\n");
    }
    html.push_str(&answers_section(
        &results
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        records,
        samples,
    ));
    html.push_str("</body></html>\n");
    html
}

fn line(name: &str, color: &'static str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.to_string(),
        color,
        points,
    }
}

/// The combined score per category (none when the val rows have no category).
fn category_table(r: &EvalResults) -> String {
    if r.categories.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>Score by category</h2>\n<table><thead><tr><th>category</th><th>prompts</th>",
    );
    for m in &r.models {
        let _ = write!(h, "<th>{}</th>", esc(&m.name));
    }
    h.push_str("</tr></thead><tbody>\n");
    for (c, n) in &r.categories {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td>", esc(c));
        for m in &r.models {
            match m.categories.get(c) {
                Some(v) => {
                    let _ = write!(h, "<td>{v:.4}</td>");
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    h
}

fn score_table(r: &EvalResults) -> String {
    let names = scorer_names(r);
    let best = r
        .models
        .iter()
        .map(|m| m.score)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut h = String::from("<h2>Scores</h2>\n<table><thead><tr><th>model</th><th>score</th>");
    for n in &names {
        let _ = write!(h, "<th>{}</th>", esc(n));
    }
    h.push_str("<th>val NLL</th><th>val ppl</th><th>answer tokens</th><th>tok/s</th></tr></thead><tbody>\n");
    for m in &r.models {
        let class = if m.score == best {
            " class=\"best\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr{class}><td title=\"{}\">{}</td><td>{:.4}</td>",
            esc(&m.description),
            esc(&m.name),
            m.score
        );
        for n in &names {
            match m.scorers.get(n) {
                Some(v) => {
                    let _ = write!(h, "<td>{v:.4}</td>");
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        let _ = writeln!(
            h,
            "<td>{:.4}</td><td>{:.2}</td><td>{:.1}</td><td>{:.1}</td></tr>",
            m.val_nll, m.val_ppl, m.mean_answer_tokens, m.tokens_per_s
        );
    }
    h.push_str("</tbody></table>\n");
    h
}

fn win_table(r: &EvalResults) -> String {
    let mut h = String::from(
        "<h2>Win rates</h2>\n<table><thead><tr><th>pair</th><th>win rate</th><th>wins</th><th>losses</th><th>ties</th></tr></thead><tbody>\n",
    );
    for w in &r.win_rates {
        let _ = writeln!(
            h,
            "<tr><td>{} vs {}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.b),
            esc(&w.a),
            100.0 * w.b_win_rate,
            w.b_wins,
            w.a_wins,
            w.ties
        );
    }
    h.push_str("</tbody></table>\n");
    h
}

const W: f64 = 460.0;
const H: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// An SVG line chart of `lines` (steps on x); a series of one point is drawn as a dot.
pub fn line_chart(title: &str, lines: &[Series]) -> String {
    let all: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let mut svg = format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{}\" y=\"18\" class=\"title\">{}</text>",
        esc(title),
        W / 2.0,
        esc(title)
    );
    if all.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" class=\"empty\">no data</text></svg></figure>",
            W / 2.0,
            H / 2.0
        );
        return svg;
    }
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" class=\"frame\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" class=\"grid\"/>\
             <text x=\"{}\" y=\"{:.1}\" class=\"ytick\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            py(y) + 3.0,
            tick(y),
            py = py(y)
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" class=\"xtick\">{}</text>",
            px(x),
            H - BOTTOM + 14.0,
            tick(x)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" class=\"xlabel\">step</text>",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - BOTTOM + 28.0
    );
    for s in lines.iter().filter(|s| !s.points.is_empty()) {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if points.len() > 1 {
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>",
                s.color,
                points.join(" ")
            );
        }
        // Sparse series (evaluations) get a dot on every point.
        if s.points.len() <= 20 {
            for &(x, y) in &s.points {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                    px(x),
                    py(y),
                    s.color
                );
            }
        }
    }
    let mut lx = LEFT;
    for s in lines {
        let _ = write!(
            svg,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>",
            H - 12.0,
            s.color,
            lx + 14.0,
            H - 3.0,
            esc(&s.name)
        );
        lx += 22.0 + 7.0 * s.name.chars().count() as f64;
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// The range of `values`, widened when flat so the chart has a height.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if hi - lo < 1e-12 {
        let pad = lo.abs().max(1.0) * 0.05;
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn answers_section(models: &[&str], records: &[AnswerRecord], samples: usize) -> String {
    let shown = records.len().min(samples);
    let mut h = format!(
        "<h2>Answers</h2>\n<p class=\"sub\">{shown} of {} val prompts; the number is the combined score.</p>\n",
        records.len()
    );
    for r in records.iter().take(samples) {
        h.push_str("<section class=\"sample\">");
        if !r.history.is_empty() {
            let turns: Vec<String> = r
                .history
                .iter()
                .map(|t| format!("{}: {}", t.role, t.content))
                .collect();
            let _ = write!(
                h,
                "<div class=\"prompt\"><b>earlier turns</b><pre>{}</pre></div>",
                esc(&turns.join("\n"))
            );
        }
        let _ = write!(
            h,
            "<div class=\"prompt\"><b>prompt</b> <span class=\"id\">(source row {})</span><pre>{}</pre></div><div class=\"row\">\
             <div class=\"cell ref\"><b>reference</b><pre>{}</pre></div>",
            r.source_row,
            esc(&r.prompt),
            esc(&r.reference)
        );
        for model in models {
            if let Some(a) = r.answers.get(*model) {
                let _ = write!(
                    h,
                    "<div class=\"cell\"><b>{}</b> <span class=\"score\">{:.3}</span><pre>{}</pre></div>",
                    esc(model),
                    a.scores.combined,
                    esc(&a.text)
                );
            }
        }
        h.push_str("</div></section>\n");
    }
    h
}

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#111}\
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.sub{color:#555;margin-top:2px}table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}thead{background:#f4f4f5}tr.best td{font-weight:600;background:#ecfdf5}\
.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:4px}\
svg text{font-size:11px;fill:#333}svg .title{font-size:13px;font-weight:600;text-anchor:middle}.ytick{text-anchor:end}.xtick,.xlabel,.empty{text-anchor:middle}\
.frame{fill:none;stroke:#999}.grid{stroke:#eee}.sample{border:1px solid #e5e7eb;border-radius:6px;margin:10px 0;padding:8px}\
.row{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}.cell{background:#fafafa;border-radius:4px;padding:6px}.cell.ref{background:#f0f9ff}\
pre{white-space:pre-wrap;word-wrap:break-word;margin:4px 0 0;font-family:ui-monospace,Menlo,monospace;font-size:12px}\
.score{color:#047857;font-weight:600}.id{color:#888;font-size:.85em}";
