//! `pipe chat`: a multi-turn conversation on the terminal through the model's chat template.
//! `/reset` starts over, `/exit` or end of input (Ctrl-D) leaves, an empty line asks again.
//! Old turns are dropped when the conversation outgrows the model's context.

use super::generate::summary;
use super::session::{ModelOptions, ModelSession};
use crate::llm::{ChatMessage, ChatTemplate, GenerationConfig, Generator, LlmError, LlmResult};
use std::io::{BufRead, Write};

/// What `pipe chat` was asked.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub model: ModelOptions,
    pub system: Option<String>,
    pub generation: GenerationConfig,
    /// Show a prompt before each input line (a terminal; not when input is piped).
    pub interactive: bool,
}

/// What happened in a chat session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChatSummary {
    pub replies: usize,
}

const HELP: &str = "commands: /reset (start over), /exit (leave; Ctrl-D too)";

/// Runs the conversation: reads user lines from `input`, streams replies to `out`, notes to
/// `log`.
pub fn run_chat(
    options: &ChatOptions,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    log: &mut dyn Write,
) -> LlmResult<ChatSummary> {
    let session = ModelSession::open(&options.model)?;
    let template = session.chat_template()?.clone();
    let mut chat = Conversation::new(&session, template, options);
    let _ = writeln!(log, "chatting with {} — {HELP}", session.description);
    let mut summary = ChatSummary::default();
    loop {
        if options.interactive {
            write_out(out, "> ")?;
        }
        let mut line = String::new();
        let read = input
            .read_line(&mut line)
            .map_err(|e| LlmError::io("<stdin>", e))?;
        if read == 0 {
            if options.interactive {
                write_out(out, "\n")?;
            }
            return Ok(summary);
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(summary),
            "/reset" => {
                chat.reset();
                let _ = writeln!(log, "(conversation cleared)");
            }
            "/help" => {
                let _ = writeln!(log, "{HELP}");
            }
            text => {
                chat.reply(text, out, log)?;
                summary.replies += 1;
            }
        }
    }
}

fn write_out(out: &mut dyn Write, text: &str) -> LlmResult<()> {
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| LlmError::io("<stdout>", e))
}

/// The history of one conversation and how to extend it.
struct Conversation<'a> {
    session: &'a ModelSession,
    template: ChatTemplate,
    system: Option<String>,
    config: GenerationConfig,
    history: Vec<ChatMessage>,
    turn: u64,
}

impl<'a> Conversation<'a> {
    fn new(session: &'a ModelSession, template: ChatTemplate, options: &ChatOptions) -> Self {
        let mut config = options.generation.clone();
        config.extra_eos_ids.extend(session.end_of_turn_ids());
        Conversation {
            session,
            template,
            system: options.system.clone(),
            config,
            history: Vec::new(),
            turn: 0,
        }
    }

    fn reset(&mut self) {
        self.history.clear();
    }

    /// Adds the user's message, streams the model's reply and keeps it in the history.
    fn reply(&mut self, text: &str, out: &mut dyn Write, log: &mut dyn Write) -> LlmResult<()> {
        self.history.push(ChatMessage::user(text));
        let prompt = self.prompt_ids(log)?;
        let mut write_error = None;
        // Each turn samples from its own stream, so a conversation replays identically.
        let generator = Generator::new(&self.session.model, &self.session.tokenizer);
        let (generation, timings) =
            generator.generate_one(&prompt, self.turn, &self.config, &mut |piece| {
                if write_error.is_none() {
                    write_error = write_out(out, piece).err();
                }
            })?;
        if let Some(e) = write_error {
            return Err(e);
        }
        write_out(out, "\n\n")?;
        self.turn += 1;
        let _ = writeln!(log, "[{}]", summary(&generation, &timings, prompt.len()));
        self.history
            .push(ChatMessage::assistant(generation.text.trim().to_string()));
        Ok(())
    }

    /// The rendered conversation, dropping the oldest exchanges while it leaves too little
    /// room in the context for a reply.
    fn prompt_ids(&mut self, log: &mut dyn Write) -> LlmResult<Vec<u32>> {
        let context = self.session.model.config().max_position_embeddings;
        let room = self.config.max_new_tokens.min(context / 2);
        loop {
            let messages: Vec<ChatMessage> = self
                .system
                .iter()
                .map(ChatMessage::system)
                .chain(self.history.iter().cloned())
                .collect();
            let text = self.template.render(&messages, true)?;
            let ids = self.session.tokenizer.encode(&text, false)?;
            if ids.len() + room <= context || self.history.len() <= 1 {
                return Ok(ids);
            }
            // Drop the oldest user message and the reply to it.
            self.history.drain(..2.min(self.history.len() - 1));
            let _ = writeln!(log, "(dropped the oldest exchange to fit the context)");
        }
    }
}
