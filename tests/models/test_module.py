"""Freezing, BatchNorm behaviour and unfreezing of the two-phase module."""

import math

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tlbench.callbacks.finetuning import schedule_factor
from tlbench.models.backbones import create_backbone
from tlbench.models.module import TransferLearningModule, finetune_epochs_for


def module(**overrides) -> TransferLearningModule:
    settings = dict(
        backbone="cnn6",
        pretrained=False,
        input_size=32,
        head_hidden=8,
        head_epochs=1,
        finetune_epochs=1,
        unfreeze_blocks=1,
        layer_decay=None,  # the recipe controls stay off unless a test is about them
        warmup_epochs=0,
        head_patience=None,
        finetune_patience=None,
    )
    return TransferLearningModule(**{**settings, **overrides}, classes=["a", "b", "c"])


def test_head_phase_freezes_backbone_and_keeps_batchnorm_in_eval():
    model = module().train()
    assert model.phase == "head"
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))


def test_head_phase_training_leaves_running_statistics_bit_identical():
    model = module().train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = model.loss_fn(model(torch.randn(4, 3, 32, 32) * 3 + 1), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finetune_unfreezes_only_the_top_blocks():
    model = module(unfreeze_blocks=1)
    model.apply_phase("finetune")
    groups = model.backbone.block_groups()
    assert all(p.requires_grad for p in groups[-1])
    assert not any(p.requires_grad for g in groups[:-1] for p in g)
    model.apply_phase("head")
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_unfreeze_all_and_batchnorm_policy():
    frozen_bn = module(unfreeze_blocks=-1, train_bn=False)
    frozen_bn.apply_phase("finetune")
    frozen_bn.train()
    assert all(p.requires_grad for p in frozen_bn.backbone.parameters())
    assert not any(m.training for m in frozen_bn.backbone.modules() if isinstance(m, _BatchNorm))
    training_bn = module(unfreeze_blocks=-1, train_bn=True)
    training_bn.apply_phase("finetune")
    training_bn.train()
    assert all(m.training for m in training_bn.backbone.modules() if isinstance(m, _BatchNorm))


def test_phase_specific_optimizers():
    model = module(head_optimizer="rmsprop", finetune_optimizer="sgd", finetune_lr=1e-4, lr_schedule="constant")
    head_optimizer = model.configure_optimizers()
    assert isinstance(head_optimizer, torch.optim.RMSprop)
    assert {id(p) for g in head_optimizer.param_groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    model.apply_phase("finetune")
    finetune_optimizer = model.configure_optimizers()
    assert isinstance(finetune_optimizer, torch.optim.SGD) and finetune_optimizer.param_groups[0]["lr"] == 1e-4
    assert (
        finetune_optimizer.param_groups[0]["momentum"] == 0.9 and finetune_optimizer.defaults["fused"]
    )  # fused kernel on CPU


def test_phase_survives_a_checkpoint_round_trip():
    model = module()
    model.apply_phase("finetune")
    checkpoint = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    restored = module()
    restored.on_load_checkpoint(checkpoint)
    assert restored.phase == "finetune"
    assert any(p.requires_grad for p in restored.backbone.parameters())


IMAGENET_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def test_embedded_weights_recognise_real_birds_offline(shared_data):
    """The embedded EfficientNet-Lite0 weights are real ImageNet weights: real bird photos get bird labels."""
    from tlbench.data.images import load_rgb
    from tlbench.data.transforms import eval_transform
    from tlbench.models.backbones import create_classifier

    model, source = create_classifier("efficientnet_lite0")
    assert source.startswith("embedded:")
    pre = create_backbone("efficientnet_lite0").preprocessing
    paths = sorted((shared_data / "birds10").glob("*/*"))[::10]
    batch = torch.stack([eval_transform(pre)(load_rgb(p)) for p in paths])
    with torch.no_grad():
        top5 = model.eval()(batch).topk(5, dim=1).indices
    hits = sum(bool(set(row.tolist()) & IMAGENET_BIRDS) for row in top5)
    assert hits >= 0.8 * len(paths)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "cnn6", "resnet18"])
