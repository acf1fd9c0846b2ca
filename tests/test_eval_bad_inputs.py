"""Evaluation inputs that used to pass silently, and the errors they now get (issues 14 item 7, 17 items 2-4).

One place lists every guarded eval input:

* predictions: a question answered twice, answers of two models (or two runs) in one file;
* annotations: a repeated id in an id -> record JSON object, a problem listed twice in a ScienceQA split;
* answer files on resume: two answers to one question, another model (weights), template, task or setting, a file
  without fingerprints, a lost sidecar;
* results: named after their predictions, never overwriting another predictions file's result;
* chat templates: an unknown name lists the checkpoint's names instead of being rendered as text;
* the command line: missing files and folders, a model path that does not exist, a folder that is not a checkpoint,
  each one ``error:`` line, exit code 1, no traceback.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import tinyllava_hf.cli
from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.eval import EvalDataError, load_annotations, score_file
from tinyllava_hf.eval.fingerprint import sidecar_path, weights_digest
from tinyllava_hf.eval.runner import ChatTemplateError, resolve_chat_template, run_eval
from tinyllava_hf.loading import ModelLoadError, looks_like_path, resolve_model_source
from tinyllava_hf.testing_utils import random_image, scramble, tiny_config, tiny_processor

QUESTIONS = [
    {"question_id": 1, "image": "0.png", "text": "What shape?"},
    {"question_id": 2, "image": "1.png", "text": "What color?"},
    {"question_id": 3, "text": "Is there a triangle?"},
]
RUN = dict(task="gqa", max_new_tokens=3, progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any, Any]:
    """A tiny model, its processor (a dict of named templates), and a second model with other weights."""
    config = tiny_config("llama", "siglip", "mlp2x_gelu")
    processor = tiny_processor(config)
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), seed=0, std=0.3)
    other = scramble(TinyLlavaForConditionalGeneration(config).eval(), seed=1, std=0.3)
    return model, processor, other


@pytest.fixture
def bench(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        random_image(index).save(images / f"{index}.png")
    return write_jsonl(tmp_path / "questions.jsonl", QUESTIONS), images


@pytest.fixture
def answered(tiny, bench, tmp_path: Path) -> Path:
    """``answers.jsonl``: every question of ``bench`` answered by the first tiny model."""
    model, processor, _ = tiny
    questions, images = bench
    output = tmp_path / "answers.jsonl"
    run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    return output


@pytest.fixture
def gqa(tmp_path: Path) -> Path:
    annotations = tmp_path / "testdev_balanced_questions.json"
    annotations.write_text(json.dumps({"1": {"answer": "yes"}, "2": {"answer": "dog"}}))
    return annotations


# --------------------------------------------------------------------------------------------------------------------
# Predictions (issue 14 item 7)
# --------------------------------------------------------------------------------------------------------------------


def test_score_refuses_a_question_answered_twice(gqa: Path, tmp_path: Path) -> None:
    predictions = write_jsonl(
        tmp_path / "p.jsonl",
        [{"question_id": "1", "text": "no"}, {"question_id": "2", "text": "dog"}, {"question_id": 1, "text": "yes"}],
    )
    with pytest.raises(EvalDataError, match=r"p\.jsonl: question_id 1 is answered twice \(line 1 and line 3\)"):
        score_file("gqa", predictions, gqa)
    assert not (tmp_path / "p.result.json").exists()
    # The same id asked with two prompts still matches one GQA question: refused too, not "first one wins".
    write_jsonl(
        predictions,
        [{"question_id": "1", "prompt": "a?", "text": "no"}, {"question_id": "1", "prompt": "b?", "text": "yes"}],
    )
    with pytest.raises(EvalDataError, match="1 predictions answer a question that already has an answer"):
        score_file("gqa", predictions, gqa)


def test_score_keeps_shared_ids_with_different_questions(tmp_path: Path) -> None:
    # LLaVA's MME file gives both questions of an image one question_id: that is not a duplicate.
    gt = write_jsonl(
        tmp_path / "mme_gt.jsonl",
        [
            {"question_id": "artwork/1.jpg", "question": "Is it a painting?", "answer": "Yes"},
            {"question_id": "artwork/1.jpg", "question": "Is it a photo?", "answer": "No"},
        ],
    )
    predictions = write_jsonl(
        tmp_path / "mme.jsonl",
        [
            {"question_id": "artwork/1.jpg", "prompt": "Is it a painting?", "text": "Yes"},
            {"question_id": "artwork/1.jpg", "prompt": "Is it a photo?", "text": "No"},
        ],
    )
    assert score_file("mme", predictions, gt)["num_scored"] == 2


def test_score_refuses_two_models_or_runs_in_one_file(gqa: Path, tmp_path: Path) -> None:
    rows = [
        {"question_id": "1", "text": "yes", "model_id": "model-a"},
        {"question_id": "2", "text": "dog", "model_id": "model-b"},
    ]
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(EvalDataError, match=r"mixes answers of 2 models \('model-a': 1 lines, 'model-b': 1 lines\)"):
        score_file("gqa", predictions, gqa)
    # Same model_id, different run fingerprints (e.g. two checkpoints saved under one folder name).
    for row, fingerprint in zip(rows, ("aaaa", "bbbb")):
        row.update(model_id="model", metadata={"fingerprint": fingerprint})
    write_jsonl(predictions, rows)
    with pytest.raises(EvalDataError, match="mixes answers of 2 eval runs"):
        score_file("gqa", predictions, gqa)


# --------------------------------------------------------------------------------------------------------------------
# Annotations and question files (siblings)
# --------------------------------------------------------------------------------------------------------------------


def test_repeated_id_in_an_annotation_object_is_refused(tmp_path: Path) -> None:
    # json.loads keeps the last of two equal keys silently: question 1 would be scored against "cat".
    annotations = tmp_path / "gqa.json"
    annotations.write_text('{"1": {"answer": "dog"}, "2": {"answer": "red"}, "1": {"answer": "cat"}}')
    with pytest.raises(EvalDataError, match=r"gqa\.json: id '1' appears twice"):
        load_annotations("gqa", annotations)
    # Repeated keys inside a record (not ids) are not this check's business.
    annotations.write_text('{"1": {"answer": "dog", "answer": "dog"}}')
    assert load_annotations("gqa", annotations)["1"]["answer"] == "dog"


def test_problem_listed_twice_in_a_scienceqa_split(tmp_path: Path) -> None:
    (tmp_path / "problems.json").write_text(json.dumps({"7": {"choices": ["a", "b"], "answer": 0}}))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["7", "7"]}))
    with pytest.raises(EvalDataError, match="problem '7' is listed twice in split 'test'"):
        load_annotations("scienceqa", tmp_path)


def test_question_file_with_a_repeated_question(tiny, bench, tmp_path: Path) -> None:
    model, processor, _ = tiny
    _, images = bench
    questions = write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[2], QUESTIONS[2]])
    with pytest.raises(EvalDataError, match="with the same prompt also appears at"):
        run_eval(model, processor, data=questions, output=tmp_path / "p.jsonl", image_folder=images, **RUN)


# --------------------------------------------------------------------------------------------------------------------
# Resume (issue 17 item 2)
# --------------------------------------------------------------------------------------------------------------------


def test_answers_carry_a_fingerprint_and_a_sidecar(tiny, answered: Path) -> None:
    model, _, _ = tiny
    output = answered
    fingerprints = {row["metadata"]["fingerprint"] for row in lines(output)}
    sidecar = json.loads(sidecar_path(output).read_text())
    assert fingerprints == {sidecar["fingerprint"]} and len(sidecar["fingerprint"]) == 16
    components = sidecar["components"]
    assert components["model"]["weights"] == weights_digest(model)
    assert components["task"]["name"] == "gqa"
    assert components["generation"] == {"max_new_tokens": 3, "greedy": True, "blank_image": False, "dtype": "float32"}
    assert sidecar["model_id"] == "model"


def test_resume_refuses_another_model_with_the_same_model_id(tiny, bench, answered: Path) -> None:
    # The report: a second model scored into the same file "resumed" 50 answers of the first one.
    _, processor, other = tiny
    questions, images = bench
    output = answered
    before = output.read_bytes()
    message = r"answers\.jsonl was written by a different model \(weights differ\); use a new --output or delete it"
    with pytest.raises(EvalDataError, match=message):
        run_eval(other, processor, data=questions, output=output, image_folder=images, **RUN)
    assert output.read_bytes() == before


def test_resume_refuses_other_settings_and_says_which(tiny, bench, tmp_path: Path) -> None:
    model, processor, _ = tiny
    questions, images = bench
    output = tmp_path / "answers.jsonl"
    run_eval(model, processor, data=questions, output=output, image_folder=images, limit=2, **RUN)
    settings = {**RUN, "max_new_tokens": 4}
    with pytest.raises(EvalDataError, match=r"written by max_new_tokens 3 \(this run 4\)"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, **settings)
    with pytest.raises(EvalDataError, match="written by another chat template"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, chat_template="phi", **RUN)
    half = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(EvalDataError, match=r"weights differ.*dtype float32 \(this run bfloat16\)"):
        run_eval(half, processor, data=questions, output=output, image_folder=images, **RUN)
    # The same run resumes: only the question beyond --limit is generated.
    result = run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    assert (result.num_skipped, result.num_generated) == (2, 1)


def test_lost_sidecar_and_old_files(tiny, bench, answered: Path, tmp_path: Path) -> None:
    model, processor, other = tiny
    questions, images = bench
    output = answered
    sidecar_path(output).unlink()
    # The lines still carry the id: another model is refused, saying the sidecar is missing...
    with pytest.raises(EvalDataError, match=r"another run \(fingerprint .*answers\.jsonl\.meta\.json.* is missing"):
        run_eval(other, processor, data=questions, output=output, image_folder=images, **RUN)
    # ... and the same one resumes and writes the sidecar again.
    assert run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN).num_generated == 0
    assert sidecar_path(output).exists()

    # A file from before fingerprints: resuming cannot check it (refused), scoring reads it as before.
    rows = lines(output)
    for row in rows:
        row["metadata"] = {}
    write_jsonl(output, rows)
    with pytest.raises(EvalDataError, match="without a run fingerprint"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)
    annotations = tmp_path / "gqa.json"
    annotations.write_text(json.dumps({"1": {"answer": "circle"}}))
    assert score_file("gqa", output, annotations)["fingerprint"] is None


def test_resume_refuses_an_answer_file_with_a_question_twice(tiny, bench, answered: Path) -> None:
    model, processor, _ = tiny
    questions, images = bench
    output = answered
    text = output.read_text()
    output.write_text(text + text.splitlines(keepends=True)[0])
    with pytest.raises(EvalDataError, match=r"lines 1 and 4 both answer question_id 1"):
        run_eval(model, processor, data=questions, output=output, image_folder=images, **RUN)


def test_fingerprint_cost_is_small(tiny) -> None:
    # Documented in tinyllava_hf/eval/fingerprint.py: hashing runs at about 1 GB/s; a tiny model takes milliseconds.
    model, _, _ = tiny
    start = time.perf_counter()
    first = weights_digest(model)
    assert time.perf_counter() - start < 5.0
    assert weights_digest(copy.deepcopy(model)) == first


# --------------------------------------------------------------------------------------------------------------------
# Results (issue 17 item 2)
# --------------------------------------------------------------------------------------------------------------------


def test_results_are_named_after_their_predictions(gqa: Path, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "1", "text": "yes", "model_id": "a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question_id": "1", "text": "no", "model_id": "b"}])
    result_a, result_b = score_file("gqa", a, gqa), score_file("gqa", b, gqa)
    assert result_a["output"] == str(tmp_path / "a.result.json") and result_b["output"] == str(
        tmp_path / "b.result.json"
    )
    assert json.loads((tmp_path / "a.result.json").read_text())["metrics"]["accuracy"] == 100.0
    assert json.loads((tmp_path / "b.result.json").read_text())["metrics"]["accuracy"] == 0.0
    assert result_a["predictions"] == str(a) and len(result_a["predictions_sha256"]) == 64

    # Rescoring the same predictions (a resumed run added answers) updates its own result.
    write_jsonl(a, [{"question_id": "1", "text": "yes", "model_id": "a"}, {"question_id": "2", "text": "dog"}])
    assert score_file("gqa", a, gqa)["num_scored"] == 2
    # An explicit --output holding another predictions file's result is not replaced silently.
    with pytest.raises(EvalDataError, match=r"a\.result\.json already holds a result of .*a\.jsonl.*--overwrite"):
        score_file("gqa", b, gqa, tmp_path / "a.result.json")
    assert json.loads((tmp_path / "a.result.json").read_text())["model"] == "a"
    assert score_file("gqa", b, gqa, tmp_path / "a.result.json", overwrite=True)["model"] == "b"
    # Any other file is not a result to replace either.
    (tmp_path / "notes.json").write_text("my notes")
    with pytest.raises(EvalDataError, match="not a result of these predictions"):
        score_file("gqa", a, gqa, tmp_path / "notes.json")


# --------------------------------------------------------------------------------------------------------------------
# Chat templates by name (issue 17 item 3)
# --------------------------------------------------------------------------------------------------------------------


def test_unknown_template_name_lists_the_known_ones(tiny) -> None:
    _, processor, _ = tiny
    assert isinstance(processor.chat_template, dict)
    assert resolve_chat_template(processor, "phi") == processor.chat_template["phi"]
    assert resolve_chat_template(processor) == processor.chat_template["default"]
    jinja = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    assert resolve_chat_template(processor, jinja) == jinja  # template text is used as is
    with pytest.raises(ChatTemplateError, match=r"unknown chat template 'vicuna'; this checkpoint's templates: .*phi"):
        resolve_chat_template(processor, "vicuna")

    # A processor with one (string) template: transformers 5.24 renders a name as literal text, we refuse it.
    single = copy.deepcopy(processor)
    single.chat_template = processor.chat_template["llama"]
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert single.apply_chat_template(conversation, chat_template="phi", tokenize=False) == "phi"
    with pytest.raises(ChatTemplateError, match="unknown chat template 'phi'; this checkpoint's templates: default"):
        resolve_chat_template(single, "phi")


# --------------------------------------------------------------------------------------------------------------------
# Model paths (issue 17 item 4)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, is_path",
    [
        ("/does/not/exist", True),
        ("./model", True),
        ("../model", True),
        ("~/model", True),
        ("runs\\model", True),
        ("runs/a/b", True),
        ("runs/", True),
        ("model.safetensors", True),
        ("nope", False),
        ("org/name", False),
        ("bczhou/TinyLLaVA-3.1B", False),  # Hub ids may contain dots
    ],
)
def test_what_looks_like_a_path(name: str, is_path: bool) -> None:
    assert looks_like_path(name) is is_path


def test_missing_or_wrong_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="^model folder /does/not/exist does not exist$"):
        resolve_model_source("/does/not/exist")
    assert resolve_model_source("org/name") == ("org/name", False)
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_model_source(tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# The command line (issue 17 item 4): one error line, exit code 1, no traceback
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tiny, tmp_path: Path) -> Path:
    model, processor, _ = tiny
    folder = tmp_path / "tiny-ckpt"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert tinyllava_hf.cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) <= 2, captured.err
    return captured.err


def test_eval_subcommands_report_bad_inputs(checkpoint: Path, bench, gqa: Path, tmp_path: Path, capsys) -> None:
    questions, images = bench
    out = str(tmp_path / "answers.jsonl")
    run = ["eval", "run", "--task", "gqa", "--output", out, "--no-progress", "--device", "cpu"]
    good = ["--data", str(questions), "--image-folder", str(images)]

    # Models: a missing local path is never a Hub look-up; a Hub id that fails offline says both.
    assert "model folder /does/not/exist does not exist" in _cli_error(
        [*run, *good, "--model", "/does/not/exist"], capsys
    )
    err = _cli_error([*run, *good, "--model", "nope"], capsys)
    assert "no local folder 'nope'" in err and "Hub" in err
    assert "has no config.json" in _cli_error([*run, *good, "--model", str(images)], capsys)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "holds a 'bert' model, not an image-text-to-text model" in _cli_error(
        [*run, *good, "--model", str(bert)], capsys
    )
    model = ["--model", str(checkpoint)]

    # Inputs, checked before the model loads.
    assert "--data nowhere.jsonl does not exist" in _cli_error([*run, *model, "--data", "nowhere.jsonl"], capsys)
    missing_images = ["--data", str(questions), "--image-folder", str(tmp_path / "nope")]
    assert f"--image-folder {tmp_path / 'nope'} does not exist" in _cli_error([*run, *model, *missing_images], capsys)
    assert "--batch-size must be at least 1" in _cli_error([*run, *model, *good, "--batch-size", "0"], capsys)
    err = _cli_error([*run, *model, *good, "--chat-template", "vicuna"], capsys)
    assert "unknown chat template 'vicuna'" in err and "phi" in err
    assert not Path(out).exists()

    # score
    score = ["eval", "score", "--task", "gqa"]
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"question_id": "1", "text": "yes"}])
    err = _cli_error([*score, "--predictions", "nope.jsonl", "--annotations", str(gqa)], capsys)
    assert "--predictions nope.jsonl does not exist" in err
    err = _cli_error([*score, "--predictions", str(predictions), "--annotations", "nope.json"], capsys)
    assert "--annotations nope.json does not exist" in err
    err = _cli_error(["eval", "score", "--task", "pope", "--predictions", str(predictions), "--annotations",
                      str(gqa), "--questions", "q.jsonl"], capsys)  # fmt: skip
    assert "--questions q.jsonl does not exist" in err
    write_jsonl(predictions, [{"question_id": "1", "text": "yes"}, {"question_id": "1", "text": "no"}])
    assert "answered twice (line 1 and line 2)" in _cli_error([*score, "--predictions", str(predictions),
                                                                "--annotations", str(gqa)], capsys)  # fmt: skip

    # report
    assert "result file nope.result.json does not exist" in _cli_error(["eval", "report", "nope.result.json"], capsys)
    assert "is not a result file" in _cli_error(["eval", "report", str(gqa)], capsys)

    # easy-vqa
    assert "--limit must be at least 1" in _cli_error(
        ["eval", "easy-vqa", "--output-dir", out, "--limit", "0"], capsys
    )


def test_cli_score_overwrite_flag(gqa: Path, tmp_path: Path, capsys) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "1", "text": "yes"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question_id": "1", "text": "no"}])
    result = str(tmp_path / "result.json")
    score = ["eval", "score", "--task", "gqa", "--annotations", str(gqa), "--output", result]
    assert tinyllava_hf.cli.main([*score, "--predictions", str(a)]) == 0
    assert "--overwrite" in _cli_error([*score, "--predictions", str(b)], capsys)
    assert tinyllava_hf.cli.main([*score, "--predictions", str(b), "--overwrite"]) == 0
    assert json.loads(Path(result).read_text())["predictions"] == str(b)


def test_cli_resumes_what_the_python_api_wrote(tiny, checkpoint: Path, bench, answered: Path, capsys) -> None:
    # The fingerprint hashes the loaded weights and config, so the same checkpoint matches however it was loaded.
    questions, images = bench
    argv = [
        "eval",
        "run",
        "--model",
        str(checkpoint),
        "--model-id",
        "model",
        "--task",
        "gqa",
        "--data",
        str(questions),
    ]
    argv += ["--image-folder", str(images), "--output", str(answered), "--max-new-tokens", "3", "--no-progress"]
    assert tinyllava_hf.cli.main([*argv, "--device", "cpu"]) == 0
    assert "0 answers generated, 3 already in the file" in capsys.readouterr().out
