//! Word tokens for ROUGE-L and the token-length rules, for any script: one tokeniser so that
//! "200 tokens" means the same thing to every scorer.
//!
//! The text is split with Unicode word segmentation (UAX #29), which drops punctuation and
//! whitespace and works for any script that separates words with spaces; tokens are
//! lowercased (as rouge-score does). Han, Hiragana, Katakana and Hangul are then split into
//! single characters:
//! - Chinese and Japanese do not put spaces between words, and UAX #29 does not find word
//!   boundaries in them, so whole runs would otherwise count as one "word".
//! - Korean separates eojeol (a word plus its particles and endings) by spaces, but the
//!   particles are glued on: `사과를` and `사과가` share the noun `사과` and would never match
//!   as whole eojeol. Matching Hangul syllable by syllable credits that overlap without a
//!   morphological analyser (a dictionary-sized dependency).
//!
//! Latin, Cyrillic, digits and the like inside a mixed token (`GPU를`) stay one token each.
//! Differences from rouge-score's default tokeniser, which keeps only `[a-z0-9]` runs: letters
//! of every script are kept, and `don't` or `3.14` stay one token (UAX #29 keeps
//! apostrophes and decimal points inside words).

use unicode_segmentation::UnicodeSegmentation;

/// The tokens of `text`, lowercased; see the module docs.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.unicode_words() {
        if word.chars().any(is_character_script) {
            split_characters(word, &mut out);
        } else {
            out.push(word.to_lowercase());
        }
    }
    out
}

/// How many tokens `text` has (for length rules), without keeping them.
pub fn count(text: &str) -> usize {
    text.unicode_words()
        .map(|word| {
            if word.chars().any(is_character_script) {
                let mut parts = Vec::new();
                split_characters(word, &mut parts);
                parts.len()
            } else {
                1
            }
        })
        .sum()
}

/// One token per Han/Kana/Hangul character; runs of other characters stay together.
fn split_characters(word: &str, out: &mut Vec<String>) {
    let mut run = String::new();
    for c in word.chars() {
        if is_character_script(c) {
            if !run.is_empty() {
                out.push(std::mem::take(&mut run).to_lowercase());
            }
            out.push(c.to_string());
        } else {
            run.push(c);
        }
    }
    if !run.is_empty() {
        out.push(run.to_lowercase());
    }
}

/// Scripts matched character by character: Han, Hiragana, Katakana, Hangul.
fn is_character_script(c: char) -> bool {
    matches!(u32::from(c),
        0x1100..=0x11FF       // Hangul Jamo
        | 0x3040..=0x309F     // Hiragana
        | 0x30A0..=0x30FF     // Katakana
        | 0x3130..=0x318F     // Hangul Compatibility Jamo
        | 0x31F0..=0x31FF     // Katakana Phonetic Extensions
        | 0x3400..=0x4DBF     // CJK Unified Ideographs Extension A
        | 0x4E00..=0x9FFF     // CJK Unified Ideographs
        | 0xA960..=0xA97F     // Hangul Jamo Extended-A
        | 0xAC00..=0xD7AF     // Hangul Syllables
        | 0xD7B0..=0xD7FF     // Hangul Jamo Extended-B
        | 0xF900..=0xFAFF     // CJK Compatibility Ideographs
        | 0xFF66..=0xFFDC     // Halfwidth Katakana and Hangul
        | 0x20000..=0x3134F   // CJK Unified Ideographs Extensions B-G, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_split_into_lowercase_words_without_punctuation() {
        assert_eq!(
            tokens("The Cat, don't sit! It costs 3.14 dollars."),
            ["the", "cat", "don't", "sit", "it", "costs", "3.14", "dollars"]
        );
    }

    #[test]
    fn hangul_is_split_into_syllables() {
        assert_eq!(
            tokens("사과를 먹었다."),
            ["사", "과", "를", "먹", "었", "다"]
        );
        assert_eq!(tokens("GPU를 써요"), ["gpu", "를", "써", "요"]);
    }

    #[test]
    fn chinese_and_japanese_are_split_into_characters() {
        assert_eq!(tokens("我爱北京"), ["我", "爱", "北", "京"]);
        assert_eq!(tokens("カタカナです"), ["カ", "タ", "カ", "ナ", "で", "す"]);
    }

    #[test]
    fn count_agrees_with_tokens() {
        for text in [
            "",
            "  ...  ",
            "Hello, world",
            "사과를 먹었다",
            "GPU를 써요 in 東京",
        ] {
            assert_eq!(count(text), tokens(text).len(), "{text}");
        }
    }
}
