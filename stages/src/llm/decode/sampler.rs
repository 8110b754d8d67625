//! Picks the next token from one row of logits as transformers' `generate` does: repetition
//! penalty, then greedy or temperature → top-k → top-p → min-p → a seeded draw. One
//! `Sampler` per sequence, its RNG derived from the seed and the sequence's row index, so a
//! row's tokens never depend on which other rows share its batch.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};

/// How the next token is chosen. The defaults sample nothing away: greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); above 0 samples from `softmax(logits / t)`.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`; 1 keeps all.
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f64,
    /// HF's CTRL-style penalty on tokens already in the prompt or the output: positive
    /// logits are divided by it, negative ones multiplied; 1 disables it.
    pub repetition_penalty: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    /// Refuses values that have no meaning, naming the parameter.
    pub fn validate(&self) -> LlmResult<()> {
        let bad = |name: &str, value: f64, rule: &str| {
            Err(LlmError::Invalid(format!(
                "sampling: {name} = {value} is invalid; it must be {rule}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "0 (greedy) or positive");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", self.repetition_penalty, "positive");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The token a sampler picked and its log-probability under the model's own distribution
/// (the raw logits, before any penalty or temperature: what scoring and eval compare).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub logprob: f64,
}

/// The sampling state of one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Tokens the repetition penalty applies to (prompt and output), as a sorted set.
    seen: Vec<u32>,
    /// Scratch buffers reused across steps.
    scratch: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for the sequence at `row` (its index in the whole request, not in a batch)
    /// drawing from a stream derived from `seed` and `row`.
    pub fn new(params: &SamplingParams, seed: u64, row: u64, prompt: &[u32]) -> Self {
        let mut sampler = Sampler {
            params: params.clone(),
            rng: StdRng::seed_from_u64(splitmix(seed ^ splitmix(row.wrapping_add(1)))),
            seen: Vec::new(),
            scratch: Vec::new(),
            candidates: Vec::new(),
        };
        if params.repetition_penalty != 1.0 {
            prompt.iter().for_each(|&t| sampler.remember(t));
        }
        sampler
    }

    /// Picks the next token from `logits` (one row, the full vocabulary) and remembers it.
    pub fn pick(&mut self, logits: &[f32]) -> LlmResult<Pick> {
        if logits.is_empty() {
            return Err(LlmError::Invalid("sampler: empty logits row".into()));
        }
        let log_norm = log_sum_exp(logits);
        let mut scores = std::mem::take(&mut self.scratch);
        scores.clear();
        scores.extend_from_slice(logits);
        apply_repetition_penalty(&mut scores, &self.seen, self.params.repetition_penalty);
        let token = if self.params.is_greedy() {
            argmax(&scores)
        } else {
            self.draw(&scores)
        };
        self.scratch = scores;
        let token = token.ok_or_else(|| {
            LlmError::Invalid("sampler: every logit is NaN; the model output is broken".into())
        })?;
        if self.params.repetition_penalty != 1.0 {
            self.remember(token);
        }
        Ok(Pick {
            token,
            logprob: f64::from(logits[token as usize]) - log_norm,
        })
    }

    /// temperature → top-k → top-p → min-p, then one uniform draw. Works on an unsorted
    /// candidate list and sorts only the head top-p needs: sorting the whole vocabulary for
    /// every token of every row would cost more than the model's decode step.
    fn draw(&mut self, scores: &[f32]) -> Option<u32> {
        let mut candidates = std::mem::take(&mut self.candidates);
        let inv_t = (1.0 / self.params.temperature) as f32;
        candidates.clear();
        candidates.extend(
            scores
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_nan())
                .map(|(i, &s)| (i as u32, s * inv_t)),
        );
        if candidates.is_empty() {
            self.candidates = candidates;
            return None;
        }
        top_k_filter(&mut candidates, self.params.top_k);
        to_probabilities(&mut candidates);
        top_p_filter(&mut candidates, self.params.top_p);
        min_p_filter(&mut candidates, self.params.min_p);
        let u: f64 = self.rng.random();
        let token = draw_from(&candidates, u);
        self.candidates = candidates;
        Some(token)
    }

    fn remember(&mut self, token: u32) {
        if let Err(at) = self.seen.binary_search(&token) {
            self.seen.insert(at, token);
        }
    }
}

/// splitmix64: decorrelates structured seeds (seed, row) into independent-looking ones.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `log Σ exp(x)` in f64, ignoring NaN.
pub fn log_sum_exp(xs: &[f32]) -> f64 {
    let max = xs
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = xs
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| f64::from(x - max).exp())
        .sum();
    f64::from(max) + sum.ln()
}

