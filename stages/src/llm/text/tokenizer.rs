//! The model's tokenizer, from an HF `tokenizer.json` or rebuilt from GGUF metadata so that it
//! tokenizes exactly as llama.cpp does: byte-level BPE for `gpt2` vocabularies (pre-tokenizer
//! regexes per `tokenizer.ggml.pre`), llama.cpp's own SentencePiece algorithm for `llama` ones
//! (see `spm`), control tokens parsed as single special tokens in templated text.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper,
    PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::spm::SpmTokenizer;
use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::gguf::{value_as_usize, GgufFile};

/// The special tokens a chat template and a sampler need, by their text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
    /// The tokenizer prepends `bos` when encoding with `add_special_tokens`.
    pub add_bos: bool,
}

impl SpecialTokens {
    /// Reads `bos_token`, `eos_token`, `pad_token`, `unk_token` (a string or an
    /// `{"content": ...}` object) and `add_bos_token` from an HF `tokenizer_config.json`.
    pub fn from_tokenizer_config(config: &Json) -> Self {
        let token = |key: &str| -> Option<String> {
            match config.get(key)? {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        SpecialTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
            pad: token("pad_token"),
            unk: token("unk_token"),
            add_bos: config
                .get("add_bos_token")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        }
    }
}

/// The model's tokenizer with its special tokens, encoding and decoding text the way the model
/// was trained: an HF `tokenizers::Tokenizer` (tokenizer.json, or a GGUF byte-level BPE
/// vocabulary rebuilt as one), or llama.cpp's SentencePiece tokenizer for GGUF `llama`
/// vocabularies, which no `tokenizers` model reproduces exactly.
#[derive(Debug)]
pub struct TextTokenizer {
    backend: Backend,
    special: SpecialTokens,
}

#[derive(Debug)]
enum Backend {
    Hf(Box<HfBackend>),
    Spm(Arc<SpmTokenizer>),
}

#[derive(Debug)]
struct HfBackend {
    inner: Tokenizer,
    /// The same tokenizer with special-token parsing disabled, built on first use.
    literal: OnceLock<Tokenizer>,
}

impl Clone for TextTokenizer {
    fn clone(&self) -> Self {
        let backend = match &self.backend {
            Backend::Hf(hf) => Backend::Hf(Box::new(HfBackend {
                inner: hf.inner.clone(),
                literal: OnceLock::new(),
            })),
            Backend::Spm(spm) => Backend::Spm(Arc::clone(spm)),
        };
        TextTokenizer {
            backend,
            special: self.special.clone(),
        }
    }
}

/// The decoder of a token stream, yielding text as soon as it is complete UTF-8.
pub enum TokenDecodeStream<'a> {
    Hf(Box<HfDecodeStream<'a>>),
    Spm(SpmDecodeStream<'a>),
}

type HfDecodeStream<'a> = DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

impl TokenDecodeStream<'_> {
    /// Feeds one id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> LlmResult<Option<String>> {
        match self {
            TokenDecodeStream::Hf(stream) => stream
                .step(id)
                .map_err(|e| LlmError::Tokenizer(format!("cannot decode id {id}: {e}"))),
            TokenDecodeStream::Spm(stream) => stream.step(id),
        }
    }
}

/// Incremental SPM decoding: pieces as llama.cpp's detokenizer joins them, released as the
/// bytes so far form whole UTF-8 characters (byte-fallback tokens split characters).
pub struct SpmDecodeStream<'a> {
    spm: &'a SpmTokenizer,
    special: bool,
    first: bool,
    pending: Vec<u8>,
}

