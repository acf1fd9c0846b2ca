"""Chat templates: byte parity with upstream TinyLLaVA prompts, and assistant masks equal to upstream's labels.

Golden data under `tests/fixtures/upstream/<case>/` was recorded by running upstream TinyLLaVA Factory (53f12c7):
`samples.json` keeps upstream's `train_prompt`/`eval_prompt` strings, its chunk-tokenized ids (`-200` = image) and
its labels; `tokenizer/` holds the cases' byte-level BPE tokenizers as upstream saved them.
"""

import copy
import json
import re
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from tinyllava_hf.chat_templates import (
    DEFAULT_SYSTEM_PROMPT,
    TEMPLATE_EOS,
    get_chat_template,
    list_chat_templates,
    render_chat_template,
    upstream_conversation_to_messages,
)
from tinyllava_hf.constants import IGNORE_INDEX

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
# case -> upstream conv_version it was recorded with
CASES = {
    "case1_tinyllama_siglip_mlp2x_gelu": "llama",
    "case2_phi_clip_mlp2x_gelu": "phi",
    "case3_qwen2_siglip_resampler": "qwen2_base",
    "case4_tinyllama_clip_qformer": "llama",
}
# Cases whose tokenizer files are copied (case4 shares case1's llama format).
TOKENIZER_CASES = ["case1_tinyllama_siglip_mlp2x_gelu", "case2_phi_clip_mlp2x_gelu", "case3_qwen2_siglip_resampler"]
IMAGE_TOKEN_INDEX = -200  # upstream marks <image> in input ids with this id

# The system sentence and eos texts, read off upstream's template files (TinyLLaVA_Factory
# tinyllava/data/template/{llama,phi,gemma,qwen2_base,qwen2_instruct}_template.py: `system`, `format_assistant`
# slot "ASSISTANT: {{content}}<eos text>", `separator` [" ASSISTANT: ", "<eos text>"]).
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CONVERSATION_EOS = {
    "llama": "</s>",
    "phi": "<|endoftext|>",
    "gemma": "<eos>",
    "qwen2_base": "<|endoftext|>",
    "qwen2_instruct": "<|im_end|>",
}

IMAGE = {"type": "image"}
BOS_GUARD = "{%- if bos_token and bos_token != eos_token -%}\n    {{- bos_token -}}\n{%- endif -%}"


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _user(*content: dict[str, str] | str) -> dict:
    """A user message: one plain string, or content blocks."""
    return {"role": "user", "content": content[0] if isinstance(content[0], str) else list(content)}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [_text(text)]}


def _samples(case: str) -> list[dict]:
    return json.loads((FIXTURES / case / "samples.json").read_text())["samples"]


@pytest.fixture(scope="module", params=TOKENIZER_CASES)
def tokenizer_case(request: pytest.FixtureRequest) -> tuple[str, PreTrainedTokenizerBase]:
    return request.param, AutoTokenizer.from_pretrained(FIXTURES / request.param / "tokenizer")


# ---------------------------------------------------------------------------------------------------------- registry


def test_registry_lists_exactly_the_shipped_files():
    names = list_chat_templates()
    assert names == ["pretrain", "phi", "llama", "gemma", "qwen2_base", "qwen2_instruct"]
    shipped = {p.stem for p in (Path(__file__).parents[1] / "tinyllava_hf" / "templates").glob("*.jinja")}
    assert shipped == set(names)
    assert set(TEMPLATE_EOS) == set(names)
    assert DEFAULT_SYSTEM_PROMPT == SYSTEM


@pytest.mark.parametrize("name", ["llama", "phi", "gemma", "qwen2_base", "qwen2_instruct", "pretrain"])
def test_template_source_and_eos_metadata(name: str):
    source = get_chat_template(name)
    code = re.sub(r"\{#.*?#\}", "", source, flags=re.DOTALL)  # the code, without the Jinja comments
    assert "{%- generation -%}" in code and "{%- endgeneration -%}" in code
    # The BOS guard is the first thing rendered; past it, the eos is written as text, never taken from the
    # tokenizer's special-token variables.
    assert code.lstrip().startswith(BOS_GUARD)
    rest = code.lstrip().removeprefix(BOS_GUARD)
    assert "eos_token" not in rest and "bos_token" not in rest
    assert (f"'{TEMPLATE_EOS[name]}'" in code) == (name != "pretrain")
    assert TEMPLATE_EOS[name] == CONVERSATION_EOS.get(name, "")


