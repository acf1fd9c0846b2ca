"""`tinyllava-hf push` and pulling what it pushed: the upload is exactly the allow-list of a loadable checkpoint, in
one commit through `HfApi`; a folder that would not load is refused before any network call; and the pushed files,
laid into a Hub cache, load by repository id (and by branch) in a process where `tinyllava_hf` cannot be imported,
where the card's quick start runs as written."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, ModelCard

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.hub import quick_start_code, retarget_quick_start, write_checkpoint_card
from tinyllava_hf.push import (
    CheckpointError,
    checkpoint_files,
    make_push_parser,
    plan_push,
    push_checkpoint,
    render_card,
)
from tinyllava_hf.testing_utils import random_image, scramble, tiny_config, tiny_processor

REPO_ID = "tinyllava-test/tiny-push"
EXPECTED_FILES = [
    "README.md",
    *(
        f"additional_chat_templates/{name}.jinja"
        for name in ("gemma", "llama", "phi", "pretrain", "qwen2_base", "qwen2_instruct")
    ),
    "chat_template.jinja",
    "config.json",
    "configuration_tinyllava.py",
    "connectors_tinyllava.py",
    "constants.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_tinyllava.py",
    "processing_tinyllava.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
]
# What a training run leaves beside the model, none of which a push may upload.
TRAINING_LEFTOVERS = (
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "train_results.json",
    "checkpoint-5/model.safetensors",
    "checkpoint-5/config.json",
    "runs/events.out.tfevents",
    "notes.py",
)


def tiny_model(seed: int) -> TinyLlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return scramble(TinyLlavaForConditionalGeneration(tiny_config()).eval(), seed=seed, std=0.3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint folder (read it, never write: tests that change one use `checkpoint`)."""
    folder = tmp_path_factory.mktemp("saved") / "tiny-push"
    config = tiny_config()
    tiny_model(0).save_pretrained(folder)
    tiny_processor(config).save_pretrained(folder)
    return folder


@pytest.fixture
def checkpoint(saved, tmp_path):
    return Path(shutil.copytree(saved, tmp_path / "tiny-push"))


class RecordingApi:
    """An `HfApi` stand-in that records what a push asks of the Hub; `existing` are the files already in the repo."""

    def __init__(self, existing=()):
        self.calls = []
        self.existing = list(existing)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def list_repo_files(self, repo_id, **kwargs):
        self.calls.append(("list_repo_files", repo_id, kwargs))
        return self.existing

    def create_commit(self, repo_id, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    def commits(self):
        return [kwargs for name, _, kwargs in self.calls if name == "create_commit"]


@pytest.fixture
def no_network(monkeypatch):
    """Any `HfApi` built during the test fails the test on its first call."""
    import huggingface_hub

    def refuse(self, *args, **kwargs):
        raise AssertionError("the Hub was called")

    for name in ("create_repo", "create_branch", "create_commit", "upload_folder", "list_repo_files"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, refuse)


def push_cli(capsys, *argv: str) -> tuple[int, str, str]:
    args = make_push_parser().parse_args(list(argv))
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ what is uploaded


def test_the_upload_is_the_allow_list_of_a_loadable_checkpoint(checkpoint):
    for leftover in TRAINING_LEFTOVERS:
        (checkpoint / leftover).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / leftover).write_bytes(b"x")
    assert checkpoint_files(checkpoint) == EXPECTED_FILES


def test_sharded_weights_upload_the_index_and_exactly_its_shards(tmp_path):
    folder = tmp_path / "sharded"
    tiny_model(0).save_pretrained(folder, max_shard_size="100KB")
    tiny_processor(tiny_config()).save_pretrained(folder)
    (folder / "model-99999-of-99999.safetensors").write_bytes(b"stale")  # named by no index: not uploaded
    shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) > 1
    files = checkpoint_files(folder)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert [name for name in files if name.endswith(".safetensors")] == shards


def test_dry_run_prints_the_files_then_the_card_and_touches_no_network(checkpoint, capsys, no_network):
    code, out, err = push_cli(capsys, str(checkpoint), REPO_ID, "--dry-run", "--private", "--revision", "v2")
    assert code == 0, err
    listing, card = out.split("\n\n", 1)
    assert listing.splitlines() == checkpoint_files(checkpoint)
    assert card == render_card(checkpoint, REPO_ID)
    assert ModelCard(card).data.library_name == "transformers"
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in quick_start_code(card)
    assert not (checkpoint / "README.md").exists()  # the folder is never written


