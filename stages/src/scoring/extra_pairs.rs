//! Hand-made preference pairs (`[score.extra_pairs]`): a CSV with prompt, chosen and rejected
//! columns, added to the generated pairs as they are (not scored). Read with the same reader
//! as ingest's CSV input ([`crate::tabular`]): the same encodings (UTF-8, a BOM, CP949/EUC-KR),
//! the same quoting rules and the same located errors. Cells are trimmed; an empty prompt,
//! chosen or rejected cell, or a pair whose two answers are the same text, is an error naming
//! the line: a hand-written file is worth fixing, not silently thinning.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ScoringError;
use super::pairs::{Pair, TextSource};
use crate::contract::ConfigIssue;
use crate::tabular::{self, CsvTable, Source, TextEncoding};

/// The `[score.extra_pairs]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPairsConfig {
    /// The CSV (or .tsv) file, relative to the workspace root.
    pub path: PathBuf,
    #[serde(default)]
    pub encoding: TextEncoding,
    /// One ASCII character; default "," (tab for .tsv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    #[serde(default = "default_chosen")]
    pub chosen: String,
    #[serde(default = "default_rejected")]
    pub rejected: String,
    /// Optional per-row system prompt column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

fn default_prompt() -> String {
    "prompt".into()
}

fn default_chosen() -> String {
    "chosen".into()
}

fn default_rejected() -> String {
    "rejected".into()
}

impl ExtraPairsConfig {
    /// A config for `path` with every default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            encoding: TextEncoding::Auto,
            delimiter: None,
            prompt: default_prompt(),
            chosen: default_chosen(),
            rejected: default_rejected(),
            system: None,
        }
    }

    /// Checks keys relative to the `[score]` table (`extra_pairs.delimiter`).
    pub fn validate(&self, table: &str) -> Result<(), ConfigIssue> {
        let key = |k: &str| format!("{table}.{k}");
        if self.path.as_os_str().is_empty() {
            return Err(ConfigIssue::new(
                key("path"),
                "must name a CSV file, e.g. \"data/extra_pairs.csv\"",
            ));
        }
        if let Some(d) = &self.delimiter {
            delimiter_byte(d).map_err(|m| ConfigIssue::new(key("delimiter"), m))?;
        }
        for (name, column) in self.columns() {
            if column.trim().is_empty() {
                return Err(ConfigIssue::new(
                    key(name),
                    "must name a column; remove the key to use the default",
                ));
            }
        }
        Ok(())
    }

    /// (config key, column name) of every mapped column.
    fn columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("prompt", self.prompt.as_str()),
            ("chosen", self.chosen.as_str()),
            ("rejected", self.rejected.as_str()),
        ];
        if let Some(system) = &self.system {
            out.push(("system", system.as_str()));
        }
        out
    }
}

fn delimiter_byte(d: &str) -> Result<u8, String> {
    match d.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(format!(
            "must be one ASCII character other than a quote or newline (\",\", \";\", \"\\t\"), \
             got {d:?}"
        )),
    }
}

