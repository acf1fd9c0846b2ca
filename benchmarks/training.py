"""Training: trained tokens/s and peak memory with naive padding, length-grouped batching and padding-free packing.

    python benchmarks/training.py [--quick] [--json OUT] [--steps N] [--batch-size B] [--repeats R] [--threads 1]
                                  [--packed-sdpa] [--trl-head] [--profile] [--answer-words W] [--answer-sigma S]
    python benchmarks/training.py --length-study     # padding of naive batches for other answer-length mixes

A LLaVA-like mix: one image per sample (a SigLIP-base image is 195 placeholders), a question, and an answer whose
length follows a long-tailed (log-normal) distribution, plus 10% text-only samples. Every run starts from the same
weights, trains the same samples for the same number of optimizer steps (AdamW, frozen tower, connector and LM
trained: the finetune stage) and differs only in how batches are formed:

- `naive`: batches in random order, right padded to the longest sample (what a plain Trainer does);
- `grouped`: `ModalityLengthGroupedSampler` batches (one modality, similar lengths), right padded;
- `packed`: the naive batches, padding-free, each batch one row (what `padding_free: true` does), the language
  model attending within each sample (`varlen_sdpa`, `tinyllava_hf.train.varlen_attention`; flash-attention 2 on a
  GPU that has it);
- `packed-sdpa` (`--packed-sdpa`): the naive batches bin-packed into rows of at most `--budget` tokens
  (`packing_token_budget`) through plain SDPA with transformers' block-diagonal mask, the path before
  `varlen_sdpa`;
- `naive-trl-head` (`--trl-head`): the naive batches through TRL's fused LM head as it runs where Triton does not
  (every position projected), instead of the trainer's head on CPU (`tinyllava_hf.train.lm_head`: the labelled
  positions only).

Every run computes its loss as `tinyllava-hf train` does: through TRL's fused LM head (`fused_lm_head=True`), which
our trainer narrows to the labelled positions on CPU.

Trained tokens are the samples' real tokens (the same count in every run): tokens/s is their count over the summed
step time (forward, backward, optimizer; collation is done before timing, identically for all), and also over the
CPU seconds the steps cost this process, the steadier clock on a loaded shared CPU (run it with `--threads 1`
there). With `--repeats R` the runs go R times in alternating order (a b c, c b a, ...) so that load drift hits all
alike, and the median tokens/s of each is reported. `--profile` adds where one step's time goes. The mean loss over
supervised tokens of each run is printed: `packed` trains exactly the naive batches, so its losses match naive ones
to float precision; `grouped` trains the same samples in other batches, so its mean agrees within a tolerance.

`--length-study` trains nothing: it prints how much of a naive batch is padding (which bounds what any padding
removal can gain) for other answer-length distributions and batch sizes.
"""

from __future__ import annotations

import copy
import math
import statistics
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
    load_average,
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


