//! Which column or field holds each role (prompt, response, system, category, input), with
//! the layout's defaults, the prompt template applied, and a missing column reported with the
//! columns that are there and the nearest name.

use std::collections::BTreeMap;

use super::config::{IngestConfig, Layout};
use super::error::{IngestError, MissingColumn};
use super::read::Candidate;
use super::template::{parse_template, template_source, Piece};
use crate::tabular::Location;

/// A column or field the stage reads, and why (for messages).
#[derive(Debug, Clone)]
pub(super) struct Need {
    pub(super) name: String,
    /// Absent optional columns read as empty; absent required ones are an error.
    pub(super) required: bool,
    /// `set by `prompt``, `the default for `prompt``, ...
    pub(super) origin: String,
    /// The config key that would fix a wrong name.
    pub(super) key: &'static str,
}

/// How a record becomes a prompt/response pair: indices into [`Mapping::needs`].
#[derive(Debug, Clone)]
pub(super) struct Mapping {
    pub(super) needs: Vec<Need>,
    pub(super) prompt: usize,
    pub(super) response: usize,
    pub(super) system: Option<usize>,
    pub(super) category: Option<usize>,
    pub(super) input: Option<usize>,
    /// The rejected answer (layout "preference"; `response` is then the chosen one).
    pub(super) rejected: Option<usize>,
    /// The column `filter` tests.
    pub(super) filter: Option<usize>,
    pub(super) template: Option<Vec<TemplatePiece>>,
    pub(super) template_text: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) enum TemplatePiece {
    Text(String),
    Field(usize),
}

impl Mapping {
    /// `names`: the columns of the file (or fields of its first record), which pick the
    /// orca-dpo-pairs form's `question` as the default prompt.
    pub(super) fn new(
        cfg: &IngestConfig,
        layout: Layout,
        names: &[String],
    ) -> Result<Self, String> {
        let alpaca = layout == Layout::Alpaca;
        let preference = layout == Layout::Preference;
        let has = |n: &str| names.iter().any(|c| c == n);
        let (prompt_default, response_default) = if alpaca {
            ("instruction", "output")
        } else if preference && has("question") && !has("prompt") {
            ("question", "chosen")
        } else if preference {
            ("prompt", "chosen")
        } else {
            ("prompt", "response")
        };
        let mut needs = Vec::new();
        let prompt = role_need("prompt", cfg.prompt.as_ref(), prompt_default, layout, true);
        let prompt = push_need(&mut needs, prompt);
        let (response_key, response_name) = if preference {
            ("chosen", cfg.chosen.as_ref())
        } else {
            ("response", cfg.response.as_ref())
        };
        let response = role_need(response_key, response_name, response_default, layout, true);
        let response = push_need(&mut needs, response);
        let rejected = preference.then(|| {
            let need = role_need("rejected", cfg.rejected.as_ref(), "rejected", layout, true);
            push_need(&mut needs, need)
        });
        // Optional roles: alpaca's `system` and `input` fields may be absent from a record.
        let mut optional = |key: &'static str,
                            explicit: Option<&String>,
                            alpaca_name: &str,
                            named_default: bool| {
            let default = (alpaca || named_default).then_some(alpaca_name);
            (explicit.is_some() || default.is_some()).then(|| {
                let need = role_need(key, explicit, default.unwrap_or(key), layout, false);
                push_need(&mut needs, need)
            })
        };
        // orca-dpo-pairs carries a `system` column, read when present as alpaca's is.
        let system_default = preference && has("system");
        let system = optional("system", cfg.system.as_ref(), "system", system_default);
        let input = optional("input", cfg.input.as_ref(), "input", false);
        let category = cfg.category.as_ref().map(|name| {
            push_need(
                &mut needs,
                role_need("category", Some(name), "", layout, true),
            )
        });

        let filter = cfg.filter.as_ref().map(|f| {
            push_need(
                &mut needs,
                role_need("filter", Some(&f.column), "", layout, true),
            )
        });
        let pieces = match (&cfg.prompt_template, input) {
            (Some(template), _) => Some(parse_template(template)?),
            (None, Some(input)) => Some(vec![
                Piece::Field(needs[prompt].name.clone()),
                Piece::Text("\n\n".into()),
                Piece::Field(needs[input].name.clone()),
            ]),
            (None, None) => None,
        };
        let template_text = pieces.as_ref().map(|p| template_source(p));
        let template = pieces.map(|pieces| {
            pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Text(t) => TemplatePiece::Text(t),
                    Piece::Field(name) => TemplatePiece::Field(push_need(
                        &mut needs,
                        Need {
                            name,
                            required: true,
                            origin: "used in `prompt_template`".into(),
                            key: "prompt_template",
                        },
                    )),
                })
                .collect()
        });
        Ok(Self {
            needs,
            prompt,
            response,
            system,
            category,
            input,
            rejected,
            filter,
            template,
            template_text,
        })
    }

    /// Role → column, for stats and the first info line.
    pub(super) fn describe(&self) -> BTreeMap<String, String> {
        let mut roles = BTreeMap::new();
        let response_role = if self.rejected.is_some() {
            "chosen"
        } else {
            "response"
        };
        let named = [
            ("prompt", Some(self.prompt)),
            (response_role, Some(self.response)),
            ("rejected", self.rejected),
            ("system", self.system),
            ("category", self.category),
            ("input", self.input),
        ];
        for (role, index) in named {
            if let Some(i) = index {
                roles.insert(role.to_string(), self.needs[i].name.clone());
            }
        }
        if let Some(t) = &self.template_text {
            roles.insert("prompt_template".into(), t.clone());
        }
        roles
    }

    /// Builds a row from cells aligned with `needs` (`None` = absent). `Err(i)`: need `i` is
    /// required but absent.
    pub(super) fn assemble(
        &self,
        cells: &[Option<String>],
        source_row: u64,
    ) -> Result<Candidate, usize> {
        let get = |i: usize| -> Result<String, usize> {
            match &cells[i] {
                Some(text) => Ok(clean_text(text)),
                None if self.needs[i].required => Err(i),
                None => Ok(String::new()),
            }
        };
        let input = self.input.map(get).transpose()?.unwrap_or_default();
        // With an input column the template applies only where there is input (as alpaca does);
        // a template without one applies to every row.
        let use_template = self.input.is_none() || !input.is_empty();
        let prompt = match (&self.template, use_template) {
            (Some(pieces), true) => render(pieces, &get)?,
            _ => get(self.prompt)?,
        };
        Ok(Candidate {
            source_row,
            prompt,
            response: get(self.response)?,
            system: self.system.map(get).transpose()?.unwrap_or_default(),
            category: self.category.map(get).transpose()?.unwrap_or_default(),
            truncated: false,
            history: Vec::new(),
            rejected: self.rejected.map(get).transpose()?.unwrap_or_default(),
            filter: self.filter.map(get).transpose()?.unwrap_or_default(),
        })
    }
}

