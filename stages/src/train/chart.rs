//! Terminal charts of a training run for `pipe show` (train values per step as `·`, eval
//! values as `o`, and a sparkline), shared by the trainer stages.

use std::io::Write;

const CHART_WIDTH: usize = 60;
const CHART_HEIGHT: usize = 10;

/// A chart of `name` over the steps: `train` points (step, value) and `evals`.
pub fn write_chart(
    name: &str,
    train: &[(usize, f64)],
    evals: &[(usize, f64)],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let finite = |points: &[(usize, f64)]| -> Vec<(usize, f64)> {
        points
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let (train, evals) = (finite(train), finite(evals));
    if train.is_empty() && evals.is_empty() {
        return writeln!(out, "{name} curve  (no steps logged)");
    }
    let last_step = train
        .iter()
        .chain(&evals)
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(1)
        .max(1);
    let values = train.iter().chain(&evals).map(|(_, v)| *v);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let span = (hi - lo).max(1e-9);
    let width = CHART_WIDTH.min(last_step + 1);
    let column = |step: usize| step * (width - 1) / last_step;
    let row = |value: f64| ((hi - value) / span * (CHART_HEIGHT - 1) as f64).round() as usize;
    let mut grid = vec![vec![' '; width]; CHART_HEIGHT];
    for (col, mean) in column_means(&train, width, column) {
        grid[row(mean)][col] = '·';
    }
    for &(step, value) in &evals {
        grid[row(value)][column(step)] = 'o';
    }
    writeln!(out, "{name} curve  · train   o eval")?;
    for (i, line) in grid.iter().enumerate() {
        let label = if i == 0 {
            format!("{hi:>8.3}")
        } else if i == CHART_HEIGHT - 1 {
            format!("{lo:>8.3}")
        } else {
            " ".repeat(8)
        };
        writeln!(out, "  {label} │{}", line.iter().collect::<String>())?;
    }
    writeln!(out, "  {} └{}", " ".repeat(8), "─".repeat(width))?;
    writeln!(
        out,
        "  {} step 0{}step {last_step}",
        " ".repeat(8),
        " ".repeat(width.saturating_sub(7 + format!("step {last_step}").len()))
    )?;
    if !train.is_empty() {
        let means: Vec<f64> = column_means(&train, width, column)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        writeln!(out, "  train     {}", sparkline(&means))?;
    }
    Ok(())
}

/// The mean of the points falling into each column.
fn column_means(
    points: &[(usize, f64)],
    width: usize,
    column: impl Fn(usize) -> usize,
) -> Vec<(usize, f64)> {
    let mut sums = vec![(0.0, 0usize); width];
    for &(step, value) in points {
        let c = column(step).min(width - 1);
        sums[c].0 += value;
        sums[c].1 += 1;
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(c, (s, n))| (c, s / n as f64))
        .collect()
}

/// `▇▆▅▃▂▁`: one block per value, scaled between the minimum and the maximum.
pub fn sparkline(values: &[f64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-12);
    values
        .iter()
        .map(|v| BLOCKS[(((v - lo) / span) * 7.0).round() as usize])
        .collect()
}

/// The values of one metric over the steps (`loss` and `eval_loss` are fields of the record,
/// the others are in its map).
pub fn series(records: &[super::metrics::MetricRecord], key: &str) -> Vec<(usize, f64)> {
    records
        .iter()
        .filter_map(|r| {
            let v = match key {
                "loss" => r.loss,
                "eval_loss" => r.eval_loss,
                _ => r.extra.get(key).copied(),
            };
            v.map(|v| (r.step, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_named_and_scaled_to_its_values() {
        let train: Vec<(usize, f64)> = (1..=20).map(|s| (s, s as f64 / 20.0)).collect();
        let mut out = Vec::new();
        write_chart("accuracy", &train, &[(0, 0.25), (20, 0.9)], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("accuracy curve"), "{text}");
        assert!(text.contains("1.000") && text.contains("0.050"), "{text}");
        assert_eq!(sparkline(&[1.0, 0.0]), "█▁");
        let mut empty = Vec::new();
        write_chart("margin", &[], &[(1, f64::NAN)], &mut empty).unwrap();
        assert!(String::from_utf8(empty).unwrap().contains("no steps"));
    }
}
