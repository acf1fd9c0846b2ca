"""Training's LM head on CPU (`tinyllava_hf.train.lm_head`): only the labelled positions go through the head, with
the loss, metrics and gradients of TRL's fused head (which projects every position where Triton does not run)."""

import copy

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from tinyllava_hf.train import lm_head as lm_head_module
from tinyllava_hf.train.arguments import DataArguments, ModelArguments
from tinyllava_hf.train.build import build_from_parts
from tinyllava_hf.train.collator import TinyLlavaCollator
from tinyllava_hf.train.data import load_dataset_files
from tinyllava_hf.train.lm_head import score_supervised_positions_only, supports_supervised_only_head
from tinyllava_hf.train.trainer import run_training

TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL's SFTTrainer asks its fused head for


@pytest.fixture(scope="module")
def built(parts):
    args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["siglip"]),
        audio_tower=str(parts["whisper"]),
        audio_downsample_factor=5,
        template="llama",
    )
    model, processor = build_from_parts(args)
    dataset, _ = load_dataset_files([parts["finetune"], parts["audio"]], image_folder=parts["data"])
    by_id = {row["id"]: row for row in dataset}
    rows = [by_id[i] for i in ("finetune-0000", "text-0000", "audio-0000", "finetune-0001")]
    return model, processor, rows


def fused(model, supervised_only: bool):
    model = copy.deepcopy(model)
    add_fused_lm_head(model, outputs=TRL_OUTPUTS)
    if supervised_only:
        score_supervised_positions_only(model)
    return model.train()


def run(model, batch):
    model.zero_grad()
    output = model(**batch, fused_lm_head=True)
    output.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return output, grads


@pytest.mark.parametrize("rows_per_chunk", [1024, 5], ids=["one-chunk", "chunks-recomputed"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_same_loss_metrics_and_gradients_as_trl_head(built, monkeypatch, rows_per_chunk, packing):
    model, processor, rows = built
    monkeypatch.setattr(lm_head_module, "ROWS_PER_CHUNK", rows_per_chunk)
    batch = TinyLlavaCollator(processor, packing=packing)(rows)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert rows_per_chunk == 1024 or labelled > 2 * rows_per_chunk  # the small chunk really splits the rows

    expected, expected_grads = run(fused(model, supervised_only=False), batch)
    ours_model = fused(model, supervised_only=True)
    projected = []
    ours_model.get_output_embeddings().register_forward_hook(lambda _m, inputs, _o: projected.append(len(inputs[0])))
    ours, grads = run(ours_model, batch)

    # Only labelled positions were projected (each chunk twice when the backward recomputes it).
    assert sum(projected) == labelled * (2 if rows_per_chunk < labelled else 1)
    torch.testing.assert_close(ours.loss, expected.loss, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours.label_mask, expected.label_mask)
    torch.testing.assert_close(ours.log_probs, expected.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.entropy, expected.entropy.to(ours.entropy.dtype), rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.is_top1.bool(), expected.is_top1.bool())
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_no_labelled_position_gives_a_differentiable_zero(built):
    model, processor, rows = built
    batch = TinyLlavaCollator(processor)(rows[:1])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    output = fused(model, supervised_only=True)(**batch, fused_lm_head=True)
    assert output.loss.item() == 0 and output.loss.requires_grad
    output.loss.backward()


def test_other_calls_keep_the_model_forward(built):
    model, processor, rows = built
    batch = TinyLlavaCollator(processor)(rows)
    ours = fused(model, supervised_only=True).eval()
    with torch.no_grad():
        logits = ours(**{k: v for k, v in batch.items() if k != "labels"}).logits
        reference = model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    torch.testing.assert_close(logits, reference)


def test_only_cpu_runs_of_models_with_unscaled_logits(built):
    model, _, _ = built
    assert supports_supervised_only_head(model, torch.device("cpu"))
    assert not supports_supervised_only_head(model, torch.device("cuda"))  # TRL's Triton head skips them there
    scaled = copy.deepcopy(model)
    scaled.config.get_text_config().logit_scale = 0.5  # TRL's head applies it; ours does not, so it stays TRL's
    assert not supports_supervised_only_head(scaled, torch.device("cpu"))


@pytest.mark.parametrize("tune_llm", ["full", "lora"])
def test_trainer_projects_only_labelled_positions(parts, tmp_path, tune_llm):
    from trl import SFTConfig

    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        max_length=256,
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    args = ModelArguments(
        llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama", tune_llm=tune_llm, lora_r=4
    )
    data = DataArguments(data_path=[str(parts["finetune"])], image_folder=str(parts["data"]))
    trainer = run_training(args, data, config)
    # The object TRL gave its fused head: under PEFT the base model, which the LoRA wrapper calls.
    model = trainer.model.get_base_model() if tune_llm == "lora" else trainer.model
    assert model.forward.__func__.__module__ == "tinyllava_hf.train.lm_head"
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and 0 <= logged[0]["mean_token_accuracy"] <= 1 and logged[0]["loss"] > 0
