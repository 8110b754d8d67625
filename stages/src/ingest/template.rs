//! `prompt_template`: `{column}` placeholders joined into the prompt, `{{`/`}}` for braces.

/// A piece of a parsed `prompt_template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    Field(String),
}

/// Parses `{column}` placeholders; `{{` and `}}` stand for literal braces.
pub(super) fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name = placeholder(&mut chars).ok_or_else(|| {
                    format!(
                        "has an empty or unclosed placeholder in {template:?}; \
                         write {{column}}, or {{{{ for a literal brace"
                    )
                })?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(name));
            }
            '}' => {
                return Err(format!(
                    "has a lone `}}` in {template:?}; write }}}} for a literal brace"
                ));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The name after a `{`, up to and consuming its `}`; `None` if empty or never closed.
fn placeholder(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut name = String::new();
    for c in chars {
        match c {
            '}' if !name.trim().is_empty() => return Some(name.trim().to_string()),
            '}' | '{' => return None,
            c => name.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Mapping columns/fields to roles

pub(super) fn template_source(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.replace('{', "{{").replace('}', "}}"),
            Piece::Field(f) => format!("{{{f}}}"),
        })
        .collect()
}
