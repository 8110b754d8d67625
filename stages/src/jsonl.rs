//! Reading the JSON-lines files stages hand each other, with errors that name the file and
//! the line.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Every non-blank line of `path` as a `T`. The error is a message for the caller's own error
/// type: "cannot read it: …" or "line N: not <what>: …".
pub fn read<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("line {}: not {what}: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_skips_blanks_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "1\n\n2\n").unwrap();
        assert_eq!(read::<u32>(&path, "a number").unwrap(), vec![1, 2]);
        std::fs::write(&path, "1\n{}\n").unwrap();
        let err = read::<u32>(&path, "a number").unwrap_err();
        assert!(err.starts_with("line 2: not a number:"), "{err}");
        let err = read::<u32>(&dir.path().join("none"), "a number").unwrap_err();
        assert!(err.starts_with("cannot read it:"), "{err}");
    }
}
