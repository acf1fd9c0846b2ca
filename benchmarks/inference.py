"""Inference: time to first token and decode tokens/s, ours against transformers' `LlavaForConditionalGeneration`.

    python benchmarks/inference.py [--quick] [--json OUT] [--fast-path | --no-fast-path] [--peak-tflops T]

Both models hold identical weights: ours is saved, `tinyllava_hf.convert.export_llava` writes the native `llava`
folder, and both are loaded back with `from_pretrained` in the same dtype and attention implementation. Every prompt
holds one image; generation is greedy with exactly 64 new tokens (`min_new_tokens` keeps EOS away, so both decode
the same number of steps), and the generated tokens of the two models are asserted identical.

Measured per dtype (float32 and bfloat16 on CPU, bfloat16 on CUDA):

- batch 1 (each of the 8 prompts alone) and batch 8 (all 8 prompts, left padded), alternating ours and llava so
  that load drift hits both alike; TTFT is the time to the first logits (prefill, tower included), decode tokens/s
  counts the 63 tokens after the first over the time after it;
- batch 8 against eight batch-1 calls (what upstream TinyLLaVA's inference offers): the same 8 x 64 tokens;
- the fast path (first dtype only): a static KV cache with `torch.compile` of the decode step, against eager
  (see docs/performance.md for how to turn it on).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    Device,
    base_parser,
    build_benchmark_parts,
    dtype_name,
    environment,
    llm_flops_per_token,
    load_average,
    matmul_params,
    mfu,
    print_table,
    random_images,
    setup,
    write_json,
)
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

NEW_TOKENS = 64
BATCH = 8
QUESTIONS = [
    "Describe the image in detail.",
    "What is in the picture?",
    "Answer with a single word: is there a dog?",
    "What color is the sky?",
    "Describe the image.",
    "How many people are walking on the beach in the photo?",
    "What is on the left?",
    "Is the bus red? Answer yes or no.",
]


class StepClock(LogitsProcessor):
    """Records the time at which each step's logits are ready (identical, free work for both models)."""

    def __init__(self, device: Device):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.device.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def prompts(processor, count: int):
    images = random_images(count, seed=1)
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        for question in QUESTIONS[:count]
    ]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    return texts, images


def encode(processor, texts, images, device: Device, dtype: torch.dtype) -> dict:
    processor.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    inputs = {key: value.to(device.type) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def generate(model, inputs: dict, device: Device, new_tokens: int = NEW_TOKENS, **kwargs) -> dict:
    clock = StepClock(device)
    device.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            **kwargs,
        )
    device.synchronize()
    end = time.perf_counter()
    batch = inputs["input_ids"].shape[0]
    tokens = output[:, inputs["input_ids"].shape[1] :]
    decode_seconds = clock.stamps[-1] - clock.stamps[0]
    return {
        "tokens": tokens.cpu(),
        "ttft": clock.stamps[0] - start,
        "decode_tokens_per_s": batch * (len(clock.stamps) - 1) / decode_seconds if decode_seconds > 0 else None,
        "decode_seconds": decode_seconds,
        "wall": end - start,
    }


def load_pair(folder: Path, llava_folder: Path, dtype: torch.dtype, device: Device):
    from transformers import LlavaForConditionalGeneration

    from tinyllava_hf import TinyLlavaForConditionalGeneration

    common = dict(dtype=dtype, attn_implementation=device.attention)
    ours = TinyLlavaForConditionalGeneration.from_pretrained(folder, **common).to(device.type).eval()
    llava = LlavaForConditionalGeneration.from_pretrained(llava_folder, **common).to(device.type).eval()
    return ours, llava


def summarise(runs: list[dict]) -> dict:
    decode_tokens = sum(r["decode_tokens_per_s"] * r["decode_seconds"] for r in runs)
    return {
        "ttft_s": median(r["ttft"] for r in runs),
        "decode_tokens_per_s": decode_tokens / sum(r["decode_seconds"] for r in runs),
        "wall_s": sum(r["wall"] for r in runs),
    }


def pair_ratios(results: dict, size: str) -> dict[str, list[float]]:
    """Ours-vs-llava ratios of each back-to-back pair of calls (> 1: ours faster): their spread shows the noise."""
    pairs = list(zip(results["ours"][size], results["llava"][size]))
    return {
        "ttft": [llava["ttft"] / ours["ttft"] for ours, llava in pairs],
        "decode": [ours["decode_tokens_per_s"] / llava["decode_tokens_per_s"] for ours, llava in pairs],
    }


