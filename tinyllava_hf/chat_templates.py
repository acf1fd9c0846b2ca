"""Chat templates (Jinja) that reproduce upstream TinyLLaVA Factory's prompt formats byte for byte.

Upstream builds prompts in Python (`tinyllava/data/template/*.py`, selected by `conv_version`). Here each format is a
transformers chat template under `tinyllava_hf/templates/<name>.jinja`, so the processor, `apply_chat_template` and
TRL render exactly the strings upstream trained on:

    "<system> USER: <image>\\n<question> ASSISTANT: <answer><eos>USER: <question 2> ASSISTANT: <answer 2><eos>"

and, with `add_generation_prompt=True`, a prompt ending in `"ASSISTANT:"` (no trailing space). Every assistant answer
and its eos text sit in a `{% generation %}` block, so `return_assistant_tokens_mask=True` marks the tokens upstream's
labels train (see the template headers for the leading space).

Design choices, all pinned by `tests/test_chat_templates.py`:

- The eos text is a literal in each template (upstream writes it into the prompt string), never `eos_token`.
- The BOS is written by the template, as the Hub's chat templates do (`{{ bos_token }}` first), whenever the
  tokenizer's BOS is a token of its own (`bos_token != eos_token`: Llama's `<s>`, Gemma's `<bos>`): exactly the
  tokenizers whose encoding upstream began with a BOS. Phi-2's BOS is its eos `<|endoftext|>` and Qwen2 has none;
  upstream's ids had no BOS there, and the templates write none. Rendered text is therefore tokenised with
  `add_special_tokens=False` everywhere: TRL always does, transformers' `ProcessorMixin.apply_chat_template` does as
  soon as the text starts with `bos_token`, and so does our collator's length measurement; each sees one BOS, never
  two. Register `<image>` as a special added token: the full-sequence ids then equal upstream's chunked
  `tokenizer_image_token` ids with `-200` at the image position. (`render_chat_template` without a `bos_token`
  keyword renders upstream's prompt text, which never held the BOS string.)
"""

import importlib.resources
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from .constants import AUDIO_TOKEN, IMAGE_TOKEN

__all__ = [
    "AUDIO_TOKEN",
    "DEFAULT_SYSTEM_PROMPT",
    "IMAGE_TOKEN",
    "TEMPLATE_EOS",
    "get_chat_template",
    "list_chat_templates",
    "render_chat_template",
    "upstream_conversation_to_messages",
]

# Upstream's system sentence (identical in its phi/llama/gemma/qwen2 templates); the templates append one space.
DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The text each template writes after every answer, i.e. upstream's `separator[1]`, which its eval script also uses
# as the stop string. `pretrain` has none (upstream's separator is ["", ""]); its answers end in "\n" instead.
TEMPLATE_EOS: dict[str, str] = {
    "pretrain": "",
    "phi": "<|endoftext|>",
    "llama": "</s>",
    "gemma": "<eos>",
    "qwen2_base": "<|endoftext|>",
    "qwen2_instruct": "<|im_end|>",
}

# Package data (`tinyllava_hf/templates/<name>.jinja`), read through importlib.resources like every shipped file.
_TEMPLATE_DIR = importlib.resources.files("tinyllava_hf") / "templates"

# Upstream's data uses "human"/"gpt"; "system" is our extension (upstream has no per-sample system prompt).
_UPSTREAM_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_MEDIA_RE = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(AUDIO_TOKEN)})")


def list_chat_templates() -> list[str]:
    """Return the names of the shipped chat templates (upstream `conv_version` names), in registry order."""
    return list(TEMPLATE_EOS)


@cache
def get_chat_template(name: str) -> str:
    """Return the Jinja source of the chat template named exactly `name` (e.g. `"llama"`, `"phi"`).

    Raises:
        ValueError: if `name` is not a registered template; the message lists the valid names.
    """
    if name not in TEMPLATE_EOS:
        raise ValueError(f"Unknown TinyLLaVA chat template {name!r}; valid names: {', '.join(list_chat_templates())}")
    return _TEMPLATE_DIR.joinpath(f"{name}.jinja").read_text(encoding="utf-8")


