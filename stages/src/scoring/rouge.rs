//! ROUGE-L (Lin 2004): how much of the reference's token sequence the candidate reproduces in
//! order, as the longest common subsequence (LCS) of the two token sequences.
//!
//! Definitions as in Google's rouge-score (`rouge_scorer.RougeScorer(["rougeL"])`, the
//! sentence-level variant, not the summary-level `rougeLsum`): precision = LCS / candidate
//! tokens, recall = LCS / reference tokens, F1 = 2PR / (P + R); 0 when either side has no
//! tokens. Tokens come from [`super::tokens`], which also works for Korean, Chinese and
//! Japanese.

use super::tokens::tokens;

/// ROUGE-L precision, recall and F1 of one candidate against one reference, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeL {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl RougeL {
    /// Tokenises both texts and scores them.
    pub fn score(candidate: &str, reference: &str) -> Self {
        Self::from_tokens(&tokens(candidate), &tokens(reference))
    }

    /// Scores two token sequences.
    pub fn from_tokens<T: PartialEq>(candidate: &[T], reference: &[T]) -> Self {
        if candidate.is_empty() || reference.is_empty() {
            return Self::ZERO;
        }
        let lcs = lcs_len(candidate, reference) as f64;
        let precision = lcs / candidate.len() as f64;
        let recall = lcs / reference.len() as f64;
        Self {
            precision,
            recall,
            f1: f1(precision, recall),
        }
    }

    const ZERO: Self = Self {
        precision: 0.0,
        recall: 0.0,
        f1: 0.0,
    };
}

/// The harmonic mean, 0 when both are 0 (rouge-score's `fmeasure`).
fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// Length of the longest common subsequence: the classic dynamic programme, keeping one row
/// (of the shorter sequence) so that long answers cost O(n·m) time but only O(min) memory.
fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row = vec![0usize; short.len() + 1];
    for x in long {
        // `diagonal` is row[j - 1] of the previous iteration of the outer loop.
        let mut diagonal = 0;
        for (j, y) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[short.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn lcs_of_known_sequences() {
        assert_eq!(lcs_len(b"ABCBDAB", b"BDCABA"), 4);
        assert_eq!(lcs_len(b"abc", b"abc"), 3);
        assert_eq!(lcs_len(b"abc", b"xyz"), 0);
        assert_eq!(lcs_len(b"", b"xyz"), 0);
        assert_eq!(lcs_len(b"axbxc", b"abc"), 3);
    }

    #[test]
    fn english_matches_rouge_score() {
        // rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction) gives
        // precision 5/6, recall 5/6, fmeasure 0.8333333333333334 for these:
        // LCS = "the cat on the mat" (5 of 6 tokens on each side).
        let s = RougeL::score("the cat was on the mat", "The cat sat on the mat.");
        assert!(close(s.precision, 5.0 / 6.0), "{s:?}");
        assert!(close(s.recall, 5.0 / 6.0), "{s:?}");
        assert!(close(s.f1, 0.8333333333333334), "{s:?}");
        // Candidate "police killed the gunman", reference "the gunman was killed by police"
        // (rouge-score: P 0.5, R 1/3, F 0.4): LCS "killed" or "the gunman" has length 2.
        let s = RougeL::score(
            "police killed the gunman",
            "the gunman was killed by police",
        );
        assert!(
            close(s.precision, 0.5) && close(s.recall, 1.0 / 3.0),
            "{s:?}"
        );
        assert!(close(s.f1, 0.4), "{s:?}");
    }

    #[test]
    fn korean_is_matched_by_syllable() {
        // Candidate 사과를 먹었다 → 사 과 를 먹 었 다 (6), reference 사과가 맛있다 →
        // 사 과 가 맛 있 다 (6); LCS 사 과 다 = 3: P = R = F = 0.5.
        let s = RougeL::score("사과를 먹었다", "사과가 맛있다");
        assert!(close(s.precision, 0.5) && close(s.recall, 0.5), "{s:?}");
        assert!(close(s.f1, 0.5), "{s:?}");
        // Whole-eojeol matching would have scored 0 here; identical text scores 1.
        assert!(close(RougeL::score("안녕하세요", "안녕하세요").f1, 1.0));
    }

    #[test]
    fn empty_sides_score_zero() {
        assert_eq!(RougeL::score("", "the cat"), RougeL::ZERO);
        assert_eq!(RougeL::score("the cat", " ... "), RougeL::ZERO);
        assert_eq!(RougeL::score("", ""), RougeL::ZERO);
    }
}
