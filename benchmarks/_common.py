"""Shared parts of the benchmarks: the benchmark model, device selection, MFU arithmetic, peak RSS, tables, JSON.

The benchmark model has SmolLM2-135M's architecture (Llama: 30 layers, hidden 576, 9 heads, 3 KV heads, MLP 1536,
vocabulary 49152, tied embeddings) and a SigLIP-base-sized tower (224 px, patch 16, 12 layers, hidden 768, 12
heads, MLP 3072) behind an `mlp2x_gelu` connector, all with random weights: speed does not depend on the values.
Nothing is downloaded; the tokenizer is a small byte-level BPE trained in-process (the LM's 49152-row embedding is
kept, so the LM head costs what SmolLM2's does). `--quick` shrinks every dimension so that a test runs each benchmark
in seconds; its figures mean nothing.

Absolute times on a shared machine are context only: the figures that mean something are ratios measured in the same
run, and every result records the load average it was measured under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) of known accelerators, matched by substring of the device name (first match
# wins, so the more specific names come first). Sources: the vendors' data sheets (dense, no sparsity).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 tensor cores: V100 has no bf16
    ("T4", 65.0),  # fp16 tensor cores: T4 has no bf16
)


def known_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device from `PEAK_BF16_TFLOPS`, or None when the name matches no known device."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_second: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (None without a peak)."""
    if not peak_tflops:
        return None
    return flops_per_token * tokens_per_second / (peak_tflops * 1e12)


def llm_flops_per_token(num_params: int, num_layers: int, hidden_size: int, context: int, training: bool) -> float:
    """Model FLOPs per token of a decoder (PaLM's appendix B): `2N` forward (`6N` with the backward) for the weights
    plus `2 * num_layers * hidden * context` forward (x3 with the backward) for attention scores and values.

    `num_params` counts the matrices a token multiplies through (the LM head included, the embedding lookup not);
    `context` is the average number of keys a query attends to.
    """
    factor = 3 if training else 1
    return factor * (2 * num_params + 2 * num_layers * hidden_size * context * 2)


def matmul_params(module: torch.nn.Module) -> int:
    """Parameters of `module` that a token multiplies through: every weight but embedding tables and norms/biases."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            total += sub.weight.numel()
    return total


# ------------------------------------------------------------------------------------------------------ devices


@dataclass
class Device:
    """Where a benchmark runs: torch device, the dtypes it measures, attention implementation, peak for MFU."""

    type: str
    name: str
    dtypes: list[torch.dtype]
    attention: str
    peak_tflops: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def synchronize(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()


def select_device(requested: str = "auto", peak_tflops: float | None = None, dtypes: str | None = None) -> Device:
    """CUDA when present (bfloat16, flash-attention 2 when installed, else SDPA), otherwise CPU (float32 and bfloat16,
    SDPA). `peak_tflops` overrides the table of known devices (on CPU it is the only way to get an MFU figure)."""
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible.")
        name = torch.cuda.get_device_name(0)
        try:
            import flash_attn  # noqa: F401

            attention = "flash_attention_2"
        except ImportError:
            attention = "sdpa"
        chosen = [torch.bfloat16]
        peak = peak_tflops if peak_tflops is not None else known_peak_tflops(name)
        device = Device("cuda", name, chosen, attention, peak)
    else:
        name = platform.processor() or platform.machine() or "cpu"
        device = Device("cpu", f"CPU ({name}, {os.cpu_count()} cores)", [torch.float32, torch.bfloat16], "sdpa", None)
        device.peak_tflops = peak_tflops
    if dtypes:
        device.dtypes = [getattr(torch, name.strip()) for name in dtypes.split(",")]
    return device


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------------ the model


REAL_TEXT = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
REAL_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
)
QUICK_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
QUICK_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16
)

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "Describe the image in detail. What is in the picture? Answer with a single word.",
    "The photo shows a red bus on a city street next to a tall building under a blue sky.",
    "two people walking a brown dog along the beach at sunset while waves roll in",
    "yes no one two three four five six seven eight nine ten left right top bottom",
] * 8


def build_benchmark_parts(quick: bool, template: str = "llama", seed: int = 0):
    """`(model, processor)`: the benchmark model (random weights, float32, eval mode) and its processor."""
    from tinyllava_hf import TinyLlavaForConditionalGeneration
    from tinyllava_hf.builder import build_processor
    from tinyllava_hf.configuration_tinyllava import TinyLlavaConfig
    from tinyllava_hf.train.tiny_parts import LLAMA_SPECIAL_TOKENS, image_processor, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(
        _CORPUS, vocab_size=600, special_tokens=(*LLAMA_SPECIAL_TOKENS, "<pad>"), pad_token="<pad>"
    )
    text = dict(QUICK_TEXT if quick else REAL_TEXT)
    vision = dict(QUICK_VISION if quick else REAL_VISION)
    config = TinyLlavaConfig(
        text_config=dict(
            model_type="llama",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        ),
        vision_config=dict(model_type="siglip_vision_model", **vision),
        connector_type="mlp2x_gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    processor = build_processor(config, tokenizer, image_processor("siglip", vision["image_size"]), template=template)
    torch.manual_seed(seed)
    model = TinyLlavaForConditionalGeneration(config).eval()
    return model, processor


def random_images(count: int, seed: int = 0, size: tuple[int, int] = (320, 240)):
    """Deterministic RGB noise images (the processor resizes them to the tower's size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


# --------------------------------------------------------------------------------------------------- memory


class PeakRSS:
    """Peak resident set size of this process while the context is open, sampled every `interval` seconds.

    `ru_maxrss` only ever grows over a process's life, so it cannot tell runs of one process apart; a sampling
    thread can (large tensors are `mmap`ed and returned to the system when freed, so RSS falls between runs).
    """

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


@contextmanager
def peak_cuda_memory(device: Device):
    """Yields a dict whose `peak_mib` is filled on exit (CUDA only)."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yield result
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------------------------------------ reporting


def load_average() -> float:
    return os.getloadavg()[0]


def environment(device: Device) -> dict[str, Any]:
    import transformers

    return {
        "device": device.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(load_average(), 2),
        "peak_tflops": device.peak_tflops,
    }


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A plain Markdown table (pastes into the README as is)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "-" if value is None else str(value)

    cells = [[cell(value) for value in row] for row in rows]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    print(f"\n{title}\n")
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in cells:
        print("| " + " | ".join(value.ljust(width) for value, width in zip(row, widths)) + " |")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (for tests; no real figures)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: float32,bfloat16 on CPU)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: from a table of known GPUs)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def setup(args: argparse.Namespace) -> Device:
    from tinyllava_hf.cli import quiet_optional_stacks

    # What `tinyllava-hf` does for every command: no DeepSpeed "Setting accelerator to CPU" (it is imported with
    # accelerate; naming the CPU is the choice it would make) and no bitsandbytes CPU-kernel warning.
    quiet_optional_stacks()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device, args.peak_tflops, args.dtypes)
    print(f"device: {device.name}, dtypes: {[dtype_name(d) for d in device.dtypes]}, attention: {device.attention}")
    print(f"load average (1 min) at start: {load_average():.2f}")
    return device


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


class Timer:
    """`with Timer(device) as t: ...` then `t.seconds` (synchronises CUDA on both ends)."""

    def __init__(self, device: Device):
        self.device = device

    def __enter__(self) -> Timer:
        self.device.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.device.synchronize()
        self.seconds = time.perf_counter() - self._start
