//! Score distributions for the score stage's stats and `pipe show score`: count, mean, min,
//! p10/p50/p90, max and a 10-bin histogram over [0, 1] per score (the combined one, each
//! scorer's, each part's), plus a terminal renderer.
//!
//! Every score is in [0, 1], so the bins are fixed (`[0, 0.1)`, ..., `[0.9, 1.0]`) and
//! histograms of different scorers and runs line up. Percentiles interpolate linearly
//! between the two nearest ranks, as numpy's default `percentile` does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Scores;

/// Histogram bins over [0, 1].
pub const BINS: usize = 10;

/// Summary of one score over a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
    /// Counts per bin: bin k holds [k/10, (k+1)/10), the last one also 1.0.
    pub histogram: [usize; BINS],
}

impl Distribution {
    /// The distribution of the finite values; `None` if there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mut histogram = [0; BINS];
        for &v in &sorted {
            histogram[bin(v)] += 1;
        }
        Some(Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            p10: percentile(&sorted, 0.10),
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            max: sorted[sorted.len() - 1],
            histogram,
        })
    }

    /// `label  n=120  mean 0.532  min ...` on one line.
    pub fn summary(&self, label: &str) -> String {
        format!(
            "{label}  n={}  mean {:.3}  min {:.3}  p10 {:.3}  p50 {:.3}  p90 {:.3}  max {:.3}",
            self.count, self.mean, self.min, self.p10, self.p50, self.p90, self.max
        )
    }

    /// The summary line, then one bar per bin scaled so the fullest bin is `width` cells
    /// (drawn in eighths of a cell), with the count after it.
    pub fn render(&self, label: &str, width: usize) -> String {
        let mut out = self.summary(label);
        out.push('\n');
        let fullest = self.histogram.iter().copied().max().unwrap_or(0).max(1);
        let digits = fullest.to_string().len();
        for (k, &n) in self.histogram.iter().enumerate() {
            let bar = bar(n, fullest, width);
            let pad = width.saturating_sub(bar.chars().count());
            let _ = writeln!(
                out,
                "  {:.1}-{:.1} │{bar}{} {n:>digits$}",
                k as f64 / BINS as f64,
                (k + 1) as f64 / BINS as f64,
                " ".repeat(pad),
            );
        }
        out
    }
}

/// The bin of a score; values outside [0, 1] land in the end bins.
fn bin(v: f64) -> usize {
    let k = (v.clamp(0.0, 1.0) * BINS as f64).floor() as usize;
    k.min(BINS - 1)
}

/// Linear interpolation between closest ranks (numpy's default) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// `n` of `fullest` as a bar of at most `width` cells, in eighths.
fn bar(n: usize, fullest: usize, width: usize) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let eighths = (n as f64 / fullest as f64 * width as f64 * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    let rest = eighths % 8;
    if rest > 0 {
        s.push(EIGHTHS[rest - 1]);
    }
    // A bin with any count shows at least a sliver: "none" and "a few" must look different.
    if n > 0 && s.is_empty() {
        s.push('▏');
    }
    s
}

/// The distribution of the combined score, each scorer's and each part's, keyed
/// `combined`, `reference`, `reference.chrf`, `rules.<name>`, ...
pub fn distributions(scores: &[Scores]) -> BTreeMap<String, Distribution> {
    let mut columns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in scores {
        columns
            .entry("combined".to_string())
            .or_default()
            .push(s.combined);
        for (k, &v) in s.scorers.iter().chain(&s.components) {
            columns.entry(k.clone()).or_default().push(v);
        }
    }
    columns
        .into_iter()
        .filter_map(|(k, v)| Distribution::of(&v).map(|d| (k, d)))
        .collect()
}

/// `pipe show score`'s view: histograms for `combined` and each scorer, one summary line per
/// part (a rule's part is its pass rate, shown as the mean).
pub fn render_distributions(dists: &BTreeMap<String, Distribution>, width: usize) -> String {
    let label_width = dists.keys().map(|k| k.chars().count()).max().unwrap_or(0);
    let label = |k: &str| format!("{k:<label_width$}");
    let mut out = String::new();
    let mut order: Vec<&String> = dists.keys().collect();
    // `combined` first, then the scorers, each followed by its parts (BTreeMap order).
    order.sort_by_key(|k| (k.as_str() != "combined", k.as_str()));
    for key in order {
        let d = &dists[key];
        if key.contains('.') {
            let _ = writeln!(out, "{}", d.summary(&label(key)));
        } else {
            out.push_str(&d.render(&label(key), width));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [10, 50, 90]) = [1.3, 2.5, 3.7]
        let d = Distribution::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert!((d.p10 - 1.3).abs() < 1e-12, "{d:?}");
        assert!((d.p50 - 2.5).abs() < 1e-12, "{d:?}");
        assert!((d.p90 - 3.7).abs() < 1e-12, "{d:?}");
        assert_eq!((d.min, d.max, d.mean, d.count), (1.0, 4.0, 2.5, 4));
        let one = Distribution::of(&[0.25]).unwrap();
        assert_eq!((one.p10, one.p50, one.p90), (0.25, 0.25, 0.25));
        assert_eq!(Distribution::of(&[]), None);
        assert_eq!(Distribution::of(&[f64::NAN]), None);
    }

    #[test]
    fn histogram_bins_are_tenths_with_one_in_the_last() {
        let d = Distribution::of(&[0.0, 0.05, 0.15, 0.55, 0.95, 1.0, 1.0]).unwrap();
        assert_eq!(d.histogram, [2, 1, 0, 0, 0, 1, 0, 0, 0, 3]);
    }

    #[test]
    fn renders_bars_scaled_to_the_fullest_bin() {
        let d = Distribution::of(&[0.05, 0.95, 0.95, 0.95, 0.95]).unwrap();
        let text = d.render("combined", 8);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "combined  n=5  mean 0.770  min 0.050  p10 0.410  p50 0.950  p90 0.950  max 0.950"
        );
        assert_eq!(lines[1], "  0.0-0.1 │██       1");
        assert_eq!(lines[2], "  0.1-0.2 │         0");
        assert_eq!(lines[10], "  0.9-1.0 │████████ 4");
        assert_eq!(lines.len(), 11);
        assert_eq!(bar(1, 100, 8), "▏");
        assert_eq!(bar(3, 16, 8), "█▌");
    }

    #[test]
    fn distributions_cover_combined_scorers_and_parts() {
        let scores: Vec<Scores> = [0.2, 0.8]
            .iter()
            .map(|&v| Scores {
                combined: v,
                scorers: BTreeMap::from([("reference".to_string(), v)]),
                components: BTreeMap::from([("rules.short".to_string(), 1.0)]),
            })
            .collect();
        let d = distributions(&scores);
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            ["combined", "reference", "rules.short"]
        );
        assert!((d["reference"].mean - 0.5).abs() < 1e-12);
        let text = render_distributions(&d, 10);
        assert!(text.starts_with("combined     n=2"), "{text}");
        assert!(text.contains("\nreference    n=2"), "{text}");
        assert!(text.ends_with("rules.short  n=2  mean 1.000  min 1.000  p10 1.000  p50 1.000  p90 1.000  max 1.000\n"), "{text}");
    }
}