def test_layer_chain_splits_the_backbone_exactly(name):
    extractor = create_backbone(name, pretrained=False, input_size=64).extractor.eval()
    chain = extractor.layer_chain()
    assert chain is not None and len(chain) > 3
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = extractor(images)
        for depth in (1, len(chain) // 2, len(chain)):
            assert torch.allclose(
                extractor.forward_from(extractor.forward_until(images, depth), depth), whole, atol=1e-5
            )


def test_a_backbone_that_is_not_a_chain_is_not_split():
    assert create_backbone("vit_tiny_patch16_224", pretrained=False).extractor.layer_chain() is None


def test_frozen_trunk_is_below_the_unfrozen_blocks_and_checking_it_keeps_batchnorm_modes():
    model = module(unfreeze_blocks=1)
    model.apply_phase("finetune")
    model.train()
    modes = {layer: layer.training for layer in model.modules()}
    depth = model.frozen_trunk_depth()
    chain = model.backbone.layer_chain()
    assert 0 < depth < len(chain)
    assert not any(p.requires_grad for layer in chain[:depth] for p in layer.parameters())
    assert any(p.requires_grad for p in chain[depth].parameters())
    assert {layer: layer.training for layer in model.modules()} == modes
    assert module(unfreeze_blocks=-1).frozen_trunk_depth() == 0


def test_layer_decay_scales_learning_rate_per_block_group_from_the_top():
    model = module(unfreeze_blocks=2, layer_decay=0.5, finetune_lr=1.0, lr_schedule="constant")
    model.apply_phase("finetune")
    optimizer = model.configure_optimizers()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    groups = model.backbone.block_groups()
    assert all(lr_of[id(p)] == 1.0 for p in model.head.parameters())
    assert all(lr_of[id(p)] == 0.5 for p in groups[-1]) and all(lr_of[id(p)] == 0.25 for p in groups[-2])
    assert not any(id(p) in lr_of for group in groups[:-2] for p in group)
    assert optimizer.defaults["fused"]  # the fused kernel takes the groups too


def test_norms_and_biases_without_weight_decay_only_when_asked():
    def decay_of(model):
        optimizer = model.configure_optimizers()
        return {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}

    default = decay_of(module(weight_decay=0.1))
    assert set(default.values()) == {0.1}
    model = module(weight_decay=0.1, decay_norms_and_biases=False)
    split = decay_of(model)
    assert all(split[id(p)] == (0.1 if p.ndim >= 2 else 0.0) for p in model.head.parameters())
    assert {0.0, 0.1} == set(split.values())


def test_schedule_warms_up_batch_by_batch_then_decays_to_zero_at_the_phase_end():
    quarter = 0.25  # four batches an epoch
    rates = [schedule_factor(batch * quarter, quarter, epochs=3, warmup=1, cosine=True) for batch in range(12)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # not one jump to half the rate
    assert rates[4] == pytest.approx(1.0)
    assert rates[4:] == sorted(rates[4:], reverse=True)
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(0.875 * math.pi)))
    assert schedule_factor(2.75, quarter, epochs=3, warmup=1, cosine=False) == 1.0
    assert schedule_factor(0.0, quarter, epochs=2, warmup=0, cosine=True) == 1.0  # no warmup: the peak at once