def measure_dtype(args, device: Device, folder: Path, llava_folder: Path, processor, dtype: torch.dtype) -> dict:
    load_at_start = load_average()
    ours, llava = load_pair(folder, llava_folder, dtype, device)
    texts, images = prompts(processor, BATCH)
    singles = [encode(processor, [t], [i], device, dtype) for t, i in zip(texts, images)]
    batch = encode(processor, texts, images, device, dtype)
    num_singles = 2 if args.quick else args.singles
    repeats = 1 if args.quick else args.repeats

    for model in (ours, llava):  # warm-up: first-call allocations, thread pools, lazy init
        generate(model, singles[0], device, new_tokens=2)

    results: dict[str, dict[str, list[dict]]] = {"ours": {"b1": [], "b8": []}, "llava": {"b1": [], "b8": []}}
    for index in range(num_singles):
        # Alternate which model goes first: load drift on a shared machine then favours neither.
        order = (("ours", ours), ("llava", llava)) if index % 2 == 0 else (("llava", llava), ("ours", ours))
        for name, model in order:
            results[name]["b1"].append(generate(model, singles[index], device))
        torch.testing.assert_close(results["ours"]["b1"][-1]["tokens"], results["llava"]["b1"][-1]["tokens"])
    for index in range(repeats):
        order = (("ours", ours), ("llava", llava)) if index % 2 == 0 else (("llava", llava), ("ours", ours))
        for name, model in order:
            results[name]["b8"].append(generate(model, batch, device))
        torch.testing.assert_close(results["ours"]["b8"][-1]["tokens"], results["llava"]["b8"][-1]["tokens"])

    summary = {name: {size: summarise(runs) for size, runs in sizes.items()} for name, sizes in results.items()}
    # Eight batch-1 calls produce the same 8 x 64 tokens as one batch-8 call: the wall ratio is the throughput ratio.
    eight_singles = summary["ours"]["b1"]["wall_s"] / num_singles * BATCH
    batch_wall = summary["ours"]["b8"]["wall_s"] / repeats
    out = {
        "dtype": dtype_name(dtype),
        "ours": summary["ours"],
        "llava": summary["llava"],
        "ttft_ratio_b1": summary["llava"]["b1"]["ttft_s"] / summary["ours"]["b1"]["ttft_s"],
        "ttft_ratio_b8": summary["llava"]["b8"]["ttft_s"] / summary["ours"]["b8"]["ttft_s"],
        "decode_ratio_b1": summary["ours"]["b1"]["decode_tokens_per_s"]
        / summary["llava"]["b1"]["decode_tokens_per_s"],
        "decode_ratio_b8": summary["ours"]["b8"]["decode_tokens_per_s"]
        / summary["llava"]["b8"]["decode_tokens_per_s"],
        "batch8_vs_8x_batch1": eight_singles / batch_wall,
        # Where that ratio comes from: the prefill (tower + prompt) and the decode steps batch differently.
        "batch8_prefill_speedup": BATCH * summary["ours"]["b1"]["ttft_s"] / summary["ours"]["b8"]["ttft_s"],
        "batch8_decode_speedup": summary["ours"]["b8"]["decode_tokens_per_s"]
        / summary["ours"]["b1"]["decode_tokens_per_s"],
        "batch8_prefill_share": summary["ours"]["b8"]["ttft_s"] / batch_wall,
        "pair_ratios": {size: pair_ratios(results, size) for size in ("b1", "b8")},
        "tokens_identical": True,
    }
    lm = ours.model.language_model
    context = batch["input_ids"].shape[1] + NEW_TOKENS // 2
    flops = llm_flops_per_token(
        matmul_params(lm) + ours.lm_head.weight.numel(),
        ours.config.text_config.num_hidden_layers,
        ours.config.text_config.hidden_size,
        context,
        training=False,
    )
    out["decode_flops_per_token"] = flops
    out["decode_mfu_b8"] = mfu(flops, summary["ours"]["b8"]["decode_tokens_per_s"], device.peak_tflops)

    if args.fast_path and dtype == device.dtypes[0]:
        out["fast_path"] = measure_fast_path(args, device, ours, singles[0], batch, results["ours"])
    out["load_average_1min"] = [round(load_at_start, 2), round(load_average(), 2)]
    del ours, llava
    return out


def fast_path_options(device: Device) -> dict:
    """The fast path as a user turns it on (docs/performance.md): a static cache and a compiled decode step.

    Returned as `generate` keyword arguments (the same settings as `generation_config` attributes), so that eager
    and fast calls can alternate on one model.
    """
    from transformers import CompileConfig

    # transformers compiles the decode step by itself on GPUs; on CPU it has to be asked (`_compile_all_devices`),
    # and "reduce-overhead" (CUDA graphs) means nothing there.
    config = CompileConfig(fullgraph=False, mode="reduce-overhead" if device.type == "cuda" else "default")
    if device.type != "cuda":
        config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


