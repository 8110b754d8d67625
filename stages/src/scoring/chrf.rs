//! chrF (Popović 2015): the character n-gram F-score, as sacrebleu computes it for one
//! sentence against one reference, so numbers can be compared with published ones.
//!
//! sacrebleu 2.x defaults (`CHRF()`: char_order 6, word_order 0, beta 2, case-sensitive,
//! whitespace=False, eps_smoothing=False):
//! - whitespace is removed before n-grams are taken (Python's `''.join(text.split())`), so
//!   n-grams run across word boundaries;
//! - for each order n = 1..=6: precision = matched / candidate n-grams and recall = matched /
//!   reference n-grams, where matched = Σ min(count in candidate, count in reference);
//! - precision and recall are averaged over the "effective" orders, those where both sides
//!   have at least one n-gram (short texts do not get zeros for the orders they cannot have);
//! - score = (1 + β²)·P·R / (β²·P + R); β = 2 weighs recall four times as much as precision.
//!
//! sacrebleu reports 0–100; we report 0–1. Characters are Unicode scalar values, as Python's
//! string slicing counts them, so Korean is scored syllable by syllable.

use std::collections::HashMap;

/// A chrF scorer with a fixed n-gram order and β.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chrf {
    char_order: usize,
    beta: f64,
}

impl Default for Chrf {
    /// sacrebleu's defaults: n-grams up to 6 characters, β = 2.
    fn default() -> Self {
        Self {
            char_order: 6,
            beta: 2.0,
        }
    }
}

impl Chrf {
    /// `char_order` ≥ 1 and `beta` > 0 (checked by the config; other values give 0 scores).
    pub fn new(char_order: usize, beta: f64) -> Self {
        Self { char_order, beta }
    }

    /// The chrF of `candidate` against `reference`, in [0, 1].
    pub fn score(&self, candidate: &str, reference: &str) -> f64 {
        let hyp = without_whitespace(candidate);
        let reference = without_whitespace(reference);
        let mut precision = 0.0;
        let mut recall = 0.0;
        let mut effective = 0usize;
        for n in 1..=self.char_order {
            let stats = NgramStats::of(&hyp, &reference, n);
            if stats.hyp > 0 && stats.reference > 0 {
                precision += stats.matched as f64 / stats.hyp as f64;
                recall += stats.matched as f64 / stats.reference as f64;
                effective += 1;
            }
        }
        if effective == 0 {
            return 0.0;
        }
        f_beta(
            precision / effective as f64,
            recall / effective as f64,
            self.beta,
        )
    }
}

fn f_beta(precision: f64, recall: f64, beta: f64) -> f64 {
    let factor = beta * beta;
    let denominator = factor * precision + recall;
    if precision + recall > 0.0 && denominator > 0.0 {
        (1.0 + factor) * precision * recall / denominator
    } else {
        0.0
    }
}

/// Candidate, reference and matched n-gram counts of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NgramStats {
    hyp: usize,
    reference: usize,
    matched: usize,
}

impl NgramStats {
    fn of(hyp: &[char], reference: &[char], n: usize) -> Self {
        let hyp_counts = ngram_counts(hyp, n);
        let ref_counts = ngram_counts(reference, n);
        let matched = hyp_counts
            .iter()
            .map(|(gram, &count)| count.min(ref_counts.get(gram).copied().unwrap_or(0)))
            .sum();
        Self {
            hyp: hyp.len().saturating_sub(n - 1),
            reference: reference.len().saturating_sub(n - 1),
            matched,
        }
    }
}

fn ngram_counts(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut counts = HashMap::new();
    if n > 0 {
        for gram in chars.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// The characters of `text` minus what Python's `str.split()` splits on: Unicode White_Space
/// plus the ASCII separators U+001C..U+001F, which Python also counts as whitespace.
fn without_whitespace(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| !(c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrf(candidate: &str, reference: &str) -> f64 {
        Chrf::default().score(candidate, reference)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_short_case() {
        // "abc" vs "abd": orders 1..3 are effective (both sides have n-grams).
        // n=1: 2/3 matched each way; n=2: "ab" matches, 1/2; n=3: "abc" vs "abd", 0/1.
        // P = R = (2/3 + 1/2 + 0) / 3 = 7/18; with P = R the F-score is 7/18 for any β.
        assert!(close(chrf("abc", "abd"), 7.0 / 18.0));
        // Whitespace is dropped before n-grams are taken.
        assert!(close(chrf("a b c", "ab\td"), 7.0 / 18.0));
    }

    #[test]
    fn matches_sacrebleu_on_english() {
        // sacrebleu 2.4.3: CHRF().sentence_score(hyp, [ref]).score / 100
        let cases = [
            (
                "The cat sat on the mat.",
                "The cat is sitting on the mat.",
                0.496_485_170_311_433,
            ),
            (
                "the gunman was killed by police",
                "police killed the gunman",
                0.674_409_648_064_762_8,
            ),
            (
                "ls lists directory contents",
                "list directory contents",
                0.838_337_702_345_948_8,
            ),
        ];
        for (hyp, reference, expected) in cases {
            let got = chrf(hyp, reference);
            assert!(close(got, expected), "{hyp:?}: {got} != {expected}");
        }
    }

    #[test]
    fn matches_sacrebleu_on_korean() {
        // sacrebleu 2.4.3: CHRF().sentence_score(hyp, [ref]).score / 100. By hand for the
        // first: 사과를먹었다 vs 사과가맛있다, 6 characters each; unigrams match 사 과 다
        // (3/6), bigrams 사과 (1/5), no longer n-gram matches; all six orders are effective,
        // so P = R = (1/2 + 1/5) / 6 = 7/60.
        let cases = [
            ("사과를 먹었다", "사과가 맛있다", 0.116_666_666_666_666_64),
            (
                "디렉터리의 내용을 나열합니다",
                "디렉터리 내용을 나열한다",
                0.429_120_585_006_678_27,
            ),
        ];
        for (hyp, reference, expected) in cases {
            let got = chrf(hyp, reference);
            assert!(close(got, expected), "{hyp:?}: {got} != {expected}");
        }
    }

    #[test]
    fn identical_is_one_and_disjoint_or_empty_is_zero() {
        assert!(close(chrf("안녕하세요 세계", "안녕하세요 세계"), 1.0));
        assert_eq!(chrf("xyz", "abc"), 0.0);
        assert_eq!(chrf("", "abc"), 0.0);
        assert_eq!(chrf("abc", "   "), 0.0);
    }

    #[test]
    fn case_matters_as_in_sacrebleu() {
        // sacrebleu 17.777...: unigrams h e a t (4/6), bigrams he at (2/5), nothing longer;
        // P = R = (2/3 + 2/5) / 6.
        assert!(close(chrf("The Cat", "the cat"), 0.177_777_777_777_777_78));
    }
}