impl SpmDecodeStream<'_> {
    fn step(&mut self, id: u32) -> LlmResult<Option<String>> {
        let piece = self.spm.piece(id, self.special)?;
        let piece: &[u8] = match (self.first && self.spm.add_space_prefix(), piece.first()) {
            (true, Some(b' ')) => &piece[1..],
            _ => &piece,
        };
        self.first = false;
        self.pending.extend_from_slice(piece);
        Ok(take_complete_utf8(&mut self.pending))
    }
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8 (invalid bytes
/// as U+FFFD), leaving a trailing incomplete character for the next piece.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> Option<String> {
    let mut complete = 0;
    while complete < bytes.len() {
        match std::str::from_utf8(&bytes[complete..]) {
            Ok(_) => complete = bytes.len(),
            Err(e) => match e.error_len() {
                None => {
                    complete += e.valid_up_to();
                    break;
                }
                // Invalid bytes never complete: release them (as U+FFFD) now.
                Some(invalid) => complete += e.valid_up_to() + invalid,
            },
        }
    }
    if complete == 0 {
        return None;
    }
    let rest = bytes.split_off(complete);
    let text = String::from_utf8_lossy(bytes).into_owned();
    *bytes = rest;
    Some(text)
}

impl TextTokenizer {
    /// Wraps a tokenizer and the special tokens that go with it.
    pub fn new(inner: Tokenizer, special: SpecialTokens) -> Self {
        TextTokenizer {
            backend: Backend::Hf(Box::new(HfBackend {
                inner,
                literal: OnceLock::new(),
            })),
            special,
        }
    }

    /// Wraps llama.cpp's SPM tokenizer; the special tokens come from its vocabulary.
    pub fn from_spm(spm: SpmTokenizer) -> Self {
        let text = |id: Option<u32>| id.and_then(|id| spm.id_to_token(id)).map(str::to_string);
        let special = SpecialTokens {
            bos: text(spm.bos_id()),
            eos: text(spm.eos_id()),
            pad: text(spm.pad_id()),
            unk: text(spm.unk_id()),
            add_bos: spm.add_bos(),
        };
        TextTokenizer {
            backend: Backend::Spm(Arc::new(spm)),
            special,
        }
    }

    /// The same tokenizer with other special tokens (by text).
    pub fn with_special(self, special: SpecialTokens) -> Self {
        TextTokenizer { special, ..self }
    }

