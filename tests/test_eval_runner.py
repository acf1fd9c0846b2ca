"""Tests for batched, resumable benchmark inference (run_eval), the `eval` CLI, and the lmms-eval adapter."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import tinyllava_hf.cli
from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.eval.loaders import EvalDataError
from tinyllava_hf.eval.runner import BLANK_IMAGE_TAG, ImageLoadError, read_answer_file, run_eval
from tinyllava_hf.eval.tasks import SHORT_ANSWER
from tinyllava_hf.testing_utils import random_image, scramble, tiny_config, tiny_processor

# Different lengths, so batches really are left-padded; one text-only question mixes image and text rows.
QUESTIONS = [
    {"question_id": 10, "image": "0.png", "text": "What shape?"},
    {"question_id": 11, "image": "1.png", "text": "What color is the shape in the middle of this picture?"},
    {"question_id": "q12", "text": "Is there a triangle?"},
    {"question_id": 13, "image": "sub/3.png", "text": "Does this image contain a blue rectangle or a circle?"},
    {"question_id": 14, "image": "4.png", "text": "Shape?"},
    {"question_id": 15, "image": "5.png", "text": "Is there a red triangle in the picture?"},
    {"question_id": 16, "image": "6.png", "text": "Which colour?"},
]
RUN = dict(task="gqa", max_new_tokens=5, progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_and_processor() -> tuple[Any, Any]:
    config = tiny_config("llama", "siglip", "mlp2x_gelu")
    processor = tiny_processor(config)
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.3)
    return model, processor


@pytest.fixture
def bench(tmp_path: Path) -> tuple[Path, Path]:
    """A LLaVA question file and its image folder (images of different sizes)."""
    images = tmp_path / "images"
    for index, question in enumerate(QUESTIONS):
        if "image" in question:
            path = images / question["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            random_image(index, size=(20 + 3 * index, 18 + index)).save(path)
    return write_jsonl(tmp_path / "questions.jsonl", QUESTIONS), images


class GenerateSpy:
    """Wraps ``model.generate`` (an instance attribute shadows the method) to count rows and keep the inputs."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.original = model.generate
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.original(**kwargs)

    @property
    def rows(self) -> int:
        return sum(call["input_ids"].shape[0] for call in self.calls)

    def __enter__(self) -> GenerateSpy:
        self.model.generate = self
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.generate


def answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------------------------
# Answers, batching
# --------------------------------------------------------------------------------------------------------------------