def measure_fast_path(args, device: Device, ours, single: dict, batch: dict, eager: dict) -> dict:
    """Fast against eager on the same model, calls alternating so that load drift hits both alike."""
    options = fast_path_options(device)
    fast: dict[str, dict] = {}
    for size, inputs in (("b1", single), ("b8", batch)):
        first = generate(ours, inputs, device, **options)  # compiles (once per shape); not a figure
        runs: dict[str, list[dict]] = {"eager": [], "fast": []}
        for index in range(1 if args.quick else 2):
            order = ("eager", "fast") if index % 2 == 0 else ("fast", "eager")
            for name in order:
                runs[name].append(generate(ours, inputs, device, **(options if name == "fast" else {})))
        for run in runs["fast"]:
            assert torch.equal(run["tokens"], eager[size][0]["tokens"]), "static+compile changed the tokens"
        fast_summary, eager_summary = summarise(runs["fast"]), summarise(runs["eager"])
        fast[size] = {
            **fast_summary,
            "first_call_s": first["wall"],
            "eager_decode_tokens_per_s": eager_summary["decode_tokens_per_s"],
            "decode_ratio_vs_eager": fast_summary["decode_tokens_per_s"] / eager_summary["decode_tokens_per_s"],
            "decode_pair_ratios": [
                f["decode_tokens_per_s"] / e["decode_tokens_per_s"] for f, e in zip(runs["fast"], runs["eager"])
            ],
        }
    return fast


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="batch-8 generate calls per model and dtype")
    parser.add_argument(
        "--singles",
        type=int,
        default=BATCH,
        help="prompts generated alone per model (8: the eight batch-1 calls are timed; fewer: their time is scaled)",
    )
    parser.add_argument(
        "--fast-path",
        action=__import__("argparse").BooleanOptionalAction,
        default=True,
        help="also measure static cache + torch.compile (first dtype only)",
    )
    args = parser.parse_args(argv)
    device = setup(args)
    from tinyllava_hf.convert import export_llava

    started = time.perf_counter()
    model, processor = build_benchmark_parts(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        folder, llava_folder = Path(tmp) / "tinyllava", Path(tmp) / "llava"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        export_llava(folder, llava_folder)
        results = [measure_dtype(args, device, folder, llava_folder, processor, dtype) for dtype in device.dtypes]

    def spread(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}"

    rows = []
    for r in results:
        for size in ("b1", "b8"):
            pairs = r["pair_ratios"][size]
            rows.append(
                [
                    r["dtype"],
                    size[1:],
                    r["ours"][size]["ttft_s"],
                    r["llava"][size]["ttft_s"],
                    r[f"ttft_ratio_{size}"],
                    spread(pairs["ttft"]),
                    r["ours"][size]["decode_tokens_per_s"],
                    r["llava"][size]["decode_tokens_per_s"],
                    r[f"decode_ratio_{size}"],
                    spread(pairs["decode"]),
                    "{} -> {}".format(*r["load_average_1min"]),
                ]
            )
    print_table(
        "Ours vs transformers' LlavaForConditionalGeneration (identical weights and tokens; ratio > 1: ours faster; "
        "pairs: the ratio of each back-to-back pair of calls, min-max)",
        [
            "dtype",
            "batch",
            "TTFT ours s",
            "TTFT llava s",
            "TTFT ratio",
            "pairs",
            "decode tok/s ours",
            "llava",
            "decode ratio",
            "pairs",
            "load",
        ],
        rows,
    )
    print_table(
        "Batch 8 against eight batch-1 calls (same 8 x 64 tokens; prefill: 8 x TTFT at batch 1 over TTFT at batch 8; "
        "decode: tokens/s at batch 8 over batch 1)",
        [
            "dtype",
            "8 x batch-1 wall s",
            "batch-8 wall s",
            "speed-up",
            "prefill speed-up",
            "prefill share of batch-8",
            "decode speed-up",
            "decode MFU b8",
        ],
        [
            [
                r["dtype"],
                r["ours"]["b1"]["wall_s"] / (2 if args.quick else args.singles) * BATCH,
                r["ours"]["b8"]["wall_s"] / (1 if args.quick else args.repeats),
                r["batch8_vs_8x_batch1"],
                r["batch8_prefill_speedup"],
                f"{100 * r['batch8_prefill_share']:.0f}%",
                r["batch8_decode_speedup"],
                None if r["decode_mfu_b8"] is None else f"{100 * r['decode_mfu_b8']:.2f}%",
            ]
            for r in results
        ],
    )
    fast_rows = [
        [
            r["dtype"],
            size[1:],
            f["first_call_s"],
            f["ttft_s"],
            f["eager_decode_tokens_per_s"],
            f["decode_tokens_per_s"],
            f["decode_ratio_vs_eager"],
            spread(f["decode_pair_ratios"]),
        ]
        for r in results
        if "fast_path" in r
        for size, f in r["fast_path"].items()
    ]
    if fast_rows:
        print_table(
            "Fast path: static cache + torch.compile against eager (ours, calls alternating)",
            [
                "dtype",
                "batch",
                "first call s (compile)",
                "TTFT s",
                "decode tok/s eager",
                "fast",
                "decode ratio",
                "pairs",
            ],
            fast_rows,
        )
    payload = {
        "benchmark": "inference",
        "quick": args.quick,
        "environment": environment(device),
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    print(
        f"\nwall time {payload['wall_s']:.0f} s; load average (1 min) at end: "
        f"{environment(device)['load_average_1min']}"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