class LearningRates(pl.Callback):
    """The first parameter group's rate at every optimizer step, by phase."""

    def __init__(self) -> None:
        self.rates: list[tuple[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append((pl_module.phase, optimizer.param_groups[0]["lr"]))


def test_each_phase_warms_up_per_batch_from_its_own_peak_rate(tiny_dataset, tmp_path):
    """24 training images in batches of 8: three steps an epoch. The head phase (constant, no warmup) trains at its
    rate from the first step; the fine-tune phase climbs over its first epoch's three steps, then decays."""
    import tlbench

    recorder = LearningRates()
    tlbench.fit(
        tiny_dataset,
        backbone="cnn1",
        output=tmp_path,
        pretrained=False,
        input_size=32,
        head_hidden=8,
        head_epochs=1,
        finetune_epochs=3,
        unfreeze_blocks=-1,
        head_lr=0.01,
        finetune_lr=0.003,
        warmup_epochs=1,
        lr_schedule="cosine",
        batch_size=8,
        num_workers=0,
        trainer={"callbacks": [recorder], "enable_progress_bar": False, "enable_model_summary": False},
    )
    head = [rate for phase, rate in recorder.rates if phase == "head"]
    finetune = [rate for phase, rate in recorder.rates if phase == "finetune"]
    steps = len(head)
    assert steps >= 2 and len(finetune) == 3 * steps
    assert head[0] == pytest.approx(0.01)  # cosine over one epoch starts at the peak
    assert finetune[:steps] == pytest.approx([0.003 * (i + 1) / steps for i in range(steps)])
    assert finetune[steps:] == sorted(finetune[steps:], reverse=True) and 0 < finetune[-1] < 0.003


def test_budget_rule_gives_small_sets_more_epochs_within_its_range():
    assert finetune_epochs_for(884, "default") == 5  # 4000 / 884 = 4.5
    assert finetune_epochs_for(884, "thorough") == 14 and finetune_epochs_for(884, "fast") == 2
    assert finetune_epochs_for(68, "default") == 30  # 59, capped
    assert finetune_epochs_for(5000, "default") == 2  # 0.8, at least one warmup and one decay epoch


def test_fit_leaves_finetune_epochs_to_the_budget_rule_and_checkpoints_its_choice(tiny_dataset, tmp_path, monkeypatch):
    """Through the CLI in-process (``finetune_epochs: null`` also unlinks ``max_epochs``): 21 training images and a
    budget of 60 images give 3 fine-tune epochs, recorded in the run's history and its checkpoints."""
    from tests.conftest import TINY_FIT_ARGS
    from tlbench.__main__ import main
    from tlbench.models import module as module_py

    monkeypatch.setitem(module_py.FINETUNE_BUDGETS, "fast", 60)
    monkeypatch.chdir(tmp_path)
    args = [*TINY_FIT_ARGS, "--model.finetune_epochs", "null", "--model.budget", "fast"]
    assert main(["fit", "--data.root", str(tiny_dataset), *args]) == 0
    run = tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    assert list(pd.read_csv(run / "history.csv").phase) == ["head", "finetune", "finetune", "finetune"]
    last = torch.load(tmp_path / "checkpoints" / "tiny_cnn1" / "version_0" / "last.ckpt", weights_only=False)
    assert last["hyper_parameters"]["finetune_epochs"] == 3 and last["hyper_parameters"]["budget"] == "fast"


@pytest.mark.parametrize("option, value", [("layer_decay", 0.0), ("warmup_epochs", -1), ("head_patience", 0)])
def test_recipe_controls_refuse_meaningless_values(option, value):
    from tlbench.errors import TLBenchError

    with pytest.raises(TLBenchError, match=f"--model.{option} {value} is invalid"):
        module(**{option: value})


def test_mixup_mixes_cached_features_and_cutmix_needs_images():
    model = module(mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    features, targets = torch.randn(4, model.backbone.num_features), torch.tensor([0, 1, 2, 0])
    model.set_batch_inputs("train", "pooled")
    mixed, soft = model._mixed(features.clone(), targets)
    lam = soft[0, 0].item()  # row 0 mixes class 0 (itself) with class 0 (its mirror, row 3): lam + 1 - lam
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(dim=1), torch.ones(4)) and lam == pytest.approx(1.0)
    weight = soft[1, 1].item()  # row 1 (class 1) is mixed with row 2 (class 2)
    assert torch.allclose(mixed[1], weight * features[1] + (1 - weight) * features[2], atol=1e-5)
    model.set_batch_inputs("train", "images")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mixed_images, soft = model._mixed(images, targets)
    assert mixed_images.is_floating_point() and soft.shape == (4, 3)
    assert model._mixed(images[:3], targets[:3])[1].ndim == 1  # timm pairs images: an odd batch stays unmixed
    assert module()._mixed(features, targets)[1] is targets  # off by default


def test_soft_targets_give_the_smoothed_loss_of_timm_mixup():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    model = module(label_smoothing=0.1)
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    ours = model.loss_fn(logits, mixup_target(targets, 3, lam=0.7, smoothing=0.0))
    timm_loss = SoftTargetCrossEntropy()(logits, mixup_target(targets, 3, lam=0.7, smoothing=0.1))
    assert ours.item() == pytest.approx(timm_loss.item(), rel=1e-6)
