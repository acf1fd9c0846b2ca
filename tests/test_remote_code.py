"""A saved folder works as a Hub user sees it: in a fresh Python process where `tinyllava_hf` cannot be imported,
every Auto class loads it with `trust_remote_code=True` and reproduces our logits and generations exactly."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.testing_utils import random_audio, random_image, scramble, tiny_config, tiny_processor

pytestmark = pytest.mark.subprocess

# Runs in the child process. `sys.modules["tinyllava_hf"] = None` makes any import of the package raise ImportError,
# so only the files saved beside the weights can serve the model.
CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["tinyllava_hf"] = None
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    folder, data, out = sys.argv[1:4]
    inputs = torch.load(data, weights_only=False)
    conversations = inputs["conversations"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    causal = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    try:
        import tinyllava_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("tinyllava_hf was importable in the child process")

    def encode(conversation, **kwargs):
        return processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs
        )

    results = {"config_class": type(config).__name__, "processor_class": type(processor).__name__}
    with torch.no_grad():
        first = encode(conversations[0])
        results["input_ids"] = first["input_ids"]
        results["logits"] = model(**first).logits
        results["causal_logits"] = causal(**first).logits
        results["hidden"] = base(**first).last_hidden_state
        settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        one_by_one = []
        for conversation in conversations:
            encoded = encode(conversation)
            one_by_one.append(model.generate(**encoded, **settings)[0, encoded["input_ids"].shape[1]:].tolist())
        batch = encode(conversations, processor_kwargs={"padding": True})
        results["one_by_one"] = one_by_one
        results["batched"] = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:].tolist()
    torch.save(results, out)
    """
)


def vision_conversations():
    return [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": random_image(0)}, {"type": "text", "text": "What shape?"}],
            }
        ],
        [{"role": "user", "content": [{"type": "text", "text": "Is there a triangle in the picture?"}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": random_image(1)},
                    {"type": "text", "text": "What color is it?"},
                ],
            }
        ],
    ]


def audio_conversations():
    conversations = vision_conversations()
    conversations[1][0]["content"].insert(0, {"type": "audio", "audio": random_audio(0)})
    return conversations


CASES = {
    "llama-siglip-mlp2x_gelu": (
        dict(family="llama", tower="siglip", connector="mlp2x_gelu"),
        "llama",
        vision_conversations,
    ),
    "gemma-clip-qformer": (dict(family="gemma", tower="clip", connector="qformer"), "gemma", vision_conversations),
    "llama-clip-resampler-audio": (
        dict(family="llama", tower="clip", connector="resampler", audio=True),
        "phi",
        audio_conversations,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_remote_code_reproduces_logits_and_generation(case, tmp_path):
    settings, template, make_conversations = CASES[case]
    config = tiny_config(**settings)
    processor = tiny_processor(config, tower=settings["tower"], template=template)
    processor.tokenizer.padding_side = "left"
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.3)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    conversations = make_conversations()
    torch.save({"conversations": conversations}, tmp_path / "inputs.pt")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    child = torch.load(tmp_path / "out.pt", weights_only=False)

    assert child["config_class"] == "TinyLlavaConfig"
    assert child["processor_class"] == type(processor).__name__
    first = processor.apply_chat_template(
        conversations[0], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**first).logits
    assert torch.equal(child["input_ids"], first["input_ids"])
    assert torch.equal(child["logits"], logits)
    assert torch.equal(child["causal_logits"], logits)
    assert torch.equal(child["hidden"], model.model(**first).last_hidden_state.detach())
    # Batched, left-padded generation in the child equals its one-by-one generation, and they differ per prompt.
    assert child["batched"] == child["one_by_one"]
    assert len({tuple(tokens) for tokens in child["one_by_one"]}) > 1
