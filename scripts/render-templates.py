#!/usr/bin/env python3
"""Renders the chat-template fixtures as transformers' `apply_chat_template` does.

Writes tests/fixtures/templates/<family>_renders.json for every <family>.jinja listed in
FAMILIES: each case's messages, flags, extra template variables and pinned clock, and the
text jinja2 renders. The Rust tests (stages/src/llm/text/template.rs) render the same cases
through pipe's one render function and compare byte for byte.

The environment is transformers' `_compile_jinja_template` (transformers 4.4x/5.x):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]) with `raise_exception`, `strftime_now` and a `tojson` that keeps
non-ASCII. `render` is called as `apply_chat_template` calls it: messages, tools=None,
documents=None, add_generation_prompt, then the special tokens and the caller's kwargs.

Usage: python3 scripts/render-templates.py   (needs jinja2: pip install jinja2==3.1.6)
"""

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "templates"

# The clock `strftime_now` reads in every case (transformers reads datetime.now()).
PINNED_NOW = "2026-12-03T05:07:09"

# The special tokens each model's tokenizer_config.json names.
FAMILIES = {
    "qwen3": {"eos_token": "<|im_end|>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "llama3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "tinyllama": {"bos_token": "<s>", "eos_token": "</s>"},
    "deepseek_coder": {
        "bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
        "eos_token": "<|EOT|>",
    },
}

SYSTEM = {"role": "system", "content": "You are a concise Unix expert."}
USER = {"role": "user", "content": "What does `ls -la` do?"}
ANSWER = {"role": "assistant", "content": "It lists all files, hidden ones too, in long form."}
USER2 = {"role": "user", "content": "  And `du -sh`?  "}
ANSWER2 = {"role": "assistant", "content": "Total size, human-readable \u2014 e.g. 4.0K."}


def common_cases():
    """The cases every family renders: system or not, multi-turn, generation prompt on/off."""
    return [
        ("user only, generation prompt", [USER], True),
        ("user only, no generation prompt", [USER], False),
        ("system + user, generation prompt", [SYSTEM, USER], True),
        ("system + user + assistant", [SYSTEM, USER, ANSWER], False),
        ("user + assistant, no system", [USER, ANSWER], False),
        ("multi-turn with system, generation prompt", [SYSTEM, USER, ANSWER, USER2], True),
        ("multi-turn without system, answered", [USER, ANSWER, USER2, ANSWER2], False),
    ]


def family_cases(family):
    """Cases beyond the common ones: template variables a family reads."""
    cases = [(name, messages, gen, {}) for name, messages, gen in common_cases()]
    if family == "qwen3":
        thinking = {"role": "assistant", "content": "<think>\nls lists.\n</think>\n\nIt lists files."}
        cases += [
            ("enable_thinking false, generation prompt", [USER], True, {"enable_thinking": False}),
            ("enable_thinking true, generation prompt", [USER], True, {"enable_thinking": True}),
            ("enable_thinking false, answered", [SYSTEM, USER, ANSWER], False, {"enable_thinking": False}),
            ("thinking block in history", [USER, thinking, USER2], True, {}),
            ("last assistant turn thinks", [USER, thinking], False, {}),
        ]
    if family == "llama3.2":
        cases += [
            ("date_string given", [SYSTEM, USER], True, {"date_string": "26 Jul 2024"}),
        ]
    return cases


def environment():
    """transformers' `_compile_jinja_template` environment, with the clock pinned."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.fromisoformat(PINNED_NOW).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_family(env, family, special):
    source = (FIXTURES / f"{family}.jinja").read_text()
    template = env.from_string(source)
    out = []
    for name, messages, add_generation_prompt, kwargs in family_cases(family):
        rendered = template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special,
            **kwargs,
        )
        out.append(
            {
                "name": name,
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "kwargs": kwargs,
                "rendered": rendered,
            }
        )
    return out


def main():
    env = environment()
    for family, special in FAMILIES.items():
        document = {
            "template": f"{family}.jinja",
            "renderer": f"jinja2 {jinja2.__version__} ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), as transformers' apply_chat_template; by scripts/render-templates.py",
            "special_tokens": special,
            "strftime_now": PINNED_NOW,
            "cases": render_family(env, family, special),
        }
        path = FIXTURES / f"{family}_renders.json"
        path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
        print(f"{path}: {len(document['cases'])} cases")


if __name__ == "__main__":
    main()