    /// Reads an HF `tokenizer.json`.
    pub fn from_file(path: &Path, special: SpecialTokens) -> LlmResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| LlmError::io(path, e))?;
        let inner = Tokenizer::from_bytes(&bytes)
            .map_err(|e| LlmError::bad_file(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(TextTokenizer::new(inner, special))
    }

    /// Rebuilds the tokenizer llama.cpp uses from the GGUF's `tokenizer.ggml.*` metadata:
    /// byte-level BPE for `gpt2`, SentencePiece for `llama`.
    pub fn from_gguf(gguf: &GgufFile) -> LlmResult<Self> {
        match gguf.string(MODEL_KEY)? {
            Some("gpt2") => GgufTokenizerBuilder { gguf }.build(),
            Some("llama") => SpmTokenizer::from_gguf(gguf).map(TextTokenizer::from_spm),
            Some(other) => Err(LlmError::bad_file(
                gguf.path(),
                format!(
                    "tokenizer: `{MODEL_KEY}` = `{other}` is not supported (known: `gpt2` byte-level BPE, `llama` SentencePiece); use the model's HF directory instead"
                ),
            )),
            None => Err(LlmError::MissingField {
                path: gguf.path().to_path_buf(),
                field: MODEL_KEY.to_string(),
            }),
        }
    }

    /// The wrapped `tokenizers::Tokenizer`; `None` for a SentencePiece GGUF vocabulary.
    pub fn inner(&self) -> Option<&Tokenizer> {
        match &self.backend {
            Backend::Hf(hf) => Some(&hf.inner),
            Backend::Spm(_) => None,
        }
    }

    /// The llama.cpp SPM tokenizer, for a SentencePiece GGUF vocabulary.
    pub fn spm(&self) -> Option<&SpmTokenizer> {
        match &self.backend {
            Backend::Hf(_) => None,
            Backend::Spm(spm) => Some(spm),
        }
    }

    /// The special tokens by text.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Encodes `text`, parsing special tokens written in it (`<|im_start|>` is one token) as
    /// HF does for rendered chat templates; `add_special_tokens` adds BOS/EOS as the
    /// tokenizer's post-processor says (off for text rendered by a chat template, which
    /// writes its own BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> LlmResult<Vec<u32>> {
        match &self.backend {
            Backend::Hf(hf) => encode_with(&hf.inner, text, add_special_tokens),
            Backend::Spm(spm) => spm.encode(text, add_special_tokens, true),
        }
    }

    /// Encodes `text` that continues earlier text (a completion after its rendered prompt),
    /// special tokens parsed and none added. A SentencePiece vocabulary puts no space prefix
    /// before it, so the ids are those of the text in place, not of a new text.
    pub fn encode_continuation(&self, text: &str) -> LlmResult<Vec<u32>> {
        match &self.backend {
            Backend::Hf(hf) => encode_with(&hf.inner, text, false),
            Backend::Spm(spm) => spm.encode_continuation(text, true),
        }
    }

    /// Encodes `text` treating special-token strings as plain text: for user content that
    /// must not be able to inject `<|im_end|>`.
    pub fn encode_literal(&self, text: &str, add_special_tokens: bool) -> LlmResult<Vec<u32>> {
        match &self.backend {
            Backend::Hf(hf) => {
                let literal = hf.literal.get_or_init(|| {
                    let mut t = hf.inner.clone();
                    t.set_encode_special_tokens(true);
                    t
                });
                encode_with(literal, text, add_special_tokens)
            }
            Backend::Spm(spm) => spm.encode(text, add_special_tokens, false),
        }
    }

    /// Decodes ids to text; `skip_special_tokens` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> LlmResult<String> {
        match &self.backend {
            Backend::Hf(hf) => hf
                .inner
                .decode(ids, skip_special_tokens)
                .map_err(|e| LlmError::Tokenizer(format!("cannot decode {} ids: {e}", ids.len()))),
            // llama.cpp's `remove_special` and `!unparse_special` together are HF's skip.
            Backend::Spm(spm) => spm.decode(ids, skip_special_tokens, !skip_special_tokens),
        }
    }

    /// A decoder for generation: feed ids one by one with `step`, get text as soon as it is
    /// complete (multi-byte characters split over several tokens come out whole).
    pub fn decode_stream(&self, skip_special_tokens: bool) -> TokenDecodeStream<'_> {
        match &self.backend {
            Backend::Hf(hf) => {
                TokenDecodeStream::Hf(Box::new(hf.inner.decode_stream(skip_special_tokens)))
            }
            Backend::Spm(spm) => TokenDecodeStream::Spm(SpmDecodeStream {
                spm,
                special: !skip_special_tokens,
                first: true,
                pending: Vec::new(),
            }),
        }
    }

    /// One more than the largest token id, added tokens included: the embedding matrix must
    /// have at least this many rows.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(hf) => {
                let vocab = hf.inner.get_vocab(true);
                vocab.values().max().map_or(0, |max| *max as usize + 1)
            }
            Backend::Spm(spm) => spm.len(),
        }
    }

    /// The id of a token given by its text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(hf) => hf.inner.token_to_id(token),
            Backend::Spm(spm) => spm.token_to_id(token),
        }
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf(hf) => hf.inner.id_to_token(id),
            Backend::Spm(spm) => spm.id_to_token(id).map(str::to_string),
        }
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.special
            .bos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The EOS id, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.special
            .eos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The padding id, if the model has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.special
            .pad
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// The tokenizer serialised as an HF `tokenizer.json`.
    pub fn to_json(&self) -> LlmResult<String> {
        match &self.backend {
            Backend::Hf(hf) => hf
                .inner
                .to_string(false)
                .map_err(|e| LlmError::Tokenizer(format!("cannot serialise: {e}"))),
            // transformers' own conversion of a SentencePiece vocabulary.
            Backend::Spm(spm) => serde_json::to_string(&spm.to_hf_json())
                .map_err(|e| LlmError::Tokenizer(format!("cannot serialise: {e}"))),
        }
    }
}

/// The GGUF key naming the tokenizer model llama.cpp builds.
const MODEL_KEY: &str = "tokenizer.ggml.model";