def test_a_card_written_before_the_push_is_pointed_at_the_repository(checkpoint):
    write_checkpoint_card(checkpoint, "Trained by a test.")
    local = (checkpoint / "README.md").read_text()
    assert 'from_pretrained("tiny-push"' in local  # a local card knows only its folder's name
    card = render_card(checkpoint, REPO_ID)
    assert card.rstrip("\n") == retarget_quick_start(local, REPO_ID).rstrip("\n")
    assert "Trained by a test." in card and '"tiny-push"' not in quick_start_code(card)
    assert quick_start_code(card).count(f'"{REPO_ID}"') == 2


def test_the_card_of_a_plain_checkpoint_claims_no_evaluation(checkpoint):
    card = ModelCard(render_card(checkpoint, REPO_ID))
    assert not card.data.eval_results and not card.data.datasets
    assert "| benchmark |" not in card.text and "No evaluation results are recorded" in card.text
    assert "{{" not in card.text and "None" not in card.text


def test_an_evaluation_row_needs_a_measured_value_its_split_and_scorer(saved):
    from tinyllava_hf.hub import EvaluationEntry, checkpoint_card_info, render_model_card

    measured = EvaluationEntry("easy-VQA", "easy-vqa", "test", "accuracy", 0.5, "bare question", "exact match")
    info = checkpoint_card_info(saved, "Trained by a test.", repo_id=REPO_ID)
    info.evaluation = [measured]
    assert (
        "| easy-VQA | test | accuracy | 0.5000 | bare question | exact match |" in render_model_card(saved, info).text
    )
    for change, needle in (({"split": ""}, "split"), ({"scorer": " "}, "scorer"), ({"value": float("nan")}, "value")):
        info.evaluation = [EvaluationEntry(**{**measured.__dict__, **change})]
        with pytest.raises(ValueError, match=needle):
            render_model_card(saved, info)


# --------------------------------------------------------------------------------------------------------- refusals


def _remove(*names):
    def change(folder: Path):
        for name in names:
            (folder / name).unlink()

    return change


