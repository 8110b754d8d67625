//! The tables of pipeline.toml as stage instances: a table named after a kind is an instance
//! of it, any other says `kind = "…"`. Names become directories under artifacts/, so they
//! must be plain names and distinct on a case-insensitive file system.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Mutex;

use pipe_stages::DynStage;

use crate::config::hint_for;

/// One table that is a stage instance.
pub struct Table<'r> {
    /// The table name: the instance's name everywhere.
    pub name: &'static str,
    pub stage: &'r dyn DynStage,
    /// The span of `kind = "…"` when written (blanked before the stage reads the table).
    pub kind_span: Option<Range<usize>>,
}

/// A table that is no valid instance, with where and what to do.
pub struct TableError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: String,
}

/// The instances of a document, in file order; `project` is the engine's own table.
pub fn find<'r>(
    text: &str,
    doc: &toml::de::DeTable<'_>,
    registry: &'r [Box<dyn DynStage>],
) -> Result<Vec<Table<'r>>, TableError> {
    let kinds: Vec<&str> = registry.iter().map(|s| s.name()).collect();
    let mut tables: Vec<Table<'r>> = Vec::new();
    let mut entries: Vec<_> = doc.iter().collect();
    // DeTable iterates in key order; the file order is the order of the spans.
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let name = key.get_ref().as_ref();
        if name == "project" || crate::config::ENGINE_TABLES.contains(&name) {
            continue;
        }
        let err = |message: String, hint: String| TableError {
            span: key.span(),
            message,
            hint,
        };
        let Some(inner) = value.get_ref().as_table() else {
            return Err(err(
                format!("`{name}` must be a table: write `[{name}]` and its keys below it"),
                String::new(),
            ));
        };
        let (stage, kind_span) = match inner.iter().find(|(k, _)| k.get_ref().as_ref() == "kind") {
            Some((kkey, kvalue)) => {
                let Some(kind) = kvalue.get_ref().as_str() else {
                    return Err(TableError {
                        span: kvalue.span(),
                        message: format!("[{name}] `kind` must be a string naming a stage kind"),
                        hint: format!("kinds: {}", kinds.join(", ")),
                    });
                };
                let Some(stage) = registry.iter().find(|s| s.name() == kind) else {
                    return Err(TableError {
                        span: kvalue.span(),
                        message: format!("[{name}] unknown kind `{kind}`"),
                        hint: hint_for(kind, &kinds, "kinds"),
                    });
                };
                if kinds.contains(&name) && name != kind {
                    return Err(err(
                        format!(
                            "[{name}] is named after the kind `{name}` but says kind = \"{kind}\""
                        ),
                        "rename the table: a table named after a kind is an instance of it".into(),
                    ));
                }
                let span = kkey.span().start..kvalue.span().end;
                if !own_line(text, &span) {
                    return Err(TableError {
                        span,
                        message: format!("[{name}] write `kind = \"{kind}\"` on a line of its own"),
                        hint: format!("[{name}]\n        kind = \"{kind}\""),
                    });
                }
                (stage.as_ref(), Some(span))
            }
            None => match registry.iter().find(|s| s.name() == name) {
                Some(stage) => (stage.as_ref(), None),
                None => {
                    let mut valid: Vec<&str> = vec!["project"];
                    valid.extend(crate::config::ENGINE_TABLES);
                    valid.extend(kinds.iter().copied());
                    let hint = format!(
                        "{}; or give it a kind: `kind = \"sft\"` under [{name}]",
                        hint_for(name, &valid, "tables")
                    );
                    return Err(err(format!("unknown table `[{name}]`"), hint));
                }
            },
        };
        check_name(name, &tables).map_err(|(m, h)| err(m, h))?;
        tables.push(Table {
            name: intern(name),
            stage,
            kind_span,
        });
    }
    Ok(tables)
}

/// A name is a directory under artifacts/: plain characters, not hidden, and not the same
/// directory as another instance's on a case-insensitive file system.
fn check_name(name: &str, earlier: &[Table<'_>]) -> Result<(), (String, String)> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain || name.starts_with('-') {
        return Err((
            format!("[{name}] an instance name must be letters, digits, `_` and `-`: it names artifacts/{name}/"),
            String::new(),
        ));
    }
    if let Some(other) = earlier.iter().find(|t| t.name.eq_ignore_ascii_case(name)) {
        return Err((
            format!(
                "[{name}] and [{}] would both write artifacts/{}/ (names differing only in case are one directory on some file systems)",
                other.name,
                name.to_ascii_lowercase()
            ),
            "rename one of them".into(),
        ));
    }
    Ok(())
}

/// Whether `span` is alone on its line(s) apart from whitespace and a comment after it.
fn own_line(text: &str, span: &Range<usize>) -> bool {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..span.start];
    let line_end = text[span.end..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i);
    let after = text[span.end..line_end].trim_start();
    before.trim().is_empty()
        && (after.is_empty() || after.starts_with('#'))
        && !text[span.clone()].contains('\n')
}

/// The document with every `kind = "…"` replaced by spaces: the stages' tables refuse
/// unknown keys, and every other byte keeps its offset, so their errors point into the file.
pub fn blank_kind_keys(text: &str, tables: &[Table<'_>]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for span in tables.iter().filter_map(|t| t.kind_span.clone()) {
        for b in &mut bytes[span] {
            *b = b' ';
        }
    }
    // Every byte of a span is replaced, multi-byte characters whole, so this stays UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_string())
}

/// Instance names live as long as the process (the engine passes them around as
/// `&'static str`, as it does kind names); each distinct name is leaked once.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_lines_are_blanked_in_place() {
        let text = "[a]\nkind = \"sft\"  # x\nlr = 1\n";
        let span = 4..16;
        assert_eq!(&text[span.clone()], "kind = \"sft\"");
        assert!(own_line(text, &span));
        let out = {
            let mut b = text.as_bytes().to_vec();
            for x in &mut b[span] {
                *x = b' ';
            }
            String::from_utf8(b).unwrap()
        };
        assert_eq!(out.len(), text.len());
        assert!(toml::from_str::<toml::Table>(&out).is_ok());
    }

    #[test]
    fn inline_kind_is_not_on_its_own_line() {
        let text = "a = { kind = \"sft\", lr = 1 }\n";
        let start = text.find("kind").unwrap();
        assert!(!own_line(text, &(start..start + 12)));
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern("sft_hi");
        let b = intern(&String::from("sft_hi"));
        assert!(std::ptr::eq(a, b));
    }
}