fn encode_with(tokenizer: &Tokenizer, text: &str, add_special_tokens: bool) -> LlmResult<Vec<u32>> {
    tokenizer
        .encode(text, add_special_tokens)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| LlmError::Tokenizer(format!("cannot encode text ({} bytes): {e}", text.len())))
}

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_UNKNOWN: usize = 2;
const TOKEN_TYPE_CONTROL: usize = 3;
const TOKEN_TYPE_USER_DEFINED: usize = 4;

/// Builds a byte-level BPE tokenizer from `tokenizer.ggml.*` metadata of a `gpt2` vocabulary.
struct GgufTokenizerBuilder<'a> {
    gguf: &'a GgufFile,
}

impl GgufTokenizerBuilder<'_> {
    fn build(&self) -> LlmResult<TextTokenizer> {
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges = self.merges()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
        let special = self.special_tokens(&tokens)?;
        if let Some(unk) = &special.unk {
            bpe = bpe.unk_token(unk.clone());
        }
        let bpe = bpe
            .build()
            .map_err(|e| self.error(format!("cannot build the BPE model: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = self.gguf.string("tokenizer.ggml.pre")?.unwrap_or("default");
        let pipeline = pre_tokenizer_for(pre).map_err(|m| self.error(m))?;
        if pipeline.nfc {
            tokenizer
                .with_normalizer(Some(NFC))
                .map_err(|e| self.error(format!("cannot set the NFC normalizer: {e}")))?;
        }
        tokenizer.with_pre_tokenizer(Some(pipeline.pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer
            .add_special_tokens(self.added_tokens(&tokens)?)
            .map_err(|e| self.error(format!("cannot add special tokens: {e}")))?;
        if special.add_bos {
            let processor =
                bos_processor(&tokenizer, special.bos.as_deref()).map_err(|m| self.error(m))?;
            tokenizer.with_post_processor(Some(processor));
        }
        Ok(TextTokenizer::new(tokenizer, special))
    }

    /// Control and user-defined tokens become added tokens so the tokenizer matches them
    /// whole in text (as llama.cpp's `special=True`) and never splits them into bytes.
    fn added_tokens(&self, tokens: &[String]) -> LlmResult<Vec<AddedToken>> {
        let Some(types) = self.gguf.metadata("tokenizer.ggml.token_type") else {
            return Ok(Vec::new());
        };
        let types = types
            .to_vec()
            .map_err(|_| self.error("`tokenizer.ggml.token_type` must be an array"))?;
        if types.len() != tokens.len() {
            return Err(self.error(format!(
                "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut added = Vec::new();
        for (token, kind) in tokens.iter().zip(types) {
            match value_as_usize(kind) {
                Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) => {
                    added.push(AddedToken::from(token.clone(), true));
                }
                Some(TOKEN_TYPE_USER_DEFINED) => {
                    added.push(AddedToken::from(token.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        Ok(added)
    }

    fn special_tokens(&self, tokens: &[String]) -> LlmResult<SpecialTokens> {
        let token = |key: &str| -> LlmResult<Option<String>> {
            let Some(id) = self.gguf.usize(key)? else {
                return Ok(None);
            };
            tokens
                .get(id)
                .cloned()
                .map(Some)
                .ok_or_else(|| self.error(format!("`{key}` = {id} is not a token id")))
        };
        Ok(SpecialTokens {
            bos: token("tokenizer.ggml.bos_token_id")?,
            eos: token("tokenizer.ggml.eos_token_id")?,
            pad: token("tokenizer.ggml.padding_token_id")?,
            unk: token("tokenizer.ggml.unknown_token_id")?,
            add_bos: self
                .gguf
                .bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
        })
    }

    fn strings(&self, key: &str) -> LlmResult<Vec<String>> {
        let value = self
            .gguf
            .metadata(key)
            .ok_or_else(|| LlmError::MissingField {
                path: self.gguf.path().to_path_buf(),
                field: key.to_string(),
            })?;
        let items = value
            .to_vec()
            .map_err(|_| self.error(format!("`{key}` must be an array of strings")))?;
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.error(format!("`{key}` must be an array of strings"))),
            })
            .collect()
    }

    fn merges(&self) -> LlmResult<Vec<(String, String)>> {
        self.strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        self.error(format!(
                            "merge `{m}` is not two tokens separated by a space"
                        ))
                    })
            })
            .collect()
    }

    fn error(&self, message: impl std::fmt::Display) -> LlmError {
        LlmError::bad_file(self.gguf.path(), format!("tokenizer: {message}"))
    }
}

/// The normalizer flag and pre-tokenizer of one `tokenizer.ggml.pre` value.
struct PrePipeline {
    nfc: bool,
    pre_tokenizer: PreTokenizerWrapper,
}

const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer llama.cpp applies for `pre` (llama-vocab.cpp), written as the HF
/// `tokenizer.json` of the same model writes it.
fn pre_tokenizer_for(pre: &str) -> Result<PrePipeline, String> {
    let byte_level_regex = ByteLevel::new(false, true, true);
    let byte_level_plain = ByteLevel::new(false, true, false);
    let split = |regex: &str| -> Result<PreTokenizerWrapper, String> {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| format!("bad pre-tokenizer regex: {e}"))
    };
    let pipeline = match pre {
        // GPT-2's regex alone, which `ByteLevel(use_regex = true)` applies itself:
        // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
        "gpt2" | "gpt-2" | "default" | "phi-2" | "roberta-bpe" | "jina-es" | "jina-de" => PrePipeline {
            nfc: false,
            pre_tokenizer: byte_level_regex.into(),
        },
        // Digits one by one, then GPT-2's regex: llama.cpp's `\p{N}` split before the GPT-2
        // expression; HF's SmolLM2 tokenizer.json is Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => PrePipeline {
            nfc: false,
            pre_tokenizer: Sequence::new(vec![Digits::new(true).into(), byte_level_regex.into()]).into(),
        },
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" => PrePipeline {
            nfc: false,
            pre_tokenizer: Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level_plain.into()]).into(),
        },
        "qwen2" | "deepseek-r1-qwen" => PrePipeline {
            nfc: true,
            pre_tokenizer: Sequence::new(vec![split(QWEN2_REGEX)?, byte_level_plain.into()]).into(),
        },
        other => {
            return Err(format!(
                "pre-tokenizer `{other}` is not supported (known: gpt2, smollm, starcoder, llama3/llama-bpe, qwen2); use the model's HF directory instead"
            ))
        }
    };
    Ok(pipeline)
}

