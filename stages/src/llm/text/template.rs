//! Chat templates: the one renderer every stage (sft, generate, orpo, eval) uses, so training
//! and inference format conversations identically. Renders the model's own Jinja template as
//! transformers' `apply_chat_template` does, or a named fallback, and splits a rendered
//! prompt + completion at the token boundary trainers mask at.

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::text::tokenizer::{SpecialTokens, TextTokenizer};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::new("assistant", content)
    }

    /// The usual single-turn prompt: an optional system message, then the user's.
    /// Without a system message the template's own default (if any) applies.
    pub fn prompt(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
        system
            .map(ChatMessage::system)
            .into_iter()
            .chain(std::iter::once(ChatMessage::user(user)))
            .collect()
    }
}

/// The fallback templates selectable by name, for models without their own.
pub const NAMED_TEMPLATES: &[(&str, &str)] = &[
    ("chatml", CHATML),
    ("llama3", LLAMA3),
    ("zephyr", ZEPHYR),
    ("alpaca", ALPACA),
];

/// The choice that means "the template the model ships with".
pub const MODEL_TEMPLATE: &str = "model";

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
const ZEPHYR: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
const ALPACA: &str = "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}";

/// The name under which the compiled template is stored in its environment.
const TEMPLATE_KEY: &str = "chat";

/// A compiled chat template with the special tokens it may reference.
#[derive(Clone)]
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

/// A rendered prompt + completion, tokenized, with the boundary trainers mask at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCompletion {
    /// The conversation up to and including the generation prompt (what `generate` feeds).
    pub prompt_text: String,
    /// What the template appends for the assistant turn (content plus end-of-turn tokens).
    pub completion_text: String,
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
}

impl PromptCompletion {
    /// Prompt then completion ids, the model's input for training.
    pub fn ids(&self) -> Vec<u32> {
        [self.prompt_ids.as_slice(), self.completion_ids.as_slice()].concat()
    }

    /// The full rendered text.
    pub fn text(&self) -> String {
        format!("{}{}", self.prompt_text, self.completion_text)
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `name` is used in error messages.
    pub fn new(name: &str, source: &str, special: &SpecialTokens) -> LlmResult<Self> {
        let env = environment(source).map_err(|e| template_error(name, &e))?;
        Ok(ChatTemplate {
            name: name.to_string(),
            source: source.to_string(),
            env,
            bos_token: special.bos.clone().unwrap_or_default(),
            eos_token: special.eos.clone().unwrap_or_default(),
        })
    }

    /// One of [`NAMED_TEMPLATES`] (`chatml`, `llama3`, `zephyr`, `alpaca`).
    pub fn named(name: &str, special: &SpecialTokens) -> LlmResult<Self> {
        let source = NAMED_TEMPLATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| LlmError::Template {
                name: name.to_string(),
                message: format!(
                    "unknown template; choose `{MODEL_TEMPLATE}` or one of {}",
                    named_list()
                ),
            })?;
        ChatTemplate::new(name, source, special)
    }

    /// The template a stage should use: `choice` `model` (or none) is the model's own
    /// template, which must exist; any other choice is a named fallback.
    pub fn select(
        choice: Option<&str>,
        model_template: Option<&str>,
        special: &SpecialTokens,
    ) -> LlmResult<Self> {
        match choice.unwrap_or(MODEL_TEMPLATE) {
            MODEL_TEMPLATE => {
                let source = model_template.ok_or_else(|| LlmError::Template {
                    name: MODEL_TEMPLATE.to_string(),
                    message: format!(
                        "the model ships no chat template; set the template to one of {}",
                        named_list()
                    ),
                })?;
                ChatTemplate::new(MODEL_TEMPLATE, source, special)
            }
            name => ChatTemplate::named(name, special),
        }
    }

