"""Training: trained tokens/s and peak memory with naive padding, length-grouped batching and padding-free packing.

    python benchmarks/training.py [--quick] [--json OUT] [--steps N] [--batch-size B] [--budget TOKENS]

A LLaVA-like mix: one image per sample (a SigLIP-base image is 195 placeholders), a question, and an answer whose
length follows a long-tailed (log-normal) distribution, plus 10% text-only samples. Every run starts from the same
weights, trains the same samples for the same number of optimizer steps (AdamW, frozen tower, connector and LM
trained: the finetune stage) and differs only in how batches are formed:

- `naive`: batches in random order, right padded to the longest sample (what a plain Trainer does);
- `grouped`: `ModalityLengthGroupedSampler` batches (one modality, similar lengths), right padded;
- `packed`: the naive batches, padding-free, bin-packed into rows of at most `--budget` tokens
  (`packing_token_budget`);
- `packed-1row` (`--single-row`): the naive batches as one packed row each (no budget), to show why the budget
  matters with SDPA.

Trained tokens are the samples' real tokens (the same count in every run): tokens/s is their count over the summed
step time (forward, backward, optimizer; collation is done before timing, identically for all). The mean loss over
supervised tokens of each run is printed: `packed` trains exactly the naive batches, so its losses match naive ones
to float precision; `grouped` trains the same samples in other batches, so its mean agrees within a tolerance.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    PeakRSS,
    base_parser,
    build_benchmark_parts,
    dtype_name,
    environment,
    llm_flops_per_token,
    matmul_params,
    mfu,
    peak_cuda_memory,
    print_table,
    random_images,
    setup,
    write_json,
)

# Words of the benchmark tokenizer's corpus (a word or two tokens each).
WORDS = [
    *(
        "the a photo shows red bus city street next to tall building under blue sky two people walking brown dog",
        "along beach at sunset while waves roll in left right top bottom one two three yes no",
    ),
]
WORDS = [word for line in WORDS for word in line.split(" ")]


def make_samples(count: int, seed: int = 0, image_size: int = 224) -> list[dict]:
    """LLaVA-like rows (`messages` + `images`): long-tailed answers, 10% text-only (every tenth sample)."""
    generator = torch.Generator().manual_seed(seed)
    images = random_images(count, seed=seed, size=(image_size, image_size))
    samples = []
    for index in range(count):
        # Log-normal answer length in words: median ~20, a tail into the hundreds (detailed descriptions).
        words = int(min(400, max(1, round(math.exp(3.0 + 1.0 * torch.randn(1, generator=generator).item())))))
        picks = torch.randint(len(WORDS), (words,), generator=generator).tolist()
        answer = " ".join(WORDS[i] for i in picks)
        question = [{"type": "text", "text": "Describe the image in detail."}]
        text_only = index % 10 == 9
        user = question if text_only else [{"type": "image"}, *question]
        samples.append(
            {
                "id": f"sample-{index}",
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [] if text_only else [images[index]],
            }
        )
    return samples


def batches_for(mode: str, samples, collator, batch_size: int, steps: int, budget: int | None, seed: int):
    """The collated batches of one run (collation happens before timing)."""
    from tinyllava_hf.train.collator import TinyLlavaCollator
    from tinyllava_hf.train.sampler import modality_length_grouped_indices, modality_of

    generator = torch.Generator().manual_seed(seed)
    if mode == "grouped":
        lengths = [collator.measure(sample).length for sample in samples]
        modalities = [modality_of(sample) for sample in samples]
        order = modality_length_grouped_indices(lengths, modalities, batch_size, generator, mega_batch_mult=50)
    else:
        order = torch.randperm(len(samples), generator=generator).tolist()
    order = order[: steps * batch_size]
    tokens = sum(collator.measure(samples[i]).length for i in order)  # real tokens after placeholder expansion
    if mode.startswith("packed"):
        collator = TinyLlavaCollator(
            collator.processor,
            packing=True,
            max_tokens_per_row=budget if mode == "packed" else None,
        )
    return [
        collator([samples[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)
    ], tokens


def train_step(model, batch: dict, device, optimizer) -> tuple[float, float, int]:
    """One optimizer step on `batch`: (seconds, loss, supervised tokens)."""
    batch = {k: v.to(device.type) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    device.synchronize()
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    device.synchronize()
    return time.perf_counter() - start, loss.item(), int((batch["labels"][:, 1:] != -100).sum())


def train_run(model, batches, device, lr: float) -> dict:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses, weights, step_seconds = [], [], []
    with PeakRSS() as rss, peak_cuda_memory(device) as cuda_memory:
        for batch in batches:
            seconds, loss, supervised = train_step(model, batch, device, optimizer)
            step_seconds.append(seconds)
            losses.append(loss)
            weights.append(supervised)
    return {
        "step_seconds": step_seconds,
        "seconds": sum(step_seconds),
        "mean_loss": sum(loss * n for loss, n in zip(losses, weights)) / sum(weights),
        "losses": losses,
        "peak_rss_mib": rss.peak_mib,
        "peak_rss_delta_mib": (rss.peak - rss.start) / 2**20,
        "peak_cuda_mib": cuda_memory.get("peak_mib"),
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--budget", type=int, default=None, help="packing token budget (default: 1024; quick: 64)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--single-row", action="store_true", help="also run packing without a budget (one row)")
    parser.add_argument("--loss-tolerance", type=float, default=0.02, help="relative, grouped vs naive mean loss")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.steps, args.batch_size = min(args.steps, 2), min(args.batch_size, 4)
    budget = args.budget or (512 if args.quick else 1024)
    dtype = device.dtypes[0]
    started = time.perf_counter()

    model, processor = build_benchmark_parts(args.quick)
    model.model.vision_tower.requires_grad_(False)  # the finetune stage: tower frozen, connector + LM train
    model.to(device.type, dtype)
    initial = copy.deepcopy(model.state_dict())
    from tinyllava_hf.train.collator import TinyLlavaCollator

    collator = TinyLlavaCollator(processor)
    image_size = model.config.vision_config.image_size
    # One epoch of exactly steps x batch samples: every run trains the same samples, only batched differently.
    samples = make_samples(args.steps * args.batch_size, image_size=image_size)

    modes = ["naive", "grouped", "packed"] + (["packed-1row"] if args.single_row else [])
    runs = {}
    # One untimed step first: the first backward of a process pays for allocator growth and thread-pool start-up.
    warmup, _ = batches_for("naive", samples[: args.batch_size], collator, args.batch_size, 1, budget, seed=0)
    train_run(model, warmup, device, args.lr)
    for mode in modes:
        batches, tokens = batches_for(mode, samples, collator, args.batch_size, args.steps, budget, seed=0)
        model.load_state_dict(initial)
        result = train_run(model, batches, device, args.lr)
        computed = sum(int(b["input_ids"].numel()) for b in batches)
        result.update(
            tokens=tokens,
            computed_tokens=computed,
            padding_fraction=1 - tokens / computed,
            tokens_per_s=tokens / result["seconds"],
            batch_shapes=[list(b["input_ids"].shape) for b in batches],
        )
        runs[mode] = result
        print(f"{mode}: {result['tokens_per_s']:.1f} tokens/s, shapes {result['batch_shapes']}", flush=True)

    naive = runs["naive"]
    assert {runs[m]["tokens"] for m in modes} == {naive["tokens"]}, "the runs must train the same tokens"
    # Same batches, padding-free: the same losses to float precision.
    packed_loss_diff = max(abs(a - b) / abs(b) for a, b in zip(runs["packed"]["losses"], naive["losses"]))
    grouped_loss_diff = abs(runs["grouped"]["mean_loss"] - naive["mean_loss"]) / abs(naive["mean_loss"])
    assert packed_loss_diff < 1e-3, f"packed losses differ from padded ones by {packed_loss_diff:.2e}"
    assert grouped_loss_diff < args.loss_tolerance, f"grouped mean loss differs by {grouped_loss_diff:.2%}"

    lm = model.model.language_model
    text = model.config.text_config
    mean_length = naive["tokens"] / (args.steps * args.batch_size)
    flops = llm_flops_per_token(
        matmul_params(lm) + model.lm_head.weight.numel() + matmul_params(model.model.connector),
        text.num_hidden_layers,
        text.hidden_size,
        mean_length / 2,
        training=True,
    )
    rows = []
    for mode in modes:
        r = runs[mode]
        r["speedup_vs_naive"] = r["tokens_per_s"] / naive["tokens_per_s"]
        r["mfu"] = mfu(flops, r["tokens_per_s"], device.peak_tflops)
        rows.append(
            [
                mode,
                r["tokens_per_s"],
                r["speedup_vs_naive"],
                f"{100 * r['padding_fraction']:.0f}%",
                r["mean_loss"],
                r["peak_rss_mib"],
                r["peak_cuda_mib"],
                None if r["mfu"] is None else f"{100 * r['mfu']:.2f}%",
            ]
        )
    print_table(
        f"Training ({dtype_name(dtype)}, batch {args.batch_size}, {args.steps} steps, budget {budget} tokens/row; "
        f"{naive['tokens']} real tokens per run)",
        ["run", "tokens/s", "vs naive", "padding", "mean loss", "peak RSS MiB", "peak CUDA MiB", "MFU"],
        rows,
    )
    print(
        f"\nloss agreement: packed vs naive per step {packed_loss_diff:.1e} (relative); grouped vs naive mean "
        f"{grouped_loss_diff:.2%} (tolerance {args.loss_tolerance:.0%})"
    )
    payload = {
        "benchmark": "training",
        "quick": args.quick,
        "environment": environment(device),
        "settings": {
            "dtype": dtype_name(dtype),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "budget": budget,
            "attention": device.attention,
            "samples": len(samples),
        },
        "runs": runs,
        "packed_vs_naive": runs["packed"]["speedup_vs_naive"],
        "grouped_vs_naive": runs["grouped"]["speedup_vs_naive"],
        "packed_loss_max_relative_diff": packed_loss_diff,
        "grouped_mean_loss_relative_diff": grouped_loss_diff,
        "train_flops_per_token": flops,
        "wall_s": time.perf_counter() - started,
    }
    print(
        f"wall time {payload['wall_s']:.0f} s; load average (1 min) at end: {environment(device)['load_average_1min']}"
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