def make_samples(
    count: int, seed: int = 0, image_size: int = 224, median_words: float = 20.0, sigma: float = 1.0
) -> list[dict]:
    """LLaVA-like rows (`messages` + `images`): long-tailed answers, 10% text-only (every tenth sample)."""
    generator = torch.Generator().manual_seed(seed)
    images = random_images(count, seed=seed, size=(image_size, image_size))
    samples = []
    for index in range(count):
        # Log-normal answer length in words (default: median 20, a tail into the hundreds: detailed descriptions).
        draw = math.log(median_words) + sigma * torch.randn(1, generator=generator).item()
        words = int(min(400, max(1, round(math.exp(draw)))))
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
            max_tokens_per_row=budget if mode == "packed-sdpa" else None,
        )
    return [
        collator([samples[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)
    ], tokens


def on_device(batch: dict, model, device) -> dict:
    """`batch` on the benchmark device, its images in the model's dtype."""
    batch = {k: v.to(device.type) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return batch


def train_step(model, batch: dict, device, optimizer) -> tuple[float, float, int, float]:
    """One optimizer step on `batch`: (seconds, loss, supervised tokens, CPU seconds of this process).

    CPU seconds are what the step cost the process, whatever else the machine runs: on a loaded shared CPU they
    compare runs far more steadily than wall time (with `--threads 1`: no thread spins waiting for a descheduled
    sibling). On CUDA only the wall time means anything.
    """
    batch = on_device(batch, model, device)
    device.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    output = model(**batch, fused_lm_head=True)
    # Without `install_training_heads` the flag would be ignored and the loss come from the full logits.
    assert hasattr(output, "label_mask"), "install_training_heads(model) before timing steps"
    loss = output.loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    device.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, loss.item(), int((batch["labels"][:, 1:] != -100).sum()), cpu_seconds


def train_run(model, batches, device, lr: float) -> dict:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses, weights, step_seconds, cpu_seconds = [], [], [], []
    with PeakRSS() as rss, peak_cuda_memory(device) as cuda_memory:
        for batch in batches:
            seconds, loss, supervised, cpu = train_step(model, batch, device, optimizer)
            step_seconds.append(seconds)
            cpu_seconds.append(cpu)
            losses.append(loss)
            weights.append(supervised)
    return {
        "step_seconds": step_seconds,
        "seconds": sum(step_seconds),
        "cpu_seconds": sum(cpu_seconds),
        "mean_loss": sum(loss * n for loss, n in zip(losses, weights)) / sum(weights),
        "losses": losses,
        "peak_rss_mib": rss.peak_mib,
        "peak_rss_delta_mib": (rss.peak - rss.start) / 2**20,
        "peak_cuda_mib": cuda_memory.get("peak_mib"),
    }


def install_training_heads(model) -> dict:
    """The LM heads a run can train with, set up as `tinyllava-hf train` sets them: TRL's fused head (`trl`: off
    Triton devices it projects every position) and, where it applies (CPU), the trainer's head over the labelled
    positions only (`labelled`). Each is a bound `forward` to put on the model."""
    from trl.trainer.utils import add_fused_lm_head

    from tinyllava_hf.train.lm_head import score_supervised_positions_only, supports_supervised_only_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what TRL's SFTTrainer asks for
    heads = {"trl": model.forward}
    if supports_supervised_only_head(model, model.device):
        score_supervised_positions_only(model)
        heads["labelled"] = model.forward
    return heads


def set_up_run(model, device, mode: str, heads: dict) -> tuple[str, str]:
    """The model as `mode` trains: its LM attention and LM head (`install_training_heads`); returns their names.
    Every mode but `naive-trl-head` trains through the trainer's head (`labelled` where it applies)."""
    attention = set_packed_attention(model, device, mode == "packed")
    head = "trl" if mode == "naive-trl-head" or "labelled" not in heads else "labelled"
    model.forward = heads[head]
    return attention, head


def set_packed_attention(model, device, packed: bool) -> str:
    """The language model's attention for a run: per sample (`varlen_sdpa`) for `packed`, the device's otherwise
    (flash-attention 2, where installed, stays: it already attends per sample)."""
    from tinyllava_hf.train.varlen_attention import use_varlen_attention

    model.set_attn_implementation({"text_config": device.attention})
    if packed:
        use_varlen_attention(model)
    return model.config.text_config._attn_implementation


ATTENTION_OPS = (
    "aten::scaled_dot_product_attention",
    "ScaledDotProductFlashAttentionForCpuBackward0",
    "ScaledDotProductEfficientAttentionBackward0",
    "ScaledDotProductFlashAttentionBackward0",
    "ScaledDotProductCudnnAttentionBackward0",
)


def profile_step(model, batch: dict, device, lr: float) -> dict:
    """Where one optimizer step's time goes: the frozen tower's forward, the LM's attention (SDPA forward and
    backward, mask creation included), the rest of forward + backward (matmuls, LM head, norms), the optimizer."""
    from torch.profiler import ProfilerActivity, profile

    batch = on_device(batch, model, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()

    def attention_seconds(profiler) -> float:
        # Outermost attention ops only (their children are inside their totals), forward and backward.
        return sum(e.cpu_time_total for e in profiler.key_averages() if e.key in ATTENTION_OPS) / 1e6

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as tower_profiler:
        start = time.perf_counter()
        model.model.get_image_features(batch["pixel_values"])
        tower = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        model(**batch, fused_lm_head=True).loss.backward()
        forward_backward = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    optimizer_seconds = time.perf_counter() - start
    optimizer.zero_grad(set_to_none=True)
    # The tower's own (bidirectional) attention belongs to the tower's share.
    attention = attention_seconds(profiler) - attention_seconds(tower_profiler)
    total = forward_backward + optimizer_seconds
    return {
        "step_s": total,
        "tower_share": tower / total,
        "attention_share": attention / total,
        "other_forward_backward_share": (forward_backward - tower - attention) / total,
        "optimizer_share": optimizer_seconds / total,
    }


def length_study(collator, batch_size: int, samples: int = 512) -> list[list]:
    """Padding share of naive (random) batches for other answer-length mixes: the most any padding removal saves."""
    rows = []
    for median, sigma in ((20, 1.0), (20, 1.5), (60, 1.0), (120, 1.0)):
        lengths = [collator.measure(s).length for s in make_samples(samples, median_words=median, sigma=sigma)]
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
        for size in (batch_size, 2 * batch_size):
            batches = [[lengths[i] for i in order[b : b + size]] for b in range(0, len(order) - size + 1, size)]
            computed = sum(max(batch) * len(batch) for batch in batches)
            real = sum(sum(batch) for batch in batches)
            rows.append([median, sigma, size, sorted(lengths)[len(lengths) // 2], max(lengths), 1 - real / computed])
    return rows


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, in alternating order (median)")
    parser.add_argument("--budget", type=int, default=None, help="packed-sdpa's row budget (1024; quick 512)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--packed-sdpa", action="store_true", help="also run budgeted packing with SDPA masks")
    parser.add_argument(
        "--trl-head", action="store_true", help="also run the naive batches through TRL's head (every position)"
    )
    parser.add_argument("--answer-words", type=float, default=20.0, help="median answer length in words")
    parser.add_argument("--answer-sigma", type=float, default=1.0, help="log-normal spread of answer lengths")
    parser.add_argument("--length-study", action="store_true", help="only print padding shares of other mixes")
    parser.add_argument("--profile", action="store_true", help="also profile one step of each run (where time goes)")
    parser.add_argument("--loss-tolerance", type=float, default=0.02, help="relative, grouped vs naive mean loss")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.steps, args.batch_size = min(args.steps, 2), min(args.batch_size, 4)
    budget = args.budget or (512 if args.quick else 1024)
    dtype = device.dtypes[0]
    started = time.perf_counter()

    model, processor = build_benchmark_parts(args.quick)
    from tinyllava_hf.train.collator import TinyLlavaCollator

    collator = TinyLlavaCollator(processor)
    if args.length_study:
        print_table(
            "Padding share of naive batches (random order) by answer-length mix (log-normal words, cap 400)",
            ["median words", "sigma", "batch", "median sample tokens", "longest", "padding"],
            [[*row[:-1], f"{100 * row[-1]:.0f}%"] for row in length_study(collator, args.batch_size)],
        )
        return {}
    model.model.vision_tower.requires_grad_(False)  # the finetune stage: tower frozen, connector + LM train
    model.to(device.type, dtype)
    initial = copy.deepcopy(model.state_dict())

    image_size = model.config.vision_config.image_size
    # One epoch of exactly steps x batch samples: every run trains the same samples, only batched differently.
    samples = make_samples(
        args.steps * args.batch_size, image_size=image_size, median_words=args.answer_words, sigma=args.answer_sigma
    )

    heads = install_training_heads(model)
    modes = ["naive", "grouped", "packed"] + (["packed-sdpa"] if args.packed_sdpa else [])
    modes += ["naive-trl-head"] if args.trl_head else []
    batches = {}
    for mode in modes:
        batches[mode] = batches_for(mode, samples, collator, args.batch_size, args.steps, budget, seed=0)
    # One untimed step first: the first backward of a process pays for allocator growth and thread-pool start-up.
    warmup, _ = batches_for("naive", samples[: args.batch_size], collator, args.batch_size, 1, budget, seed=0)
    train_run(model, warmup, device, args.lr)

    attempts: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            attention, head = set_up_run(model, device, mode, heads)
            model.load_state_dict(initial)
            result = train_run(model, batches[mode][0], device, args.lr)
            result["attention"], result["head"] = attention, head
            attempts[mode].append(result)
            tokens = batches[mode][1]
            print(
                f"{mode} ({attention}): {tokens / result['seconds']:.1f} tokens/s, "
                f"{tokens / result['cpu_seconds']:.1f} tokens/CPU-s (load {load_average():.1f})",
                flush=True,
            )
    profiles = {}
    if args.profile:  # after the timed runs: profiling slows the step it watches
        for mode in modes:
            set_up_run(model, device, mode, heads)
            profiles[mode] = profile_step(model, batches[mode][0][0], device, args.lr)
        model.load_state_dict(initial)
    set_packed_attention(model, device, False)

    runs = {}
    for mode in modes:
        mode_batches, tokens = batches[mode]
        tried = attempts[mode]
        # Every repeat trains the same batches from the same weights: the same losses (deterministic kernels).
        spread = max(abs(a - b) for r in tried for a, b in zip(r["losses"], tried[0]["losses"]))
        assert spread <= 1e-4 * abs(tried[0]["mean_loss"]), f"{mode}: repeats disagree by {spread:.2e}"
        result = dict(tried[0])
        computed = sum(int(b["input_ids"].numel()) for b in mode_batches)
        result.update(
            tokens=tokens,
            computed_tokens=computed,
            padding_fraction=1 - tokens / computed,
            tokens_per_s=statistics.median(tokens / r["seconds"] for r in tried),
            tokens_per_s_all=[tokens / r["seconds"] for r in tried],
            tokens_per_cpu_s=statistics.median(tokens / r["cpu_seconds"] for r in tried),
            tokens_per_cpu_s_all=[tokens / r["cpu_seconds"] for r in tried],
            peak_rss_mib=max(r["peak_rss_mib"] for r in tried),
            batch_shapes=[list(b["input_ids"].shape) for b in mode_batches],
        )
        runs[mode] = result

    naive = runs["naive"]
    assert {runs[m]["tokens"] for m in modes} == {naive["tokens"]}, "the runs must train the same tokens"
    # Same batches, padding-free or through the other head: the same losses to float precision.
    packed_modes = [m for m in modes if m.startswith("packed") or m == "naive-trl-head"]
    packed_loss_diff = max(
        abs(a - b) / abs(b) for m in packed_modes for a, b in zip(runs[m]["losses"], naive["losses"])
    )
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
        # Per repeat (same order of runs): the spread of the ratio says how noisy it was.
        r["speedup_vs_naive_all"] = [a / b for a, b in zip(r["tokens_per_s_all"], naive["tokens_per_s_all"])]
        r["cpu_speedup_vs_naive"] = r["tokens_per_cpu_s"] / naive["tokens_per_cpu_s"]
        r["cpu_speedup_vs_naive_all"] = [
            a / b for a, b in zip(r["tokens_per_cpu_s_all"], naive["tokens_per_cpu_s_all"])
        ]
        r["mfu"] = mfu(flops, r["tokens_per_s"], device.peak_tflops)
        rows.append(
            [
                mode,
                r["attention"],
                r["head"],
                r["tokens_per_s"],
                r["speedup_vs_naive"],
                " ".join(f"{x:.2f}" for x in r["speedup_vs_naive_all"]),
                r["cpu_speedup_vs_naive"],
                " ".join(f"{x:.2f}" for x in r["cpu_speedup_vs_naive_all"]),
                f"{100 * r['padding_fraction']:.0f}%",
                " ".join(f"{loss:.4f}" for loss in r["losses"]),
                r["peak_rss_mib"],
                r["peak_cuda_mib"],
                None if r["mfu"] is None else f"{100 * r['mfu']:.2f}%",
            ]
        )
    print_table(
        f"Training ({dtype_name(dtype)}, batch {args.batch_size}, {args.steps} steps, {args.repeats} repeat(s); "
        f"{naive['tokens']} real tokens per run)",
        [
            "run",
            "LM attention",
            "LM head",
            "tokens/s",
            "vs naive",
            "per repeat",
            "vs naive (CPU s)",
            "per repeat",
            "padding",
            "step losses",
            "peak RSS MiB",
            "peak CUDA MiB",
            "MFU",
        ],
        rows,
    )
    if profiles:
        print_table(
            "Where one step's time goes (first batch of each run; shares of forward + backward + optimizer)",
            ["run", "step s", "frozen tower fwd", "LM attention", "rest of fwd+bwd", "optimizer"],
            [
                [
                    mode,
                    p["step_s"],
                    *(
                        f"{100 * p[k]:.0f}%"
                        for k in ("tower_share", "attention_share", "other_forward_backward_share", "optimizer_share")
                    ),
                ]
                for mode, p in profiles.items()
            ],
        )
    if "naive-trl-head" in runs:
        print(
            f"\nLM head: the trainer's ({runs['naive']['head']}) trains naive batches "
            f"{1 / runs['naive-trl-head']['speedup_vs_naive']:.2f}x as fast as TRL's off-Triton head (every position)"
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
            "repeats": args.repeats,
            "budget": budget,
            "attention": device.attention,
            "samples": len(samples),
            "answer_words": args.answer_words,
            "answer_sigma": args.answer_sigma,
        },
        "runs": runs,
        "profiles": profiles,
        "packed_vs_naive": runs["packed"]["speedup_vs_naive"],
        "packed_vs_naive_cpu": runs["packed"]["cpu_speedup_vs_naive"],
        "grouped_vs_naive": runs["grouped"]["speedup_vs_naive"],
        "trainer_head_vs_trl_head": (
            1 / runs["naive-trl-head"]["speedup_vs_naive"] if "naive-trl-head" in runs else None
        ),
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
