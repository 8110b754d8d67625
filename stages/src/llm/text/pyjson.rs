//! The `tojson` filter of chat templates, as transformers defines it: Python's `json.dumps`.
//!
//! transformers registers `tojson(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)` = `json.dumps(...)`. minijinja's own `tojson` writes compact JSON and
//! escapes `<`, `>`, `&` and `'` for HTML, so a tool schema (Qwen3, Llama-3.x) would render
//! differently; this writes Python's spacing (`", "`, `": "`, or one item per line with
//! `indent`), keeps map order, and escapes strings as Python does.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How `json.dumps` is asked to write.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// The filter: `value | tojson`, `value | tojson(indent=4)`, `ensure_ascii`, `sort_keys`.
pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let style = Style {
        indent: kwargs.get::<Option<usize>>("indent")?,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(value, style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_value(value: &Value, style: Style, depth: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(value, out),
        ValueKind::String | ValueKind::Bytes => {
            write_string(value.as_str().unwrap_or_default(), style.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(('[', ']'), items.len(), style, depth, out, |i, out| {
                write_value(&items[i], style, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            write_container(('{', '}'), keys.len(), style, depth, out, |i, out| {
                write_string(&keys[i].to_string(), style.ensure_ascii, out);
                out.push_str(": ");
                write_value(&value.get_item(&keys[i])?, style, depth + 1, out)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot write a {} as JSON", value.kind()),
            ))
        }
    }
    Ok(())
}

/// Items between `open` and `close`: `", "`-separated on one line, or one per line indented
/// by `indent` per level; empty containers stay `[]`/`{}` as in Python.
fn write_container(
    (open, close): (char, char),
    len: usize,
    style: Style,
    depth: usize,
    out: &mut String,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len > 0 {
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = style.indent {
                out.push('\n');
                out.push_str(&" ".repeat(indent * level));
            }
        };
        for i in 0..len {
            if i > 0 {
                out.push(',');
                if style.indent.is_none() {
                    out.push(' ');
                }
            }
            newline(out, depth + 1);
            item(i, out)?;
        }
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

/// Integers as they are; floats as Python's `repr` (`2.5`, `1e+16`).
fn write_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        out.push_str(&value.to_string());
        return;
    }
    let float = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    out.push_str(&python_float(float));
}

/// Python's float repr: Rust's shortest round-trip digits, with `NaN`/`Infinity` and a signed
/// exponent where Python switches to one (exponent below -4 or from 16 on).
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let exponent = if x == 0.0 {
        0
    } else {
        x.abs().log10().floor() as i32
    };
    if (-4..16).contains(&exponent) {
        return format!("{x:?}");
    }
    let scientific = format!("{x:e}");
    let (mantissa, exp) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// A JSON string as Python escapes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control
/// characters as `\u00XX`; with `ensure_ascii`, everything outside printable ASCII as `\uXXXX`
/// (UTF-16 surrogate pairs above the BMP).
fn write_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, data: serde_json::Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(template, minijinja::context! { data => data })
            .unwrap()
    }

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "a": {"n": [1, 2.5, true, null, 1e16, 0.1], "path": "<dir> & 'x' \"q\" \\ \n\t\u{1}"},
            "b": [],
            "c": {},
            "é": "ü→😀"
        })
    }

    /// The expected strings are Python 3's `json.dumps` of the same data.
    #[test]
    fn writes_as_python_json_dumps() {
        assert_eq!(
            render("{{ data | tojson }}", sample()),
            "{\"a\": {\"n\": [1, 2.5, true, null, 1e+16, 0.1], \"path\": \"<dir> & 'x' \\\"q\\\" \\\\ \\n\\t\\u0001\"}, \"b\": [], \"c\": {}, \"é\": \"ü→😀\"}"
        );
        assert_eq!(
            render("{{ data | tojson(indent=4) }}", sample()),
            "{\n    \"a\": {\n        \"n\": [\n            1,\n            2.5,\n            true,\n            null,\n            1e+16,\n            0.1\n        ],\n        \"path\": \"<dir> & 'x' \\\"q\\\" \\\\ \\n\\t\\u0001\"\n    },\n    \"b\": [],\n    \"c\": {},\n    \"é\": \"ü→😀\"\n}"
        );
        assert_eq!(
            render("{{ data | tojson(ensure_ascii=true) }}", sample()),
            "{\"a\": {\"n\": [1, 2.5, true, null, 1e+16, 0.1], \"path\": \"<dir> & 'x' \\\"q\\\" \\\\ \\n\\t\\u0001\"}, \"b\": [], \"c\": {}, \"\\u00e9\": \"\\u00fc\\u2192\\ud83d\\ude00\"}"
        );
    }

    #[test]
    fn keeps_map_order_and_refuses_unknown_arguments() {
        #[derive(serde::Serialize)]
        struct Message {
            role: &'static str,
            content: &'static str,
        }
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        let messages = [Message {
            role: "user",
            content: "hi",
        }];
        let out = env
            .render_str("{{ m | tojson }}", minijinja::context! { m => messages })
            .unwrap();
        assert_eq!(out, "[{\"role\": \"user\", \"content\": \"hi\"}]");
        let err = env
            .render_str("{{ 1 | tojson(separators=1) }}", minijinja::context! {})
            .unwrap_err();
        assert!(err.to_string().contains("separators"), "{err}");
    }
}
