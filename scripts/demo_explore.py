"""Measure candidate easy-VQA demo settings quickly: a plain PyTorch loop, not the product path (`tinyllava-hf demo`
runs `tinyllava-hf train`). `docs/demo_measurements.md` tabulates what it measured.

Builds the parts (`tinyllava_hf.demo.parts`) with the sizes given, assembles a `TinyLlavaForConditionalGeneration`
from them the way `--llm/--vision-tower` does (LM and tower weights loaded from the saved folders, fresh connector),
then runs the two stages of the demo:

1. pretrain: connector only (tower and LM frozen), `pretrain` template, one caption per train image;
2. finetune: LM and connector (and the tower with `--train-tower-in-finetune`), the processor's default (`llama`)
   template, one question per sample (or several questions of one image with `--turns-per-sample`);

and scores a seeded sample of test questions with batched greedy `generate` (left padding) through the processor's
default chat template, with the real image and with a blank one (`blind_accuracy`). Prints samples/s of every phase,
the loss, and the accuracies, and appends one JSON line per run to `--log`.

Batches are encoded like the training collator does (chat template with `return_assistant_tokens_mask=True`, labels
only on the answer and its eos), on the fly, so the measured throughput includes data processing.

    python scripts/demo_explore.py --threads 1 --eval-every 250       # the chosen setting (defaults)
    python scripts/demo_explore.py --patch-size 8 --tower-pretrain-epochs 0 --train-tower-in-finetune

Every `DemoPartsSpec` field is a flag (`--vision-hidden 256`, `--split-words true`, ...); results are appended to
`--log` as JSON lines (`docs/demo_measurements.md` tabulates them).
"""

import argparse
import json
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, LlamaForCausalLM, SiglipVisionModel

from tinyllava_hf.builder import build_processor
from tinyllava_hf.chat_templates import get_chat_template
from tinyllava_hf.configuration_tinyllava import TinyLlavaConfig
from tinyllava_hf.constants import IGNORE_INDEX
from tinyllava_hf.demo.data import SHAPES, EasyVqaQuestion, image_captions, load_split
from tinyllava_hf.demo.parts import DEMO_TEMPLATE, DemoPartsSpec, save_parts
from tinyllava_hf.modeling_tinyllava import TinyLlavaForConditionalGeneration
from tinyllava_hf.processing_tinyllava import TinyLlavaProcessor

# One sample for both stages: an image path and its (user text, answer) turns. Pretrain ignores the user text.
Sample = tuple[str, list[tuple[str, str]]]


def assemble(
    parts_dir: Path, connector: str, feature_layer: int, select_strategy: str, num_queries: int = 64
) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor]:
    """Model + processor from the saved parts, as `tinyllava-hf train --llm --vision-tower` builds them."""
    lm = LlamaForCausalLM.from_pretrained(parts_dir / "llm")
    tower = SiglipVisionModel.from_pretrained(parts_dir / "vision_tower")
    config = TinyLlavaConfig(
        text_config=lm.config,
        vision_config=tower.config,
        connector_type=connector,
        connector_num_queries=num_queries,  # qformer/resampler only; the rest stay at the config defaults (as the CLI)
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=select_strategy,
    )
    tokenizer = AutoTokenizer.from_pretrained(parts_dir / "llm")
    tokenizer.padding_side = "left"  # batched generation; training batches are padded by hand (right)
    processor = build_processor(
        config, tokenizer, AutoImageProcessor.from_pretrained(parts_dir / "vision_tower"), template=DEMO_TEMPLATE
    )
    model = TinyLlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.tie_weights()  # no-op unless the LM ties its embeddings
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


class Encoder:
    """Turn samples into a training batch the way the collator does: template + assistant-only labels."""

    def __init__(self, processor: TinyLlavaProcessor, template: str):
        self.processor = processor
        self.chat_template = get_chat_template(template)
        self.images: dict[str, Image.Image] = {}
        self.seconds = 0.0

    def image(self, path: str) -> Image.Image:
        # The 5,000 PNGs fit in memory; decoding each once keeps file I/O out of the throughput figures (the
        # collator decodes per sample, ~0.1 ms for these 64x64 files).
        if path not in self.images:
            with Image.open(path) as image:
                self.images[path] = image.convert("RGB")
        return self.images[path]

    def __call__(self, batch: Sequence[Sample]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        rows = []
        for path, turns in batch:
            messages = []
            for turn, (text, answer) in enumerate(turns):
                # The image goes with the first question only, as in LLaVA's multi-turn data.
                content = [{"type": "image", "image": self.image(path)}] if turn == 0 else []
                messages.append({"role": "user", "content": [*content, {"type": "text", "text": text}]})
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            out = self.processor.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                return_tensors="pt",
            )
            ids = out["input_ids"][0]
            labels = ids.masked_fill(~torch.as_tensor(out["assistant_masks"][0], dtype=torch.bool), IGNORE_INDEX)
            rows.append((ids, labels, out["pixel_values"]))
        length = max(ids.shape[0] for ids, _, _ in rows)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad)
        labels = torch.full((len(rows), length), IGNORE_INDEX)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, target, _) in enumerate(rows):
            input_ids[row, : ids.shape[0]], labels[row, : ids.shape[0]], attention[row, : ids.shape[0]] = (
                ids,
                target,
                1,
            )
        pixel_values = torch.cat([pixels for _, _, pixels in rows])
        self.seconds += time.perf_counter() - start
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}


