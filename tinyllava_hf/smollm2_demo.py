"""The easy-VQA demo with a real LM: SmolLM2-135M-Instruct (GGUF, `llm: smollm2`) instead of the demo's random one.

What `tinyllava-hf demo --llm smollm2` needs beside the demo's own parts and data (`tinyllava_hf.demo`): the two
recipes (`recipes/easy_vqa/{pretrain,finetune}/config_smollm2.yaml`, which read `outputs/demo_smollm2/...`), and one
extra data file, `describe.json`: "Describe the image." answered with a sentence ("The image shows a blue
rectangle."), mixed into the finetune stage so that the one-word easy-VQA answers do not teach the chat model to
answer every request with one word. Measured figures: docs/smollm2.md.

    python -c "from tinyllava_hf.smollm2_demo import write_describe_data as w; w('outputs/demo_smollm2/data')"
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["DESCRIBE_FILE", "RECIPES", "chat_samples", "sentence_caption", "write_describe_data"]

RECIPES = {
    "pretrain": "recipes/easy_vqa/pretrain/config_smollm2.yaml",
    "finetune": "recipes/easy_vqa/finetune/config_smollm2.yaml",
}
DESCRIBE_FILE = "describe.json"
DESCRIBE_PROMPT = "Describe the image."
# What `chat_samples` asks: a text-only question (the LM's own knowledge), a description, an easy-VQA question.
TEXT_QUESTION = "What is the capital of France? Answer in one sentence."
VQA_QUESTION = "What shape is in the image?"


def sentence_caption(caption: str) -> str:
    """`a blue rectangle` -> `The image shows a blue rectangle.`"""
    return f"The image shows {caption.strip().rstrip('.')}."


def write_describe_data(data_dir: str | Path, num_samples: int = 2000, seed: int = 0) -> Path:
    """Write `describe.json` beside the demo's `pretrain.json` (whose captions it rephrases): `num_samples` train
    images, seeded, whose caption names both colour and shape, each asked "Describe the image." and answered with a
    sentence (`sentence_caption`)."""
    data_dir = Path(data_dir)
    captions = json.loads((data_dir / "pretrain.json").read_text(encoding="utf-8"))
    complete = [sample for sample in captions if len(sample["conversations"][1]["value"].split()) == 3]
    chosen = random.Random(seed).sample(complete, min(num_samples, len(complete)))
    samples = [
        {
            "id": f"describe-{index}",
            "image": sample["image"],
            "conversations": [
                {"from": "human", "value": f"<image>\n{DESCRIBE_PROMPT}"},
                {"from": "gpt", "value": sentence_caption(sample["conversations"][1]["value"])},
            ],
        }
        for index, sample in enumerate(chosen)
    ]
    path = data_dir / DESCRIBE_FILE
    path.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    return path


def chat_samples(model_dir: str | Path, images: list[str | Path], max_new_tokens: int = 40) -> list[dict]:
    """Greedy answers of a trained checkpoint with its default chat template, as a user would get them: a text-only
    question (no image), then "Describe the image." and an easy-VQA question for each of `images`.

    Returns `[{"image": path or None, "prompt": ..., "answer": ...}, ...]`, for the demo's card and README.
    """
    import torch
    from PIL import Image

    from .loading import load_model_and_processor

    model, processor = load_model_and_processor(model_dir, device="cpu", dtype="float32")
    requests = [(None, TEXT_QUESTION)]
    for image in images:
        requests += [(image, DESCRIBE_PROMPT), (image, VQA_QUESTION)]
    samples = []
    for image, prompt in requests:
        content = [{"type": "text", "text": prompt}]
        if image is not None:
            content.insert(0, {"type": "image", "image": Image.open(image).convert("RGB")})
        inputs = processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        samples.append({"image": None if image is None else str(image), "prompt": prompt, "answer": answer.strip()})
    return samples