/// The index of the largest value (the first one on ties, as `torch.argmax`); NaN is skipped.
pub fn argmax(xs: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// HF's `RepetitionPenaltyLogitsProcessor` on the `seen` tokens.
pub fn apply_repetition_penalty(scores: &mut [f32], seen: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let p = penalty as f32;
    for &t in seen {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = if *s > 0.0 { *s / p } else { *s * p };
        }
    }
}

/// Descending by value, then ascending by token id (a total, deterministic order).
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

/// Keeps the `k` highest scores, and every token tied with the k-th (HF's `>= kth` rule), in
/// no particular order. `k = 0` keeps everything.
pub fn top_k_filter(candidates: &mut Vec<(u32, f32)>, k: usize) {
    if k == 0 || k >= candidates.len() {
        return;
    }
    candidates.select_nth_unstable_by(k - 1, by_value_desc);
    let kth = candidates[k - 1].1;
    let mut end = k;
    for i in k..candidates.len() {
        if candidates[i].1 >= kth {
            candidates.swap(end, i);
            end += 1;
        }
    }
    candidates.truncate(end);
}

/// Scores to probabilities in place (any order).
fn to_probabilities(candidates: &mut [(u32, f32)]) {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for c in candidates.iter_mut() {
        let e = (c.1 - max).exp();
        sum += f64::from(e);
        c.1 = e;
    }
    let inv = (1.0 / sum) as f32;
    candidates.iter_mut().for_each(|c| c.1 *= inv);
}

/// Keeps the most likely tokens until their probability mass reaches `top_p` (the most likely
/// token always stays); the kept ones end up sorted descending. Only the head is sorted:
/// a window of likely tokens grows until it holds the mass.
pub fn top_p_filter(candidates: &mut Vec<(u32, f32)>, top_p: f64) {
    if top_p >= 1.0 {
        return;
    }
    let mut window = 64.min(candidates.len());
    loop {
        if window < candidates.len() {
            candidates.select_nth_unstable_by(window - 1, by_value_desc);
        }
        candidates[..window].sort_unstable_by(by_value_desc);
        let mut mass = 0f64;
        for (i, c) in candidates[..window].iter().enumerate() {
            mass += f64::from(c.1);
            if mass >= top_p {
                candidates.truncate(i + 1);
                return;
            }
        }
        if window == candidates.len() {
            return; // rounding: the whole mass is a hair below top_p; keep everything
        }
        window = (window * 4).min(candidates.len());
    }
}

/// Drops tokens whose probability is below `min_p` times the top one's (any order).
pub fn min_p_filter(candidates: &mut Vec<(u32, f32)>, min_p: f64) {
    if min_p <= 0.0 || candidates.is_empty() {
        return;
    }
    let top = candidates.iter().map(|c| c.1).fold(0f32, f32::max);
    let threshold = (min_p * f64::from(top)) as f32;
    candidates.retain(|c| c.1 >= threshold);
}