/// A post-processor that prepends BOS, for GGUFs with `tokenizer.ggml.add_bos_token`.
fn bos_processor(tokenizer: &Tokenizer, bos: Option<&str>) -> Result<TemplateProcessing, String> {
    let bos = bos.ok_or("`add_bos_token` is set but there is no `bos_token_id`")?;
    let id = tokenizer
        .token_to_id(bos)
        .ok_or_else(|| format!("BOS token `{bos}` is not in the vocabulary"))?;
    TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
        .map_err(|e| format!("cannot build the BOS template: {e}"))?
        .special_tokens(vec![(bos.to_string(), id)])
        .build()
        .map_err(|e| format!("cannot build the BOS template: {e}"))
}

#[cfg(test)]
mod tests {
    use crate::llm::testing;

    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        decoded: String,
    }

    fn cases() -> Vec<Case> {
        #[derive(serde::Deserialize)]
        struct File {
            cases: Vec<Case>,
        }
        let path = testing::smollm2_fixture("tokenizer_cases.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str::<File>(&text).unwrap().cases
    }

    #[test]
    fn gguf_tokenizer_matches_llama_cpp() {
        let tokenizer = testing::smollm2_tokenizer();
        let cases = cases();
        assert!(cases.len() >= 5);
        for case in &cases {
            let ids = tokenizer.encode(&case.text, false).unwrap();
            assert_eq!(ids, case.ids, "encoding {:?}", case.text);
            // llama.cpp's detokenizer (the fixture's peer) renders no control tokens.
            let decoded = tokenizer.decode(&ids, true).unwrap();
            assert_eq!(decoded, case.decoded, "decoding {:?}", case.text);
            let round_trip = tokenizer.decode(&ids, false).unwrap();
            assert_eq!(
                round_trip, case.text,
                "decoding {:?} with special tokens",
                case.text
            );
        }
    }

    #[test]
    fn special_tokens_parse_whole_or_literally() {
        let tokenizer = testing::smollm2_tokenizer();
        let ids = tokenizer
            .encode("<|im_start|>user\nhi<|im_end|>", false)
            .unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        let literal = tokenizer.encode_literal("<|im_start|>", false).unwrap();
        assert!(literal.len() > 1 && !literal.contains(&1), "{literal:?}");
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nhi");
        assert_eq!(tokenizer.bos_id(), Some(1));
        assert_eq!(tokenizer.pad_id(), Some(2));
        assert_eq!(tokenizer.vocab_size(), 49152);
        // SmolLM2's GGUF does not ask for BOS: add_special_tokens changes nothing.
        assert_eq!(
            tokenizer.encode("hi", true).unwrap(),
            tokenizer.encode("hi", false).unwrap()
        );
    }

    #[test]
    fn stream_decoding_yields_whole_characters() {
        let tokenizer = testing::smollm2_tokenizer();
        let text = "naïve café 😀 résumé";
        let ids = tokenizer.encode(text, false).unwrap();
        let mut stream = tokenizer.decode_stream(false);
        let mut out = String::new();
        for id in ids {
            if let Some(chunk) = stream.step(id).unwrap() {
                out.push_str(&chunk);
            }
        }
        assert_eq!(out, text);
    }

    fn llama_spm() -> super::TextTokenizer {
        let path = testing::vocab_fixture("ggml-vocab-llama-spm.gguf");
        let gguf = crate::llm::GgufFile::open(&path).unwrap();
        super::TextTokenizer::from_gguf(&gguf).unwrap()
    }

    #[test]
    fn sentencepiece_gguf_goes_through_the_same_interface() {
        let tokenizer = llama_spm();
        assert!(tokenizer.spm().is_some() && tokenizer.inner().is_none());
        let special = tokenizer.special();
        assert_eq!(special.bos.as_deref(), Some("<s>"));
        assert_eq!(special.eos.as_deref(), Some("</s>"));
        assert_eq!(special.unk.as_deref(), Some("<unk>"));
        assert!(special.add_bos);
        assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(1), Some(2)));
        assert_eq!(tokenizer.vocab_size(), 32000);
        // A rendered chat template writes its own `<s>`; it parses as one token.
        let ids = tokenizer.encode("<s>[INST] Hi [/INST]", false).unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), " [INST] Hi [/INST]");
        let literal = tokenizer.encode_literal("<s>", false).unwrap();
        assert!(!literal.contains(&1), "{literal:?}");
        assert_eq!(tokenizer.encode("Hello", true).unwrap(), vec![1, 15043]);
    }

    #[test]
    fn sentencepiece_stream_joins_byte_tokens_into_characters() {
        let tokenizer = llama_spm();
        let text = "Hello 🚀 (normal) 😶‍🌫️ 3.14";
        let ids = tokenizer.encode(text, false).unwrap();
        let mut stream = tokenizer.decode_stream(true);
        let mut chunks = Vec::new();
        for id in ids {
            if let Some(chunk) = stream.step(id).unwrap() {
                chunks.push(chunk);
            }
        }
        assert!(chunks.iter().all(|c| !c.contains('\u{fffd}')), "{chunks:?}");
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn incomplete_utf8_waits_for_its_last_byte() {
        let mut bytes = vec![b'a', 0xF0, 0x9F];
        assert_eq!(super::take_complete_utf8(&mut bytes).as_deref(), Some("a"));
        assert_eq!(bytes, [0xF0, 0x9F]);
        assert_eq!(super::take_complete_utf8(&mut bytes), None);
        bytes.extend_from_slice(&[0x9A, 0x80]);
        assert_eq!(super::take_complete_utf8(&mut bytes).as_deref(), Some("🚀"));
        let mut invalid = vec![0xFF, b'b', 0xE2];
        assert_eq!(
            super::take_complete_utf8(&mut invalid).as_deref(),
            Some("\u{fffd}b")
        );
        assert_eq!(invalid, [0xE2]);
    }
}
