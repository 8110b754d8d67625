//! Chat templates: the one renderer every stage (sft, generate, orpo, eval) uses, so training
//! and inference format conversations identically. Renders the model's own Jinja template as
//! transformers' `apply_chat_template` does, or a named fallback, and splits a rendered
//! prompt + completion at the token boundary trainers mask at.

use std::collections::BTreeMap;

use chrono::format::{Item, StrftimeItems};
use chrono::NaiveDateTime;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::text::tokenizer::{SpecialTokens, TextTokenizer};
use crate::llm::text::turns;

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

/// Extra variables a template reads, passed as `apply_chat_template(**kwargs)` passes them:
/// Qwen3's `enable_thinking`, Llama-3's `date_string`, ...
pub type TemplateKwargs = BTreeMap<String, serde_json::Value>;

/// Variables the renderer sets itself; a kwarg may not replace them (transformers passes them
/// as named arguments, so a kwarg of the same name is an error there too).
const RESERVED_KWARGS: &[&str] = &["messages", "add_generation_prompt", "tools", "documents"];

/// What a template's `strftime_now` reads (Llama-3's "Today Date" header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateClock {
    /// The local time of each render, as transformers' `datetime.now()`.
    Local,
    /// A fixed instant, so renders do not change with the day.
    Fixed(NaiveDateTime),
}

impl TemplateClock {
    fn now(self) -> NaiveDateTime {
        match self {
            TemplateClock::Local => chrono::Local::now().naive_local(),
            TemplateClock::Fixed(at) => at,
        }
    }
}