/// The token at cumulative (unnormalised) mass `u · total`.
fn draw_from(candidates: &[(u32, f32)], u: f64) -> u32 {
    let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
    let target = u * total;
    let mut acc = 0f64;
    for c in candidates {
        acc += f64::from(c.1);
        if acc > target {
            return c.0;
        }
    }
    candidates.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token ids, most likely first.
    fn ids(c: &[(u32, f32)]) -> Vec<u32> {
        let mut c = c.to_vec();
        c.sort_by(by_value_desc);
        c.iter().map(|c| c.0).collect()
    }

    fn sorted_probs(logits: &[f32]) -> Vec<(u32, f32)> {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        to_probabilities(&mut c);
        c
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = vec![2.0f32, -2.0, 1.0, 4.0];
        apply_repetition_penalty(&mut s, &[0, 1, 9], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0, 4.0]);
    }

    #[test]
    fn top_k_keeps_the_k_best_sorted_and_their_ties() {
        let mut c: Vec<(u32, f32)> = [0.1f32, 3.0, 2.0, 5.0, 2.0]
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let mut two = c.clone();
        top_k_filter(&mut two, 2);
        assert_eq!(ids(&two), vec![3, 1]);
        top_k_filter(&mut c, 3);
        assert_eq!(ids(&c), vec![3, 1, 2, 4], "the tie at the 3rd score stays");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // probabilities 0.5, 0.3, 0.15, 0.05
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut c = sorted_probs(&logits);
        top_p_filter(&mut c, 0.7);
        assert_eq!(ids(&c), vec![0, 1]);
        let mut c = sorted_probs(&logits);
        top_p_filter(&mut c, 0.81);
        assert_eq!(ids(&c), vec![0, 1, 2]);
        let mut c = sorted_probs(&logits);
        top_p_filter(&mut c, 0.1);
        assert_eq!(ids(&c), vec![0], "the top token always stays");
    }

    #[test]
    fn top_p_finds_the_head_of_a_large_vocabulary() {
        // One token with half the mass, the rest spread thinly over 10 000 tokens.
        let mut logits = vec![0f32; 10_000];
        logits[1234] = (9_999f32).ln();
        let mut c = sorted_probs(&logits);
        top_p_filter(&mut c, 0.5);
        assert_eq!(ids(&c), vec![1234]);
        let mut c = sorted_probs(&logits);
        top_p_filter(&mut c, 0.75);
        assert_eq!(
            c.len(),
            1 + 5_000,
            "half of the rest carries the remaining quarter"
        );
        assert!(
            c.windows(2).all(|w| w[0].1 >= w[1].1),
            "kept tokens are sorted"
        );
    }

    #[test]
    fn min_p_drops_tokens_below_a_share_of_the_top_one() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut c = sorted_probs(&logits);
        min_p_filter(&mut c, 0.5); // threshold 0.25
        assert_eq!(ids(&c), vec![0, 1]);
        let mut c = sorted_probs(&logits);
        min_p_filter(&mut c, 0.09); // threshold 0.045
        assert_eq!(ids(&c), vec![0, 1, 2, 3]);
    }

    #[test]
    fn greedy_picks_the_argmax_after_the_penalty_and_reports_the_raw_logprob() {
        let logits = [1.0f32, 3.0, 2.9];
        let mut s = Sampler::new(&SamplingParams::default(), 0, 0, &[]);
        let p = s.pick(&logits).unwrap();
        assert_eq!(p.token, 1);
        let want = 3.0 - log_sum_exp(&logits);
        assert!((p.logprob - want).abs() < 1e-9);
        let penalised = SamplingParams {
            repetition_penalty: 1.5,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&penalised, 0, 0, &[1]);
        assert_eq!(s.pick(&logits).unwrap().token, 2, "3/1.5 < 2.9");
    }

    #[test]
    fn sampling_is_reproducible_per_row_and_follows_the_distribution() {
        let params = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let draw = |row| {
            let mut s = Sampler::new(&params, 7, row, &[]);
            (0..2000)
                .map(|_| s.pick(&logits).unwrap().token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
        let tokens = draw(3);
        let share = tokens.iter().filter(|&&t| t == 3).count() as f64 / tokens.len() as f64;
        let want = 3f64.exp() / (0..4).map(|i| (i as f64).exp()).sum::<f64>();
        assert!((share - want).abs() < 0.04, "{share} vs {want}");
    }

    #[test]
    fn filters_bound_what_can_be_sampled() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&params, 1, 0, &[]);
        for _ in 0..200 {
            let t = s.pick(&[5.0, 0.0, 4.9, 4.8]).unwrap().token;
            assert!(t == 0 || t == 2, "{t}");
        }
    }

    #[test]
    fn invalid_parameters_are_named() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}