    /// The template's name (`model`, `chatml`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Jinja source (stages hash it into their fingerprint and export it).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`, ending with the assistant's header when `add_generation_prompt`.
    /// The one renderer every stage uses.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> LlmResult<String> {
        let template = self
            .env
            .get_template(TEMPLATE_KEY)
            .map_err(|e| template_error(&self.name, &e))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| template_error(&self.name, &e))
    }

    /// Renders `prompt` with the generation prompt and `prompt` + the assistant's `completion`,
    /// checks the first is a prefix of the second, and tokenizes both parts. The prompt is
    /// tokenized alone, exactly as `generate` will see it, so the ids a trainer learns from
    /// are the ids inference conditions on.
    pub fn render_prompt_completion(
        &self,
        prompt: &[ChatMessage],
        completion: &str,
        tokenizer: &TextTokenizer,
    ) -> LlmResult<PromptCompletion> {
        let prompt_text = self.render(prompt, true)?;
        let mut conversation = prompt.to_vec();
        conversation.push(ChatMessage::assistant(completion));
        let full_text = self.render(&conversation, false)?;
        let completion_text = full_text
            .strip_prefix(&prompt_text)
            .ok_or_else(|| self.not_a_prefix(&prompt_text, &full_text))?
            .to_string();
        Ok(PromptCompletion {
            prompt_ids: tokenizer.encode(&prompt_text, false)?,
            completion_ids: tokenizer.encode_continuation(&completion_text)?,
            prompt_text,
            completion_text,
        })
    }

    fn not_a_prefix(&self, prompt: &str, full: &str) -> LlmError {
        let at = prompt
            .char_indices()
            .zip(full.chars())
            .find(|((_, a), b)| a != b)
            .map_or(prompt.len().min(full.len()), |((i, _), _)| i);
        let snippet = |s: &str| s[at..].chars().take(30).collect::<String>();
        LlmError::Template {
            name: self.name.clone(),
            message: format!(
                "the prompt with the generation prompt is not a prefix of the conversation with the answer \
                 (they differ at byte {at}: {:?} vs {:?}), so prompt tokens cannot be masked; choose another template",
                snippet(prompt),
                snippet(full)
            ),
        }
    }
}