def render_chat_template(
    name: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, **kwargs: Any
) -> str:
    """Render one conversation with the named template, through transformers' own Jinja environment.

    That environment is the one `apply_chat_template` uses (sandboxed, `trim_blocks`/`lstrip_blocks`, with the
    `{% generation %}` extension), so the string is exactly what a tokenizer or processor would tokenize.

    Args:
        name: template name, see `list_chat_templates()`.
        messages: transformers-style messages; `content` is a string or a list of `{"type": "text", "text": ...}`,
            `{"type": "image"}` and `{"type": "audio"}` blocks. An optional first system message replaces the default
            system sentence.
        add_generation_prompt: end with the assistant header `"ASSISTANT:"` (inference).
        **kwargs: forwarded to `render_jinja_template` (extra template variables, `continue_final_message`, ...).

    Returns:
        The rendered prompt.
    """
    rendered, _ = render_jinja_template(
        conversations=[list(messages)],
        chat_template=get_chat_template(name),
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return rendered[0]


def _strip_segments(segments: list[str]) -> list[str]:
    """Strip the text that `segments` form when joined, editing only the segments at either end.

    Upstream strips a question after deleting its `<image>` marker; stripping the pieces around the markers this way
    keeps their concatenation equal to upstream's stripped question, whitespace inside it included.
    """
    segments = list(segments)
    for i, segment in enumerate(segments):
        segments[i] = segment.lstrip()
        if segments[i]:
            break
    for i in range(len(segments) - 1, -1, -1):
        segments[i] = segments[i].rstrip()
        if segments[i]:
            break
    return segments


def _human_blocks(value: str) -> list[dict[str, str]]:
    """Content blocks for one upstream human turn: media blocks where the markers were, text between them."""
    if not _MEDIA_RE.search(value):
        # Upstream leaves a question without `<image>` unstripped.
        return [{"type": "text", "text": value}]
    # With a capturing group, odd indices are the markers and even ones the text around them.
    parts = _MEDIA_RE.split(value)
    texts = _strip_segments(parts[0::2])
    blocks: list[dict[str, str]] = []
    for i, part in enumerate(parts):
        if i % 2:
            blocks.append({"type": "image" if part == IMAGE_TOKEN else "audio"})
        elif texts[i // 2]:
            blocks.append({"type": "text", "text": texts[i // 2]})
    return blocks


def upstream_conversation_to_messages(conversations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Convert upstream/LLaVA data `[{"from": "human", "value": ...}, {"from": "gpt", ...}]` to transformers messages.

    Human turns become user messages whose `<image>` (and `<audio>`) markers are removed from the text and replaced by
    `{"type": "image"}` (`{"type": "audio"}`) blocks at the marker's position; the text is stripped exactly when
    upstream strips it (only turns that held a marker). gpt turns become assistant messages with their text unchanged
    (upstream never strips answers). As upstream does, a conversation starting with a gpt turn loses that turn. A gpt
    turn whose value is None (upstream's eval-mode `Message`) is dropped: render with `add_generation_prompt=True`.

    Args:
        conversations: the sample's `conversations` list.

    Returns:
        Messages `[{"role": ..., "content": [blocks]}, ...]` for `render_chat_template` / `apply_chat_template`.

    Raises:
        ValueError: on a `from` other than human, gpt or system.
    """
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(conversations):
        source = turn["from"]
        if source not in _UPSTREAM_ROLES:
            raise ValueError(f"Unknown conversation role {source!r}; expected one of {sorted(_UPSTREAM_ROLES)}")
        role = _UPSTREAM_ROLES[source]
        value = turn["value"]
        if role == "assistant" and (i == 0 or value is None):
            # Upstream's `_get_list_from_message` skips a leading non-human turn; None is an unanswered eval turn.
            continue
        content = _human_blocks(value) if role == "user" else [{"type": "text", "text": value}]
        messages.append({"role": role, "content": content})
    return messages
