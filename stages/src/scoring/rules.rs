//! The `rules` scorer: checks a candidate must pass (regexes that must or must not match,
//! length bounds, valid JSON), each with a weight. Score = the weighted share of rules passed:
//! Σ weight(passed) / Σ weight(all), in [0, 1].
//!
//! Each `[[score.rules.rule]]` holds exactly one check:
//! - `must_match = "regex"` / `must_not_match = "regex"`: Rust `regex` syntax (no look-around
//!   or back-references; `(?i)` for case-insensitive, `(?s)` to let `.` cross newlines),
//!   searched anywhere in the candidate (anchor with `^`/`$` for the whole text);
//! - `min_tokens` and/or `max_tokens`: inclusive bounds on the token count, tokens as ROUGE-L
//!   counts them (words; Han, Kana and Hangul characters one by one, see [`super::tokens`]);
//! - `min_chars` and/or `max_chars`: inclusive bounds on Unicode characters (scalar values)
//!   of the candidate with leading and trailing whitespace trimmed;
//! - `json = true`: the trimmed candidate parses as one JSON value (a Markdown code fence
//!   around it fails: models asked for JSON should answer JSON).
//!
//! A rule's `name` (default: the check written out, e.g. `max_tokens 200`) names it in stats
//! and errors, so names must be unique.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::ScoringError;
use super::tokens;
use crate::contract::ConfigIssue;

/// The `[score.rules]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// This scorer's weight in the combined score.
    #[serde(default = "one")]
    pub weight: f64,
    /// The checks, as `[[score.rules.rule]]` tables.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

/// One `[[score.rules.rule]]`: exactly one check (a length check may set both bounds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in stats and errors; default: the check written out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The rule's weight among the rules.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_chars: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<bool>,
}

fn one() -> f64 {
    1.0
}

/// What a length bound counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    Tokens,
    Chars,
}

impl LengthUnit {
    fn key(self) -> &'static str {
        match self {
            LengthUnit::Tokens => "tokens",
            LengthUnit::Chars => "chars",
        }
    }

    /// `min_tokens`, `max_chars`, ...: the config key of a bound.
    fn bound_key(self, min: bool) -> &'static str {
        match (self, min) {
            (LengthUnit::Tokens, true) => "min_tokens",
            (LengthUnit::Tokens, false) => "max_tokens",
            (LengthUnit::Chars, true) => "min_chars",
            (LengthUnit::Chars, false) => "max_chars",
        }
    }

    fn measure(self, candidate: &str) -> usize {
        match self {
            LengthUnit::Tokens => tokens::count(candidate),
            LengthUnit::Chars => candidate.trim().chars().count(),
        }
    }
}

/// A compiled check.
#[derive(Debug, Clone)]
pub enum Check {
    MustMatch(Regex),
    MustNotMatch(Regex),
    Length {
        unit: LengthUnit,
        min: Option<usize>,
        max: Option<usize>,
    },
    Json,
}

impl Check {
    fn passes(&self, candidate: &str) -> bool {
        match self {
            Check::MustMatch(re) => re.is_match(candidate),
            Check::MustNotMatch(re) => !re.is_match(candidate),
            Check::Length { unit, min, max } => {
                let n = unit.measure(candidate);
                min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)
            }
            Check::Json => serde_json::from_str::<serde_json::Value>(candidate.trim()).is_ok(),
        }
    }
}

/// A named, weighted check.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub weight: f64,
    pub check: Check,
}

/// The outcome of all rules on one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesOutcome {
    /// Weighted share of rules passed, in [0, 1].
    pub score: f64,
    /// One entry per rule, in config order.
    pub passed: Vec<bool>,
}

/// Scores candidates by the weighted share of rules they pass.
#[derive(Debug, Clone)]
pub struct RulesScorer {
    rules: Vec<Rule>,
}

impl RulesConfig {
    /// Checks keys relative to the `[score]` table (`rules.rule.2.must_match`; rules count
    /// from 1 as a reader counts the `[[score.rules.rule]]` headers).
    pub fn validate(&self, table: &str) -> Result<(), ConfigIssue> {
        if self.rule.is_empty() {
            return Err(ConfigIssue::new(
                format!("{table}.rule"),
                "is empty: add at least one [[score.rules.rule]] table (e.g. max_tokens = 200), \
                 or remove [score.rules]",
            ));
        }
        let mut names = std::collections::BTreeMap::new();
        for (i, rule) in self.rule.iter().enumerate() {
            let at = format!("{table}.rule.{}", i + 1);
            let check = compile(rule)
                .map_err(|(key, message)| ConfigIssue::new(format!("{at}.{key}"), message))?;
            if !(rule.weight.is_finite() && rule.weight > 0.0) {
                return Err(ConfigIssue::new(
                    format!("{at}.weight"),
                    format!(
                        "must be a number > 0, got {}; remove the rule to disable it",
                        rule.weight
                    ),
                ));
            }
            let name = rule_name(rule, &check);
            if name.trim().is_empty() {
                return Err(ConfigIssue::new(format!("{at}.name"), "must not be blank"));
            }
            if let Some(first) = names.insert(name.clone(), i + 1) {
                return Err(ConfigIssue::new(
                    format!("{at}.name"),
                    format!("is `{name}`, like rule {first}; give the rules distinct names"),
                ));
            }
        }
        Ok(())
    }
}

