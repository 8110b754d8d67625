//! The checks every trainer stage's table shares, each naming its key.

use crate::contract::ConfigIssue;

/// The keys every trainer shares: `epochs` or `max_steps`, `warmup_ratio` or `warmup_steps`
/// (each pair exclusive), and a positive `learning_rate`.
pub fn validate_run_length(
    (epochs, max_steps): (Option<f64>, Option<usize>),
    (warmup_ratio, warmup_steps): (Option<f64>, Option<usize>),
    learning_rate: f64,
) -> Result<(), ConfigIssue> {
    if epochs.is_some() && max_steps.is_some() {
        return Err(ConfigIssue::new(
            "max_steps",
            "set either `epochs` or `max_steps`, not both (max_steps counts optimizer steps)",
        ));
    }
    if warmup_ratio.is_some() && warmup_steps.is_some() {
        return Err(ConfigIssue::new(
            "warmup_steps",
            "set either `warmup_ratio` or `warmup_steps`, not both",
        ));
    }
    if let Some(e) = epochs {
        positive_finite("epochs", e, "e.g. 1 or 0.5")?;
    }
    at_least("max_steps", max_steps, 1)?;
    positive_finite("learning_rate", learning_rate, "e.g. 2e-4")?;
    if let Some(r) = warmup_ratio {
        if !(0.0..1.0).contains(&r) {
            return Err(ConfigIssue::new(
                "warmup_ratio",
                format!("must be in [0, 1), got {r}; 0.03 warms up over the first 3% of steps"),
            ));
        }
    }
    Ok(())
}

pub fn positive_finite(key: &str, v: f64, example: &str) -> Result<(), ConfigIssue> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigIssue::new(
            key,
            format!("must be a positive number, got {v} ({example})"),
        ))
    }
}

pub fn non_negative_finite(key: &str, v: f64) -> Result<(), ConfigIssue> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigIssue::new(
            key,
            format!("must be 0 or a positive number, got {v} (0 turns it off)"),
        ))
    }
}

pub fn at_least(key: &str, v: Option<usize>, min: usize) -> Result<(), ConfigIssue> {
    match v {
        Some(n) if n < min => Err(ConfigIssue::new(
            key,
            format!("must be at least {min}, got {n}"),
        )),
        _ => Ok(()),
    }
}
