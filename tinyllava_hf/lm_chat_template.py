"""An LM's own chat template, made usable as a TinyLLaVA processor template (`template: lm`).

A Hub LM's template renders text-only messages and marks no answers, so as it comes it can neither take an image
block nor train (the collator's labels are the `{% generation %}` spans, see `tinyllava_hf.train.collator`).
`adapt_lm_chat_template` makes two changes, each kept only when the adapted template renders every text-only probe
conversation exactly as the original does (`_renders_like`), so a chat with the checkpoint reads what the LM was
tuned on:

- a preamble turns each message whose content is a list of blocks into a string, the way the TinyLLaVA templates do:
  one `<image>\\n` (`<audio>\\n`) per media block at the start of the turn, then its text, stripped;
- for the ChatML layout (`<|im_start|>role\\ncontent<|im_end|>\\n`, SmolLM2's and many others') the assistant's
  content and its `<|im_end|>` go in a `{% generation %}` block, as the TRL/Hub training templates do; other layouts
  are left without one, and `template: lm` cannot train on them (the collator says so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from transformers.utils.chat_template_utils import render_jinja_template

from .constants import AUDIO_TOKEN, IMAGE_TOKEN

__all__ = ["adapt_lm_chat_template", "has_generation_block"]

# Writes nothing; rebinding `messages` at the template's top level is seen by everything after it. No `-` on the
# last tag: the original template's own leading whitespace (if any) must survive.
_MEDIA_PREAMBLE = (
    "{#- tinyllava_hf: media blocks become their markers at the start of the turn, as in the TinyLLaVA templates -#}"
    "{%- set _tl = namespace(messages=[], media='', text='') -%}"
    "{%- for _message in messages -%}"
    "{%- if _message['content'] is string or _message['content'] is none -%}"
    "{%- set _tl.messages = _tl.messages + [_message] -%}"
    "{%- else -%}"
    "{%- set _tl.media = '' -%}{%- set _tl.text = '' -%}"
    "{%- for _block in _message['content'] -%}"
    f"{{%- if _block['type'] == 'image' -%}}{{%- set _tl.media = _tl.media + '{IMAGE_TOKEN}\\n' -%}}"
    f"{{%- elif _block['type'] == 'audio' -%}}{{%- set _tl.media = _tl.media + '{AUDIO_TOKEN}\\n' -%}}"
    "{%- elif _block['type'] == 'text' -%}{%- set _tl.text = _tl.text + _block['text'] -%}"
    "{%- else -%}{{- raise_exception('TinyLLaVA supports text, image and audio blocks, got: ' ~ _block['type']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set _content = _tl.media + (_tl.text | trim) if _tl.media else _tl.text -%}"
    "{%- set _tl.messages = _tl.messages + [dict(_message, content=_content)] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = _tl.messages %}"
)
_PREAMBLE_MARK = "{#- tinyllava_hf: media blocks"

# ChatML written as one expression per message (SmolLM2, many fine-tunes); `\n` either escaped or literal.
_NL = r"(?:\\n|\n)"
_CHATML_MESSAGE = re.compile(
    r"\{\{(?P<lstrip>-?)\s*'<\|im_start\|>'\s*\+\s*message\[['\"]role['\"]\]\s*\+\s*'" + _NL + r"'\s*\+\s*"
    r"message\[['\"]content['\"]\]\s*\+\s*'<\|im_end\|>'\s*\+\s*'" + _NL + r"'\s*(?P<rstrip>-?)\}\}"
)
_CHATML_WITH_GENERATION = (
    "{{{{{lstrip} '<|im_start|>' + message['role'] + '\\n' }}}}"
    "{{%- if message['role'] == 'assistant' -%}}"
    "{{% generation %}}{{{{- message['content'] + '<|im_end|>' -}}}}{{% endgeneration %}}{{{{- '\\n' {rstrip}}}}}"
    "{{%- else -%}}{{{{- message['content'] + '<|im_end|>' + '\\n' {rstrip}}}}}{{%- endif -%}}"
)

# Text-only conversations both templates must render identically (with and without a generation prompt).
_PROBES = (
    [{"role": "user", "content": "What colour is the sky?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": " and 3+3 ?"},
        {"role": "assistant", "content": "6"},
    ],
)


def has_generation_block(template: str | None) -> bool:
    """Whether `template` marks answers with `{% generation %}` (what training on it needs)."""
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def _render(template: str, conversation: list[dict], add_generation_prompt: bool, special_tokens) -> str:
    rendered, _ = render_jinja_template(
        conversations=[conversation],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **special_tokens,
    )
    return rendered[0]


def _renders_like(adapted: str, original: str, special_tokens: Mapping[str, str]) -> bool:
    try:
        return all(
            _render(adapted, probe, prompt, special_tokens) == _render(original, probe, prompt, special_tokens)
            for probe in _PROBES
            for prompt in (False, True)
        )
    except Exception:  # a template that cannot render a probe at all (e.g. one refusing a system turn)
        return False


def adapt_lm_chat_template(template: str | None, special_tokens: Mapping[str, str] | None = None) -> str | None:
    """The LM's chat template with media blocks (and, for ChatML, training marks) added; see the module docstring.

    `special_tokens` are the tokenizer's (`tokenizer.special_tokens_map`: `bos_token`, `eos_token`, ...), which
    templates read. Returns `template` unchanged when it is empty, already adapted, or no change renders alike.
    """
    if not template or _PREAMBLE_MARK in template:
        return template
    special_tokens = dict(special_tokens or {})
    adapted = template
    if not has_generation_block(template):
        candidate = _CHATML_MESSAGE.sub(
            lambda match: _CHATML_WITH_GENERATION.format(lstrip=match["lstrip"], rstrip=match["rstrip"]), template
        )
        if candidate != template and _renders_like(candidate, template, special_tokens):
            adapted = candidate
    candidate = _MEDIA_PREAMBLE + adapted
    return candidate if _renders_like(candidate, template, special_tokens) else adapted
