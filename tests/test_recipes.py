"""Every recipe, validated against the parser that `tinyllava-hf train` itself uses (litgpt `test_config_hub` style),
and the `train` / `merge-lora` / `tiny-parts` command lines.

Without training: every `config_*.yaml` under `recipes/` (and the demo's packaged recipes) goes through
`tinyllava-hf train`'s argument path (`tinyllava_hf.cli` -> `trainer.parse_train_args`, i.e. TRL's `TrlParser` over
ModelArguments / DataArguments / SFTConfig), which rejects unknown keys; each key lands, unchanged, in the one argument
group that owns it, with sensible values; the upstream model recipes carry upstream TinyLLaVA Factory's
hyperparameters (`scripts/train/*.sh`); stages chain (a finetune starts from its pretrain's `output_dir`); and every
accelerate / DeepSpeed config parses and names files that exist. With training: the debug pretrain -> finetune chain
through the command line.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from tinyllava_hf.chat_templates import list_chat_templates
from tinyllava_hf.cli import main as cli
from tinyllava_hf.cli import make_parser as make_cli_parser
from tinyllava_hf.train.arguments import DataArguments, ModelArguments
from tinyllava_hf.train.cli import make_merge_lora_parser, make_tiny_parts_parser, make_train_parser
from tinyllava_hf.train.trainer import make_parser, parse_train_args

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
# The human-facing recipes, plus any the package ships (the demo's); a recipe linked from one place to the other is
# validated once.
_FOUND = [*RECIPES.glob("**/config_*.yaml"), *(REPO / "tinyllava_hf").glob("**/recipes/**/config_*.yaml")]
RECIPE_FILES = sorted({path.resolve(): path for path in sorted(_FOUND)}.values())
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((RECIPES / "deepspeed").glob("*.json"))
GPUS = 8  # the recipes' global batch sizes assume one 8-GPU machine

SIGLIP = "google/siglip-so400m-patch14-384"
UPSTREAM_MODELS = {
    "phi2_siglip": ("microsoft/phi-2", SIGLIP, "phi", 3072),
    "tinyllama_clip": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "openai/clip-vit-large-patch14-336", "llama", 2048),
    "tinyllama_siglip": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", SIGLIP, "llama", 2048),
    "gemma_siglip": ("google/gemma-2b-it", SIGLIP, "gemma", 2048),
    "qwen2_siglip": ("Qwen/Qwen2-0.5B", SIGLIP, "qwen2_base", 2048),
    "qwen25_siglip": ("Qwen/Qwen2.5-3B", SIGLIP, "qwen2_base", 2048),
}
UPSTREAM_VARIANTS = ("pretrain/config_full.yaml", "finetune/config_full.yaml", "finetune/config_lora.yaml")
UPSTREAM_VARIANTS += ("finetune/config_qlora.yaml",)


def recipe_id(path: Path) -> str:
    """`model/stage/config_x.yaml` for `recipes/`, the repository path for recipes elsewhere."""
    return path.relative_to(RECIPES if path.is_relative_to(RECIPES) else REPO).as_posix()


def parse(recipe: Path, *overrides: str) -> tuple[dict, tuple]:
    """The raw YAML and the argument groups, parsed the way `tinyllava-hf train --config RECIPE` parses them.

    GPU recipes ask for bf16, which `TrainingArguments` refuses on a machine without a GPU; `--use_cpu true` lets
    them validate anywhere (CI) and changes nothing else.
    """
    raw = yaml.safe_load(recipe.read_text())
    if not raw.get("use_cpu"):
        overrides = ("--use_cpu", "true", *overrides)
    args = make_cli_parser("train").parse_args(["train", "--config", str(recipe), *overrides])
    return raw, parse_train_args(args.train_argv)


def upstream(model: str, variant: str) -> tuple[dict, tuple]:
    return parse(RECIPES / model / variant)


def test_recipe_hub_layout():
    ids = {recipe_id(path) for path in RECIPE_FILES}
    for model in UPSTREAM_MODELS:
        assert {f"{model}/{variant}" for variant in UPSTREAM_VARIANTS} <= ids
        readme = (RECIPES / model / "README.md").read_text()
        for variant in UPSTREAM_VARIANTS:
            assert f"--config recipes/{model}/{variant}" in readme, (model, variant)
        assert "accelerate launch --config_file recipes/accelerate_configs/zero3.yaml" in readme
        assert f"tinyllava-hf train --config recipes/{model}/" in readme
    assert {"zero2", "zero3", "zero3_offload", "multi_gpu", "cpu_2proc"} <= {p.stem for p in ACCELERATE_CONFIGS}
    assert {"zero2", "zero3", "zero3_offload"} <= {p.stem for p in DEEPSPEED_CONFIGS}


def test_there_are_debug_recipes_for_both_stages():
    names = {recipe_id(path) for path in RECIPE_FILES}
    assert "debug/pretrain/config_siglip_llama.yaml" in names
    assert {"debug/finetune/config_full.yaml", "debug/finetune/config_lora.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=recipe_id)
def test_every_recipe_validates_and_each_key_lands_unchanged(recipe):
    raw, groups = parse(recipe)
    model_args, data_args, training_args = groups
    assert isinstance(model_args, ModelArguments) and isinstance(data_args, DataArguments)
    # Every key landed somewhere (TrlParser rejects unknown ones), in exactly one group, with its value.
    for key, expected in raw.items():
        owners = [group for group in groups if hasattr(group, key)]
        assert len(owners) == 1, f"{key} belongs to {len(owners)} argument groups"
        actual = getattr(owners[0], key)
        if key == "report_to" and expected == "none":
            expected = []
        elif isinstance(actual, list) and not isinstance(expected, list):
            expected = [expected]  # a single data_path
        if key == "use_cpu" and not expected:
            continue  # overridden for validation, see parse()
        assert actual == expected, key
    assert training_args.output_dir == raw["output_dir"]
    assert data_args.data_path == (raw["data_path"] if isinstance(raw["data_path"], list) else [raw["data_path"]])

    # Sensible values: a run that starts, trains something, and can be found afterwards.
    assert model_args.model_name_or_path or (model_args.llm and model_args.vision_tower)
    # `lm` is the LM's own chat template, kept by name beside the upstream ones.
    assert model_args.template is None or model_args.template in (*list_chat_templates(), "lm")
    assert all(Path(path).suffix in (".json", ".jsonl") for path in data_args.data_path)
    assert training_args.learning_rate > 0 and training_args.per_device_train_batch_size >= 1
    assert training_args.max_steps > 0 or training_args.num_train_epochs > 0
    assert training_args.max_length is None or training_args.max_length > 0
    tuned = (model_args.tune_llm, model_args.tune_vision_tower, model_args.tune_connector)
    assert any(mode != "frozen" for mode in tuned), "the recipe trains nothing"
    if recipe.parent.parent.name == "debug":
        # CPU-sized: fp32 (SFTConfig defaults bf16 to True), no reporting, bounded length.
        assert training_args.bf16 is False and training_args.use_cpu is True
        assert training_args.report_to in ([], ["none"], "none")
        assert training_args.max_length <= 512
        assert "tinyllava-hf tiny-parts" in recipe.read_text()  # documents how to make the parts


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=recipe_id)
def test_stages_chain_and_documented_commands_point_at_real_files(recipe):
    raw = yaml.safe_load(recipe.read_text())
    start = raw.get("model_name_or_path")
    if start and start.startswith("outputs/"):
        # A finetune starts from another recipe of the same model folder: the stage that writes that output_dir.
        siblings = recipe.parent.parent.glob("*/config_*.yaml")
        producers = [p for p in siblings if yaml.safe_load(p.read_text())["output_dir"] == start]
        assert producers, f"no recipe in {recipe.parent.parent.name}/ writes {start}"
    text = recipe.read_text()
    for path in re.findall(r"--config_file (\S+)", text) + re.findall(r"--config (recipes/\S+)", text):
        assert (REPO / path).is_file(), path
    if recipe.parent.parent.name in (*UPSTREAM_MODELS, "debug"):
        assert f"--config recipes/{recipe_id(recipe)}" in text  # documents how to run itself


@pytest.mark.parametrize("model", UPSTREAM_MODELS)
def test_upstream_recipes_carry_upstream_hyperparameters(model):
    llm, vision_tower, template, max_length = UPSTREAM_MODELS[model]
    runs = {variant: upstream(model, variant) for variant in UPSTREAM_VARIANTS}
    for variant, (raw, (model_args, _, training_args)) in runs.items():
        # Shared by every upstream stage: 1 epoch, cosine with 3% warmup, no weight decay, bf16, checkpointing.
        assert training_args.num_train_epochs == 1 and training_args.lr_scheduler_type == "cosine", variant
        assert training_args.warmup_steps == 0.03 and training_args.weight_decay == 0.0, variant
        assert raw["bf16"] is True and training_args.activation_checkpointing is True, variant
        assert training_args.max_length == max_length, variant
        assert model_args.tune_vision_tower == "frozen" and model_args.tune_connector == "full", variant

    raw, (model_args, data_args, training_args) = runs["pretrain/config_full.yaml"]
    assert (model_args.llm, model_args.vision_tower, model_args.template) == (llm, vision_tower, "pretrain")
    assert model_args.connector == "mlp2x_gelu" and model_args.vision_feature_layer == -2
    assert model_args.tune_llm == "frozen" and training_args.learning_rate == 1e-3
    assert global_batch(training_args) == 256
    assert data_args.data_path[0].endswith("blip_laion_cc_sbu_558k.json")
    pretrain_output = training_args.output_dir

    raw, (model_args, data_args, training_args) = runs["finetune/config_full.yaml"]
    assert (model_args.model_name_or_path, model_args.template) == (pretrain_output, template)
    assert model_args.tune_llm == "full" and training_args.learning_rate == 2e-5
    assert global_batch(training_args) == 128 and data_args.group_by_modality_length is True
    assert data_args.data_path[0].endswith("llava_v1_5_mix665k.json")

    for variant, mode in (("finetune/config_lora.yaml", "lora"), ("finetune/config_qlora.yaml", "qlora")):
        raw, (model_args, data_args, training_args) = runs[variant]
        assert (model_args.model_name_or_path, model_args.template) == (pretrain_output, template)
        assert model_args.tune_llm == mode and (model_args.lora_r, model_args.lora_alpha) == (128, 256)
        assert training_args.learning_rate == 2e-4 and global_batch(training_args) == 128
        assert "accelerate_configs/zero2.yaml" in (RECIPES / model / variant).read_text()  # ZeRO-2, as upstream


def test_phi2_share_recipe_trains_siglip_from_layer_12():
    raw, (model_args, _, training_args) = upstream("phi2_siglip", "pretrain/config_share.yaml")
    assert model_args.tune_llm == "full" and model_args.tune_vision_tower == "partial"
    # SigLIP-so400m has 27 layers; vision_feature_layer -2 reads layer 25's output, so layers 12..25 train.
    assert model_args.vision_tower_train_layers == 25 - 12 + 1
    assert training_args.learning_rate == 2e-5 and global_batch(training_args) == 256
    assert training_args.max_length == 3072


def global_batch(training_args) -> int:
    return training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * GPUS


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda path: path.name)
def test_accelerate_configs_parse_and_name_existing_deepspeed_files(config):
    parsed = load_config_from_file(str(config))
    raw = yaml.safe_load(config.read_text())
    assert parsed.num_machines == 1 and parsed.use_cpu is False  # use_cpu: true would start a single process
    if parsed.distributed_type == DistributedType.DEEPSPEED:
        ds_file = REPO / parsed.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        # accelerate refuses mixed_precision next to a deepspeed_config_file: the recipe's bf16 fills "auto".
        assert "mixed_precision" not in raw and ds["bf16"]["enabled"] == "auto"
        stage = ds["zero_optimization"]["stage"]
        assert parsed.deepspeed_config["zero3_init_flag"] is (stage == 3)
        if config.stem != "cpu_2proc":
            assert ds_file.stem == config.stem
    else:
        assert parsed.distributed_type == DistributedType.MULTI_GPU
    expected_processes = 2 if config.stem == "cpu_2proc" else GPUS
    assert parsed.num_processes == expected_processes


@pytest.mark.parametrize("config", DEEPSPEED_CONFIGS, ids=lambda path: path.name)
def test_deepspeed_configs_leave_batch_and_precision_to_the_trainer(config):
    ds = json.loads(config.read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == int(config.stem[4])
    for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "gradient_clipping"):
        assert ds[key] == "auto", key
    offloaded = {zero.get(key, {}).get("device") for key in ("offload_optimizer", "offload_param")}
    assert offloaded == ({"cpu"} if "offload" in config.stem else {None})
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # save_model writes whole weights


def test_unknown_recipe_key_is_an_error(tmp_path):
    recipe = tmp_path / "config_bad.yaml"
    text = (RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml").read_text()
    recipe.write_text(text + "\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


def test_cli_overrides_win_over_the_recipe():
    recipe = RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml"
    model_args, _, training_args = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--learning-rate", "0.5", "--tune_llm", "full", "--max_steps", "2"]
    )
    assert training_args.learning_rate == 0.5 and training_args.max_steps == 2 and model_args.tune_llm == "full"


def test_cli_train_forwards_every_option_verbatim_and_merge_lora_parses():
    args = make_cli_parser("train").parse_args(
        ["train", "--config", "r.yaml", "--learning_rate", "1e-3", "-x", "--bf16", "false"]
    )
    assert args.train_argv == ["--config", "r.yaml", "--learning_rate", "1e-3", "-x", "--bf16", "false"]
    assert callable(args.func)
    args = make_cli_parser("merge-lora").parse_args(["merge-lora", "adapter", "merged", "--dtype", "bfloat16"])
    assert (args.adapter_dir, args.out_dir, args.base_model, args.dtype) == ("adapter", "merged", None, "bfloat16")


@pytest.mark.parametrize("flag", ["--output_dir", "--output-dir"])
def test_train_takes_both_flag_spellings(flag):
    _, (_, _, training_args) = parse(RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml", flag, "elsewhere")
    assert training_args.output_dir == "elsewhere"


def test_stand_alone_parsers_match_the_subcommands():
    """`make_<command>_parser()` without subparsers: the same options, for scripts and launchers."""
    args = make_train_parser().parse_args(["--config", "r.yaml", "--output-dir", "out"])
    assert args.train_argv == ["--config", "r.yaml", "--output-dir", "out"] and args.func is not None
    args = make_merge_lora_parser().parse_args(["adapter", "merged", "--base-model", "base"])
    assert (args.adapter_dir, args.out_dir, args.base_model, args.dtype) == ("adapter", "merged", "base", "float32")
    args = make_tiny_parts_parser().parse_args([])
    assert (args.out_dir, args.seed) == ("outputs/tiny_parts", 0)  # where the debug recipes look
    assert make_tiny_parts_parser().prog == "tinyllava-hf tiny-parts"


def test_cli_train_help_lists_our_and_trl_options(capsys):
    args = make_cli_parser("train").parse_args(["train", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--tune_llm" in out and "--on_overlength" in out and "--per_device_train_batch_size" in out


def test_debug_pretrain_then_finetune_through_the_cli(parts, tmp_path):
    data = ["--image_folder", str(parts["data"]), "--max_steps", "2"]
    pretrain = tmp_path / "pretrain"
    code = cli(
        [
            "train",
            "--config",
            str(RECIPES / "debug" / "pretrain" / "config_siglip_llama.yaml"),
            "--llm",
            str(parts["llm"]),
            "--vision_tower",
            str(parts["siglip"]),
            "--data_path",
            str(parts["pretrain"]),
            "--output_dir",
            str(pretrain),
            *data,
        ]
    )
    assert code == 0
    assert (pretrain / "model.safetensors").is_file() and "pretrain" in (pretrain / "chat_template.jinja").read_text()

    finetune = tmp_path / "finetune"
    code = cli(
        [
            "train",
            "--config",
            str(RECIPES / "debug" / "finetune" / "config_full.yaml"),
            "--model_name_or_path",
            str(pretrain),
            "--data_path",
            str(parts["finetune"]),
            "--output_dir",
            str(finetune),
            *data,
        ]
    )
    assert code == 0
    assert (finetune / "model.safetensors").is_file()
    assert "ASSISTANT:" in (finetune / "chat_template.jinja").read_text()  # the llama template replaced pretrain's