def _edit_config(**values):
    def change(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        config.update(values)
        (folder / "config.json").write_text(json.dumps(config))

    return change


def _pickled_weights(folder: Path):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")


def _adapter(folder: Path):
    (folder / "model.safetensors").unlink()
    (folder / "adapter_config.json").write_text("{}")


def _no_chat_template(folder: Path):
    (folder / "chat_template.jinja").unlink()
    shutil.rmtree(folder / "additional_chat_templates")


REFUSALS = {
    "no config": (_remove("config.json"), ["no config.json"]),
    "not tinyllava": (_edit_config(model_type="llava"), ["'llava'", "not a TinyLLaVA"]),
    "no auto_map": (_edit_config(auto_map=None), ["no auto_map", "save_pretrained"]),
    "no weights": (_remove("model.safetensors"), ["no weights", "model.safetensors"]),
    "pickled weights": (_pickled_weights, ["pytorch_model.bin", "safe_serialization=True"]),
    "adapter without a base model": (_adapter, ["LoRA adapter", "--base-model", "merge-lora"]),
    "no processor": (_remove("processor_config.json"), ["no processor", "processor.save_pretrained"]),
    "no tokenizer": (_remove("tokenizer.json"), ["no complete tokenizer"]),
    "no remote code": (_remove("modeling_tinyllava.py"), ["modeling_tinyllava.py"]),
    "no imported remote code": (_remove("constants.py"), ["constants.py"]),
    "no chat template": (_no_chat_template, ["no default chat template", "set-template"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_folder_that_would_not_load_is_refused_before_any_upload(case, checkpoint, capsys, no_network):
    change, needles = REFUSALS[case]
    change(checkpoint)
    code, out, err = push_cli(capsys, str(checkpoint), REPO_ID)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err
    api = RecordingApi()
    with pytest.raises(CheckpointError):
        push_checkpoint(checkpoint, REPO_ID, api=api)
    assert api.calls == []


def test_a_missing_folder_and_a_bad_repo_id_are_refused(checkpoint, capsys, no_network):
    code, _, err = push_cli(capsys, str(checkpoint / "nope"), REPO_ID, "--dry-run")
    assert code == 1 and "is not a folder" in err
    code, _, err = push_cli(capsys, str(checkpoint), "not a repo id", "--dry-run")
    assert code == 1 and "not a valid Hub repository id" in err


# ------------------------------------------------------------------------------------------------------ the upload


def test_push_is_one_commit_of_the_listed_files_and_the_rendered_card(checkpoint):
    (checkpoint / "training_args.bin").write_bytes(b"x")
    stale = ["model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    api = RecordingApi(existing=[".gitattributes", "README.md", "model.safetensors", "notes.txt", *stale])
    push_checkpoint(checkpoint, REPO_ID, private=True, revision="v2", commit_message="first", api=api)

    assert [call[0] for call in api.calls] == ["create_repo", "create_branch", "list_repo_files", "create_commit"]
    assert api.calls[0][2] == {"private": True, "exist_ok": True, "token": None}
    assert api.calls[1][2]["branch"] == "v2" and api.calls[1][2]["exist_ok"]
    (commit,) = api.commits()
    assert commit["revision"] == "v2" and commit["commit_message"] == "first"
    added = {op.path_in_repo: op for op in commit["operations"] if isinstance(op, CommitOperationAdd)}
    deleted = sorted(op.path_in_repo for op in commit["operations"] if isinstance(op, CommitOperationDelete))
    assert sorted(added) == checkpoint_files(checkpoint)
    assert deleted == sorted(stale)  # old weights that would shadow or sit beside the new ones; nothing else
    with added["README.md"].as_file() as card:
        assert card.read().decode() == render_card(checkpoint, REPO_ID)
    with added["model.safetensors"].as_file() as weights:
        assert weights.read() == (checkpoint / "model.safetensors").read_bytes()


def test_the_cli_pushes_through_hf_api(checkpoint, capsys, monkeypatch):
    api = RecordingApi()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda **kwargs: api)
    code, out, err = push_cli(capsys, str(checkpoint), REPO_ID, "--private")
    assert code == 0, err
    assert "pushed" in out and REPO_ID in out
    assert api.calls[0][2]["private"] is True and api.commits()[0]["revision"] is None


def test_transformers_push_to_hub_uploads_the_remote_code_too(saved, monkeypatch):
    """`model.push_to_hub` + `processor.push_to_hub` upload a loadable repository (in two commits, with transformers'
    generic card): together they carry the files `tinyllava-hf push` uploads."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import ModelCardData

    from tinyllava_hf.processing_tinyllava import TinyLlavaProcessor

    api = RecordingApi()
    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    generic = ModelCard.from_template(ModelCardData(library_name="transformers"), model_description="generic")
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *args, **kwargs: generic)
    TinyLlavaForConditionalGeneration.from_pretrained(saved).push_to_hub(REPO_ID, revision="v2")
    TinyLlavaProcessor.from_pretrained(saved).push_to_hub(REPO_ID, revision="v2")

    model_commit, processor_commit = api.commits()
    model_files = {op.path_in_repo for op in model_commit["operations"]}
    processor_files = {op.path_in_repo for op in processor_commit["operations"]}
    assert {"config.json", "model.safetensors", "modeling_tinyllava.py", "constants.py"} <= model_files
    assert {"processor_config.json", "tokenizer.json", "processing_tinyllava.py", "constants.py"} <= processor_files
    assert model_files | processor_files == set(checkpoint_files(saved))


# -------------------------------------------------------------------------------------------------- pull and card

# Runs first in every child: take away every way to import tinyllava_hf (the editable install's finders and path
# hooks, any folder holding the package), so only the files in the Hub cache can serve the model.
CLEAN_PRELUDE = textwrap.dedent(
    """
    import importlib.util
    import os
    import sys

    def _editable(hook):
        return "__editable__" in getattr(getattr(hook, "__self__", hook), "__module__", "")

    sys.meta_path[:] = [finder for finder in sys.meta_path if not _editable(finder)]
    sys.path_hooks[:] = [hook for hook in sys.path_hooks if not _editable(hook)]
    def _holds_package(entry):
        return os.path.isfile(os.path.join(entry or ".", "tinyllava_hf", "__init__.py"))

    sys.path[:] = [entry for entry in sys.path if "__editable__" not in entry and not _holds_package(entry)]
    sys.path_importer_cache.clear()
    assert importlib.util.find_spec("tinyllava_hf") is None, "tinyllava_hf is importable"
    try:
        import tinyllava_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("tinyllava_hf was imported")
    """
)

PULL = textwrap.dedent(
    """
    import json
    from transformers import AutoModelForImageTextToText, AutoProcessor

    repo_id, conversation, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    results = {}
    for revision in (None, "v2"):
        model = AutoModelForImageTextToText.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
        processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        inputs = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        output = model.eval().generate(**inputs, max_new_tokens=8, do_sample=False)
        results[str(revision)] = {
            "model": type(model).__name__,
            "processor": type(processor).__name__,
            "tokens": output[0, inputs["input_ids"].shape[1]:].tolist(),
        }
    with open(out, "w") as handle:
        json.dump(results, handle)
    """
)

QUICK_START = "import runpy\nrunpy.run_path('quick_start.py', run_name='__main__')\n"


def lay_in_hub_cache(cache: Path, repo_id: str, folder: Path, branch: str, base_model: str | None = None) -> Path:
    """Lay exactly what a push of `folder` uploads (a checkpoint, or an adapter naming `base_model`) into a Hub cache
    entry as huggingface_hub writes one (a snapshot per commit, a ref per branch), under a random commit hash;
    returns the snapshot folder."""
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    plan = plan_push(folder, repo_id, base_model=base_model)
    for path in plan.files:
        (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
        if plan.contents(path) is not None:
            (snapshot / path).write_bytes(plan.contents(path))
        else:
            shutil.copyfile(folder / path, snapshot / path)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / branch).write_text(commit)
    return snapshot


def run_clean(script: str, *args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh `python -I` where `tinyllava_hf` cannot be imported, offline, on the Hub cache in
    `home`; fails the test (with the child's output) unless it exits 0."""
    (cwd / "child.py").write_text(CLEAN_PRELUDE + script)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-I", "child.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def hub_cache(saved, tmp_path_factory):
    """A Hub cache holding REPO_ID as two pushes left it: `saved` on main and another model (other weights) on the
    branch `v2`."""
    home = tmp_path_factory.mktemp("hf_home")
    other = tmp_path_factory.mktemp("other") / "tiny-push"
    shutil.copytree(saved, other)
    tiny_model(1).save_pretrained(other)
    main = lay_in_hub_cache(home / "hub", REPO_ID, saved, "main")
    lay_in_hub_cache(home / "hub", REPO_ID, other, "v2")
    return home, main, other


def conversation(image: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What shape?"}]}]


@pytest.mark.subprocess
def test_a_pushed_repository_loads_by_id_and_branch_without_tinyllava_hf(saved, hub_cache, tmp_path):
    home, _, other = hub_cache
    random_image(0).save(tmp_path / "image.png")
    messages = conversation(str(tmp_path / "image.png"))
    run_clean(PULL, REPO_ID, json.dumps(messages), str(tmp_path / "out.json"), home=home, cwd=tmp_path)
    child = json.loads((tmp_path / "out.json").read_text())

    processor = tiny_processor(tiny_config())
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = {}
    for revision, folder in (("None", saved), ("v2", other)):
        model = TinyLlavaForConditionalGeneration.from_pretrained(folder).eval()
        expected[revision] = model.generate(**inputs, max_new_tokens=8, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
        assert child[revision]["model"] == "TinyLlavaForConditionalGeneration"
        assert child[revision]["processor"] == type(processor).__name__
        assert child[revision]["tokens"] == expected[revision].tolist()
    assert child["None"]["tokens"] != child["v2"]["tokens"]  # the branch really is the other model


@pytest.mark.subprocess
def test_the_pushed_cards_quick_start_runs_as_written(saved, hub_cache, tmp_path):
    home, snapshot, _ = hub_cache
    card = (snapshot / "README.md").read_text()
    code = quick_start_code(card)
    assert f'"{REPO_ID}"' in code
    image = "image.png"  # the file the card's example names
    assert f'"image": "{image}"' in code
    random_image(0).save(tmp_path / image)
    (tmp_path / "quick_start.py").write_text(code)
    printed = run_clean(QUICK_START, home=home, cwd=tmp_path).stdout

    # The same code, pointed at the local folder, in this process.
    local = quick_start_code(retarget_quick_start(card, str(saved)))
    here = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(here):
            exec(compile(local, "quick_start.py", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    assert printed.strip().splitlines()[-1] == here.getvalue().strip().splitlines()[-1]
    assert printed.strip().splitlines()[-1].startswith("[")


# ----------------------------------------------------------------------------------------------- the real Hub


@pytest.mark.subprocess
@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="pushes to the real Hub: set HF_TOKEN to run")
@pytest.mark.hub
def test_push_and_pull_on_the_hub(saved, tmp_path):
    """Push the tiny checkpoint to a new private repository (main and a branch), pull both back by id in a clean
    process with no tinyllava_hf, then delete the repository."""
    from huggingface_hub import HfApi

    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    api = HfApi(token=os.environ["HF_TOKEN"])
    repo_id = f"{api.whoami()['name']}/tinyllava-hf-push-test-{uuid.uuid4().hex[:8]}"
    push = "from tinyllava_hf.push import make_push_parser\n"
    push += "import sys; args = make_push_parser().parse_args(sys.argv[1:]); sys.exit(args.func(args))\n"
    try:
        for extra in ([], ["--revision", "v2"]):
            subprocess.run(
                [sys.executable, "-c", push, str(saved), repo_id, "--private", *extra],
                env=env,
                check=True,
                timeout=600,
            )
        random_image(0).save(tmp_path / "image.png")
        messages = json.dumps(conversation(str(tmp_path / "image.png")))
        (tmp_path / "child.py").write_text(CLEAN_PRELUDE + PULL)
        env.update(HF_HOME=str(tmp_path / "hf_home"))
        subprocess.run(
            [sys.executable, "-I", "child.py", repo_id, messages, str(tmp_path / "out.json")],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=600,
        )
        child = json.loads((tmp_path / "out.json").read_text())
        assert child["None"]["tokens"] == child["v2"]["tokens"]  # the same checkpoint was pushed to both
        assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *checkpoint_files(saved)])
    finally:
        api.delete_repo(repo_id, missing_ok=True)


# ------------------------------------------------------------------------------------------------- LoRA adapters

BASE_ID = "tinyllava-test/tiny-base"
ADAPTER_ID = "tinyllava-test/tiny-lora"
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def lora_run(parts, tmp_path_factory):
    """A `tinyllava-hf train` LoRA run from parts (the connector and the deepest tower layer trained fully, through
    PEFT's modules_to_save) and its `merge-lora` output: `(adapter_dir, merged_dir)`. Read them, never write."""
    from trl import SFTConfig

    from tinyllava_hf.cli import main as cli
    from tinyllava_hf.train.arguments import DataArguments, ModelArguments
    from tinyllava_hf.train.trainer import run_training

    root = tmp_path_factory.mktemp("lora")
    model_args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["siglip"]),
        template="llama",
        tune_llm="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        tune_vision_tower="partial",
        vision_tower_train_layers=1,
    )
    data_args = DataArguments(data_path=[str(parts["finetune"])], image_folder=str(parts["data"]))
    config = SFTConfig(
        output_dir=str(root / "adapter"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=5e-2,  # large, so that the adapter and the fully trained parts visibly move
        max_length=256,
        bf16=False,
        use_cpu=True,
        activation_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=7,
        dataloader_num_workers=0,
    )
    run_training(model_args, data_args, config)
    assert cli(["merge-lora", str(root / "adapter"), str(root / "merged")]) == 0
    return root / "adapter", root / "merged"


def test_an_adapter_pushes_as_a_peft_repository_naming_its_hub_base(lora_run, capsys, no_network):
    adapter, _ = lora_run
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(saved["base_model_name_or_path"]) == (adapter / "base_model").resolve()  # what training recorded
    assert "model.connector" in saved["modules_to_save"]  # the fully trained parts travel in the adapter weights

    code, out, err = push_cli(capsys, str(adapter), ADAPTER_ID, "--base-model", BASE_ID, "--dry-run")
    assert code == 0, err
    listing, card = out.split("\n\n", 1)
    assert listing.splitlines() == ADAPTER_FILES  # no base_model/, processor, trainer state or training_args.bin
    metadata = ModelCard(card).data
    assert metadata.library_name == "peft" and metadata.base_model == BASE_ID
    code = quick_start_code(card)
    assert f'AutoModelForImageTextToText.from_pretrained("{BASE_ID}", trust_remote_code=True)' in code
    assert f'PeftModel.from_pretrained(model, "{ADAPTER_ID}")' in code

    plan = plan_push(adapter, ADAPTER_ID, base_model=BASE_ID)
    uploaded = json.loads(plan.contents("adapter_config.json"))
    assert uploaded == {**saved, "base_model_name_or_path": BASE_ID}
    assert json.loads((adapter / "adapter_config.json").read_text()) == saved  # the folder is never written

    api = RecordingApi()
    push_checkpoint(adapter, ADAPTER_ID, base_model=BASE_ID, api=api)
    (commit,) = api.commits()
    added = {op.path_in_repo: op for op in commit["operations"]}
    assert sorted(added) == ADAPTER_FILES
    with added["adapter_config.json"].as_file() as handle:
        assert json.loads(handle.read()) == uploaded


def test_an_adapter_base_must_be_a_hub_id(lora_run, checkpoint, tmp_path, capsys, no_network):
    adapter, _ = lora_run
    # Training records the base as a local folder: nobody else could resolve it.
    code, out, err = push_cli(capsys, str(adapter), ADAPTER_ID, "--dry-run")
    assert code == 1 and out == "" and "local path" in err and "--base-model" in err
    for local in (str(adapter / "base_model"), "./base", "/no/such/base"):
        code, _, err = push_cli(capsys, str(adapter), ADAPTER_ID, "--base-model", local, "--dry-run")
        assert code == 1 and "local path" in err, local
    # --base-model belongs to adapters only.
    code, _, err = push_cli(capsys, str(checkpoint), REPO_ID, "--base-model", BASE_ID, "--dry-run")
    assert code == 1 and "--base-model is for LoRA adapter folders" in err
    # Pickled adapter weights are not uploaded.
    pickled = Path(shutil.copytree(adapter, tmp_path / "pickled", ignore=shutil.ignore_patterns("base_model")))
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    code, _, err = push_cli(capsys, str(pickled), ADAPTER_ID, "--base-model", BASE_ID, "--dry-run")
    assert code == 1 and "adapter_model.bin" in err and "safe_serialization=True" in err


PEFT_PULL = textwrap.dedent(
    """
    import runpy
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    base_id, adapter_id, batch, out = sys.argv[1:5]
    model = AutoModelForImageTextToText.from_pretrained(base_id, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    model = PeftModel.from_pretrained(model, adapter_id).eval()
    with __import__("torch").no_grad():
        logits = model(**load_file(batch)).logits
    save_file({"logits": logits.contiguous()}, out)
    runpy.run_path("quick_start.py", run_name="__main__")  # the card's quick start, as written
    """
)


@pytest.mark.subprocess
def test_a_pushed_adapter_loads_on_its_base_with_peft_and_gives_the_merged_logits(lora_run, parts, tmp_path):
    """Base and adapter laid into a Hub cache as their pushes upload them; in a process without tinyllava_hf,
    `PeftModel.from_pretrained(base, ADAPTER_ID)` restores the LoRA matrices and the fully trained connector and
    tower layer: its logits are the `merge-lora` checkpoint's, and the card's quick start generates what it does."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tinyllava_hf.train.collator import TinyLlavaCollator
    from tinyllava_hf.train.data import load_dataset_files

    adapter, merged_dir = lora_run
    home = tmp_path / "hf_home"
    lay_in_hub_cache(home / "hub", BASE_ID, adapter / "base_model", "main")
    snapshot = lay_in_hub_cache(home / "hub", ADAPTER_ID, adapter, "main", base_model=BASE_ID)

    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    processor = AutoProcessor.from_pretrained(merged_dir)
    dataset, _ = load_dataset_files([parts["finetune"]], image_folder=parts["data"])
    batch = TinyLlavaCollator(processor)([dataset[0], dataset[1], dataset[len(dataset) - 1]])
    batch.pop("labels")
    save_file({key: value.contiguous() for key, value in batch.items()}, tmp_path / "batch.safetensors")
    random_image(0).save(tmp_path / "image.png")
    (tmp_path / "quick_start.py").write_text(quick_start_code((snapshot / "README.md").read_text()))

    printed = run_clean(
        PEFT_PULL, BASE_ID, ADAPTER_ID, "batch.safetensors", "logits.safetensors", home=home, cwd=tmp_path
    ).stdout
    with torch.no_grad():
        expected = merged(**batch).logits
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], expected, atol=1e-5, rtol=1e-5)
    base = AutoModelForImageTextToText.from_pretrained(adapter / "base_model").eval()
    with torch.no_grad():
        assert not torch.allclose(base(**batch).logits, expected, atol=1e-3)  # the adapter did change the model

    inputs = processor.apply_chat_template(
        [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": str(tmp_path / "image.png")},
                        {"type": "text", "text": "What is in the image?"},
                    ],
                }
            ]
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = merged.generate(**inputs, max_new_tokens=16, do_sample=False)
    decoded = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert printed.strip().splitlines()[-1] == repr(decoded)