@pytest.mark.parametrize("bad", ["Llama", "llama ", "vicuna_v1", "qwen2", ""])
def test_unknown_name_raises_and_lists_valid_names(bad: str):
    with pytest.raises(ValueError, match="valid names: pretrain, phi, llama, gemma, qwen2_base, qwen2_instruct"):
        get_chat_template(bad)


# --------------------------------------------------------------------------------------- upstream fixture parity


@pytest.mark.parametrize("case", list(CASES))
def test_train_prompt_matches_upstream(case: str):
    template = json.loads((FIXTURES / case / "samples.json").read_text())["template"]
    assert template == CASES[case]
    for sample in _samples(case):
        messages = upstream_conversation_to_messages(sample["conversations"])
        assert render_chat_template(template, messages) == sample["train_prompt"]
        # Upstream's raw strings as content (markers typed in the text) render the same.
        raw = [
            {"role": "user" if turn["from"] == "human" else "assistant", "content": turn["value"]}
            for turn in sample["conversations"]
        ]
        assert render_chat_template(template, raw) == sample["train_prompt"]


@pytest.mark.parametrize("case", list(CASES))
def test_eval_prompt_matches_upstream(case: str):
    template = CASES[case]
    for sample in _samples(case):
        # Built like upstream's run_tiny_llava.py: one user turn "<image>\n" + query, answer None.
        conversation = [{"from": "human", "value": "<image>\n" + sample["query"]}, {"from": "gpt", "value": None}]
        messages = upstream_conversation_to_messages(conversation)
        assert messages == [{"role": "user", "content": [IMAGE, _text(sample["query"])]}]
        prompt = render_chat_template(template, messages, add_generation_prompt=True)
        assert prompt == sample["eval_prompt"]
        assert prompt.endswith("ASSISTANT:")
        assert sample["stop_str"] == TEMPLATE_EOS[template]


# ---------------------------------------------------------------------------------- golden strings, every template


def _conversation_goldens(eos: str) -> list[tuple[str, list[dict], bool, str]]:
    """(label, messages, add_generation_prompt, expected) for the USER:/ASSISTANT: templates."""
    return [
        (
            "single turn, image first",
            [_user(IMAGE, _text("What is this?")), _assistant("A cat.")],
            False,
            f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.{eos}",
        ),
        (
            "image after the question moves to the front, text stripped",
            [_user(_text("  What is this?\n"), IMAGE), _assistant("A cat.")],
            False,
            f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.{eos}",
        ),
        (
            "two rounds, no separator after eos",
            [
                _user(IMAGE, _text("What is this?")),
                _assistant("A cat."),
                _user("And its color?"),
                _assistant("Black."),
            ],
            False,
            f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.{eos}USER: And its color? ASSISTANT: Black.{eos}",
        ),
        (
            "text only, unstripped as upstream",
            [_user(" Hi there"), _assistant("Hello!")],
            False,
            f"{SYSTEM} USER:  Hi there ASSISTANT: Hello!{eos}",
        ),
        (
            "image in the second turn",
            [_user("Hi"), _assistant("Hello."), _user(_text("What is this?"), IMAGE), _assistant("A cat.")],
            False,
            f"{SYSTEM} USER: Hi ASSISTANT: Hello.{eos}USER: <image>\nWhat is this? ASSISTANT: A cat.{eos}",
        ),
        (
            "generation prompt",
            [_user(IMAGE, _text("What is this?"))],
            True,
            f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:",
        ),
        (
            "generation prompt after a finished round",
            [_user(IMAGE, _text("What is this?")), _assistant("A cat."), _user("And its color?")],
            True,
            f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.{eos}USER: And its color? ASSISTANT:",
        ),
        (
            "system override",
            [{"role": "system", "content": "Be brief."}, _user("Hi"), _assistant("Hello.")],
            False,
            f"Be brief. USER: Hi ASSISTANT: Hello.{eos}",
        ),
        (
            "empty system drops the sentence and its space",
            [{"role": "system", "content": [_text("")]}, _user("Hi")],
            True,
            "USER: Hi ASSISTANT:",
        ),
        (
            "image-only turn: upstream's final strip eats the newline",
            [_user(IMAGE), _assistant("A cat.")],
            False,
            f"{SYSTEM} USER: <image> ASSISTANT: A cat.{eos}",
        ),
        (
            "several media, each marker then newline, in block order",
            [_user(_text("Compare "), IMAGE, _text(" these."), IMAGE, {"type": "audio"})],
            True,
            f"{SYSTEM} USER: <image>\n<image>\n<audio>\nCompare  these. ASSISTANT:",
        ),
    ]


