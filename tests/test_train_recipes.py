"""Recipes and the `train` / `merge-lora` command line: every recipe YAML parses against the launcher's arguments
(without training), unknown keys are rejected, and the debug pretrain -> finetune chain runs through the CLI."""

import argparse
from pathlib import Path

import pytest
import yaml

from tinyllava_hf.train.arguments import DataArguments, ModelArguments
from tinyllava_hf.train.cli import register
from tinyllava_hf.train.tiny_parts import save_tiny_parts
from tinyllava_hf.train.trainer import make_parser

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("**/config_*.yaml"))


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tinyllava-hf")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_there_are_debug_recipes_for_both_stages():
    names = {path.relative_to(RECIPES).as_posix() for path in RECIPE_FILES}
    assert "debug/pretrain/config_siglip_llama.yaml" in names
    assert {"debug/finetune/config_full.yaml", "debug/finetune/config_lora.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda path: path.relative_to(RECIPES).as_posix())
def test_recipe_parses_against_the_launcher_arguments(recipe):
    raw = yaml.safe_load(recipe.read_text())
    # GPU recipes ask for bf16, which TrainingArguments refuses without a GPU: validate them as if on CPU.
    overrides = [] if raw.get("use_cpu") else ["--use_cpu", "true"]
    model_args, data_args, training_args = make_parser().parse_args_and_config(["--config", str(recipe), *overrides])
    assert isinstance(model_args, ModelArguments) and isinstance(data_args, DataArguments)
    # Every key landed somewhere (TrlParser rejects unknown ones), with its value.
    assert training_args.output_dir == raw["output_dir"]
    assert data_args.data_path == (raw["data_path"] if isinstance(raw["data_path"], list) else [raw["data_path"]])
    if recipe.parent.parent.name == "debug":
        # CPU-sized: fp32 (SFTConfig defaults bf16 to True), no reporting, bounded length.
        assert training_args.bf16 is False and training_args.use_cpu is True
        assert training_args.report_to in ([], ["none"], "none")
        assert training_args.max_length <= 512
        assert "python -m tinyllava_hf.train.tiny_parts" in recipe.read_text()  # documents how to make the parts


def test_unknown_recipe_key_is_an_error(tmp_path):
    recipe = tmp_path / "config_bad.yaml"
    text = (RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml").read_text()
    recipe.write_text(text + "\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


def test_cli_overrides_win_over_the_recipe():
    recipe = RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml"
    model_args, _, training_args = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--learning-rate", "0.5", "--tune_llm", "full", "--max_steps", "2"]
    )
    assert training_args.learning_rate == 0.5 and training_args.max_steps == 2 and model_args.tune_llm == "full"


def test_cli_train_forwards_every_option_verbatim_and_merge_lora_parses():
    args = cli(["train", "--config", "r.yaml", "--learning_rate", "1e-3", "-x", "--bf16", "false"])
    assert args.train_argv == ["--config", "r.yaml", "--learning_rate", "1e-3", "-x", "--bf16", "false"]
    assert callable(args.func)
    args = cli(["merge-lora", "adapter", "merged", "--dtype", "bfloat16"])
    assert (args.adapter_dir, args.out_dir, args.base_model, args.dtype) == ("adapter", "merged", None, "bfloat16")


def test_cli_train_help_lists_our_and_trl_options(capsys):
    args = cli(["train", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--tune_llm" in out and "--on_overlength" in out and "--per_device_train_batch_size" in out


def test_debug_pretrain_then_finetune_through_the_cli(tmp_path):
    parts = save_tiny_parts(tmp_path / "parts")
    data = ["--image_folder", str(parts["data"]), "--max_steps", "2"]
    pretrain = tmp_path / "pretrain"
    args = cli(
        [
            "train",
            "--config",
            str(RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml"),
            "--llm",
            str(parts["llm"]),
            "--vision_tower",
            str(parts["siglip"]),
            "--data_path",
            str(parts["pretrain"]),
            "--output_dir",
            str(pretrain),
            *data,
        ]
    )
    assert args.func(args) == 0
    assert (pretrain / "model.safetensors").is_file() and "pretrain" in (pretrain / "chat_template.jinja").read_text()

    finetune = tmp_path / "finetune"
    args = cli(
        [
            "train",
            "--config",
            str(RECIPES / "debug" / "finetune" / "config_full.yaml"),
            "--model_name_or_path",
            str(pretrain),
            "--data_path",
            str(parts["finetune"]),
            "--output_dir",
            str(finetune),
            *data,
        ]
    )
    assert args.func(args) == 0
    assert (finetune / "model.safetensors").is_file()
    assert "ASSISTANT:" in (finetune / "chat_template.jinja").read_text()  # the llama template replaced pretrain's
