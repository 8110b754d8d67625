//! The text of one generated sequence as it grows token by token: incremental detokenization
//! that never splits a multi-byte character, and stop strings that end the sequence and are
//! trimmed from it. Text that could still turn into a stop string is held back, so what was
//! streamed is always a prefix of the final text.

use crate::llm::error::LlmResult;
use crate::llm::text::tokenizer::TextTokenizer;

/// What pushing a token produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// New text safe to show (complete characters, not part of a possible stop string).
    pub text: String,
    /// A stop string appeared: the sequence is finished and its text ends before it.
    pub stopped: bool,
}

/// Incremental detokenizer plus stop-string matcher of one sequence.
#[derive(Debug, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    /// `ids[prefix..read]` decodes to the text already taken; decoding from `prefix` (not from
    /// `read`) keeps the context tokenizers need to place spaces right.
    prefix: usize,
    read: usize,
    /// All decoded text so far, and how much of it was handed out.
    text: String,
    emitted: usize,
    stop_strings: Vec<String>,
    stopped: bool,
}

impl TextStream {
    /// Empty stop strings are ignored.
    pub fn new(stop_strings: &[String]) -> Self {
        TextStream {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            emitted: 0,
            stop_strings: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            stopped: false,
        }
    }

    /// Adds one generated token.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> LlmResult<Delta> {
        if self.stopped {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], true)?;
        // A trailing U+FFFD is a character whose remaining bytes are in later tokens.
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            if let Some(new) = after
                .get(before.len()..)
                .filter(|_| after.starts_with(&before))
            {
                self.text.push_str(new);
            } else {
                // The tokenizer rewrote earlier text (rare; e.g. a cleanup rule): resync.
                self.text.push_str(&after);
            }
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(self.release())
    }

    /// Ends the sequence: whatever is still held back (an incomplete character decodes
    /// lossily, a partial stop string is plain text after all).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> LlmResult<Delta> {
        if !self.stopped && self.read < self.ids.len() {
            let before = tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
            let after = tokenizer.decode(&self.ids[self.prefix..], true)?;
            if let Some(new) = after
                .get(before.len()..)
                .filter(|_| after.starts_with(&before))
            {
                self.text.push_str(new);
            }
            self.read = self.ids.len();
        }
        let mut delta = self.release();
        if !self.stopped {
            delta.text.push_str(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
        Ok(delta)
    }

    /// The sequence's text so far: final once finished, trimmed before any stop string.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Hands out new text: up to a stop string (and stops), or up to what might begin one.
    fn release(&mut self) -> Delta {
        if self.stopped {
            return Delta {
                text: String::new(),
                stopped: true,
            };
        }
        if let Some(at) = self.find_stop() {
            self.text.truncate(at);
            self.stopped = true;
        }
        let end = if self.stopped {
            self.text.len()
        } else {
            self.text.len() - self.held_back()
        };
        let end = end.max(self.emitted);
        let text = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Delta {
            text,
            stopped: self.stopped,
        }
    }

    /// The byte offset of the earliest stop string in the text not yet emitted (a stop string
    /// can start inside held-back text only).
    fn find_stop(&self) -> Option<usize> {
        let longest = self.stop_strings.iter().map(String::len).max()?;
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop_strings
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut best = 0;
        for stop in &self.stop_strings {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && self.text.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best.min(self.text.len() - self.emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::testing::tiny_tokenizer;

    fn stream_all(tok: &TextTokenizer, ids: &[u32], stops: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let mut pieces = Vec::new();
        for &id in ids {
            let d = s.push(tok, id).unwrap();
            pieces.push(d.text);
            if d.stopped {
                return (pieces, s.text().to_string(), true);
            }
        }
        pieces.push(s.finish(tok).unwrap().text);
        (pieces, s.text().to_string(), false)
    }

    #[test]
    fn multi_byte_characters_split_over_tokens_come_out_whole() {
        let tok = tiny_tokenizer();
        let text = "héllo → 世界 ok";
        let ids = tok.encode(text, false).unwrap();
        assert!(ids.len() > text.chars().count() - 3, "byte-level tokens");
        let (pieces, full, stopped) = stream_all(&tok, &ids, &[]);
        assert!(!stopped);
        assert_eq!(full, text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    }

    #[test]
    fn stop_strings_end_the_text_and_are_never_streamed() {
        let tok = tiny_tokenizer();
        let ids = tok.encode("the answer\n\nUser: more", false).unwrap();
        let (pieces, full, stopped) = stream_all(&tok, &ids, &["\n\nUser:", "zzz"]);
        assert!(stopped);
        assert_eq!(full, "the answer");
        assert_eq!(pieces.concat(), "the answer");
    }

    #[test]
    fn a_partial_stop_string_is_released_at_the_end() {
        let tok = tiny_tokenizer();
        let ids = tok.encode("done\n\nUs", false).unwrap();
        let (pieces, full, stopped) = stream_all(&tok, &ids, &["\n\nUser:"]);
        assert!(!stopped);
        assert_eq!(full, "done\n\nUs");
        assert_eq!(pieces.concat(), full);
    }
}