# (bos_token, eos_token, the prefix the templates write): Llama / Gemma, Phi-2 (its BOS is its eos), Qwen2 (no BOS).
BOS_CASES = [
    ("<s>", "</s>", "<s>"),
    ("<bos>", "<eos>", "<bos>"),
    ("<|endoftext|>", "<|endoftext|>", ""),
    (None, "x", ""),
]

CONVERSATION_CASES = [
    pytest.param(name, messages, gen, expected, id=f"{name}: {label}")
    for name, eos in CONVERSATION_EOS.items()
    for label, messages, gen, expected in _conversation_goldens(eos)
]


@pytest.mark.parametrize(("name", "messages", "add_generation_prompt", "expected"), CONVERSATION_CASES)
def test_conversation_template_goldens(name: str, messages: list[dict], add_generation_prompt: bool, expected: str):
    assert render_chat_template(name, messages, add_generation_prompt=add_generation_prompt) == expected
    # Rendered for a tokenizer, the only change is the BOS in front, and only when the BOS is not the eos.
    for bos, eos, prefix in BOS_CASES:
        rendered = render_chat_template(
            name, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
        )
        assert rendered == prefix + expected


# Source: upstream pretrain_template.py: system "", user slot "<image>" (question dropped), assistant "{{content}}\n".
PRETRAIN_CASES = [
    ("single turn", [_user(IMAGE, _text("Describe it.")), _assistant("A cat.")], False, "<image>A cat.\n"),
    ("image after the text", [_user(_text("Describe it."), IMAGE), _assistant("A cat.")], False, "<image>A cat.\n"),
    ("generation prompt adds nothing", [_user(IMAGE, _text("Describe it."))], True, "<image>"),
    ("system message is ignored", [{"role": "system", "content": "Be brief."}, _user(IMAGE)], True, "<image>"),
    (
        "two rounds (upstream would write a second <image>)",
        [_user(IMAGE, _text("Describe it.")), _assistant("A cat."), _user("More?"), _assistant("It is black.")],
        False,
        "<image>A cat.\nIt is black.\n",
    ),
    ("text only", [_user("Hi"), _assistant("Hello.")], False, "Hello.\n"),
    ("image in the second turn", [_user("Hi"), _assistant("Hello."), _user(IMAGE)], True, "Hello.\n<image>"),
    ("markers typed in a string", [_user("<image>\nDescribe it."), _assistant("A cat.")], False, "<image>A cat.\n"),
]


@pytest.mark.parametrize(("label", "messages", "add_generation_prompt", "expected"), PRETRAIN_CASES)
def test_pretrain_template_goldens(label: str, messages: list[dict], add_generation_prompt: bool, expected: str):
    assert render_chat_template("pretrain", messages, add_generation_prompt=add_generation_prompt) == expected
    for bos, eos, prefix in BOS_CASES:
        rendered = render_chat_template(
            "pretrain", messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
        )
        assert rendered == prefix + expected


@pytest.mark.parametrize("name", list_chat_templates())
def test_rejects_unsupported_blocks_and_roles(name: str):
    with pytest.raises(jinja2.TemplateError, match="video"):
        render_chat_template(name, [_user({"type": "video"}, _text("What happens?")), _assistant("Nothing.")])
    with pytest.raises(jinja2.TemplateError, match="tool"):
        render_chat_template(name, [_user("Hi"), {"role": "tool", "content": "42"}])