fn named_list() -> String {
    NAMED_TEMPLATES
        .iter()
        .map(|(n, _)| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An environment configured as transformers' `apply_chat_template`: `trim_blocks` and
/// `lstrip_blocks`, `raise_exception`, loop controls, and Python string/dict methods
/// (`.strip()`, `.startswith()`, `.items()`) through minijinja-contrib's pycompat.
/// `strftime_now` is deliberately absent: templates then use their fixed fallback date,
/// keeping renders (and cache keys) reproducible.
fn environment(source: &str) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template_owned(TEMPLATE_KEY, source.to_string())?;
    Ok(env)
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn template_error(name: &str, error: &minijinja::Error) -> LlmError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    LlmError::Template {
        name: name.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::testing;

    #[derive(Deserialize)]
    struct SftCase {
        prompt_text: String,
        completion_text: String,
        prompt_ids: Vec<u32>,
        completion_ids: Vec<u32>,
    }

    fn sft_cases() -> Vec<SftCase> {
        #[derive(Deserialize)]
        struct File {
            cases: Vec<SftCase>,
        }
        let text = std::fs::read_to_string(testing::smollm2_fixture("sft_loss.json")).unwrap();
        serde_json::from_str::<File>(&text).unwrap().cases
    }

    /// The user question is the text between the user header and its end-of-turn.
    fn question_of(prompt_text: &str) -> &str {
        let start = prompt_text.find("<|im_start|>user\n").unwrap() + "<|im_start|>user\n".len();
        let end = start + prompt_text[start..].find("<|im_end|>").unwrap();
        &prompt_text[start..end]
    }

    fn smollm2_template() -> ChatTemplate {
        let gguf = crate::llm::GgufFile::open(&testing::smollm2_gguf_path()).unwrap();
        let source = gguf.chat_template().unwrap().unwrap();
        ChatTemplate::select(None, Some(&source), testing::smollm2_tokenizer().special()).unwrap()
    }

    #[test]
    fn smollm2_own_template_renders_the_reference_texts_and_ids() {
        let template = smollm2_template();
        let tokenizer = testing::smollm2_tokenizer();
        for case in sft_cases() {
            let answer = case.completion_text.strip_suffix("<|im_end|>\n").unwrap();
            let prompt = ChatMessage::prompt(None, question_of(&case.prompt_text));
            let rendered = template
                .render_prompt_completion(&prompt, answer, tokenizer)
                .unwrap();
            assert_eq!(rendered.prompt_text, case.prompt_text);
            assert_eq!(rendered.completion_text, case.completion_text);
            assert_eq!(rendered.prompt_ids, case.prompt_ids);
            assert_eq!(rendered.completion_ids, case.completion_ids);
            // An explicit system prompt equal to the default renders the same.
            let explicit = ChatMessage::prompt(
                Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
                question_of(&case.prompt_text),
            );
            assert_eq!(template.render(&explicit, true).unwrap(), case.prompt_text);
        }
    }

    #[test]
    fn named_templates_render_and_keep_the_prefix_property() {
        let tokenizer = testing::smollm2_tokenizer();
        let special = SpecialTokens {
            bos: Some("<s>".into()),
            eos: Some("</s>".into()),
            ..SpecialTokens::default()
        };
        let prompt = ChatMessage::prompt(Some("Be brief."), "What is ls?");
        let expected = [
            ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is ls?<|im_end|>\n<|im_start|>assistant\n", "Lists files.<|im_end|>\n"),
            ("llama3", "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is ls?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "Lists files.<|eot_id|>"),
            ("zephyr", "<|system|>\nBe brief.</s>\n<|user|>\nWhat is ls?</s>\n<|assistant|>\n", "Lists files.</s>\n"),
            ("alpaca", "Be brief.\n\n### Instruction:\nWhat is ls?\n\n### Response:\n", "Lists files.</s>\n\n"),
        ];
        for (name, prompt_text, completion_text) in expected {
            let template = ChatTemplate::select(Some(name), None, &special).unwrap();
            let rendered = template
                .render_prompt_completion(&prompt, "Lists files.", tokenizer)
                .unwrap();
            assert_eq!(rendered.prompt_text, prompt_text, "{name}");
            assert_eq!(rendered.completion_text, completion_text, "{name}");
        }
    }

    #[test]
    fn python_methods_raise_exception_and_bad_templates_are_errors() {
        let special = SpecialTokens::default();
        let pythonic = ChatTemplate::new(
            "pythonic",
            "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('roles must alternate, got ' + m.role) }}{% endif %}{{ m.content.strip().upper() }}{% if m.content.startswith(' ') %}!{% endif %}\n{% endfor %}",
            &special,
        )
        .unwrap();
        // trim_blocks eats the newline after `{% endif %}`, as in transformers.
        assert_eq!(
            pythonic
                .render(&[ChatMessage::user(" hi ")], false)
                .unwrap(),
            "HI!"
        );
        let err = pythonic
            .render(&[ChatMessage::system("x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("roles must alternate, got system"), "{err}");

        let err = ChatTemplate::new("broken", "{% for m in messages %}", &special).unwrap_err();
        assert!(
            err.to_string().starts_with("chat template `broken`:"),
            "{err}"
        );
        let err = ChatTemplate::select(None, None, &special)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ships no chat template") && err.contains("`chatml`"),
            "{err}"
        );
        let err = ChatTemplate::select(Some("vicuna"), None, &special)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown template"), "{err}");

        // A template whose generation prompt is not a prefix of the answered conversation.
        let odd = ChatTemplate::new(
            "odd",
            "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]: {% endif %}",
            &special,
        )
        .unwrap();
        let err = odd
            .render_prompt_completion(
                &ChatMessage::prompt(None, "q"),
                "a",
                testing::smollm2_tokenizer(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a prefix") && err.contains("byte 20"),
            "{err}"
        );
    }

    /// Block-tag whitespace as transformers renders it (trim_blocks + lstrip_blocks); the
    /// expected strings were produced by transformers 5.23's `apply_chat_template`.
    #[test]
    fn whitespace_control_matches_transformers() {
        let source = "{% for message in messages %}\n  {% if message['role'] == 'user' %}\n    {{ '<|user|>\\n' + message['content'].strip() + eos_token }}\n  {% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n  {% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n  {% endif %}\n  {% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n  {% endif %}\n{% endfor %}";
        let special = SpecialTokens {
            eos: Some("<|im_end|>".into()),
            ..SpecialTokens::default()
        };
        let template = ChatTemplate::new("zephyr-like", source, &special).unwrap();
        let answered = [
            ChatMessage::system("Be brief"),
            ChatMessage::user(" hi "),
            ChatMessage::assistant("Hello"),
        ];
        assert_eq!(
            template.render(&answered, false).unwrap(),
            "<|system|>\nBe brief<|im_end|>\n    <|user|>\nhi<|im_end|>\n<|assistant|>\nHello<|im_end|>\n"
        );
        assert_eq!(
            template.render(&[ChatMessage::user("q")], true).unwrap(),
            "    <|user|>\nq<|im_end|>\n<|assistant|>\n"
        );
    }

    /// Qwen3's own template (thinking blocks split out of earlier assistant turns, kept on the
    /// last one) renders exactly as jinja2 renders it for transformers' `apply_chat_template`
    /// (tests/fixtures/templates/qwen3_renders.json).
    #[test]
    fn qwen3_template_renders_as_jinja2() {
        let dir = testing::workspace_root().join("tests/fixtures/templates");
        let source = std::fs::read_to_string(dir.join("qwen3.jinja")).unwrap();
        let renders: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("qwen3_renders.json")).unwrap())
                .unwrap();
        let special = SpecialTokens {
            eos: Some("<|im_end|>".into()),
            ..SpecialTokens::default()
        };
        let template = ChatTemplate::new("model", &source, &special).unwrap();
        for case in renders["cases"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let ours = template
                .render(&messages, case["add_generation_prompt"].as_bool().unwrap())
                .unwrap();
            assert_eq!(ours, case["rendered"].as_str().unwrap(), "{}", case["name"]);
        }
    }
}
