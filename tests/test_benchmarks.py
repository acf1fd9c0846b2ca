"""The benchmarks (`benchmarks/*.py`) run end to end with `--quick` and write their ratio keys; device selection and
the MFU arithmetic work without a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_common():
    """benchmarks/_common.py as a module, without putting benchmarks/ on sys.path: its `llama_cpp.py` would then
    shadow the real `llama_cpp` package for every later test in this process."""
    spec = importlib.util.spec_from_file_location("tinyllava_benchmarks_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_common = _load_common()
known_peak_tflops = _common.known_peak_tflops
llm_flops_per_token = _common.llm_flops_per_token
matmul_params = _common.matmul_params
mfu = _common.mfu
select_device = _common.select_device


def test_benchmarks_folder_does_not_shadow_packages():
    assert str(BENCHMARKS) not in sys.path


def run_benchmark(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--json", str(out), "--peak-tflops", "1"]
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    completed = subprocess.run(command + list(extra), capture_output=True, text=True, timeout=900, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "| " in completed.stdout  # the table
    assert "Setting accelerator to CPU" not in completed.stderr  # DeepSpeed's, silenced as `tinyllava-hf` does
    return json.loads(out.read_text())


def test_inference_benchmark(tmp_path):
    result = run_benchmark("inference", tmp_path, "--dtypes", "float32")
    assert result["environment"]["load_average_1min"] >= 0
    (row,) = result["results"]
    ratios = ("ttft_ratio_b1", "ttft_ratio_b8", "decode_ratio_b1", "decode_ratio_b8", "batch8_vs_8x_batch1")
    for key in (*ratios, "batch8_prefill_speedup", "batch8_decode_speedup"):
        assert row[key] > 0, key
    assert 0 < row["batch8_prefill_share"] < 1
    assert row["tokens_identical"] is True
    assert row["decode_mfu_b8"] > 0  # --peak-tflops gives CPU an MFU figure
    # The fast path (static cache + compiled decode step) ran on CPU, its tokens asserted equal to eager's.
    for size in ("b1", "b8"):
        fast = row["fast_path"][size]
        assert fast["first_call_s"] > 0 and fast["decode_ratio_vs_eager"] > 0
        assert len(fast["decode_pair_ratios"]) == 1


def test_training_benchmark(tmp_path):
    result = run_benchmark("training", tmp_path, "--packed-sdpa", "--trl-head", "--repeats", "2")
    runs = result["runs"]
    assert set(runs) == {"naive", "grouped", "packed", "packed-sdpa", "naive-trl-head"}
    # Every run but one uses the trainer's CPU head (labelled positions only); the losses agree with TRL's head.
    assert {runs[mode]["head"] for mode in runs} == {"labelled", "trl"} and runs["naive-trl-head"]["head"] == "trl"
    assert result["trainer_head_vs_trl_head"] > 0
    assert result["packed_vs_naive"] > 0 and result["grouped_vs_naive"] > 0
    assert result["packed_loss_max_relative_diff"] < 1e-3
    # The default packed run is padding-free with per-sample attention; the others keep plain SDPA.
    assert runs["packed"]["attention"] == "varlen_sdpa" and runs["packed"]["padding_fraction"] == 0
    assert {runs[mode]["attention"] for mode in ("naive", "grouped", "packed-sdpa", "naive-trl-head")} == {"sdpa"}
    assert runs["packed-sdpa"]["padding_fraction"] < runs["naive"]["padding_fraction"]
    assert all(len(run["tokens_per_s_all"]) == len(run["tokens_per_cpu_s_all"]) == 2 for run in runs.values())
    assert result["packed_vs_naive_cpu"] == runs["packed"]["cpu_speedup_vs_naive"] > 0
    assert all(run["peak_rss_mib"] > 0 and run["mfu"] > 0 for run in runs.values())


def test_training_length_study(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "training.py"), "--quick", "--length-study"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    shares = [int(line.split("|")[-2].strip().rstrip("%")) for line in completed.stdout.splitlines() if "%" in line]
    assert len(shares) == 8 and all(0 <= share < 100 for share in shares)


def test_feature_cache_benchmark(tmp_path):
    result = run_benchmark("feature_cache", tmp_path)
    for key in ("cached_epoch_speedup", "cached_epoch_cpu_speedup", "first_epoch_ratio", "run_speedup"):
        assert result[key] > 0, key
    assert result["loss_max_relative_diff"] < 1e-5
    assert result["runs"]["cached"]["cache"]["misses"] == result["runs"]["cached"]["cache"]["hits"]


def test_known_device_peaks():
    assert known_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert known_peak_tflops("NVIDIA H200") == 989.0
    assert known_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert known_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert known_peak_tflops("NVIDIA L4") == 121.0
    assert known_peak_tflops("NVIDIA L40S") == 362.0
    assert known_peak_tflops("Some Future Accelerator") is None


def test_mfu_arithmetic():
    # 1e9 FLOPs per token at 1e5 tokens/s is 1e14 FLOP/s: 10% of a 1000 TFLOP/s device.
    assert mfu(1e9, 1e5, 1000.0) == pytest.approx(0.1)
    assert mfu(1e9, 1e5, None) is None
    # 6N for training, 2N for inference, plus attention: 2 * 2 * layers * hidden * context per forward.
    assert llm_flops_per_token(100, 2, 8, 10, training=False) == 2 * 100 + 2 * 2 * 8 * 10 * 2
    assert llm_flops_per_token(100, 2, 8, 10, training=True) == 3 * (2 * 100 + 2 * 2 * 8 * 10 * 2)
    layer = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    assert matmul_params(layer) == 12  # the Linear weight only


def test_device_selection_on_cpu():
    device = select_device("cpu", peak_tflops=2.5)
    assert device.type == "cpu" and device.attention == "sdpa" and device.peak_tflops == 2.5
    assert device.dtypes == [torch.float32, torch.bfloat16]
    assert select_device("cpu", dtypes="bfloat16").dtypes == [torch.bfloat16]
    assert select_device("cpu").peak_tflops is None  # no MFU on CPU unless a peak is given
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(SystemExit, match="no CUDA device"):
            select_device("cuda")


def test_llama_cpp_benchmark(tmp_path):
    import importlib.metadata

    try:  # by distribution: `import llama_cpp` here would find benchmarks/llama_cpp.py, which is on sys.path
        importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            "llama-cpp-python is not installed (pip install -e .[llama-cpp]); CI installs it via the dev extra"
        )
    out = tmp_path / "llama_cpp.json"
    command = [sys.executable, str(BENCHMARKS / "llama_cpp.py"), "--quick", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["speed"]) == {"pytorch", "f16", "q8_0"}
    for engine in ("f16", "q8_0"):
        assert result["speed"][engine]["ttft_ratio_vs_pytorch"] > 0
        assert result["speed"][engine]["decode_ratio_vs_pytorch"] > 0
    assert result["score"]["questions"] == 4
    assert result["score"]["pytorch"]["same_answer_as_pytorch"] == 1
    assert all(0 <= result["score"][engine]["accuracy"] <= 1 for engine in ("pytorch", "f16", "q8_0"))