def group_questions(questions: Sequence[EasyVqaQuestion], turns: int, seed: int) -> list[Sample]:
    """One sample per question (`turns=1`, the demo's data), or up to `turns` shuffled questions of one image per
    sample (a multi-turn variant: one image encoding and one system prompt serve several answers)."""
    if turns == 1:
        return [(q.image, [(q.text, q.answer)]) for q in questions]
    by_image: dict[str, list[tuple[str, str]]] = {}
    for q in questions:
        by_image.setdefault(q.image, []).append((q.text, q.answer))
    rng = random.Random(seed)
    samples: list[Sample] = []
    for path, pairs in by_image.items():
        rng.shuffle(pairs)
        samples += [(path, pairs[i : i + turns]) for i in range(0, len(pairs), turns)]
    return samples


def train_stage(
    name: str,
    model: TinyLlavaForConditionalGeneration,
    encoder: Encoder,
    samples: list[Sample],
    steps: int,
    batch_size: int,
    lr: float,
    warmup: float,
    seed: int,
    log_every: int = 50,
    on_log: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """AdamW + cosine schedule with linear warmup over `steps` batches drawn from shuffled epochs of `samples`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup_steps = max(1, int(warmup * steps))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    encoder.seconds = 0.0
    # CPU seconds (all threads) beside wall seconds: on a shared machine the wall clock measures the neighbours too,
    # while with --threads 1 the CPU time is what the run would take alone.
    start, cpu_start, losses, tokens, answers = time.perf_counter(), time.process_time(), [], 0, 0
    for step in range(steps):
        if len(order) < batch_size:
            epoch = list(range(len(samples)))
            rng.shuffle(epoch)
            order += epoch
        chosen = [samples[i] for i in order[:batch_size]]
        del order[:batch_size]
        answers += sum(len(turns) for _, turns in chosen)
        batch = encoder(chosen)
        tokens += int(batch["attention_mask"].sum())
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(
                f"[{name}] step {step + 1}/{steps} loss {recent:.4f} {((step + 1) * batch_size) / elapsed:.1f} "
                f"samples/s, {((step + 1) * batch_size) / cpu:.1f} per CPU s, {answers / cpu:.1f} answers per CPU s "
                f"({elapsed:.0f} s, encoding {encoder.seconds:.0f} s)",
                flush=True,
            )
            if on_log is not None:
                on_log(step + 1, recent)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "steps": steps,
        "samples": steps * batch_size,
        "epochs": steps * batch_size / len(samples),
        "seconds": round(seconds, 1),
        "encode_seconds": round(encoder.seconds, 1),
        "samples_per_s": round(steps * batch_size / seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "samples_per_cpu_s": round(steps * batch_size / cpu, 1),
        "answers": answers,
        "answers_per_cpu_s": round(answers / cpu, 1),
        "tokens_per_sample": round(tokens / (steps * batch_size), 1),
        "final_loss": round(sum(losses[-log_every:]) / len(losses[-log_every:]), 4),
    }


def normalize(text: str) -> str:
    """easy-VQA exact match normalisation (as `tinyllava_hf.eval.scorers.easy_vqa_normalize`)."""
    return text.strip().lower().rstrip(".").strip()


@torch.no_grad()
def evaluate(
    model: TinyLlavaForConditionalGeneration,
    processor: TinyLlavaProcessor,
    questions: Sequence[EasyVqaQuestion],
    batch_size: int,
    blank: bool = False,
    max_new_tokens: int = 4,
) -> dict[str, Any]:
    """Exact-match accuracy of batched greedy generation through the processor's DEFAULT chat template.

    The prompt is one user turn (the image, then the bare question) with `add_generation_prompt=True`, left padded,
    exactly what a user of the saved checkpoint would send. `blank` replaces every image with a uniform one of the
    image processor's mean colour, as the evaluation runner's blind baseline does.
    """
    model.eval()
    processor.tokenizer.padding_side = "left"
    mean = processor.image_processor.image_mean
    blank_image = Image.new("RGB", (64, 64), tuple(int(m * 255) for m in mean))
    correct: Counter = Counter()
    total: Counter = Counter()
    start, cpu_start = time.perf_counter(), time.process_time()
    for begin in range(0, len(questions), batch_size):
        chunk = questions[begin : begin + batch_size]
        messages = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": blank_image if blank else Image.open(q.image).convert("RGB")},
                        {"type": "text", "text": q.text},
                    ],
                }
            ]
            for q in chunk
        ]
        inputs = processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for question, text in zip(chunk, texts, strict=True):
            kind = "yes/no" if question.answer in ("yes", "no") else "shape" if question.answer in SHAPES else "color"
            total[kind] += 1
            correct[kind] += normalize(text) == normalize(question.answer)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "accuracy": round(sum(correct.values()) / len(questions), 4),
        "by_kind": {kind: round(correct[kind] / total[kind], 4) for kind in sorted(total)},
        "seconds": round(seconds, 1),
        "samples_per_s": round(len(questions) / seconds, 1),
        "samples_per_cpu_s": round(len(questions) / cpu, 1),
        "example": texts[:3],
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for spec_field in fields(DemoPartsSpec):
        flag = f"--{spec_field.name.replace('_', '-')}"
        kind = type(spec_field.default)
        convert = (lambda text: text.lower() in ("1", "true", "yes")) if kind is bool else kind
        parser.add_argument(flag, type=convert, default=spec_field.default)
    parser.add_argument("--connector", default="mlp2x_gelu")
    parser.add_argument("--connector-num-queries", type=int, default=64, help="qformer/resampler outputs")
    parser.add_argument("--feature-layer", type=int, default=-1)
    parser.add_argument("--select-strategy", default="full", choices=("default", "full"))
    parser.add_argument("--pretrain-steps", type=int, default=63, help="63 steps of 64: one epoch of captions")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.03, help="warmup fraction of each stage")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--turns-per-sample", type=int, default=1, help="questions of one image per sample")
    parser.add_argument(
        "--train-tower-in-finetune", dest="finetune_tower", action="store_true", help="tower trainable in stage 2"
    )
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=0, help="also score after every N finetune steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts-dir", type=Path, default=None, help="keep the parts here (default: a temp dir)")
    parser.add_argument("--log", type=Path, default=Path("explore_runs.jsonl"))
    parser.add_argument("--tag", default="")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = DemoPartsSpec(**{f.name: getattr(args, f.name) for f in fields(DemoPartsSpec)})
    run: dict[str, Any] = {"tag": args.tag, "spec": asdict(spec)}
    run["args"] = {k: v for k, v in vars(args).items() if k not in run["spec"] and k not in ("parts_dir", "log")}
    wall = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        parts_dir = args.parts_dir or Path(tmp)
        start = time.perf_counter()
        saved = parts_dir / "parts.json"
        if not (saved.is_file() and json.loads(saved.read_text())["spec"] == asdict(spec)):
            save_parts(parts_dir, spec)  # else: the same parts are already there (--parts-dir), reuse them
        model, processor = assemble(
            parts_dir, args.connector, args.feature_layer, args.select_strategy, args.connector_num_queries
        )
        run["build_seconds"] = round(time.perf_counter() - start, 1)
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (
            ("vision_tower", model.model.vision_tower),
            ("connector", model.model.connector),
            ("llm", model.model.language_model),
            ("lm_head", model.lm_head),
        )
    }
    run["parameters"] = counts
    print(f"built in {run['build_seconds']} s; parameters {counts}; image tokens {model.config.num_image_tokens}")

    train = load_split("train")
    test = load_split("test", args.eval_size, args.seed)  # the evaluation's seeded sample
    captions = [(path, [("", caption)]) for path, caption in image_captions(train).values()]
    questions = group_questions(train, args.turns_per_sample, args.seed)

    # Stage 1: connector only.
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.connector.")
    if args.pretrain_steps:
        run["pretrain"] = train_stage(
            "pretrain",
            model,
            Encoder(processor, "pretrain"),
            captions,
            args.pretrain_steps,
            args.batch_size,
            args.pretrain_lr,
            args.warmup,
            args.seed,
        )
    # Stage 2: everything, or everything but the tower.
    for name, param in model.named_parameters():
        param.requires_grad = args.finetune_tower or not name.startswith("model.vision_tower.")
    curve: list[dict[str, Any]] = []

    def score_now(step: int, loss: float) -> None:
        if args.eval_every and step % args.eval_every == 0 and step < args.finetune_steps:
            result = evaluate(model, processor, test, args.eval_batch_size)
            curve.append({"step": step, "loss": loss, "accuracy": result["accuracy"]})
            print(f"  eval at step {step}: accuracy {result['accuracy']} {result['by_kind']}", flush=True)
            model.train()

    run["finetune"] = train_stage(
        "finetune",
        model,
        Encoder(processor, DEMO_TEMPLATE),
        questions,
        args.finetune_steps,
        args.batch_size,
        args.lr,
        args.warmup,
        args.seed + 1,
        on_log=score_now,
    )
    run["curve"] = curve
    run["eval"] = evaluate(model, processor, test, args.eval_batch_size)
    run["eval_blind"] = evaluate(model, processor, test, args.eval_batch_size, blank=True)
    run["wall_seconds"] = round(time.perf_counter() - wall, 1)
    print(
        f"accuracy {run['eval']['accuracy']} {run['eval']['by_kind']} blind {run['eval_blind']['accuracy']} "
        f"eval {run['eval']['samples_per_s']} samples/s; wall {run['wall_seconds']} s; e.g. {run['eval']['example']}"
    )
    with args.log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(run) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
