"""What users install is a wheel: build it, install it into a fresh environment outside the checkout, run the demo.

The fresh environment is a new virtual environment whose only link to this one is a `.pth` line naming its
site-packages, so third-party packages resolve but this checkout's editable install (a `.pth` hook of its own, which a
plain path line does not run) does not: `tinyllava_hf` can only come from the wheel.
"""

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHECKOUT = Path(__file__).resolve().parents[1]
# Everything the package reads at run time, by its path inside the package -> its one copy in the repository.
PACKAGED_FILES = {
    "tinyllava_hf/resources/model_card_template.md": "model_card_template.md",
    "tinyllava_hf/resources/recipes/easy_vqa/pretrain/config_demo.yaml": "recipes/easy_vqa/pretrain/config_demo.yaml",
    "tinyllava_hf/resources/recipes/easy_vqa/finetune/config_demo.yaml": "recipes/easy_vqa/finetune/config_demo.yaml",
    "tinyllava_hf/resources/recipes/easy_vqa/pretrain/config_spoken.yaml": (
        "recipes/easy_vqa/pretrain/config_spoken.yaml"
    ),
    "tinyllava_hf/resources/recipes/easy_vqa/finetune/config_spoken.yaml": (
        "recipes/easy_vqa/finetune/config_spoken.yaml"
    ),
    "tinyllava_hf/resources/recipes/easy_vqa/pretrain/config_smollm2.yaml": (
        "recipes/easy_vqa/pretrain/config_smollm2.yaml"
    ),
    "tinyllava_hf/resources/recipes/easy_vqa/finetune/config_smollm2.yaml": (
        "recipes/easy_vqa/finetune/config_smollm2.yaml"
    ),
}


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy of the working tree (links kept as links), so no build/ folder lands in the checkout and no
    # stale one is reused.
    source = tmp_path_factory.mktemp("source") / "tinyllava-hf"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*_output", "outputs"
    )
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."], source
    )
    (wheel_file,) = dist.glob("tinyllava_hf-*.whl")
    return wheel_file


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("env") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], env.parent)
    python = env / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env.parent).stdout.strip()
    )
    (site / "third_party.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], env.parent)
    return env


@pytest.mark.parametrize("packaged, top_level", sorted(PACKAGED_FILES.items()))
def test_wheel_carries_the_top_level_text(wheel, packaged, top_level):
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(packaged).decode("utf-8") == (CHECKOUT / top_level).read_text(encoding="utf-8")


def test_every_resource_is_listed_and_links_to_its_one_copy():
    resources = CHECKOUT / "tinyllava_hf" / "resources"
    found = {str(path.relative_to(CHECKOUT)) for path in resources.rglob("*") if not path.is_dir()}
    assert found == set(PACKAGED_FILES)
    for packaged, top_level in PACKAGED_FILES.items():
        assert (CHECKOUT / packaged).is_symlink(), f"{packaged} must link to {top_level}, not copy it"
        assert (CHECKOUT / packaged).resolve() == (CHECKOUT / top_level).resolve()


def test_quick_demo_runs_from_the_installed_wheel(fresh_env, tmp_path):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    check = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import tinyllava_hf
        checkout = {str(CHECKOUT)!r}
        # The checkout's root (where the source package lives) is not importable; its .venv's packages may be.
        assert all(Path(entry or ".").resolve() != Path(checkout) for entry in sys.path), sys.path
        assert Path(tinyllava_hf.__file__).is_relative_to({str(fresh_env)!r}), tinyllava_hf.__file__
        print(tinyllava_hf.__file__)
        """
    )
    _run([str(fresh_env / "bin" / "python"), "-c", check], workdir)
    output = workdir / "demo"
    _run([str(fresh_env / "bin" / "tinyllava-hf"), "demo", "--output-dir", str(output), "--quick"], workdir)
    card = textwrap.dedent(
        f"""
        from huggingface_hub import ModelCard
        card = ModelCard.load({str(output / "final" / "README.md")!r})
        assert card.data.library_name == "transformers", card.data
        assert "recipes/easy_vqa/finetune/config_demo.yaml" in card.text
        assert len(card.data.eval_results) == 3  # accuracy, sentence-case accuracy, blind accuracy
        """
    )
    _run([str(fresh_env / "bin" / "python"), "-c", card], workdir)
    assert (output / "eval_results.json").is_file() and (output / "training.png").is_file()