/// Reads the extra pairs; `workspace` resolves a relative path.
pub fn read_extra_pairs(
    cfg: &ExtraPairsConfig,
    workspace: &Path,
) -> Result<Vec<Pair>, ScoringError> {
    let file = cfg.path.display().to_string();
    let source = Source::labelled(workspace.join(&cfg.path), file.clone());
    let decoded = tabular::read_text(&source, cfg.encoding)?;
    let table = CsvTable::open(&decoded.text, &file, delimiter(cfg)?)?;
    let picks = cfg
        .columns()
        .into_iter()
        .map(|(key, column)| column_index(&table, &file, key, column).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = cfg.columns().into_iter().map(|(_, c)| c).collect();
    let mut pairs = Vec::new();
    for row in table.rows(&picks)? {
        let cell = |i: usize| row.cells[i].as_deref().unwrap_or("").trim().to_string();
        let texts = [cell(0), cell(1), cell(2)];
        if let Some(empty) = texts.iter().position(String::is_empty) {
            return Err(ScoringError::EmptyCell {
                file: file.clone(),
                location: row.location,
                column: names[empty].to_string(),
            });
        }
        let [prompt, chosen, rejected] = texts;
        if chosen == rejected {
            return Err(ScoringError::SameText {
                file: file.clone(),
                location: row.location,
            });
        }
        let system = (names.len() > 3).then(|| cell(3)).filter(|s| !s.is_empty());
        pairs.push(Pair {
            id: pair_id(system.as_deref(), &prompt, &chosen, &rejected),
            prompt,
            system,
            history: Vec::new(),
            chosen,
            rejected,
            chosen_score: None,
            rejected_score: None,
            chosen_source: TextSource::Extra,
            rejected_source: TextSource::Extra,
        });
    }
    Ok(pairs)
}

fn delimiter(cfg: &ExtraPairsConfig) -> Result<u8, ScoringError> {
    match &cfg.delimiter {
        Some(d) => delimiter_byte(d).map_err(|message| ScoringError::Config {
            table: "score.extra_pairs".into(),
            key: "delimiter".into(),
            message,
        }),
        None if tabular::extension(&cfg.path).as_deref() == Some("tsv") => Ok(b'\t'),
        None => Ok(b','),
    }
}

/// The header position of `column`; missing or repeated columns are errors.
fn column_index(
    table: &CsvTable<'_>,
    file: &str,
    key: &'static str,
    column: &str,
) -> Result<usize, ScoringError> {
    match table.positions(column).as_slice() {
        [i] => Ok(*i),
        [] => {
            let header: Vec<&str> = table.columns().iter().map(String::as_str).collect();
            let suggestion = nearest(column, &header)
                .map(|n| {
                    format!("; did you mean `{n}`? set `{key} = \"{n}\"` in [score.extra_pairs]")
                })
                .unwrap_or_default();
            Err(ScoringError::MissingColumn {
                file: file.to_string(),
                column: column.to_string(),
                key,
                available: header.join(", "),
                suggestion,
            })
        }
        several => Err(ScoringError::AmbiguousColumn {
            file: file.to_string(),
            column: column.to_string(),
            count: several.len(),
        }),
    }
}

/// The closest header name by edit distance, when close enough to be a typo or a synonym's
/// spelling (`question` for `prompt` is not caught; the header list is in the message).
fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// First 16 hex digits of blake3(system \0 prompt \0 chosen \0 rejected), like ingest's ids.
fn pair_id(system: Option<&str>, prompt: &str, chosen: &str, rejected: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [system.unwrap_or(""), prompt, chosen, rejected] {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    hasher.finalize().to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, bytes: &[u8], cfg: ExtraPairsConfig) -> Result<Vec<Pair>, ScoringError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), bytes).unwrap();
        read_extra_pairs(&cfg, dir.path())
    }

    fn err(bytes: &[u8]) -> String {
        read("extra.csv", bytes, ExtraPairsConfig::new("extra.csv"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_quoted_trimmed_pairs_with_source_extra() {
        let csv = "prompt,chosen,rejected\n\"What is ls?\",\" It lists files, sorted. \",no idea\n";
        let pairs = read(
            "extra.csv",
            csv.as_bytes(),
            ExtraPairsConfig::new("extra.csv"),
        )
        .unwrap();
        assert_eq!(pairs.len(), 1);
        let p = &pairs[0];
        assert_eq!(p.prompt, "What is ls?");
        assert_eq!(p.chosen, "It lists files, sorted.");
        assert_eq!(p.rejected, "no idea");
        assert_eq!(
            (p.chosen_source, p.rejected_source),
            (TextSource::Extra, TextSource::Extra)
        );
        assert_eq!(p.chosen_score, None);
        assert_eq!(p.id.len(), 16);
    }

    #[test]
    fn reads_cp949_tsv_with_mapped_columns_and_system() {
        let text = "질문\t좋은답\t나쁜답\t시스템\n파일 목록?\tls 를 쓰세요\t모릅니다\t친절하게\n";
        let (bytes, _, _) = encoding_rs::EUC_KR.encode(text);
        let cfg = ExtraPairsConfig {
            prompt: "질문".into(),
            chosen: "좋은답".into(),
            rejected: "나쁜답".into(),
            system: Some("시스템".into()),
            ..ExtraPairsConfig::new("pairs.tsv")
        };
        let pairs = read("pairs.tsv", &bytes, cfg).unwrap();
        assert_eq!(pairs[0].prompt, "파일 목록?");
        assert_eq!(pairs[0].chosen, "ls 를 쓰세요");
        assert_eq!(pairs[0].system.as_deref(), Some("친절하게"));
    }

    #[test]
    fn a_missing_column_lists_the_header_and_suggests() {
        assert_eq!(
            err(b"prompt,chosen,rejectd\nq,a,b\n"),
            "extra.csv: no column `rejected` (set by `rejected` in [score.extra_pairs]); the header \
             has: prompt, chosen, rejectd; did you mean `rejectd`? set `rejected = \"rejectd\"` in \
             [score.extra_pairs]"
        );
        assert_eq!(
            err(b"prompt,chosen,chosen,rejected\nq,a,b,c\n"),
            "extra.csv: column `chosen` appears 2 times in the header; rename the duplicates so the mapping is unambiguous"
        );
    }

    #[test]
    fn empty_cells_and_same_answers_name_the_line() {
        assert_eq!(
            err(b"prompt,chosen,rejected\nq,a,b\nq2,  ,b\n"),
            "extra.csv: line 3 (row 2): `chosen` is empty; every extra pair needs a prompt, a \
             chosen and a rejected answer"
        );
        assert_eq!(
            err(b"prompt,chosen,rejected\nq,same,same \n"),
            "extra.csv: line 2 (row 1): the chosen and rejected answers are the same text; the \
             pair teaches nothing, remove it"
        );
    }

    #[test]
    fn table_errors_come_from_the_shared_reader() {
        assert!(err(b"prompt,chosen,rejected\nq,a\n")
            .starts_with("extra.csv: line 2 (row 1) has 2 fields but the header has 3"));
        assert_eq!(
            err(b"prompt,chosen,rejected\n"),
            "extra.csv has a header (prompt, chosen, rejected) but no data rows; add rows below the header line"
        );
        let missing = read_extra_pairs(
            &ExtraPairsConfig::new("nope.csv"),
            Path::new("/nonexistent"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.starts_with("cannot find nope.csv (looked for /nonexistent/nope.csv)"),
            "{missing}"
        );
    }

    #[test]
    fn config_values_are_checked() {
        let cases = [
            (ExtraPairsConfig::new(""), "extra_pairs.path"),
            (
                ExtraPairsConfig {
                    delimiter: Some("ab".into()),
                    ..ExtraPairsConfig::new("x.csv")
                },
                "extra_pairs.delimiter",
            ),
            (
                ExtraPairsConfig {
                    chosen: " ".into(),
                    ..ExtraPairsConfig::new("x.csv")
                },
                "extra_pairs.chosen",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(cfg.validate("extra_pairs").unwrap_err().key, key);
        }
    }
}
