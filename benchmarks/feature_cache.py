"""Stage 1 with a frozen tower: the vision feature cache (`cache_vision_features`) against recomputing every epoch.

    python benchmarks/feature_cache.py [--quick] [--json OUT] [--epochs N] [--steps N] [--batch-size B]

The stage-1 (pretrain) recipe's shape: the pretrain template, one short caption per image, tower and LM frozen, only
the connector trains. Both runs start from the same weights and train the same batches for `--epochs` epochs; the
cached run computes each image's tower features in its first epoch and looks them up afterwards. Reported: the time
per epoch of both runs, the speed-up of a cached epoch (every later epoch) and of the whole run, and the losses of
the two runs (identical: a hit returns exactly what the tower computes).
"""

from __future__ import annotations

import copy
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
    print_table,
    random_images,
    setup,
    write_json,
)
from training import WORDS, install_training_heads, train_run, train_step  # noqa: E402


def captions(count: int, seed: int = 0, image_size: int = 224) -> list[dict]:
    """LLaVA-pretrain-like rows: an image and a caption of 5-20 words."""
    generator = torch.Generator().manual_seed(seed)
    images = random_images(count, seed=seed, size=(image_size, image_size))
    rows = []
    for index in range(count):
        words = int(torch.randint(5, 21, (1,), generator=generator))
        caption = " ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=generator).tolist())
        rows.append(
            {
                "id": f"caption-{index}",
                "messages": [
                    {"role": "user", "content": [{"type": "image"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": caption}]},
                ],
                "images": [images[index]],
            }
        )
    return rows


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.steps, args.batch_size = min(args.steps, 2), min(args.batch_size, 4)
    dtype = device.dtypes[0]
    started = time.perf_counter()

    from tinyllava_hf.train.collator import TinyLlavaCollator
    from tinyllava_hf.train.feature_cache import disable_vision_feature_cache, enable_vision_feature_cache

    model, processor = build_benchmark_parts(args.quick, template="pretrain")
    model.requires_grad_(False)
    model.model.connector.requires_grad_(True)  # stage 1: only the connector trains
    model.to(device.type, dtype)
    install_training_heads(model)  # the loss as `tinyllava-hf train` computes it (the trainer's LM head)
    initial = copy.deepcopy(model.state_dict())
    collator = TinyLlavaCollator(processor)
    rows = captions(args.steps * args.batch_size, image_size=model.config.vision_config.image_size)
    batches = [collator(rows[s : s + args.batch_size]) for s in range(0, len(rows), args.batch_size)]
    train_run(model, batches[:1], device, args.lr)  # warm-up, untimed

    runs = {}
    for name in ("recompute", "cached"):
        model.load_state_dict(initial)
        cache = enable_vision_feature_cache(model) if name == "cached" else None
        # One optimizer across epochs, as in a real run (`train_run` per epoch would reset AdamW's state).
        epochs = train_epochs(model, batches, device, args.lr, args.epochs)
        runs[name] = {
            "epoch_seconds": [e["seconds"] for e in epochs],
            "epoch_cpu_seconds": [e["cpu_seconds"] for e in epochs],
            "losses": [loss for e in epochs for loss in e["losses"]],
            "peak_rss_mib": max(e["peak_rss_mib"] for e in epochs),
            "cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)},
        }
        if cache is not None:
            disable_vision_feature_cache(model)

    plain, cached = runs["recompute"], runs["cached"]
    loss_diff = max(abs(a - b) / abs(a) for a, b in zip(plain["losses"], cached["losses"]))
    assert loss_diff < 1e-5, f"cached losses differ by {loss_diff:.2e}"
    later = slice(1, None)
    cached_epoch_speedup = sum(plain["epoch_seconds"][later]) / sum(cached["epoch_seconds"][later])
    first_epoch_ratio = plain["epoch_seconds"][0] / cached["epoch_seconds"][0]
    run_speedup = sum(plain["epoch_seconds"]) / sum(cached["epoch_seconds"])
    # CPU seconds of the process: steadier than wall time on a loaded shared CPU (`train_step`).
    cached_epoch_cpu_speedup = sum(plain["epoch_cpu_seconds"][later]) / sum(cached["epoch_cpu_seconds"][later])
    print_table(
        f"Stage 1, frozen tower ({dtype_name(dtype)}, batch {args.batch_size}, {args.steps} steps x {args.epochs} "
        f"epochs; ratio > 1: the cache is faster)",
        ["run", *[f"epoch {e + 1} s" for e in range(args.epochs)], "peak RSS MiB", "cache hits/misses"],
        [
            [
                name,
                *r["epoch_seconds"],
                r["peak_rss_mib"],
                None if r["cache"] is None else f"{r['cache']['hits']}/{r['cache']['misses']}",
            ]
            for name, r in runs.items()
        ],
    )
    print(
        f"\ncached epoch speed-up (epochs 2+): {cached_epoch_speedup:.2f}x; first epoch (fills the cache): "
        f"{first_epoch_ratio:.2f}x; whole run: {run_speedup:.2f}x; cached epoch in CPU seconds: "
        f"{cached_epoch_cpu_speedup:.2f}x; losses identical (max relative diff "
        f"{loss_diff:.1e})"
    )
    payload = {
        "benchmark": "feature_cache",
        "quick": args.quick,
        "environment": environment(device),
        "settings": {"dtype": dtype_name(dtype), "batch_size": args.batch_size, "steps": args.steps},
        "runs": runs,
        "cached_epoch_speedup": cached_epoch_speedup,
        "cached_epoch_cpu_speedup": cached_epoch_cpu_speedup,
        "first_epoch_ratio": first_epoch_ratio,
        "run_speedup": run_speedup,
        "loss_max_relative_diff": loss_diff,
        "wall_s": time.perf_counter() - started,
    }
    load = environment(device)["load_average_1min"]
    print(f"wall time {payload['wall_s']:.0f} s; load average (1 min) at end: {load}")
    write_json(args.json, payload)
    return payload


def train_epochs(model, batches, device, lr: float, epochs: int) -> list[dict]:
    """`epochs` passes over `batches` with one AdamW; per epoch: its step time, losses and peak RSS."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    results = []
    for _ in range(epochs):
        seconds, cpu_seconds, losses = 0.0, 0.0, []
        with PeakRSS() as rss:
            for batch in batches:
                step_seconds, loss, _, step_cpu_seconds = train_step(model, batch, device, optimizer)
                seconds += step_seconds
                cpu_seconds += step_cpu_seconds
                losses.append(loss)
        results.append(
            {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "peak_rss_mib": rss.peak_mib}
        )
    return results


if __name__ == "__main__":
    main()
