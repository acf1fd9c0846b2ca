"""Stock `trl sft` trains the tokens `tinyllava-hf train` trains.

`tinyllava-hf build` writes the stage-0 checkpoint a recipe builds from parts, `tinyllava-hf set-template` switches
its default template between stages, and TRL's own CLI (`trl sft --config recipes/debug/*/trl_sft.yaml`, launched
through accelerate as users run it) trains on it. The batches TRL's vision collator builds in that run are recorded
(a `sitecustomize` hook in the training process) and compared, row by row, with our collator's on the same samples:
the same input ids (one BOS, from the chat template) and the same trained positions (labels != -100).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tinyllava_hf.chat_templates import get_chat_template, list_chat_templates
from tinyllava_hf.constants import IGNORE_INDEX

REPO = Path(__file__).resolve().parent.parent
TRL_RECIPES = sorted((REPO / "recipes").glob("**/trl_*.yaml"))
TRL = Path(sys.executable).with_name("trl")

# Loaded by the training process TRL's CLI launches: wraps TRL's vision collator to append each batch it builds to
# $TRL_BATCH_LOG, without importing anything before TRL itself does.
BATCH_HOOK = textwrap.dedent(
    """
    import importlib.abc
    import importlib.machinery
    import json
    import os
    import sys


    class _RecordTrlBatches(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "trl.trainer.sft_trainer":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            exec_module = spec.loader.exec_module

            def exec_and_wrap(module):
                exec_module(module)
                collator = module.DataCollatorForVisionLanguageModeling
                torch_call = collator.torch_call

                def recording_torch_call(self, examples):
                    batch = torch_call(self, examples)
                    rows = {key: batch[key].tolist() for key in ("input_ids", "attention_mask", "labels")}
                    with open(os.environ["TRL_BATCH_LOG"], "a") as handle:
                        handle.write(json.dumps(rows) + "\\n")
                    return batch

                collator.torch_call = recording_torch_call

            spec.loader.exec_module = exec_and_wrap
            return spec


    sys.meta_path.insert(0, _RecordTrlBatches())
    """
)


def cli(argv: list[str]) -> int:
    """Run `tinyllava-hf build` / `set-template` through their parsers, as the command line does."""
    from tinyllava_hf.train.build_cli import make_build_parser, make_set_template_parser

    factory = {"build": make_build_parser, "set-template": make_set_template_parser}[argv[0]]
    args = factory().parse_args(argv[1:])
    return args.func(args)


def trl_rows(rows: list[dict], data_root: Path) -> list[dict]:
    """Our normalised rows in TRL's conversational vision format: `messages` with content blocks (one
    `{"type": "image"}` per image, where the marker was) and `images` as absolute file paths."""
    return [
        {
            "messages": json.loads(row["messages_json"]),
            "images": [
                str((data_root / image).resolve()) if not Path(image).is_absolute() else image
                for image in row["images"]
            ],
        }
        for row in rows
    ]


@pytest.fixture(scope="module")
def samples(parts):
    from tinyllava_hf.train.data import load_dataset_files

    dataset, _ = load_dataset_files([parts["finetune"]], image_folder=parts["data"])
    rows = [dataset[i] for i in range(8)]
    return trl_rows(rows, parts["data"])


@pytest.fixture(scope="module")
def stage0(parts, tmp_path_factory):
    """`tinyllava-hf build` with the pretrain template, then `set-template llama` for the finetune stage."""
    out = tmp_path_factory.mktemp("build") / "stage0"
    argv = ["build", "--llm", str(parts["llm"]), "--vision-tower", str(parts["siglip"]), "--connector", "mlp2x_gelu"]
    assert cli([*argv, "--template", "pretrain", str(out)]) == 0
    return out


@pytest.mark.parametrize("recipe", TRL_RECIPES, ids=lambda path: path.relative_to(REPO / "recipes").as_posix())
def test_stock_trl_recipes_parse_with_trls_own_parser(recipe):
    from trl.scripts.sft import make_parser

    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        ["--config", str(recipe)], fail_with_unknown_args=True
    )
    raw = yaml.safe_load(recipe.read_text())
    assert training_args.assistant_only_loss is True and raw["assistant_only_loss"] is True
    assert training_args.trust_remote_code is True  # the model and processor are remote code
    assert model_args.model_name_or_path and script_args.dataset_name
    assert not training_args.packing and not training_args.padding_free  # TRL refuses both for vision data


def test_build_writes_a_stage0_checkpoint_and_set_template_switches_it(stage0, parts, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tinyllava_hf.train.arguments import ModelArguments
    from tinyllava_hf.train.build import build_from_parts

    model = AutoModelForImageTextToText.from_pretrained(stage0, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(stage0, trust_remote_code=True)
    assert processor.chat_template["default"] == get_chat_template("pretrain")
    assert (stage0 / "README.md").is_file() and (stage0 / "modeling_tinyllava.py").is_file()
    # The same build as a recipe's first stage: with the same seed, the same weights (the connector's init included).
    from transformers import set_seed

    set_seed(42)
    built, _ = build_from_parts(
        ModelArguments(llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="pretrain")
    )
    saved = model.state_dict()
    assert all((saved[name] == value).all() for name, value in built.state_dict().items())

    copy = tmp_path / "copy"
    assert (
        cli(
            [
                "build",
                "--llm",
                str(parts["llm"]),
                "--vision-tower",
                str(parts["siglip"]),
                "--connector",
                "mlp2x_gelu",
                "--template",
                "nope",
                str(copy),
            ]
        )
        == 1
    )
    assert "nope" in capsys.readouterr().err and not copy.exists()

    import shutil

    shutil.copytree(stage0, copy)
    assert cli(["set-template", str(copy), "llama"]) == 0
    switched = AutoProcessor.from_pretrained(copy, trust_remote_code=True).chat_template
    assert switched["default"] == get_chat_template("llama")
    assert {name for name in switched if name != "default"} == set(list_chat_templates())  # every one kept
    assert cli(["set-template", str(copy), "vicuna"]) == 1
    assert "Unknown chat template 'vicuna'" in capsys.readouterr().err
    assert (copy / "chat_template.jinja").read_text() == get_chat_template("llama")  # a refused switch changes nothing


@pytest.mark.subprocess
def test_stock_trl_sft_trains_exactly_our_collators_tokens(stage0, samples, tmp_path):
    """The real `trl sft` CLI, two steps on the finetune recipe from `build` + `set-template llama`."""
    import shutil

    from transformers import AutoProcessor

    from tinyllava_hf.train.collator import TinyLlavaCollator

    start = Path(shutil.copytree(stage0, tmp_path / "stage1"))
    assert cli(["set-template", str(start), "llama"]) == 0
    data = tmp_path / "trl_finetune"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in samples))
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(BATCH_HOOK)
    log = tmp_path / "batches.jsonl"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "hook"), TRL_BATCH_LOG=str(log), HF_HUB_OFFLINE="1")
    command = [
        str(TRL), "sft", "--config", str(REPO / "recipes/debug/finetune/trl_sft.yaml"),
        "--model_name_or_path", str(start), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()

    processor = AutoProcessor.from_pretrained(start, trust_remote_code=True)
    collator = TinyLlavaCollator(processor, max_length=256)
    ours = {}
    for index, sample in enumerate(samples):
        encoded = collator.encode({"id": str(index), "messages": sample["messages"], "images": sample["images"]})
        ours[tuple(encoded["input_ids"].tolist())] = encoded["labels"].tolist()

    batches = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(batches) >= 2
    bos = processor.tokenizer.bos_token_id
    compared = 0
    for batch in batches:
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
            length = sum(mask)
            key = tuple(ids[:length])
            assert key in ours, "TRL tokenised a sample differently from our collator"
            assert ids[0] == bos and key.count(bos) == 1  # one BOS, from the template
            assert labels[:length] == ours[key]  # the same trained positions
            assert all(label == IGNORE_INDEX for label in labels[length:])
            assert any(label != IGNORE_INDEX for label in labels)
            compared += 1
    assert compared >= 8