impl RulesScorer {
    /// Compiles the rules; refuses what `validate` refuses, naming the rule.
    pub fn new(cfg: &RulesConfig) -> Result<Self, ScoringError> {
        cfg.validate("rules")
            .map_err(|issue| ScoringError::Config {
                table: "score".into(),
                key: issue.key,
                message: issue.message,
            })?;
        let rules = cfg
            .rule
            .iter()
            .map(|rule| {
                let check = compile(rule).map_err(|(_, message)| ScoringError::Rule {
                    rule: rule.name.clone().unwrap_or_default(),
                    message,
                })?;
                Ok(Rule {
                    name: rule_name(rule, &check),
                    weight: rule.weight,
                    check,
                })
            })
            .collect::<Result<_, ScoringError>>()?;
        Ok(Self { rules })
    }

    /// The rules, in config order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Runs every rule on `candidate`.
    pub fn score(&self, candidate: &str) -> RulesOutcome {
        let passed: Vec<bool> = self
            .rules
            .iter()
            .map(|r| r.check.passes(candidate))
            .collect();
        let total: f64 = self.rules.iter().map(|r| r.weight).sum();
        let earned: f64 = self
            .rules
            .iter()
            .zip(&passed)
            .filter(|(_, &ok)| ok)
            .map(|(r, _)| r.weight)
            .sum();
        let score = if total > 0.0 { earned / total } else { 0.0 };
        RulesOutcome {
            score: score.clamp(0.0, 1.0),
            passed,
        }
    }
}

/// Turns one rule table into its check; `Err((key, message))` names the offending key.
fn compile(rule: &RuleConfig) -> Result<Check, (&'static str, String)> {
    let mut checks = Vec::new();
    if let Some(pattern) = &rule.must_match {
        checks.push((
            "must_match",
            Check::MustMatch(regex("must_match", pattern)?),
        ));
    }
    if let Some(pattern) = &rule.must_not_match {
        checks.push((
            "must_not_match",
            Check::MustNotMatch(regex("must_not_match", pattern)?),
        ));
    }
    for (unit, min, max) in [
        (LengthUnit::Tokens, rule.min_tokens, rule.max_tokens),
        (LengthUnit::Chars, rule.min_chars, rule.max_chars),
    ] {
        if let Some(check) = length(unit, min, max)? {
            checks.push((unit.bound_key(min.is_some()), check));
        }
    }
    match rule.json {
        Some(true) => checks.push(("json", Check::Json)),
        Some(false) => {
            return Err((
                "json",
                "= false checks nothing; use json = true, or remove the key".into(),
            ))
        }
        None => {}
    }
    let mut checks = checks.into_iter();
    match (checks.next(), checks.next()) {
        (Some((_, check)), None) => Ok(check),
        (None, _) => Err((
            "must_match",
            "is missing: a rule needs one check: must_match, must_not_match, min_tokens/\
             max_tokens, min_chars/max_chars or json = true"
                .into(),
        )),
        (Some((first, _)), Some((second, _))) => Err((
            second,
            format!(
                "is a second check in a rule that already has `{first}`; put each check in its \
                 own [[score.rules.rule]] so each gets its own weight"
            ),
        )),
    }
}

fn regex(key: &'static str, pattern: &str) -> Result<Regex, (&'static str, String)> {
    if pattern.is_empty() {
        return Err((key, "is empty; an empty pattern matches everything".into()));
    }
    Regex::new(pattern).map_err(|e| (key, format!("is not a valid regex: {e}")))
}

fn length(
    unit: LengthUnit,
    min: Option<usize>,
    max: Option<usize>,
) -> Result<Option<Check>, (&'static str, String)> {
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            return Err((
                unit.bound_key(true),
                format!("is {lo}, more than the maximum {hi}"),
            ));
        }
    }
    Ok((min.is_some() || max.is_some()).then_some(Check::Length { unit, min, max }))
}

