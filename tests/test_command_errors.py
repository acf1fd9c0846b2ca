"""Input mistakes of `train`, `merge-lora`, `convert`, `export-llava`, `import-llava` and `tiny-parts`, driven through
the command line (`tinyllava_hf.cli.main`) as a user makes them: each fails before any heavy work, in one or two
lines naming the problem and the fix, with exit code 1 and no traceback; outputs that overlap their source are
refused even with --overwrite; interrupted checkpoints are skipped on resume; training that would train nothing fails
up front; the CLI writes the project's model card with every named chat template."""

import json
import shutil
from pathlib import Path

import pytest

from tinyllava_hf.cli import main as cli
from tinyllava_hf.files import check_not_overlapping
from tinyllava_hf.train.checkpoints import checkpoint_problem, last_complete_checkpoint
from tinyllava_hf.train.cli import COMMON_TRAINING_OPTIONS
from tinyllava_hf.train.data import DataFileError, read_records

REPO = Path(__file__).resolve().parent.parent
PRETRAIN = REPO / "recipes" / "debug" / "pretrain" / "config_siglip_llama.yaml"
FINETUNE = REPO / "recipes" / "debug" / "finetune" / "config_full.yaml"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_error(capsys, argv, *needles: str) -> str:
    code, output = run(capsys, *argv)
    assert code == 1, output
    assert "Traceback" not in output
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, output
    for needle in needles:
        assert needle in error[0], error[0]
    return error[0]


def parts_args(parts) -> list[str]:
    return ["--llm", str(parts["llm"]), "--vision_tower", str(parts["siglip"]), "--data_path", str(parts["pretrain"])]


# ----------------------------------------------------------------------------------------------------- train inputs


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        ([], ["--model_name_or_path", "--llm"]),
        (["--config", "nope.yaml"], ["nope.yaml does not exist"]),
        (["--config", str(PRETRAIN), "--lerning_rate", "1"], ["--lerning_rate", "did you mean '--learning_rate'"]),
        (["--config", str(PRETRAIN), "--llm", "no/such/llm"], ["--llm no/such/llm", "does not exist"]),
        (["--config", str(FINETUNE), "--model_name_or_path", "./missing"], ["./missing", "not exist"]),
    ],
)
def test_train_input_mistakes(capsys, argv, needles):
    assert_error(capsys, ["train", *argv], *needles)


def test_train_misspelt_recipe_key_names_the_closest(capsys, tmp_path):
    recipe = tmp_path / "config_bad.yaml"
    recipe.write_text(PRETRAIN.read_text() + "\nlearning_rat: 0.1\n")
    assert_error(capsys, ["train", "--config", str(recipe)], "'learning_rat'", "did you mean 'learning_rate'")


def test_train_missing_data_and_overlapping_output(capsys, parts, tmp_path):
    base = ["train", "--config", str(PRETRAIN), *parts_args(parts), "--image_folder", str(parts["data"])]
    assert_error(capsys, [*base, "--data_path", str(tmp_path / "none.json")], "none.json does not exist")
    # Saving into a part folder would overwrite the model being trained.
    assert_error(capsys, [*base, "--output_dir", str(parts["llm"])], "same folder as the --llm folder")
    assert_error(capsys, [*base, "--output_dir", str(parts["llm"] / "out")], "inside the --llm folder")


def test_train_unknown_template_lists_the_known_ones(capsys, parts, tmp_path):
    argv = ["train", "--config", str(PRETRAIN), *parts_args(parts), "--image_folder", str(parts["data"])]
    argv += ["--output_dir", str(tmp_path / "out"), "--template", "lamma"]
    assert_error(
        capsys, argv, "--template 'lamma' is not a known chat template", "pretrain, phi", "did you mean 'llama'"
    )


def test_train_help_is_short_and_help_all_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    short = capsys.readouterr().out
    assert "--tune_llm" in short and "--help-all" in short and "--per_device_train_batch_size" in short
    assert len(short.splitlines()) < 250
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help-all"])
    assert exit_info.value.code == 0
    full = capsys.readouterr().out
    assert "--adam_beta1" in full and len(full.splitlines()) > len(short.splitlines())


def test_common_training_options_are_sft_config_fields():
    from dataclasses import fields

    from trl import SFTConfig

    names = {field.name for field in fields(SFTConfig)}
    assert set(COMMON_TRAINING_OPTIONS) <= names


# ------------------------------------------------------------------------------------------------------- data files


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("bad.json", '[\n  {"id": 1},\n  {"id": 2,, }\n]\n', ["bad.json, line 3 column", '{"id": 2,, }']),
        ("bad.jsonl", '{"id": 1}\n{"id": 2\n', ["bad.jsonl, line 2 column", '{"id": 2']),
        ("empty.json", "", ["empty.json is empty"]),
    ],
)
def test_malformed_data_names_file_line_and_text(tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFileError) as info:
        read_records(path)
    for needle in needles:
        assert needle in str(info.value)


def finetune_with_long_prompts(parts, tmp_path: Path) -> Path:
    """The finetune data with every question padded far beyond 128 tokens: no answer survives max_length 128."""
    records = json.loads(Path(parts["finetune"]).read_text())
    for record in records:
        turns = record.get("conversations") or record.get("messages")
        first = turns[0]
        key = "value" if "value" in first else "content"
        first[key] = first[key] + " please" * 300
    path = tmp_path / "long.json"
    path.write_text(json.dumps(records))
    return path


