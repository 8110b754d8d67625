//! llama.cpp's SentencePiece tokenizer (`llm_tokenizer_spm` in llama-vocab.cpp) for GGUF
//! vocabularies with `tokenizer.ggml.model = "llama"` (Llama-2, TinyLlama, Mistral v0.1,
//! Gemma): the same special-token partition, space prefix, score-ordered bigram merges, byte
//! fallback and detokenization, so pipe sees the ids llama.cpp sees.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file::Value;

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::gguf::{value_as_usize, GgufFile};

/// SentencePiece's escaped space (U+2581), which the vocabulary uses for ' '.
const SPACE_MARK: &str = "\u{2581}";

/// llama.cpp's `llama_token_attr` bits.
mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// The attribute llama.cpp gives a `tokenizer.ggml.token_type` value (`llama_token_type`);
/// unknown values are UNDEFINED (no bit), rendered as nothing, as llama.cpp does.
fn attr_of_type(token_type: i64) -> u32 {
    match token_type {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Texts llama.cpp always marks CONTROL because they end generation (its EOG list), even when
/// the converter typed them NORMAL.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle slots: the GGUF keys that name the token, and the texts llama.cpp
/// looks for (the first in byte order wins) when no key does; the found token becomes CONTROL.
const FIM_SLOTS: &[(&[&str], &[&str])] = &[
    (
        &[
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        ],
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.suffix_token_id",
        ],
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.middle_token_id",
        ],
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_pad_token_id"],
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        &["tokenizer.ggml.fim_rep_token_id"],
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    (&["tokenizer.ggml.fim_sep_token_id"], &["<|file_sep|>"]),
];

/// Texts llama.cpp forces to USER_DEFINED (always rendered), whatever their type.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// An SPM vocabulary as the GGUF gives it, before llama.cpp's attribute fix-ups.
#[derive(Debug, Clone, Default)]
pub struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type` values; all NORMAL when the GGUF has none.
    pub token_types: Vec<i64>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// FIM slots (in `FIM_SLOTS` order) that a GGUF key already names.
    pub fim_named: Vec<bool>,
    /// `general.name` mentions Phi-3, whose special tokens llama.cpp right-strips.
    pub phi3: bool,
}

/// A piece of text after special-token partition: raw text (a byte range) or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    Text { start: usize, end: usize },
    Token(u32),
}

/// llama.cpp's SPM tokenizer over one vocabulary.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    by_text: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order llama.cpp
    /// matches them in text.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl SpmTokenizer {
    /// Builds the tokenizer from a vocabulary, applying llama.cpp's load-time fix-ups.
    pub fn new(vocab: SpmVocab) -> Result<Self, String> {
        let n = vocab.tokens.len();
        if vocab.scores.len() != n || vocab.token_types.len() != n {
            return Err(format!(
                "{n} tokens but {} scores and {} token types",
                vocab.scores.len(),
                vocab.token_types.len()
            ));
        }
        let mut by_text = HashMap::with_capacity(n);
        for (id, token) in vocab.tokens.iter().enumerate() {
            if by_text.insert(token.clone(), id as u32).is_some() {
                return Err(format!(
                    "`tokenizer.ggml.tokens` holds `{token}` twice (last at id {id})"
                ));
            }
        }
        let mut attrs: Vec<u32> = vocab.token_types.iter().map(|&t| attr_of_type(t)).collect();
        mark_control_looking(&mut attrs, &by_text, &vocab.fim_named);
        let specials = special_cache(&vocab.tokens, &attrs);
        if vocab.phi3 {
            mark_phi3_rstrip(&mut attrs, &by_text, &specials);
        }
        Ok(SpmTokenizer {
            tokens: vocab.tokens,
            scores: vocab.scores,
            attrs,
            by_text,
            specials,
            bos: vocab.bos,
            eos: vocab.eos,
            unk: vocab.unk,
            pad: vocab.pad,
            add_bos: vocab.add_bos,
            add_eos: vocab.add_eos,
            add_space_prefix: vocab.add_space_prefix,
        })
    }

    /// Reads the `tokenizer.ggml.*` metadata of a `llama` (SentencePiece) GGUF.
    pub fn from_gguf(gguf: &GgufFile) -> LlmResult<Self> {
        let vocab = read_vocab(gguf)?;
        SpmTokenizer::new(vocab).map_err(|m| tokenizer_error(gguf, m))
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a token by its exact text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.by_text.get(token).copied()
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// BOS, EOS, unknown and padding ids.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The ids llama.cpp stops generation on (`special_eog_ids`): EOS and every token whose
    /// text is on its end-of-generation list (`<end_of_turn>`, `<|im_end|>`, ...).
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let listed = EOG_TEXTS.iter().filter_map(|t| self.token_to_id(t));
        let mut ids: Vec<u32> = self.eos.into_iter().chain(listed).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether llama.cpp puts a space before text (`tokenizer.ggml.add_space_prefix`).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether encoding with special tokens prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// llama.cpp's `tokenize(text, add_special, parse_special)`: control and unknown tokens
    /// written in the text are matched whole only with `parse_special`; user-defined ones
    /// always are.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> LlmResult<Vec<u32>> {
        self.encode_from(text, add_special, parse_special, true)
    }

    /// Encodes text that continues earlier text (a completion after its prompt): no space
    /// prefix before its first fragment, which llama.cpp adds only at the start of a text or
    /// after a special token.
    pub fn encode_continuation(&self, text: &str, parse_special: bool) -> LlmResult<Vec<u32>> {
        self.encode_from(text, false, parse_special, false)
    }

    fn encode_from(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        at_start: bool,
    ) -> LlmResult<Vec<u32>> {
        let mut output = Vec::new();
        if add_special && self.add_bos {
            output.push(self.bos.ok_or_else(|| {
                LlmError::Tokenizer("`add_bos_token` is set but there is no BOS token".into())
            })?);
        }
        // The space prefix goes before the first text and before text after a token.
        let mut prev_special = at_start;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Text { start, end } => {
                    let mut piece = String::with_capacity(end - start + 1);
                    if self.add_space_prefix && prev_special {
                        piece.push(' ');
                    }
                    piece.push_str(&text[start..end]);
                    self.tokenize_escaped(&piece.replace(' ', SPACE_MARK), &mut output)?;
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    output.push(id);
                    prev_special = true;
                }
            }
        }
        if add_special && self.add_eos {
            output.push(self.eos.ok_or_else(|| {
                LlmError::Tokenizer("`add_eos_token` is set but there is no EOS token".into())
            })?);
        }
        Ok(output)
    }

    /// llama.cpp's `tokenizer_st_partition`: each special token in turn (longest first) cuts
    /// the remaining raw text around its occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text {
            start: 0,
            end: text.len(),
        });
        for &id in &self.specials {
            let attrs = self.attrs[id as usize];
            if !parse_special && attrs & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                match fragment {
                    Fragment::Text { start, end } => {
                        split_on_token(text, start, end, needle, id, attrs, &mut next);
                    }
                    token => next.push(token),
                }
            }
            fragments = next;
        }
        fragments
    }

    /// `llm_tokenizer_spm_session::tokenize` on whitespace-escaped text.
    fn tokenize_escaped(&self, text: &str, output: &mut Vec<u32>) -> LlmResult<()> {
        let mut symbols = initial_symbols(text);
        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() {
            self.try_add_bigram(
                text,
                &symbols,
                right as isize - 1,
                right as isize,
                &mut queue,
            );
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (bigram.left as usize, bigram.right as usize);
            // A bigram whose symbols were merged since it was queued is stale.
            if symbols[left].len == 0
                || symbols[right].len == 0
                || symbols[left].len + symbols[right].len != bigram.size
            {
                continue;
            }
            symbols[left].len += symbols[right].len;
            symbols[right].len = 0;
            let after = symbols[right].next;
            symbols[left].next = after;
            if after >= 0 {
                symbols[after as usize].prev = left as isize;
            }
            let (prev, next) = (symbols[left].prev, symbols[left].next);
            self.try_add_bigram(text, &symbols, prev, left as isize, &mut queue);
            self.try_add_bigram(text, &symbols, left as isize, next, &mut queue);
        }
        let mut index = if symbols.is_empty() { -1 } else { 0 };
        while index >= 0 {
            let symbol = symbols[index as usize];
            self.resegment(&text[symbol.start..symbol.start + symbol.len], output)?;
            index = symbol.next;
        }
        Ok(())
    }

    /// Queues the merge of two neighbouring symbols when their concatenation is a token,
    /// ranked by that token's score.
    fn try_add_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: isize,
        right: isize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        if left < 0 || right < 0 {
            return;
        }
        let start = symbols[left as usize].start;
        let size = symbols[left as usize].len + symbols[right as usize].len;
        let Some(&id) = self.by_text.get(&text[start..start + size]) else {
            return;
        };
        queue.push(Bigram {
            left,
            right,
            score: self.scores[id as usize],
            size,
        });
    }

    /// A final symbol: its token, or its bytes as `<0xXX>` tokens. (llama.cpp's `resegment`
    /// also splits symbols back along recorded merges, but a merged symbol is always a token,
    /// so only unmerged single characters ever reach the byte fallback.)
    fn resegment(&self, piece: &str, output: &mut Vec<u32>) -> LlmResult<()> {
        if let Some(&id) = self.by_text.get(piece) {
            output.push(id);
            return Ok(());
        }
        for &byte in piece.as_bytes() {
            output.push(self.byte_to_token(byte)?);
        }
        Ok(())
    }

    /// llama.cpp's `byte_to_token`: `<0xXX>`, else the byte itself as a token.
    fn byte_to_token(&self, byte: u8) -> LlmResult<u32> {
        let hex = format!("<0x{byte:02X}>");
        self.by_text
            .get(&hex)
            .or_else(|| {
                std::str::from_utf8(&[byte])
                    .ok()
                    .and_then(|s| self.by_text.get(s))
            })
            .copied()
            .ok_or_else(|| {
                LlmError::Tokenizer(format!(
                    "byte 0x{byte:02X} has no token `{hex}` to fall back to in the vocabulary"
                ))
            })
    }

    /// llama.cpp's `detokenize(tokens, remove_special, unparse_special)`: pieces joined, the
    /// space prefix removed from the first one, byte tokens as raw bytes (invalid UTF-8 comes
    /// out as U+FFFD).
    pub fn decode(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> LlmResult<String> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && is_token(ids.first(), self.bos) {
            // The BOS-less text starts with the prefix space llama.cpp keeps in this case.
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && is_token(ids.last(), self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = self.piece(id, unparse_special)?;
            let piece: &[u8] = match (remove_space, piece.first()) {
                (true, Some(b' ')) => &piece[1..],
                _ => &piece,
            };
            bytes.extend_from_slice(piece);
            remove_space = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// llama.cpp's `token_to_piece` for SPM: control/unknown text only when `special`,
    /// user-defined text as is, normal text with U+2581 as a space, byte tokens as their byte,
    /// anything else (unused, undefined) as nothing.
    pub fn piece(&self, id: u32, special: bool) -> LlmResult<Cow<'_, [u8]>> {
        let attrs = *self.attrs.get(id as usize).ok_or_else(|| {
            LlmError::Tokenizer(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                self.tokens.len()
            ))
        })?;
        let text = &self.tokens[id as usize];
        let rendered_special = attr::UNKNOWN | attr::CONTROL;
        if !special && attrs & rendered_special != 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        if attrs & (rendered_special | attr::USER_DEFINED) != 0 {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        if attrs & attr::NORMAL != 0 {
            return Ok(Cow::Owned(text.replace(SPACE_MARK, " ").into_bytes()));
        }
        if attrs & attr::BYTE != 0 {
            return Ok(Cow::Owned(vec![byte_of_token(text)]));
        }
        Ok(Cow::Borrowed(&[]))
    }
}

impl SpmTokenizer {
    /// The vocabulary as an HF `tokenizer.json`, the way transformers converts a Llama
    /// SentencePiece model (`LlamaConverter`): BPE with byte fallback and merges ranked by the
    /// merged piece's score, `▁` prepended and spaces escaped, control and user-defined tokens
    /// as added tokens. transformers' fast Llama tokenizer is built this way.
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), json!(id)))
            .collect();
        let added: Vec<serde_json::Value> = (0..self.tokens.len())
            .filter(|&id| {
                self.attrs[id] & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0
            })
            .map(|id| {
                let special = self.attrs[id] & (attr::CONTROL | attr::UNKNOWN) != 0;
                json!({
                    "id": id, "content": self.tokens[id], "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false,
                    "special": special,
                })
            })
            .collect();
        let text = |id: Option<u32>| id.and_then(|id| self.id_to_token(id));
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": SPACE_MARK},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK},
            ]},
            "pre_tokenizer": null,
            "post_processor": self.hf_post_processor(),
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": text(self.unk),
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": self.hf_merges(),
            },
        })
    }

    /// transformers' `SentencePieceExtractor`: every split of a piece into two tokens, by the
    /// piece's score (highest first; ties keep vocabulary order), then by the halves' ids.
    fn hf_merges(&self) -> Vec<[&str; 2]> {
        let mut merges: Vec<(f32, [&str; 2])> = Vec::new();
        for token in &self.tokens {
            let score = self.scores[self.by_text[token] as usize];
            let mut local: Vec<(u32, u32, [&str; 2])> = token
                .char_indices()
                .skip(1)
                .filter_map(|(at, _)| {
                    let (l, r) = token.split_at(at);
                    Some((*self.by_text.get(l)?, *self.by_text.get(r)?, [l, r]))
                })
                .collect();
            local.sort_by_key(|&(l, r, _)| (l, r));
            merges.extend(local.into_iter().map(|(_, _, pair)| (score, pair)));
        }
        // A stable sort, as Python's `sorted(..., reverse=True)` is.
        merges.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
        merges.into_iter().map(|(_, pair)| pair).collect()
    }

    /// BOS (and EOS) around the text as `add_bos_token`/`add_eos_token` say.
    fn hf_post_processor(&self) -> serde_json::Value {
        use serde_json::json;
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut special_tokens = serde_json::Map::new();
        let mut add = |id: Option<u32>, on: bool, seq: &mut Vec<serde_json::Value>| {
            let Some((id, token)) = id
                .filter(|_| on)
                .and_then(|id| Some((id, self.id_to_token(id)?)))
            else {
                return;
            };
            seq.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
            special_tokens.insert(
                token.to_string(),
                json!({"id": token, "ids": [id], "tokens": [token]}),
            );
        };
        for (sequence, out) in [("A", &mut single), ("B", &mut pair)] {
            add(self.bos, self.add_bos, out);
            out.push(json!({"Sequence": {"id": sequence, "type_id": 0}}));
            add(self.eos, self.add_eos, out);
        }
        let pair: Vec<serde_json::Value> = single.iter().cloned().chain(pair).collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
    }
}

/// Whether `id` is there and is the (present) special token `token`.
fn is_token(id: Option<&u32>, token: Option<u32>) -> bool {
    matches!((id, token), (Some(&a), Some(b)) if a == b)
}

/// One symbol of the merge chain: a byte range of the text and its live neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

/// The text's characters as a doubly linked chain of symbols.
fn initial_symbols(text: &str) -> Vec<Symbol> {
    let count = text.chars().count();
    text.char_indices()
        .enumerate()
        .map(|(index, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: index as isize - 1,
            next: if index + 1 == count {
                -1
            } else {
                index as isize + 1
            },
        })
        .collect()
}

/// A candidate merge: the highest score pops first, the leftmost among equal scores.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    left: isize,
    right: isize,
    score: f32,
    size: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // As llama.cpp's comparator: equal scores (and NaNs) fall through to position.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// Splits the raw text `start..end` around every occurrence of one special token, trimming
/// whitespace beside it when the token is LSTRIP/RSTRIP.
fn split_on_token(
    text: &str,
    mut start: usize,
    end: usize,
    needle: &str,
    id: u32,
    attrs: u32,
    out: &mut Vec<Fragment>,
) {
    while start < end {
        let Some(offset) = text[start..end].find(needle) else {
            out.push(Fragment::Text { start, end });
            return;
        };
        let found = start + offset;
        let mut left_end = found;
        if attrs & attr::LSTRIP != 0 {
            while left_end > start && is_c_space(text.as_bytes()[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > start {
            out.push(Fragment::Text {
                start,
                end: left_end,
            });
        }
        out.push(Fragment::Token(id));
        start = found + needle.len();
        if attrs & attr::RSTRIP != 0 {
            while start < end && is_c_space(text.as_bytes()[start]) {
                start += 1;
            }
        }
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for LSTRIP/RSTRIP.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The byte of a `<0xXX>` token, read as llama.cpp's `strtol` reads the two hex digits
/// (stopping at the first non-digit).
fn byte_of_token(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..5).unwrap_or(&[]);
    let mut value = 0u8;
    for &digit in digits {
        match (digit as char).to_digit(16) {
            Some(d) => value = value * 16 + d as u8,
            None => break,
        }
    }
    value
}

/// llama.cpp's load-time overrides: end-of-generation texts and the first FIM text of each
/// unnamed slot become CONTROL; a few texts are always USER_DEFINED.
fn mark_control_looking(attrs: &mut [u32], by_text: &HashMap<String, u32>, fim_named: &[bool]) {
    for (slot, (_, texts)) in FIM_SLOTS.iter().enumerate() {
        if fim_named.get(slot).copied().unwrap_or(false) {
            continue;
        }
        // llama.cpp walks a std::map, so the smallest text in byte order is found first.
        let first = texts
            .iter()
            .filter(|t| by_text.contains_key(**t))
            .min_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        if let Some(id) = first.and_then(|t| by_text.get(*t)) {
            attrs[*id as usize] |= attr::CONTROL;
        }
    }
    for text in EOG_TEXTS {
        if let Some(&id) = by_text.get(*text) {
            attrs[id as usize] |= attr::CONTROL;
        }
    }
    for text in ALWAYS_RENDERED {
        if let Some(&id) = by_text.get(*text) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
}

/// Control, user-defined and unknown ids, longest text first. (llama.cpp's `std::sort` leaves
/// equal lengths in an unspecified order; ids ascending here.)
fn special_cache(tokens: &[String], attrs: &[u32]) -> Vec<u32> {
    let mut specials: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&id| {
            attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
        })
        .collect();
    specials.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()));
    specials
}

/// Phi-3's special tokens swallow the whitespace after them in llama.cpp, except `<unk>`,
/// `<s>` and `<|endoftext|>`; `</s>` does too.
fn mark_phi3_rstrip(attrs: &mut [u32], by_text: &HashMap<String, u32>, specials: &[u32]) {
    for &id in specials {
        attrs[id as usize] |= attr::RSTRIP;
    }
    if let Some(&id) = by_text.get("</s>") {
        attrs[id as usize] |= attr::RSTRIP;
    }
    for text in ["<unk>", "<s>", "<|endoftext|>"] {
        if let Some(&id) = by_text.get(text) {
            attrs[id as usize] &= !attr::RSTRIP;
        }
    }
}

fn tokenizer_error(gguf: &GgufFile, message: impl std::fmt::Display) -> LlmError {
    LlmError::bad_file(gguf.path(), format!("tokenizer: {message}"))
}

/// The vocabulary and settings from `tokenizer.ggml.*`, with llama.cpp's SPM defaults (BOS 1,
/// EOS 2, unknown 0, BOS added, space prefix on).
fn read_vocab(gguf: &GgufFile) -> LlmResult<SpmVocab> {
    let tokens = read_tokens(gguf)?;
    let n = tokens.len();
    let scores = read_scores(gguf, n)?;
    let token_types = read_token_types(gguf, n)?;
    let id = |key: &str, default: Option<u32>| read_special_id(gguf, key, default, n);
    let fim_named = FIM_SLOTS
        .iter()
        .map(|(keys, _)| keys.iter().any(|k| gguf.metadata(k).is_some()))
        .collect();
    let name = gguf.string("general.name").ok().flatten().unwrap_or("");
    let name = name.to_lowercase();
    Ok(SpmVocab {
        scores,
        token_types,
        bos: id("tokenizer.ggml.bos_token_id", Some(1))?,
        eos: id("tokenizer.ggml.eos_token_id", Some(2))?,
        unk: id("tokenizer.ggml.unknown_token_id", Some(0))?,
        pad: id("tokenizer.ggml.padding_token_id", None)?,
        add_bos: gguf.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
        add_eos: gguf.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        add_space_prefix: gguf
            .bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true),
        fim_named,
        phi3: name.contains("phi-3") || name.contains("phi3"),
        tokens,
    })
}

/// `tokenizer.ggml.tokens`; an empty token is renamed `[EMPTY_<id>]` as llama.cpp does.
fn read_tokens(gguf: &GgufFile) -> LlmResult<Vec<String>> {
    const KEY: &str = "tokenizer.ggml.tokens";
    let items = array(gguf, KEY)?;
    items
        .iter()
        .enumerate()
        .map(|(id, v)| match v {
            Value::String(s) if s.is_empty() => Ok(format!("[EMPTY_{id}]")),
            Value::String(s) => Ok(s.clone()),
            _ => Err(tokenizer_error(
                gguf,
                format!("`{KEY}` must be an array of strings"),
            )),
        })
        .collect()
}

/// `tokenizer.ggml.scores` (f32 or i32), at least one per token: SPM merges by them, so a
/// vocabulary without them cannot tokenize as the model was trained.
fn read_scores(gguf: &GgufFile, n: usize) -> LlmResult<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    let items = array(gguf, KEY)?;
    if items.len() < n {
        return Err(tokenizer_error(
            gguf,
            format!("`{KEY}` has {} entries for {n} tokens", items.len()),
        ));
    }
    items[..n]
        .iter()
        .map(|v| match v {
            Value::F32(s) => Ok(*s),
            Value::I32(s) => Ok(*s as f32),
            _ => Err(tokenizer_error(
                gguf,
                format!("`{KEY}` must be an array of f32 or i32"),
            )),
        })
        .collect()
}

/// `tokenizer.ggml.token_type`, one i32 per token; absent means every token is NORMAL.
fn read_token_types(gguf: &GgufFile, n: usize) -> LlmResult<Vec<i64>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    if gguf.metadata(KEY).is_none() {
        return Ok(vec![1; n]);
    }
    let items = array(gguf, KEY)?;
    if items.len() < n {
        return Err(tokenizer_error(
            gguf,
            format!("`{KEY}` has {} entries for {n} tokens", items.len()),
        ));
    }
    items[..n]
        .iter()
        .map(|v| match v {
            Value::I32(t) => Ok(i64::from(*t)),
            _ => Err(tokenizer_error(
                gguf,
                format!("`{KEY}` must be an array of i32"),
            )),
        })
        .collect()
}

/// A special token id key: an id outside the vocabulary is ignored (the default stays), as
/// llama.cpp does, so a GGUF llama.cpp loads loads here too.
fn read_special_id(
    gguf: &GgufFile,
    key: &str,
    default: Option<u32>,
    n: usize,
) -> LlmResult<Option<u32>> {
    let in_range = |id: usize| id < n;
    let default = default.filter(|&id| in_range(id as usize));
    let Some(value) = gguf.metadata(key) else {
        return Ok(default);
    };
    let id = value_as_usize(value).ok_or_else(|| {
        tokenizer_error(
            gguf,
            format!("`{key}` must be a non-negative integer token id"),
        )
    })?;
    Ok(if in_range(id) {
        Some(id as u32)
    } else {
        default
    })
}

/// An array metadata value; absent or another type is an error naming the key.
fn array<'a>(gguf: &'a GgufFile, key: &str) -> LlmResult<&'a Vec<Value>> {
    let value = gguf.metadata(key).ok_or_else(|| LlmError::MissingField {
        path: gguf.path().to_path_buf(),
        field: key.to_string(),
    })?;
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(tokenizer_error(gguf, format!("`{key}` must be an array"))),
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::llm::testing;

    const VOCAB: &str = "ggml-vocab-llama-spm.gguf";

    /// llama.cpp's Llama-2 vocabulary fixture.
    pub fn llama_spm() -> SpmTokenizer {
        let gguf = GgufFile::open(&testing::vocab_fixture(VOCAB)).unwrap();
        SpmTokenizer::from_gguf(&gguf).unwrap()
    }

    /// llama.cpp's test-tokenizer-0 cases: texts split on `\n__ggml_vocab_test__\n`, one
    /// line of space-separated ids per text.
    pub fn llama_cpp_cases() -> Vec<(String, Vec<u32>)> {
        let inp = std::fs::read_to_string(testing::vocab_fixture(&format!("{VOCAB}.inp"))).unwrap();
        let out = std::fs::read_to_string(testing::vocab_fixture(&format!("{VOCAB}.out"))).unwrap();
        let texts: Vec<&str> = inp
            .strip_suffix("\n__ggml_vocab_test__\n")
            .unwrap()
            .split("\n__ggml_vocab_test__\n")
            .collect();
        let ids: Vec<Vec<u32>> = out
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(|id| id.parse().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(texts.len(), ids.len());
        texts.into_iter().map(str::to_string).zip(ids).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn every_llama_cpp_case_tokenizes_to_its_ids() {
        let spm = llama_spm();
        let cases = llama_cpp_cases();
        assert!(cases.len() >= 40, "{} cases", cases.len());
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(text, expected)| {
                let ids = spm.encode(text, false, false).unwrap();
                (&ids != expected).then(|| format!("{text:?}: {ids:?} != {expected:?}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn llama_cpp_cases_decode_back_to_their_text() {
        let spm = llama_spm();
        for (text, ids) in llama_cpp_cases() {
            // common_detokenize(ctx, ids): specials rendered, nothing removed.
            assert_eq!(spm.decode(&ids, false, true).unwrap(), text, "{ids:?}");
        }
    }

    /// llama.cpp's test-tokenizer-1-spm: every token's text, and every code point, re-encodes
    /// (special tokens parsed) to something that decodes to the same text.
    #[test]
    fn every_token_and_code_point_round_trips_as_in_llama_cpp() {
        let spm = llama_spm();
        let round_trip = |text: &str| {
            let ids = spm.encode(text, false, true).unwrap();
            spm.decode(&ids, false, true).unwrap()
        };
        for id in 0..spm.len() as u32 {
            let text = spm.decode(&[id], false, true).unwrap();
            assert_eq!(round_trip(&text), text, "token {id}");
        }
        // Surrogates are not chars; llama.cpp skips U+40000..=U+E0000 (unassigned) and U+2581
        // (which decodes to a space).
        let points =
            (0..0x110000u32).filter(|cp| !(0x40000..=0xE0000).contains(cp) && *cp != 0x2581);
        for c in points.filter_map(char::from_u32) {
            let text = c.to_string();
            assert_eq!(round_trip(&text), text, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn vocabulary_settings_follow_llama_cpp() {
        let spm = llama_spm();
        assert_eq!(spm.len(), 32000);
        assert_eq!(
            (spm.bos_id(), spm.eos_id(), spm.unk_id()),
            (Some(1), Some(2), Some(0))
        );
        assert!(spm.add_bos() && spm.add_space_prefix());
        assert_eq!(spm.encode("Hello", true, false).unwrap(), vec![1, 15043]);
        assert_eq!(spm.encode("", true, false).unwrap(), vec![1]);
        // With BOS removed, llama.cpp keeps the prefix space; rendered, it strips it.
        assert_eq!(spm.decode(&[1, 15043], true, false).unwrap(), " Hello");
        assert_eq!(spm.decode(&[1, 15043], false, true).unwrap(), "<s> Hello");
        assert_eq!(spm.decode(&[15043], false, false).unwrap(), "Hello");
    }

    #[test]
    fn special_tokens_parse_only_when_asked_and_reset_the_space_prefix() {
        let spm = llama_spm();
        let parsed = spm.encode("<s>Hello</s>", false, true).unwrap();
        assert_eq!(parsed, vec![1, 15043, 2]);
        let literal = spm.encode("<s>Hello</s>", false, false).unwrap();
        assert!(
            !literal.contains(&1) && !literal.contains(&2),
            "{literal:?}"
        );
        assert_eq!(spm.decode(&literal, false, true).unwrap(), "<s>Hello</s>");
        // Text after a special token gets the space prefix again, as in llama.cpp.
        let two = spm.encode("Hello</s>Hello", false, true).unwrap();
        assert_eq!(two, vec![15043, 2, 15043]);
        // Without rendering, control tokens vanish, but the first (empty) piece still used up
        // llama.cpp's one-space strip, so the prefix space stays.
        assert_eq!(spm.decode(&parsed, false, false).unwrap(), " Hello");
    }

    #[test]
    fn a_continuation_gets_no_space_prefix() {
        let spm = llama_spm();
        // "Hello world" split after "Hello": the continuation is " world", not "  world".
        assert_eq!(
            spm.encode("Hello world", false, true).unwrap(),
            vec![15043, 3186]
        );
        assert_eq!(spm.encode_continuation(" world", true).unwrap(), vec![3186]);
        assert_eq!(
            spm.encode(" world", false, true).unwrap(),
            vec![29871, 3186]
        );
        // After a special token the prefix comes back, as in a whole-text encode.
        assert_eq!(
            spm.encode_continuation("</s>Hello", true).unwrap(),
            vec![2, 15043]
        );
    }

    #[test]
    fn generation_ends_on_eos_and_end_of_turn_texts() {
        let vocab = SpmVocab {
            tokens: vec![
                "<unk>".into(),
                "<s>".into(),
                "<eos>".into(),
                "<end_of_turn>".into(),
                "a".into(),
            ],
            scores: vec![0.0; 5],
            token_types: vec![2, 3, 3, 3, 1],
            eos: Some(2),
            ..SpmVocab::default()
        };
        assert_eq!(
            SpmTokenizer::new(vocab).unwrap().end_of_generation_ids(),
            vec![2, 3]
        );
        assert_eq!(llama_spm().end_of_generation_ids(), vec![2]);
    }

    /// Seeded random texts mixing spaces, newlines, special-token strings, accents, CJK and
    /// emoji: encoding never fails (every byte has a fallback token) and, special tokens taken
    /// literally, decoding gives the text back.
    #[test]
    fn random_texts_round_trip_literally() {
        let spm = llama_spm();
        let pieces = [
            " ",
            "  ",
            "\n",
            "\t",
            "<s>",
            "</s>",
            "<unk>",
            "Hello",
            "world",
            "é",
            "ñ",
            "日本",
            "🚀",
            "😶‍🌫️",
            "\u{2581}",
            "3.14",
            "'ll",
            "\u{0301}",
            "\u{10FFFF}",
            "\r\n",
            "ǅ",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for _ in 0..2000 {
            let len = next(8);
            let text: String = (0..len).map(|_| pieces[next(pieces.len())]).collect();
            let ids = spm.encode(&text, false, false).unwrap();
            let decoded = spm.decode(&ids, false, true).unwrap();
            // U+2581 is a space once decoded, in llama.cpp as here.
            assert_eq!(
                decoded,
                text.replace('\u{2581}', " "),
                "{text:?} -> {ids:?}"
            );
        }
    }

    /// A toy vocabulary: `<unk>`, `<s>`, `</s>`, a few byte tokens, then `extra` with scores.
    fn toy(extra: &[(&str, f32)], bytes: &[u8]) -> SpmTokenizer {
        let mut vocab = SpmVocab {
            tokens: vec!["<unk>".into(), "<s>".into(), "</s>".into()],
            scores: vec![0.0; 3],
            token_types: vec![2, 3, 3],
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
            add_space_prefix: true,
            ..SpmVocab::default()
        };
        for byte in bytes {
            vocab.tokens.push(format!("<0x{byte:02X}>"));
            vocab.scores.push(0.0);
            vocab.token_types.push(6);
        }
        for (token, score) in extra {
            vocab.tokens.push(token.to_string());
            vocab.scores.push(*score);
            vocab.token_types.push(1);
        }
        SpmTokenizer::new(vocab).unwrap()
    }

    fn pieces(spm: &SpmTokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| spm.id_to_token(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_higher_scored_merge_wins() {
        let tokens = |ab: f32, space_a: f32| {
            let spm = toy(
                &[
                    ("▁", -1.0),
                    ("a", -1.0),
                    ("b", -1.0),
                    ("ab", ab),
                    ("▁a", space_a),
                ],
                &[],
            );
            let ids = spm.encode("ab", false, false).unwrap();
            pieces(&spm, &ids)
        };
        assert_eq!(tokens(-2.0, -3.0), ["▁", "ab"]);
        assert_eq!(tokens(-3.0, -2.0), ["▁a", "b"]);
    }

    #[test]
    fn characters_outside_the_vocabulary_fall_back_to_bytes() {
        let spm = toy(&[("▁", -1.0), ("x", -1.0)], &[0xE2, 0x82, 0xAC]);
        let ids = spm.encode("x€", false, false).unwrap();
        assert_eq!(pieces(&spm, &ids), ["▁", "x", "<0xE2>", "<0x82>", "<0xAC>"]);
        assert_eq!(spm.decode(&ids, false, false).unwrap(), "x€");
        let err = spm.encode("x£", false, false).unwrap_err().to_string();
        assert!(err.contains("byte 0xC2 has no token `<0xC2>`"), "{err}");
        let err = spm.decode(&[99], false, false).unwrap_err().to_string();
        assert!(err.contains("token id 99 is outside"), "{err}");
    }

    #[test]
    fn control_looking_tokens_become_control_as_in_llama_cpp() {
        let mut vocab = SpmVocab {
            tokens: vec![
                "<end_of_turn>".into(),
                "<PRE>".into(),
                "<|fim_prefix|>".into(),
                "<|channel|>".into(),
            ],
            scores: vec![0.0; 4],
            token_types: vec![1, 1, 1, 3],
            fim_named: vec![false; FIM_SLOTS.len()],
            ..SpmVocab::default()
        };
        let spm = SpmTokenizer::new(vocab.clone()).unwrap();
        assert_eq!(spm.attrs[0], attr::NORMAL | attr::CONTROL);
        // Byte order: `<PRE>` sorts before `<|fim_prefix|>`, so only it is taken.
        assert_eq!(spm.attrs[1], attr::NORMAL | attr::CONTROL);
        assert_eq!(spm.attrs[2], attr::NORMAL);
        assert_eq!(spm.attrs[3], attr::USER_DEFINED);
        vocab.fim_named[0] = true;
        let spm = SpmTokenizer::new(vocab).unwrap();
        assert_eq!(spm.attrs[1], attr::NORMAL);
    }

    #[test]
    fn phi3_special_tokens_swallow_following_whitespace() {
        let mut vocab = SpmVocab {
            tokens: vec![
                "<|user|>".into(),
                "<s>".into(),
                "▁".into(),
                "a".into(),
                "▁a".into(),
            ],
            scores: vec![0.0, 0.0, -1.0, -1.0, -0.5],
            token_types: vec![3, 3, 1, 1, 1],
            add_space_prefix: true,
            ..SpmVocab::default()
        };
        let plain = SpmTokenizer::new(vocab.clone()).unwrap();
        assert_eq!(
            plain.encode("<|user|> a", false, true).unwrap(),
            vec![0, 2, 4]
        );
        vocab.phi3 = true;
        let phi3 = SpmTokenizer::new(vocab).unwrap();
        assert_eq!(phi3.encode("<|user|> a", false, true).unwrap(), vec![0, 4]);
        assert_eq!(phi3.encode("<s> a", false, true).unwrap(), vec![1, 2, 4]);
    }

    fn gguf_with(dir: &Path, metadata: &[(&str, Value)]) -> PathBuf {
        let path = dir.join("vocab.gguf");
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = std::fs::File::create(&path).unwrap();
        candle_core::quantized::gguf_file::write(&mut file, &refs, &[]).unwrap();
        path
    }

    fn load_error(metadata: &[(&str, Value)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let gguf = GgufFile::open(&gguf_with(dir.path(), metadata)).unwrap();
        crate::llm::TextTokenizer::from_gguf(&gguf)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_vocabulary_metadata_is_an_error_naming_the_key() {
        let strings = |items: &[&str]| {
            Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
        };
        let model = ("tokenizer.ggml.model", Value::String("llama".into()));
        let tokens = ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>"]));
        let scores = (
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0); 3]),
        );

        let err = load_error(&[model.clone(), tokens.clone()]);
        assert!(
            err.contains("missing required field `tokenizer.ggml.scores`"),
            "{err}"
        );
        let err = load_error(&[model.clone(), scores.clone()]);
        assert!(
            err.contains("missing required field `tokenizer.ggml.tokens`"),
            "{err}"
        );
        let short = (
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1); 2]),
        );
        let err = load_error(&[model.clone(), tokens.clone(), scores.clone(), short]);
        assert!(
            err.contains("`tokenizer.ggml.token_type` has 2 entries for 3 tokens"),
            "{err}"
        );
        let wrong = ("tokenizer.ggml.scores", strings(&["a", "b", "c"]));
        let err = load_error(&[model.clone(), tokens.clone(), wrong]);
        assert!(
            err.contains("`tokenizer.ggml.scores` must be an array of f32 or i32"),
            "{err}"
        );
        let twice = ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "<s>"]));
        let err = load_error(&[model.clone(), twice, scores.clone()]);
        assert!(
            err.contains("`tokenizer.ggml.tokens` holds `<s>` twice"),
            "{err}"
        );
        let err = load_error(&[
            ("tokenizer.ggml.model", Value::String("bert".into())),
            tokens,
            scores,
        ]);
        assert!(
            err.contains("`tokenizer.ggml.model` = `bert` is not supported"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod hf_tests {
    use super::tests_support::*;

    /// The tokenizer.json written for an HF export is transformers' conversion, which gives
    /// the same ids as llama.cpp on its test cases (llama.cpp made the .out with it).
    #[test]
    fn hf_export_tokenizes_llama_cpp_cases_the_same() {
        let spm = llama_spm();
        let json = serde_json::to_string(&spm.to_hf_json()).unwrap();
        let hf = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        for (text, expected) in llama_cpp_cases() {
            let ids = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(ids, expected, "{text:?}");
        }
        let with_bos = hf.encode("Hello", true).unwrap().get_ids().to_vec();
        assert_eq!(with_bos, vec![1, 15043]);
        assert_eq!(
            hf.decode(&[15043, 29871, 243, 162, 157, 131], true)
                .unwrap(),
            "Hello 🚀"
        );
    }
}
