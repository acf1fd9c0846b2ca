"""llama.cpp (through llama-cpp-python) against our PyTorch `generate` on the same checkpoint: speed and answers.

    python benchmarks/llama_cpp.py --model DIR [--prompts 4] [--new-tokens 32] [--threads 2] [--json OUT]
    python benchmarks/llama_cpp.py --model DIR --score 2000 [--seed 0] [--json OUT]
    python benchmarks/llama_cpp.py --quick                 # a tiny random checkpoint, for the tests

DIR is a tinyllava-hf checkpoint llama.cpp can express (`tinyllava-hf export-gguf` refuses the others); it is
exported at f16 and q8_0 into a temporary folder. Every prompt is one easy-VQA test image (64x64) and its question,
rendered by the checkpoint's chat template, at batch 1.

Speed (default): for each prompt, PyTorch float32 `generate` and llama.cpp f16 and q8_0 each decode exactly
`--new-tokens` greedy tokens (end-of-generation ignored); time to first token (TTFT) is prefill with the image, decode
tokens/s counts the tokens after the first over the time after it. Medians over the prompts, the three engines
alternating per prompt so that load drift hits all alike; ratios are llama.cpp over PyTorch.

Answers (`--score N`): a fixed random subset of N easy-VQA test questions (`--seed`), greedy answers (at most 8
tokens) of PyTorch float32, llama.cpp f16 and llama.cpp q8_0, each scored with the easy-VQA scorer; also the share of
questions where llama.cpp's answer text equals PyTorch's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import load_average, print_table, write_json  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

# This file's name would shadow the `llama_cpp` package (Python puts the script's folder first on sys.path).
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [entry for entry in sys.path if str(Path(entry or ".").resolve()) != _HERE]

OUTTYPES = ("f16", "q8_0")
ANSWER_TOKENS = 8


class _FirstLogits(LogitsProcessor):
    """Records when `generate` first has logits (the end of prefill) and leaves the scores alone."""

    def __init__(self):
        self.first = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = time.perf_counter()
        return scores


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _torch_greedy(model, processor, text, image, new_tokens, exact_length):
    inputs = processor(text=text, images=[image], add_special_tokens=False, return_tensors="pt")
    timer = _FirstLogits()
    settings = dict(max_new_tokens=new_tokens, do_sample=False, logits_processor=LogitsProcessorList([timer]))
    if exact_length:
        settings["min_new_tokens"] = new_tokens
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, **settings)
    end = time.perf_counter()
    tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokens, timer.first - start, end - timer.first


def _tiny_checkpoint(folder: Path) -> Path:
    from tinyllava_hf import TinyLlavaForConditionalGeneration
    from tinyllava_hf.testing_utils import scramble, tiny_config, tiny_processor

    config = tiny_config("llama", "siglip", vision_feature_select_strategy="full")
    scramble(TinyLlavaForConditionalGeneration(config)).save_pretrained(folder)
    tiny_processor(config, "siglip", template="llama").save_pretrained(folder)
    return folder


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="tinyllava-hf checkpoint folder (default with --quick: a tiny one)")
    parser.add_argument("--quick", action="store_true", help="a tiny random checkpoint and 2 prompts (for tests)")
    parser.add_argument("--prompts", type=int, default=4, help="speed: prompts at batch 1 (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32, help="speed: tokens per prompt (default: %(default)s)")
    parser.add_argument("--score", type=int, default=None, metavar="N", help="score N easy-VQA test questions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --score subset (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both engines (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.model is None and not args.quick:
        parser.error("give --model DIR (a tinyllava-hf checkpoint), or --quick")

    from PIL import Image

    from tinyllava_hf.convert.gguf_export import export_gguf
    from tinyllava_hf.easy_vqa import load_easy_vqa, sample_records
    from tinyllava_hf.eval.scorers import easy_vqa_normalize
    from tinyllava_hf.llama_cpp_runner import LlamaCppVisionModel
    from tinyllava_hf.loading import load_model_and_processor

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="llama_cpp_bench."))
    model_dir = args.model or _tiny_checkpoint(work / "tiny")
    if args.quick:
        args.prompts, args.new_tokens = 2, 4
        args.score = 4 if args.score is None else args.score
    print(f"load average (1 min) at start: {load_average():.2f}")
    model, processor = load_model_and_processor(model_dir, device="cpu", dtype="float32")
    runners = {}
    for outtype in OUTTYPES:
        files = export_gguf(model_dir, work / outtype, outtype=outtype, name="model")
        runners[outtype] = LlamaCppVisionModel(files.model, files.mmproj, n_threads=args.threads)

    records, image_folder = load_easy_vqa("test")
    results: dict = {"model": str(model_dir), "threads": args.threads, "load_average_start": round(load_average(), 2)}

    if args.score is None or args.quick:
        timings = {engine: {"ttft": [], "decode": []} for engine in ("pytorch", *OUTTYPES)}
        for record in sample_records(records, args.prompts, seed=1):
            image = Image.open(image_folder / record["image"]).convert("RGB")
            text = _prompt(processor, record["text"])
            tokens, ttft, rest = _torch_greedy(model, processor, text, image, args.new_tokens, exact_length=True)
            timings["pytorch"]["ttft"].append(ttft)
            timings["pytorch"]["decode"].append((len(tokens) - 1) / rest)
            for outtype, runner in runners.items():
                out = runner.greedy(
                    text.replace("<image>", runner.marker), [image], args.new_tokens, stop_at_eog=False
                )
                timings[outtype]["ttft"].append(out.time_to_first_token_s)
                timings[outtype]["decode"].append((len(out.tokens) - 1) / out.decode_s)
        base = {key: median(values) for key, values in timings["pytorch"].items()}
        rows, speed = [], {}
        for engine, values in timings.items():
            ttft, decode = median(values["ttft"]), median(values["decode"])
            speed[engine] = {
                "ttft_s": ttft,
                "decode_tokens_per_s": decode,
                "ttft_ratio_vs_pytorch": ttft / base["ttft"],
                "decode_ratio_vs_pytorch": decode / base["decode"],
            }
            name = "PyTorch float32 generate" if engine == "pytorch" else f"llama.cpp {engine}"
            rows.append([name, ttft * 1000, decode, base["ttft"] / ttft, decode / base["decode"]])
        results["speed"] = speed
        print_table(
            f"batch 1, {args.prompts} prompts x {args.new_tokens} tokens, {args.threads} threads, "
            f"load {load_average():.2f} at the end",
            ["engine", "TTFT ms", "decode tok/s", "TTFT speed-up", "decode speed-up"],
            rows,
        )

    if args.score is not None:
        chosen = sample_records(records, args.score, seed=args.seed)
        answers = {engine: [] for engine in ("pytorch", *OUTTYPES)}
        for record in chosen:
            image = Image.open(image_folder / record["image"]).convert("RGB")
            text = _prompt(processor, record["text"])
            tokens, _, _ = _torch_greedy(model, processor, text, image, ANSWER_TOKENS, exact_length=False)
            answers["pytorch"].append(processor.tokenizer.decode(tokens, skip_special_tokens=True))
            for outtype, runner in runners.items():
                out = runner.greedy(text.replace("<image>", runner.marker), [image], ANSWER_TOKENS)
                answers[outtype].append(runner.detokenize(out.tokens))
        truth = [easy_vqa_normalize(record["answer"]) for record in chosen]
        scores, rows = {}, []
        for engine, texts in answers.items():
            normalised = [easy_vqa_normalize(text) for text in texts]
            accuracy = sum(a == b for a, b in zip(normalised, truth)) / len(truth)
            same = sum(a == easy_vqa_normalize(b) for a, b in zip(normalised, answers["pytorch"])) / len(truth)
            scores[engine] = {"accuracy": accuracy, "same_answer_as_pytorch": same}
            rows.append([engine, len(truth), accuracy, same])
        results["score"] = {"questions": len(truth), "seed": args.seed, **scores}
        print_table(
            f"easy-VQA test, {len(truth)} questions (seed {args.seed}), greedy, load {load_average():.2f} at the end",
            ["engine", "questions", "accuracy", "same answer as PyTorch"],
            rows,
        )
    for runner in runners.values():
        runner.close()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