def test_training_that_trains_nothing_fails_up_front(capsys, parts, tmp_path):
    long = finetune_with_long_prompts(parts, tmp_path)
    base = ["train", "--config", str(PRETRAIN), *parts_args(parts), "--image_folder", str(parts["data"])]
    base += ["--data_path", str(long), "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    error = assert_error(capsys, [*base, "--max_length", "128", "--template", "llama"], "Nothing to train on", "0 of")
    assert "whole answer beyond max_length" in error and "Raise --max_length" in error
    # Every sample over length and dropped (placeholders beyond max_length): no bare StopIteration.
    error = assert_error(capsys, [*base, "--max_length", "8", "--template", "llama"], "Nothing to train on")
    assert "dropped: media placeholders beyond max_length" in error
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------- conversion commands


def test_conversions_refuse_missing_and_wrong_kinds(capsys, parts, tmp_path):
    out = str(tmp_path / "out")
    assert_error(capsys, ["export-llava", "nonexist", out], "no folder 'nonexist'", "hf download")
    assert_error(capsys, ["export-llava", str(tmp_path / "nope"), out], "does not exist")
    assert_error(capsys, ["import-llava", str(parts["llm"]), out], "'llama'", "not a native transformers llava")
    assert_error(capsys, ["convert", str(parts["siglip"]), out], "not an upstream TinyLLaVA Factory checkpoint")
    assert_error(capsys, ["convert", str(parts["data"]), out], "no config.json")
    assert not Path(out).exists()


@pytest.mark.parametrize("command", ["convert", "export-llava", "import-llava", "merge-lora"])
def test_outputs_overlapping_their_source_are_refused_even_with_overwrite(capsys, tmp_path, command):
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "tinyllava", "llm_model_name_or_path": "x"}')
    (source / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
    before = sorted(path.name for path in source.iterdir())
    for out in (source, source / "inside", tmp_path):
        assert_error(capsys, [command, str(source), str(out), "--overwrite"], str(source), "choose another output")
    assert sorted(path.name for path in source.iterdir()) == before


def test_check_not_overlapping(tmp_path):
    (tmp_path / "a").mkdir()
    check_not_overlapping(tmp_path / "a", tmp_path / "b")
    check_not_overlapping("org/hub-id", tmp_path / "b")  # not a local path: nothing to overlap
    for dst, problem in ((tmp_path / "a", "same folder"), (tmp_path / "a" / "b", "inside"), (tmp_path, "contains")):
        with pytest.raises(FileExistsError, match=problem):
            check_not_overlapping(tmp_path / "a", dst)


def test_merge_lora_refuses_non_adapters_and_existing_outputs(capsys, parts, tmp_path):
    assert_error(capsys, ["merge-lora", str(parts["llm"]), str(tmp_path / "m")], "not a LoRA adapter folder")
    assert_error(capsys, ["merge-lora", str(tmp_path / "none"), str(tmp_path / "m")], "does not exist")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    assert_error(capsys, ["merge-lora", str(adapter), str(tmp_path / "m")], "base model", "does not exist")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(parts["llm"])}))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert_error(capsys, ["merge-lora", str(adapter), str(existing)], "already exists", "overwrite")
    assert (existing / "keep.txt").is_file()


def test_tiny_parts_refuses_a_non_empty_folder_without_overwrite(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    assert_error(capsys, ["tiny-parts", str(tmp_path)], "already exists", "overwrite")


# ----------------------------------------------------------------------------------------- resuming and the card


def test_incomplete_checkpoints_are_detected(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    assert "trainer_state.json" in checkpoint_problem(checkpoint)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    assert "no weights" in checkpoint_problem(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # header past the end
    assert "truncated" in checkpoint_problem(checkpoint)
    assert last_complete_checkpoint(tmp_path) is None


def test_resume_skips_a_checkpoint_whose_save_was_killed(capsys, parts, tmp_path, caplog):
    """A real run saving every 2 steps, its newest checkpoint then cut as `kill -9` mid-save leaves it: the rerun
    resumes from the previous complete checkpoint and finishes; the project's card replaces TRL's."""
    out = tmp_path / "run"
    argv = ["train", "--config", str(PRETRAIN), *parts_args(parts), "--image_folder", str(parts["data"])]
    argv += ["--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "2"]
    argv += ["--save_total_limit", "5"]
    code, output = run(capsys, *argv)
    assert code == 0, output
    assert f"Saved the model, processor and model card to {out}" in output
    card = (out / "README.md").read_text()
    assert "fine-tuned version of" not in card and "config_siglip_llama.yaml" in card and "pretrain" in card
    assert (
        not (out / "checkpoint-2" / "README.md").exists()
        or "fine-tuned version" not in (out / "checkpoint-2" / "README.md").read_text()
    )
    # Named templates are kept (D): the checkpoint's processor can select any by name.
    assert (out / "additional_chat_templates" / "phi.jinja").is_file()

    # The newest checkpoint as a kill during its save leaves it: weights cut short, no trainer_state.json.
    newest = out / "checkpoint-4"
    (newest / "trainer_state.json").unlink()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for name in ("model.safetensors", "README.md", "trainer_state.json"):
        (out / name).unlink()
    caplog.clear()
    code, output = run(capsys, *argv)
    assert code == 0, output
    assert any("Skipping incomplete checkpoint" in record.message for record in caplog.records)
    assert any(f"Resuming from {out / 'checkpoint-2'}" in record.getMessage() for record in caplog.records)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    shutil.rmtree(out)