/// A compiled chat template with the special tokens and extra variables it may reference.
#[derive(Clone)]
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    kwargs: TemplateKwargs,
    clock: TemplateClock,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("kwargs", &self.kwargs)
            .field("clock", &self.clock)
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
    /// Ranges of `prompt_ids` holding the prompt's earlier assistant turns (each with its
    /// end-of-turn tokens); empty for a single-turn prompt.
    pub prompt_targets: Vec<std::ops::Range<usize>>,
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
        let clock = TemplateClock::Local;
        let env = environment(source, clock).map_err(|e| template_error(name, &e))?;
        Ok(ChatTemplate {
            name: name.to_string(),
            source: source.to_string(),
            env,
            bos_token: special.bos.clone().unwrap_or_default(),
            eos_token: special.eos.clone().unwrap_or_default(),
            kwargs: TemplateKwargs::new(),
            clock,
        })
    }

    /// The same template rendered with `kwargs` as extra variables (`[model] template_kwargs`);
    /// they may replace `bos_token`/`eos_token`, as in transformers, but not the variables the
    /// renderer sets (`messages`, `add_generation_prompt`, `tools`, `documents`).
    pub fn with_kwargs(mut self, kwargs: TemplateKwargs) -> LlmResult<Self> {
        check_template_kwargs(&kwargs).map_err(|message| LlmError::Template {
            name: self.name.clone(),
            message,
        })?;
        self.kwargs = kwargs;
        Ok(self)
    }

    /// The same template with `strftime_now` reading `clock` (tests pin the date with it).
    pub fn with_clock(mut self, clock: TemplateClock) -> Self {
        add_strftime_now(&mut self.env, clock);
        self.clock = clock;
        self
    }

    /// The extra variables every render gets.
    pub fn kwargs(&self) -> &TemplateKwargs {
        &self.kwargs
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
            .render(self.context(messages, add_generation_prompt))
            .map_err(|e| template_error(&self.name, &e))
    }

    /// The variables of one render, merged as `apply_chat_template` merges them: the special
    /// tokens, then the kwargs (which may replace them), then the renderer's own. `tools` and
    /// `documents` are none, not undefined, as transformers passes them.
    fn context(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Value {
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        vars.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        vars.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        for (key, value) in &self.kwargs {
            vars.insert(key.clone(), Value::from_serialize(value));
        }
        vars.insert("messages".into(), Value::from_serialize(messages));
        vars.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        vars.insert("tools".into(), Value::from(()));
        vars.insert("documents".into(), Value::from(()));
        Value::from_iter(vars)
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
        let turns = self.earlier_turns(&conversation, &full_text, &prompt_text)?;
        let (prompt_ids, prompt_targets) =
            turns::encode_with_turns(tokenizer, &prompt_text, &turns)?;
        Ok(PromptCompletion {
            prompt_ids,
            completion_ids: tokenizer.encode_continuation(&completion_text)?,
            prompt_text,
            completion_text,
            prompt_targets,
        })
    }

    /// Byte ranges of `prompt_text` holding the earlier assistant turns of `conversation`
    /// (none without them, and then nothing more is rendered).
    fn earlier_turns(
        &self,
        conversation: &[ChatMessage],
        full_text: &str,
        prompt_text: &str,
    ) -> LlmResult<Vec<std::ops::Range<usize>>> {
        let answers = conversation
            .iter()
            .filter(|m| m.role == "assistant")
            .count();
        if answers < 2 {
            return Ok(Vec::new());
        }
        let error = |message: String| LlmError::Template {
            name: self.name.clone(),
            message: format!("multi-turn row: {message}"),
        };
        let marked = turns::marked(conversation).map_err(error)?;
        let marked_render = self.render(&marked, false)?;
        turns::earlier_turns(conversation, &marked_render, full_text, prompt_text).map_err(error)
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

/// Why `kwargs` cannot go to a template, if they cannot: one sets a variable the renderer
/// sets itself.
pub fn check_template_kwargs(kwargs: &TemplateKwargs) -> Result<(), String> {
    match kwargs
        .keys()
        .find(|k| RESERVED_KWARGS.contains(&k.as_str()))
    {
        Some(key) => Err(format!(
            "template kwarg `{key}` is set by the renderer itself; remove it from `template_kwargs`"
        )),
        None => Ok(()),
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
/// `lstrip_blocks`, `raise_exception`, `strftime_now`, Python's `json.dumps` as `tojson`, loop
/// controls, and Python string/dict methods (`.strip()`, `.startswith()`, `.items()`) through
/// minijinja-contrib's pycompat.
fn environment(
    source: &str,
    clock: TemplateClock,
) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", super::pyjson::tojson);
    add_strftime_now(&mut env, clock);
    env.add_template_owned(TEMPLATE_KEY, source.to_string())?;
    Ok(env)
}

/// `strftime_now(format)`: transformers defines it, so templates that test `strftime_now is
/// defined` (Llama-3.x) take today's date rather than their fallback, here as there.
fn add_strftime_now(env: &mut Environment<'static>, clock: TemplateClock) {
    env.add_function("strftime_now", move |format: String| {
        strftime(clock.now(), &format)
    });
}

/// Formats `at` with a C/Python strftime `format`; a directive chrono does not know is an
/// error rather than a panic in the middle of a render.
fn strftime(at: NaiveDateTime, format: &str) -> Result<String, minijinja::Error> {
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format `{format}`"),
        ));
    }
    Ok(at.format_with_items(items.into_iter()).to_string())
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

    /// One family's `<family>_renders.json`: cases rendered by jinja2 as transformers'
    /// `apply_chat_template` renders them (scripts/render-templates.py).
    #[derive(Deserialize)]
    struct RenderFixture {
        special_tokens: FixtureTokens,
        strftime_now: String,
        cases: Vec<RenderCase>,
    }

    #[derive(Deserialize)]
    struct FixtureTokens {
        bos_token: Option<String>,
        eos_token: Option<String>,
    }

    #[derive(Deserialize)]
    struct RenderCase {
        name: String,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        kwargs: TemplateKwargs,
        rendered: String,
    }

    /// The family's real template (tests/fixtures/templates/README.md says where each came
    /// from), compiled with the fixture's special tokens and its pinned clock, and its cases.
    fn family_fixture(family: &str) -> (ChatTemplate, Vec<RenderCase>) {
        let dir = testing::workspace_root().join("tests/fixtures/templates");
        let source = std::fs::read_to_string(dir.join(format!("{family}.jinja"))).unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{family}_renders.json"))).unwrap();
        let fixture: RenderFixture = serde_json::from_str(&text).unwrap();
        let special = SpecialTokens {
            bos: fixture.special_tokens.bos_token,
            eos: fixture.special_tokens.eos_token,
            ..SpecialTokens::default()
        };
        let now =
            NaiveDateTime::parse_from_str(&fixture.strftime_now, "%Y-%m-%dT%H:%M:%S").unwrap();
        let template = ChatTemplate::new("model", &source, &special)
            .unwrap()
            .with_clock(TemplateClock::Fixed(now));
        (template, fixture.cases)
    }

    /// Renders every case of `family` through [`ChatTemplate::render`] and compares it byte
    /// for byte with jinja2's render.
    fn assert_family_renders_as_jinja2(family: &str) {
        let (template, cases) = family_fixture(family);
        assert!(cases.len() >= 7, "{family}: too few cases");
        for case in cases {
            let ours = template
                .clone()
                .with_kwargs(case.kwargs)
                .unwrap()
                .render(&case.messages, case.add_generation_prompt)
                .unwrap_or_else(|e| panic!("{family}: {}: {e}", case.name));
            assert_eq!(ours, case.rendered, "{family}: {}", case.name);
        }
    }

    /// Qwen3: thinking blocks split out of earlier assistant turns and kept on the last one,
    /// an empty one on an answered last turn, and `enable_thinking`.
    #[test]
    fn qwen3_template_renders_as_jinja2() {
        assert_family_renders_as_jinja2("qwen3");
    }

    /// Gemma-3: the system message folded into the first user turn, `model` for the assistant.
    #[test]
    fn gemma3_template_renders_as_jinja2() {
        assert_family_renders_as_jinja2("gemma3");
    }

    /// Llama-3.2: the date header from `strftime_now` (pinned) or `date_string`.
    #[test]
    fn llama3_2_template_renders_as_jinja2() {
        assert_family_renders_as_jinja2("llama3.2");
    }

    /// TinyLlama-1.1B-Chat: the zephyr form.
    #[test]
    fn tinyllama_template_renders_as_jinja2() {
        assert_family_renders_as_jinja2("tinyllama");
    }

    /// deepseek-coder-instruct: its default system prompt when none is given.
    #[test]
    fn deepseek_coder_template_renders_as_jinja2() {
        assert_family_renders_as_jinja2("deepseek_coder");
    }

    /// Every family's generation prompt is a prefix of the answered conversation, so stages
    /// can mask the prompt; with `enable_thinking = false` too.
    #[test]
    fn every_family_splits_prompt_and_completion() {
        let tokenizer = testing::smollm2_tokenizer();
        let prompt = ChatMessage::prompt(Some("Be brief."), "What is ls?");
        for family in ["qwen3", "gemma3", "llama3.2", "tinyllama", "deepseek_coder"] {
            let (template, _) = family_fixture(family);
            let rendered = template
                .render_prompt_completion(&prompt, "Lists files.", tokenizer)
                .unwrap_or_else(|e| panic!("{family}: {e}"));
            // Qwen3 opens an answered last turn with an empty thinking block, in the completion.
            assert!(
                rendered.completion_text.contains("Lists files."),
                "{family}: {:?}",
                rendered.completion_text
            );
        }
        let (qwen3, _) = family_fixture("qwen3");
        let kwargs = TemplateKwargs::from([("enable_thinking".into(), false.into())]);
        let rendered = qwen3
            .with_kwargs(kwargs)
            .unwrap()
            .render_prompt_completion(&prompt, "Lists files.", tokenizer)
            .unwrap();
        assert!(rendered.prompt_text.ends_with("<think>\n\n</think>\n\n"));
        assert_eq!(rendered.completion_text, "Lists files.<|im_end|>\n");
    }

    #[test]
    fn kwargs_replace_special_tokens_but_not_the_renderers_variables() {
        let special = SpecialTokens {
            eos: Some("</s>".into()),
            ..SpecialTokens::default()
        };
        let template = ChatTemplate::new("t", "{{ flavour }}|{{ eos_token }}", &special).unwrap();
        let kwargs = TemplateKwargs::from([
            ("flavour".into(), "mint".into()),
            ("eos_token".into(), "<end>".into()),
        ]);
        let with = template.clone().with_kwargs(kwargs).unwrap();
        assert_eq!(with.render(&[], false).unwrap(), "mint|<end>");
        for reserved in RESERVED_KWARGS {
            let kwargs = TemplateKwargs::from([(reserved.to_string(), true.into())]);
            let err = template
                .clone()
                .with_kwargs(kwargs)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{reserved}`")), "{err}");
        }
    }

    #[test]
    fn strftime_now_reads_the_clock_and_refuses_unknown_directives() {
        let template = ChatTemplate::new(
            "t",
            "{{ strftime_now('%d %b %Y, %A %H:%M') }}",
            &SpecialTokens::default(),
        )
        .unwrap();
        let at = NaiveDateTime::parse_from_str("2024-07-26T09:05:00", "%Y-%m-%dT%H:%M:%S").unwrap();
        let pinned = template.clone().with_clock(TemplateClock::Fixed(at));
        assert_eq!(
            pinned.render(&[], false).unwrap(),
            "26 Jul 2024, Friday 09:05"
        );
        // Unpinned, it is today's date, as transformers renders it.
        let today = chrono::Local::now().format("%d %b %Y").to_string();
        assert!(template.render(&[], false).unwrap().starts_with(&today));
        let bad = ChatTemplate::new("t", "{{ strftime_now('%Q') }}", &SpecialTokens::default())
            .unwrap()
            .render(&[], false)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("unsupported format `%Q`"), "{bad}");
    }

    /// A two-exchange chat through `template`: the batch's completion-mask targets, decoded.
    fn masked_targets(template: &ChatTemplate) -> (PromptCompletion, String, String) {
        let tokenizer = testing::smollm2_tokenizer();
        let prompt = [
            ChatMessage::user("Question one?"),
            ChatMessage::assistant("Alpha one."),
            ChatMessage::user("Question two?"),
        ];
        let rendered = template
            .render_prompt_completion(&prompt, "Beta two.", tokenizer)
            .unwrap();
        let example = crate::llm::Example {
            prompt: rendered.prompt_ids.clone(),
            completion: rendered.completion_ids.clone(),
            prompt_targets: rendered.prompt_targets.clone(),
        };
        let batch = crate::llm::TokenBatch::new(&[example], 0, &candle_core::Device::Cpu).unwrap();
        let mask = batch.completion_mask.to_vec2::<f32>().unwrap().remove(0);
        let targets = batch.targets.to_vec2::<u32>().unwrap().remove(0);
        let (mut learned, mut masked) = (Vec::new(), Vec::new());
        let ids = rendered.ids();
        for (t, &m) in mask.iter().enumerate() {
            if m > 0.0 {
                learned.push(targets[t]);
            } else if t + 1 < ids.len() {
                masked.push(targets[t]);
            }
        }
        (
            rendered,
            tokenizer.decode(&learned, false).unwrap(),
            tokenizer.decode(&masked, false).unwrap(),
        )
    }

    #[test]
    fn a_multi_turn_row_learns_every_assistant_turn_and_nothing_else() {
        let (rendered, learned, masked) = masked_targets(&smollm2_template());
        assert_eq!(learned, "Alpha one.<|im_end|>\nBeta two.<|im_end|>\n");
        assert!(
            !masked.contains("Alpha") && !masked.contains("Beta"),
            "{masked}"
        );
        assert!(masked.contains("Question one?") && masked.contains("Question two?"));
        // The prompt is the text generation sees; its ids tokenize the same as a whole.
        assert_eq!(
            rendered.prompt_ids,
            testing::smollm2_tokenizer()
                .encode(&rendered.prompt_text, false)
                .unwrap()
        );
    }

    #[test]
    fn every_family_template_locates_the_earlier_turns() {
        // Qwen3 is not prefix-preserving (an empty think block on the last answer only), so
        // growing-prefix renders would fail there; every family must still mask right.
        for family in ["qwen3", "gemma3", "llama3.2", "deepseek_coder", "tinyllama"] {
            let (template, _) = family_fixture(family);
            let (rendered, learned, masked) = masked_targets(&template);
            assert_eq!(rendered.prompt_targets.len(), 1, "{family}");
            assert!(
                learned.starts_with("Alpha one.") && learned.contains("Beta two."),
                "{family}: {learned:?}"
            );
            assert!(!learned.contains("Question"), "{family}: {learned:?}");
            assert!(!masked.contains("Alpha one."), "{family}: {masked:?}");
            assert!(
                masked.contains("Question one?") && masked.contains("Question two?"),
                "{family}: {masked:?}"
            );
        }
    }
}