/// The column for a role: the configured name (required), else the layout's default, which is
/// required only if `default_required`.
pub(super) fn role_need(
    key: &'static str,
    explicit: Option<&String>,
    default: &str,
    layout: Layout,
    default_required: bool,
) -> Need {
    let (name, origin, required) = match explicit {
        Some(name) => (name.trim().to_string(), format!("set by `{key}`"), true),
        None if layout == Layout::Alpaca => (
            default.to_string(),
            format!("the alpaca field for `{key}`"),
            default_required,
        ),
        None => (
            default.to_string(),
            format!("the default for `{key}`"),
            default_required,
        ),
    };
    Need {
        name,
        required,
        origin,
        key,
    }
}

/// Adds a need unless one of the same name exists; returns its index.
pub(super) fn push_need(needs: &mut Vec<Need>, need: Need) -> usize {
    if let Some(i) = needs.iter().position(|n| n.name == need.name) {
        return i;
    }
    needs.push(need);
    needs.len() - 1
}

pub(super) fn render(
    pieces: &[TemplatePiece],
    get: &dyn Fn(usize) -> Result<String, usize>,
) -> Result<String, usize> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            TemplatePiece::Text(t) => out.push_str(t),
            TemplatePiece::Field(i) => out.push_str(&get(*i)?),
        }
    }
    Ok(out.trim().to_string())
}

/// Trims and turns CRLF into LF: Windows line endings inside fields are not training signal.
pub(super) fn clean_text(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.contains('\r') {
        trimmed.replace("\r\n", "\n")
    } else {
        trimmed.to_string()
    }
}

/// Common alternative names, tried when the configured/default name is not close to any column.
pub(super) fn aliases(key: &str) -> &'static [&'static str] {
    match key {
        "prompt" => &[
            "question",
            "instruction",
            "prompt",
            "query",
            "input",
            "text",
        ],
        "response" => &[
            "answer",
            "output",
            "response",
            "completion",
            "chosen",
            "target",
        ],
        "system" => &["system", "system_prompt"],
        "category" => &["category", "label", "type", "topic"],
        _ => &[],
    }
}

/// The best replacement for a missing `name`: the nearest by edit distance, else a known alias.
pub(super) fn suggest<'a>(name: &str, key: &str, available: &'a [String]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let nearest = available
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), c))
        .min_by_key(|(d, _)| *d);
    if let Some((distance, column)) = nearest {
        if distance <= (name.chars().count() / 3).max(1) {
            return Some(column);
        }
    }
    aliases(key)
        .iter()
        .find_map(|alias| available.iter().find(|c| c.eq_ignore_ascii_case(alias)))
        .map(String::as_str)
}

/// `at`: the JSON record lacking the field; `None` for a CSV header lacking the column.
pub(super) fn missing_column(
    file: &str,
    at: Option<Location>,
    need: &Need,
    available: &[String],
    layout: Layout,
) -> IngestError {
    let mut advice = match suggest(&need.name, need.key, available) {
        Some(s) if need.key == "prompt_template" => {
            format!("did you mean `{s}`? fix the placeholder in `prompt_template`")
        }
        Some(s) => format!(
            "did you mean `{s}`? set `{} = \"{s}\"` in [ingest]",
            need.key
        ),
        None => format!("set `{}` in [ingest] to one of them", need.key),
    };
    if layout == Layout::Alpaca && need.origin.starts_with("the alpaca") {
        advice.push_str(", or use layout = \"columns\"");
    }
    IngestError::MissingColumn(Box::new(MissingColumn {
        file: file.to_string(),
        at: at.map_or_else(String::new, |l| format!("{l}: ")),
        noun: if at.is_some() { "field" } else { "column" },
        name: need.name.clone(),
        origin: need.origin.clone(),
        holder: if at.is_some() { "record" } else { "header" },
        available: available.join(", "),
        advice,
    }))
}

// ---------------------------------------------------------------------------------------------
// Loading records