def test_one_answer_per_question_in_llava_format(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    output = tmp_path / "out" / "PRED.jsonl"
    result = run_eval(model, processor, data=questions, output=output, image_folder=images, batch_size=4, **RUN)
    rows = answers(output)
    assert [row["question_id"] for row in rows] == [q["question_id"] for q in QUESTIONS]  # ids and types kept
    assert all(set(row) == {"question_id", "prompt", "text", "model_id", "metadata"} for row in rows)
    assert rows[0]["prompt"] == f"What shape?\n{SHORT_ANSWER}"  # the task's suffix, as LLaVA's files have it
    assert {row["model_id"] for row in rows} == {"model"}
    assert all(isinstance(row["text"], str) and row["text"] == row["text"].strip() for row in rows)
    assert (result.num_questions, result.num_generated, result.num_skipped) == (7, 7, 0)
    assert processor.tokenizer.padding_side == "right"  # the caller's processor is left as it was


def test_batched_equals_unbatched(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    one, three = tmp_path / "bs1.jsonl", tmp_path / "bs3.jsonl"
    run_eval(model, processor, data=questions, output=one, image_folder=images, batch_size=1, **RUN)
    with GenerateSpy(model) as spy:
        run_eval(model, processor, data=questions, output=three, image_folder=images, batch_size=3, **RUN)
    assert [call["input_ids"].shape[0] for call in spy.calls] == [3, 3, 1]
    assert (spy.calls[0]["attention_mask"][:, 0] == 0).any()  # left padding really happened
    assert one.read_bytes() == three.read_bytes()
    # The comparison only means something if different questions get different answers.
    assert len({row["text"] for row in answers(one)}) > 1


def test_limit_and_max_new_tokens(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    output = tmp_path / "p.jsonl"
    with GenerateSpy(model) as spy:
        result = run_eval(model, processor, data=questions, output=output, image_folder=images, limit=2, **RUN)
    assert [row["question_id"] for row in answers(output)] == [10, 11]
    assert result.num_questions == 2
    assert spy.calls[0]["max_new_tokens"] == 5 and spy.calls[0]["do_sample"] is False


# --------------------------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------------------------


def test_rerun_generates_only_missing_answers(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    output = tmp_path / "PRED.jsonl"
    run_eval(model, processor, data=questions, output=output, image_folder=images, batch_size=2, **RUN)
    complete = output.read_text()
    lines = complete.splitlines(keepends=True)
    output.write_text("".join(lines[1::2]))  # keep every other line: 3 of 7

    with GenerateSpy(model) as spy:
        result = run_eval(model, processor, data=questions, output=output, image_folder=images, batch_size=2, **RUN)
    assert spy.rows == 4  # only the deleted answers
    assert (result.num_skipped, result.num_generated) == (3, 4)
    assert output.read_text() == complete  # same content, same (question) order

    with GenerateSpy(model) as spy:
        result = run_eval(model, processor, data=questions, output=output, image_folder=images, batch_size=2, **RUN)
    assert spy.calls == [] and result.num_generated == 0
    assert output.read_text() == complete


def test_truncated_last_line_is_dropped(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    output = tmp_path / "PRED.jsonl"
    run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    complete = output.read_bytes()
    output.write_bytes(complete[:-25])  # a run killed while writing the last answer

    with pytest.warns(UserWarning, match="incomplete last line"), GenerateSpy(model) as spy:
        result = run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    assert spy.rows == 1 and result.num_dropped_lines == 1
    assert output.read_bytes() == complete


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    output = tmp_path / "PRED.jsonl"
    good = json.dumps({"question_id": 1, "text": "a"}) + "\n"
    output.write_text(good + "{not json\n" + good)
    with pytest.raises(EvalDataError, match=r"PRED\.jsonl line 2 is not a JSON answer record"):
        read_answer_file(output)
    # The same damage on the last line is a crash artefact: dropped, and the file repaired.
    output.write_text(good + "{not json\n")
    with pytest.warns(UserWarning, match="line 2 is corrupt"):
        existing = read_answer_file(output)
    assert existing.records == [{"question_id": 1, "text": "a"}] and existing.dropped == 1
    assert output.read_text() == good


def test_resume_refuses_another_model_or_prompt(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    output = tmp_path / "PRED.jsonl"
    run_eval(model, processor, data=questions, output=output, image_folder=images, limit=2, **RUN)
    before = output.read_text()
    with pytest.raises(EvalDataError, match="holds answers of model_id 'model', this run is 'other'"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, model_id="other", **RUN)
    # Same ids under another task's prompt (no suffix for MM-Vet): not silently mixed.
    with pytest.raises(EvalDataError, match="question_id 10 was answered with another prompt"):
        run_eval(model, processor, "mmvet", questions, output, image_folder=images, max_new_tokens=5, progress=False)
    assert output.read_text() == before


def test_repeated_ids_are_told_apart_by_prompt(model_and_processor, bench, tmp_path: Path) -> None:
    # LLaVA's MME file gives both questions of an image the same question_id.
    model, processor = model_and_processor
    _, images = bench
    questions = write_jsonl(
        tmp_path / "llava_mme.jsonl",
        [
            {"question_id": "artwork/0.png", "image": "0.png", "text": "Is this a painting?"},
            {"question_id": "artwork/0.png", "image": "0.png", "text": "Is this a photograph of a dog?"},
        ],
    )
    output = tmp_path / "mme.jsonl"
    run_eval(model, processor, "mme", questions, output, image_folder=images, max_new_tokens=3, progress=False)
    assert len(answers(output)) == 2
    with GenerateSpy(model) as spy:
        run_eval(model, processor, "mme", questions, output, image_folder=images, max_new_tokens=3, progress=False)
    assert spy.calls == []


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def test_missing_image_names_file_and_question(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    (images / "5.png").unlink()
    output = tmp_path / "PRED.jsonl"
    with GenerateSpy(model) as spy, pytest.raises(ImageLoadError, match=r"5\.png not found for question_id 15"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    assert spy.calls == []  # checked before any generation
    assert not output.exists()


def test_unreadable_image_names_file_and_question(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    (images / "4.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match=r"4\.png for question_id 14 cannot be read"):
        run_eval(model, processor, data=questions, output=tmp_path / "p.jsonl", image_folder=images, **RUN)


def test_blank_image_mode(model_and_processor, bench, tmp_path: Path) -> None:
    model, processor = model_and_processor
    questions, images = bench
    with GenerateSpy(model) as real:
        run_eval(model, processor, data=questions, output=tmp_path / "real.jsonl", image_folder=images, **RUN)
    blind_output = tmp_path / "blind.jsonl"
    with GenerateSpy(model) as blind:
        run_eval(model, processor, data=questions, output=blind_output, image_folder=images, blank_image=True, **RUN)
    real_pixels, blind_pixels = real.calls[0]["pixel_values"], blind.calls[0]["pixel_values"]
    assert real_pixels.shape == blind_pixels.shape  # same number of images, same processing
    assert not torch.equal(real_pixels, blind_pixels)
    # Every blank image is one uniform colour: each channel is constant.
    flat = blind_pixels.flatten(2)
    assert torch.equal(flat, flat[:, :, :1].expand_as(flat))
    assert {row["model_id"] for row in answers(blind_output)} == {"model" + BLANK_IMAGE_TAG}
    # A blind run never resumes into (and mixes with) a file of real answers.
    real_output = tmp_path / "real.jsonl"
    with pytest.raises(EvalDataError, match="model_id"):
        run_eval(model, processor, data=questions, output=real_output, image_folder=images, blank_image=True, **RUN)


# --------------------------------------------------------------------------------------------------------------------
# CLI, end to end on the real easy-VQA data
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    """``tinyllava-hf``, whose command registry builds the ``eval`` parser with ``make_eval_parser``."""
    assert tinyllava_hf.cli.COMMANDS_BY_NAME["eval"].parser_factory == "tinyllava_hf.eval.cli:make_eval_parser"
    return tinyllava_hf.cli.main


def test_cli_run_score_report_on_easy_vqa(cli, model_and_processor, tmp_path: Path, capsys) -> None:
    model, processor = model_and_processor
    model_dir = tmp_path / "tiny-easy"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    output = tmp_path / "runs" / "PRED.jsonl"
    argv = ["eval", "run", "--model", str(model_dir), "--task", "easy_vqa", "--limit", "6", "--seed", "0"]
    argv += ["--output", str(output), "--batch-size", "4", "--max-new-tokens", "4", "--device", "cpu"]
    assert cli([*argv, "--no-progress"]) == 0
    rows = answers(output)
    assert len(rows) == 6 and {row["model_id"] for row in rows} == {"tiny-easy"}
    data_dir = tmp_path / "runs" / "easy_vqa_test_n6_seed0"
    questions = [json.loads(line) for line in (data_dir / "questions.jsonl").read_text().splitlines()]
    assert [row["question_id"] for row in rows] == [q["question_id"] for q in questions]
    assert "score with: tinyllava-hf eval score --task easy_vqa" in capsys.readouterr().out

    result_path = tmp_path / "runs" / "RESULT.json"
    argv = ["eval", "score", "--task", "easy_vqa", "--predictions", str(output)]
    assert cli([*argv, "--annotations", str(data_dir / "annotations.jsonl"), "--output", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["task"] == "easy_vqa" and result["num_scored"] == 6
    assert 0.0 <= result["metrics"]["accuracy"] <= 100.0

    report_path = tmp_path / "REPORT.md"
    assert cli(["eval", "report", str(result_path), "--output", str(report_path)]) == 0
    table = report_path.read_text()
    assert table.startswith("| Model | Task | Metric | Value |")
    assert "| tiny-easy | easy_vqa | accuracy |" in table
    assert table in capsys.readouterr().out


def test_cli_errors_and_task_list(cli, tmp_path: Path, capsys) -> None:
    assert cli(["eval", "tasks"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("vqav2", "scienceqa", "mmmu", "easy_vqa"))
    # --data is needed for every task but easy_vqa; the model is not even loaded.
    assert cli(["eval", "run", "--model", "nowhere", "--task", "gqa", "--output", str(tmp_path / "p.jsonl")]) == 2
    assert "--data is required for gqa" in capsys.readouterr().err
    assert cli(["eval", "run", "--model", "nowhere", "--task", "GQA", "--output", "p.jsonl"]) == 1
    assert "unknown task 'GQA'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# lmms-eval adapter (against a minimal stand-in for lmms_eval.api.model.lmms)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_lmms_eval(monkeypatch: pytest.MonkeyPatch):
    """Just enough of lmms-eval 0.7.3's ``lmms`` base class and ``Instance`` for the adapter."""

    class CacheHook:
        def add_partial(self, *args: Any) -> None:
            pass

    class lmms:  # noqa: N801 (lmms-eval's name)
        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict, self.cache_hook = 0, 1, {}, CacheHook()

        @property
        def rank(self) -> int:
            return self._rank

    modules = {name: types.ModuleType(name) for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model")}
    modules["lmms_eval.api.model"].lmms = lmms
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    plugin = __import__("tinyllava_hf.eval.lmms_eval_plugin", fromlist=["_CLASS"])
    monkeypatch.setattr(plugin, "_CLASS", None)  # rebuild against the stand-in, and forget it afterwards
    return plugin


def test_lmms_eval_adapter(fake_lmms_eval, model_and_processor, tmp_path: Path) -> None:
    model, processor = model_and_processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    adapter_class = fake_lmms_eval.TinyLlavaLMM
    assert adapter_class.__module__ == "tinyllava_hf.eval.lmms_eval_plugin" and adapter_class.is_simple
    docs = [{"image": random_image(i), "question": q["text"]} for i, q in enumerate(QUESTIONS[:3])]

    def request(index: int, gen_kwargs: dict[str, Any]) -> Any:
        visual = (lambda doc: [doc["image"]]) if index != 2 else None  # a text-only request too
        args = ("<image>\n" + docs[index]["question"], gen_kwargs, visual, index, "task", "test")
        return types.SimpleNamespace(args=args)

    greedy = {"max_new_tokens": 4, "temperature": 0, "until": ["\n\n"]}
    outputs = {}
    for batch_size in (1, 3):
        lm = adapter_class(pretrained=str(tmp_path), device="cpu", batch_size=batch_size)
        lm.task_dict = {"task": {"test": docs}}
        outputs[batch_size] = lm.generate_until([request(i, greedy) for i in range(3)])
    assert outputs[1] == outputs[3] and len(outputs[1]) == 3

    scores = lm.loglikelihood([types.SimpleNamespace(args=("What shape?", "circle", None, 0, "task", "test"))])
    assert len(scores) == 1 and scores[0][0] < 0 and isinstance(scores[0][1], bool)
    with pytest.raises(TypeError, match="unknown tinyllava_hf model_args: colour"):
        adapter_class(pretrained=str(tmp_path), device="cpu", colour="red")


def test_lmms_eval_plugin_imports_without_lmms_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = __import__("tinyllava_hf.eval.lmms_eval_plugin", fromlist=["_CLASS"])
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # make "import lmms_eval" fail even if it is installed
    monkeypatch.setattr(plugin, "_CLASS", None)
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        plugin.TinyLlavaLMM  # noqa: B018
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        plugin.model_manifests()