@pytest.mark.parametrize("name", list_chat_templates())
def test_generation_spans_are_exactly_the_answers_and_eos(name: str):
    messages = [_user(IMAGE, _text("What is this?")), _assistant("A cat."), _user("Color?"), _assistant("Black.")]
    rendered, spans = render_jinja_template(
        [messages], chat_template=get_chat_template(name), return_assistant_tokens_mask=True
    )
    texts = [rendered[0][start:end] for start, end in spans[0]]
    if name == "pretrain":
        assert texts == ["A cat.\n", "Black.\n"]
    else:
        eos = CONVERSATION_EOS[name]
        assert texts == [f" A cat.{eos}", f" Black.{eos}"]


# ------------------------------------------------------------------------------------ upstream data conversion


def test_upstream_conversion_places_media_where_the_marker_was():
    convert = upstream_conversation_to_messages
    assert convert([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": " A cat. "}]) == [
        {"role": "user", "content": [IMAGE, _text("What?")]},
        {"role": "assistant", "content": [_text(" A cat. ")]},  # answers are never stripped upstream
    ]
    assert convert([{"from": "human", "value": "What color is it?\n<image>"}]) == [
        {"role": "user", "content": [_text("What color is it?"), IMAGE]}
    ]
    # Inner whitespace survives, so joining the text blocks gives upstream's `replace("<image>", "").strip()`.
    assert convert([{"from": "human", "value": " Compare <image> and\n<audio> now "}]) == [
        {"role": "user", "content": [_text("Compare "), IMAGE, _text(" and\n"), {"type": "audio"}, _text(" now")]}
    ]
    # No marker: upstream does not strip the question.
    assert convert([{"from": "human", "value": " Hi "}]) == [{"role": "user", "content": [_text(" Hi ")]}]


def test_upstream_conversion_roles():
    convert = upstream_conversation_to_messages
    # A leading gpt turn is skipped, as upstream's `_get_list_from_message` does; None answers are eval placeholders.
    assert convert(
        [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": None}]
    ) == [{"role": "user", "content": [_text("Q")]}]
    assert convert([{"from": "system", "value": "Be brief."}])[0] == {
        "role": "system",
        "content": [_text("Be brief.")],
    }
    with pytest.raises(ValueError, match="'bot'"):
        convert([{"from": "bot", "value": "x"}])


# ------------------------------------------------------------------------- tokenization and assistant masks


def test_assistant_mask_keeps_exactly_upstreams_trained_tokens(tokenizer_case):
    """The masked tokens are upstream's kept labels: answers, their leading space, and each round's eos.

    Plain tokenization spells the literal "<image>" as text ("Ġ<", "image", ">") where upstream has a lone "Ġ" then
    -200, so positions before the image differ; from the image's "\\n" on, ids line up with upstream's, and the masked
    ids equal upstream's kept label ids one for one.
    """
    case, tokenizer = tokenizer_case
    template = CASES[case]
    for sample in _samples(case):
        messages = upstream_conversation_to_messages(sample["conversations"])
        out = tokenizer.apply_chat_template(
            messages,
            chat_template=get_chat_template(template),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = out["input_ids"], out["assistant_masks"]
        masked = [token for token, keep in zip(ids, mask) if keep]
        kept = [
            token for token, label in zip(sample["train_input_ids"], sample["train_labels"]) if label != IGNORE_INDEX
        ]
        assert masked == kept
        assert tokenizer.decode(masked) == sample["unmasked_label_text"]
        # The tail after the image marker is token-identical to upstream's.
        tail = sample["train_input_ids"].index(IMAGE_TOKEN_INDEX) + 1
        assert ids[len(ids) - (len(sample["train_input_ids"]) - tail) :] == sample["train_input_ids"][tail:]


def test_with_image_registered_ids_and_mask_equal_upstream_position_by_position(tokenizer_case):
    """With `<image>` as a special added token (as a processor registers it), the template's own BOS and
    `add_special_tokens=False` (how TRL and the processor tokenise a rendered template) reproduce upstream's chunked
    ids exactly (-200 at the image, the BOS first for llama), and the assistant mask is upstream's `labels != -100`
    at every position."""
    case, tokenizer = tokenizer_case
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / case / "tokenizer")  # a private copy: we add a token
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    template = CASES[case]
    for sample in _samples(case):
        messages = upstream_conversation_to_messages(sample["conversations"])
        for text, expected in (
            (render_chat_template(template, messages, **tokenizer.special_tokens_map), sample["train_input_ids"]),
            (
                render_chat_template(
                    template, messages[:1], add_generation_prompt=True, **tokenizer.special_tokens_map
                ),
                sample["eval_input_ids"],
            ),
        ):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert [IMAGE_TOKEN_INDEX if token == image_id else token for token in ids] == expected

        # A tokenizer's `apply_chat_template` never adds specials: the template's BOS is upstream's.
        out = tokenizer.apply_chat_template(
            messages,
            chat_template=get_chat_template(template),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert [IMAGE_TOKEN_INDEX if token == image_id else token for token in out["input_ids"]] == (
            sample["train_input_ids"]
        )
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample["train_labels"]]


def _upstream_bos(case: str) -> bool:
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / case / "tokenizer")
    ids = _samples(case)[0]["train_input_ids"]
    return tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("name", list_chat_templates())
@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_processor_collator_and_trl_see_one_bos(name: str, case: str):
    """For every template, with a tokenizer whose BOS upstream used (TinyLlama), one whose BOS is its eos (Phi-2)
    and one with no BOS at all (Qwen2): the processor, our collator (its encoding and its length measurement) and
    TRL's vision collator tokenise the same ids, starting with one BOS exactly when upstream's did, and train the
    same positions."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from tinyllava_hf.builder import build_processor
    from tinyllava_hf.testing_utils import random_image, tiny_config, tiny_image_processor
    from tinyllava_hf.train.collator import TinyLlavaCollator

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / case / "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    processor = build_processor(tiny_config(), tokenizer, tiny_image_processor(), template=name)
    image = random_image(0)
    # Block contents throughout: TRL puts its images before the first user turn with a plain string content.
    messages = [_user(IMAGE, _text("What is this?")), _assistant("A cat.")]
    messages += [_user(_text("Color?")), _assistant("Black.")]
    bos = tokenizer.bos_token_id
    n_bos = int(_upstream_bos(case))
    assert n_bos == (case == "case1_tinyllama_siglip_mlp2x_gelu")  # the fixtures: llama yes, phi and qwen2 no

    out = processor.apply_chat_template(
        [_user({"type": "image", "image": image}, _text("What is this?")), *messages[1:]],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    ids = out["input_ids"][0].tolist()
    if n_bos:
        assert ids[0] == bos and ids.count(bos) == 1
    else:  # Phi-2's BOS id is its eos, which the answers' eos text does hold: only the front tells
        assert bos is None or ids[0] != bos

    collator = TinyLlavaCollator(processor)
    row = {"id": "0", "messages_json": json.dumps(messages), "images": [image]}
    encoded = collator.encode(row)
    assert encoded["input_ids"].tolist() == ids
    assert collator.measure(row).length == len(ids)

    trl = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    batch = trl([{"messages": copy.deepcopy(messages), "images": [image]}])
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][0].tolist() == encoded["labels"].tolist()  # the same trained positions


def test_switching_the_default_template_keeps_every_named_one():
    from tinyllava_hf.builder import LM_TEMPLATE_NAME, processor_chat_templates, with_default_template

    built = processor_chat_templates("pretrain", lm_chat_template="{{ 'lm' }}")
    assert built["default"] == get_chat_template("pretrain") and built[LM_TEMPLATE_NAME] == "{{ 'lm' }}"
    switched = with_default_template(built, "llama")
    assert switched["default"] == get_chat_template("llama")
    assert set(switched) == set(built)  # pretrain -> llama between the stages loses no named template
    assert with_default_template(built, LM_TEMPLATE_NAME)["default"] == "{{ 'lm' }}"
    # A checkpoint saved with one unnamed template gets the named set back.
    assert set(with_default_template("{{ 'x' }}", "phi")) == {"default", *list_chat_templates()}
    with pytest.raises(ValueError, match="Unknown chat template 'nope'; known templates: pretrain, phi"):
        with_default_template(built, "nope")