/// The rule's name, or its check written out: `must_match /\d+/`, `tokens 3..=200`, `json`.
fn rule_name(rule: &RuleConfig, check: &Check) -> String {
    if let Some(name) = &rule.name {
        return name.clone();
    }
    match check {
        Check::MustMatch(re) => format!("must_match /{}/", re.as_str()),
        Check::MustNotMatch(re) => format!("must_not_match /{}/", re.as_str()),
        Check::Length { unit, min, max } => match (min, max) {
            (Some(lo), Some(hi)) => format!("{} {lo}..={hi}", unit.key()),
            (Some(lo), None) => format!("min_{} {lo}", unit.key()),
            (None, Some(hi)) => format!("max_{} {hi}", unit.key()),
            (None, None) => unit.key().to_string(),
        },
        Check::Json => "json".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> RulesConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn scorer(toml_text: &str) -> RulesScorer {
        RulesScorer::new(&rules(toml_text)).unwrap()
    }

    fn issue(toml_text: &str) -> ConfigIssue {
        rules(toml_text).validate("rules").unwrap_err()
    }

    #[test]
    fn must_match_and_must_not_match() {
        let s = scorer(
            "[[rule]]\nmust_match = '(?i)\\bls\\b'\n[[rule]]\nmust_not_match = '(?i)as an ai'\n",
        );
        assert_eq!(s.score("Use LS -l.").passed, [true, true]);
        assert_eq!(s.score("As an AI, I would use ls").passed, [true, false]);
        assert_eq!(s.score("As an AI I cannot").score, 0.0);
        assert_eq!(s.rules()[0].name, "must_match /(?i)\\bls\\b/");
    }

    #[test]
    fn token_bounds_count_words_and_korean_syllables() {
        let s = scorer("[[rule]]\nmin_tokens = 2\nmax_tokens = 4\n");
        assert_eq!(s.score("one").passed, [false]);
        assert_eq!(s.score("one, two!").passed, [true]);
        assert_eq!(s.score("one two three four five").passed, [false]);
        // 사과를 먹다 is five syllable tokens.
        assert_eq!(s.score("사과를 먹다").passed, [false]);
        assert_eq!(s.score("사과 먹다").passed, [true]);
        assert_eq!(s.rules()[0].name, "tokens 2..=4");
    }

    #[test]
    fn char_bounds_count_trimmed_characters() {
        let s = scorer("[[rule]]\nmax_chars = 5\n[[rule]]\nmin_chars = 3\n");
        assert_eq!(s.score("  안녕하세요  ").passed, [true, true]);
        assert_eq!(s.score("안녕하세요!").passed, [false, true]);
        assert_eq!(s.score(" ab ").passed, [true, false]);
        assert_eq!(s.rules()[0].name, "max_chars 5");
        assert_eq!(s.rules()[1].name, "min_chars 3");
    }

    #[test]
    fn json_must_parse_whole() {
        let s = scorer("[[rule]]\njson = true\n");
        assert_eq!(s.score(" {\"a\": [1, 2]}\n").passed, [true]);
        assert_eq!(s.score("[1, 2,]").passed, [false]);
        assert_eq!(s.score("```json\n{}\n```").passed, [false]);
        assert_eq!(s.score("").passed, [false]);
    }

    #[test]
    fn score_is_the_weighted_share_passed() {
        let s = scorer(
            "[[rule]]\nname = 'short'\nmax_tokens = 3\nweight = 3.0\n\
             [[rule]]\nname = 'polite'\nmust_match = 'please'\n",
        );
        assert_eq!(s.score("please be brief").score, 1.0);
        assert_eq!(s.score("be brief").score, 0.75);
        assert_eq!(s.score("please be brief, very brief").score, 0.25);
        assert_eq!(s.score("no no no no").score, 0.0);
    }

    #[test]
    fn bad_rules_name_the_rule_and_key() {
        let cases = [
            (
                "[[rule]]\nweight = 1.0\n",
                "rules.rule.1.must_match",
                "needs one check",
            ),
            (
                "[[rule]]\nmust_match = 'a'\nmax_tokens = 3\n",
                "rules.rule.1.max_tokens",
                "second check",
            ),
            (
                "[[rule]]\nmust_match = '('\n",
                "rules.rule.1.must_match",
                "not a valid regex",
            ),
            (
                "[[rule]]\nmust_not_match = ''\n",
                "rules.rule.1.must_not_match",
                "empty",
            ),
            (
                "[[rule]]\njson = true\n[[rule]]\nmin_chars = 9\nmax_chars = 2\n",
                "rules.rule.2.min_chars",
                "more than the maximum",
            ),
            (
                "[[rule]]\njson = false\n",
                "rules.rule.1.json",
                "checks nothing",
            ),
            (
                "[[rule]]\njson = true\nweight = 0.0\n",
                "rules.rule.1.weight",
                "> 0",
            ),
            (
                "[[rule]]\njson = true\n[[rule]]\nname = 'json'\nmax_chars = 3\n",
                "rules.rule.2.name",
                "like rule 1",
            ),
            ("weight = 1.0\n", "rules.rule", "add at least one"),
        ];
        for (text, key, words) in cases {
            let i = issue(text);
            assert_eq!(i.key, key, "{text}");
            assert!(i.message.contains(words), "{text}: {}", i.message);
        }
        let err = RulesScorer::new(&rules("[[rule]]\nmust_match = '['\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("[score] `rules.rule.1.must_match` is not a valid regex"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RulesConfig>("[[rule]]\nmust_matches = 'a'\n").unwrap_err();
        assert!(
            err.message().contains("unknown field `must_matches`"),
            "{err}"
        );
    }
}
