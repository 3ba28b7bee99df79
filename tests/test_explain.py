"""Grad-CAM explanations on images whose class is decided by one coloured patch in one corner.

Every image has a patch in each of its four corners over pixel noise: one red or blue (the class), three of
other colours (decoys). A model that learnt the task looks at the red or blue patch, wherever it is; a copy with
randomised weights has no reason to, so its heatmaps must peak elsewhere far more often (the model-randomisation
sanity check of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018). The decoys keep that check
honest: with a lone patch on noise, even random filters find the only smooth coloured square.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import tlbench
from tlbench.__main__ import main
from tlbench.api import Model
from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError
from tlbench.evaluation.plots import TOP_LOSSES_EXPLAINED, TOP_LOSSES_TITLE, top_losses_figure
from tlbench.explain import INDEX
from tlbench.models.backbones import create_backbone
from tlbench.models.gradcam import overlays_of, target_layer, to_image_frame
from tlbench.rundir import read_metrics

SIZE, PATCH, INSET = 64, 16, 6
CLASS_COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230)}
DECOYS = [(30, 200, 30), (220, 220, 30), (30, 220, 220), (240, 240, 240), (20, 20, 20)]
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}


def corner(quadrant: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of the patch in ``quadrant`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
    inset so that the centre crop of the model's preprocessing keeps it whole."""
    return (INSET if quadrant < 2 else SIZE - INSET - PATCH), (INSET if quadrant % 2 == 0 else SIZE - INSET - PATCH)


def make_patch_images(root: Path, per_class: int, seed: int) -> dict[Path, int]:
    """``root/<colour>/q<quadrant>_<n>.png``, the class patch's quadrant cycling; each image's path -> quadrant."""
    rng = np.random.default_rng(seed)
    quadrants = {}
    for name, colour in CLASS_COLOURS.items():
        for n in range(per_class):
            quadrant = n % 4
            pixels = rng.uniform(0, 255, (SIZE, SIZE, 3))
            colours = [colour, *(DECOYS[k] for k in rng.permutation(len(DECOYS))[:3])]
            for q, fill in zip([quadrant, *(q for q in range(4) if q != quadrant)], colours):
                y, x = corner(q)
                pixels[y : y + PATCH, x : x + PATCH] = np.array(fill) + rng.normal(0, 10, (PATCH, PATCH, 3))
            path = root / name / f"q{quadrant}_{n:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
            quadrants[path] = quadrant
    return quadrants


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory) -> tuple[Path, dict[Path, int]]:
    """A cnn1 fit (32 px, one head epoch, ten fine-tuning epochs: about 15 s) on 48 patch images; its run
    directory and 40 held-out images with their patch quadrants."""
    root = tmp_path_factory.mktemp("patches")
    data = root / "patches"
    make_patch_images(data, per_class=24, seed=0)
    run = tlbench.fit(
        data,
        backbone="cnn1",
        output=root,
        pretrained=False,
        input_size=32,
        head_hidden=16,
        head_epochs=1,
        finetune_epochs=10,
        unfreeze_blocks=-1,
        head_lr=1e-2,
        finetune_lr=1e-2,
        batch_size=8,
        num_workers=0,
        dedupe=True,  # images with the same decoys in the same corners look alike to the duplicate audit
        trainer=QUIET,
    )
    return run.dir, make_patch_images(root / "held_out", per_class=20, seed=99)


def on_patch(model: Model, quadrants: dict[Path, int]) -> float:
    """The fraction of images whose heatmap peaks in the quadrant of their class patch."""
    explanations = model.explain(list(quadrants))
    hits = [
        (int(item.peak[1] >= SIZE / 2) * 2 + int(item.peak[0] >= SIZE / 2)) == quadrant
        for item, quadrant in zip(explanations, quadrants.values())
    ]
    return sum(hits) / len(hits)


def randomised(model: Model, seed: int) -> Model:
    """The same architecture with every layer re-initialised (weights, biases, BatchNorm statistics)."""
    torch.manual_seed(seed)
    network = copy.deepcopy(model.trained.model)
    for layer in network.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return Model(dataclasses.replace(model.trained, model=network.eval()))


def test_heatmaps_peak_on_the_class_patch_and_not_once_the_weights_are_random(patch_run):
    run, held_out = patch_run
    model = tlbench.load(run)
    predictions = model.predict(list(held_out))
    accuracy = np.mean([p.label == Path(p.path).parent.name for p in predictions])
    assert accuracy >= 0.9, f"the fit did not learn the patches (held-out accuracy {accuracy:.2f})"
    trained = on_patch(model, held_out)
    assert trained >= 0.9, f"trained heatmaps peak on the class patch for only {trained:.0%} of held-out images"
    random = [on_patch(randomised(model, seed), held_out) for seed in range(3)]
    print(f"heatmap peak on the class patch: trained {trained:.3f}, randomised {random}")
    assert np.mean(random) <= 0.5, f"randomised models' heatmaps still find the patch: {random}"


def test_the_servers_explain_endpoint_peaks_on_the_class_patch(patch_run):
    """``POST /explain`` (the page's "why?") runs the same Grad-CAM: uploads of the held-out images come back
    with their heatmap's peak on the class patch, in the uploaded image's pixels."""
    testclient = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
    from tlbench.models.loading import load_trained
    from tlbench.serve.app import create_app

    run, held_out = patch_run
    hits = []
    with testclient.TestClient(create_app(load_trained(run))) as client:
        for path, quadrant in held_out.items():
            response = client.post("/explain", files={"file": (path.name, path.read_bytes(), "image/png")})
            assert response.status_code == 200, response.text
            answer = response.json()
            assert (answer["width"], answer["height"]) == (SIZE, SIZE)
            peak = answer["peak"]
            hits.append((int(peak["y"] >= SIZE / 2) * 2 + int(peak["x"] >= SIZE / 2)) == quadrant)
    assert np.mean(hits) >= 0.9, f"the endpoint's heatmaps peak on the class patch for only {np.mean(hits):.0%}"


def test_explain_command_writes_titled_overlays_and_an_index(patch_run, tmp_path, capsys):
    run, held_out = patch_run
    images = sorted(held_out)[:3]
    stray = tmp_path / "red" / "stray.png"  # a class folder outside the data root: the folder names the truth
    stray.parent.mkdir()
    stray.write_bytes(images[0].read_bytes())
    assert main(["explain", str(run), *map(str, images), str(stray), "--output", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "Grad-CAM on layer 'stages'" in stdout and "wrote 4 overlay(s)" in stdout
    table = pd.read_csv(tmp_path / "out" / INDEX, keep_default_na=False)
    assert list(table.columns) == [
        "path",
        "overlay",
        "pred_label",
        "pred_prob",
        "true_label",
        "peak_x",
        "peak_y",
        "layer",
    ]
    assert table.path.tolist() == [*map(str, images), str(stray)]
    assert table.true_label.tolist() == [path.parent.name for path in images] + ["red"]
    assert set(table.pred_label) <= set(CLASS_COLOURS) and table.pred_prob.between(0.5, 1).all()
    assert table.peak_x.between(0, SIZE - 1).all() and table.peak_y.between(0, SIZE - 1).all()
    for name in table.overlay:
        with Image.open(tmp_path / "out" / name) as png:
            assert png.format == "PNG" and png.width > png.height > 100


def test_the_runs_top_losses_figure_shows_overlays_of_only_the_top_images(tmp_path):
    table = pd.DataFrame(
        {
            "path": [f"c/{n}.png" for n in range(5)],
            "true_label": ["a"] * 5,
            "pred_label": ["a", "b", "b", "b", "b"],
            "prob_a": [0.9, 0.4, 0.3, 0.2, 0.1],
            "prob_b": [0.1, 0.6, 0.7, 0.8, 0.9],
        }
    )
    asked = []

    def overlays(paths):
        asked.extend(paths)
        return [np.full((40, 40, 3), 200, dtype=np.uint8) for _ in paths]

    figure = top_losses_figure(table, tmp_path, n=2, overlays=overlays)
    assert asked == [tmp_path / "c/4.png", tmp_path / "c/3.png"], "only the n most confident mistakes are explained"
    assert figure._suptitle.get_text() == TOP_LOSSES_TITLE + TOP_LOSSES_EXPLAINED


def test_fit_puts_overlays_on_its_top_losses(patch_run):
    run, _ = patch_run
    metrics = read_metrics(run)
    titles = {}
    for phase, results in metrics["phases"].items():
        predictions = pd.read_csv(run / results["predictions"])
        if (predictions.pred_label != predictions.true_label).any():
            with Image.open(run / results["artifacts"]["top_losses"]) as png:
                titles[phase] = png.text.get("Title")
    assert titles, "no phase made a mistake to show (the head phase's one epoch on random features usually does)"
    assert all(title == TOP_LOSSES_TITLE + TOP_LOSSES_EXPLAINED for title in titles.values()), titles


@pytest.mark.parametrize("case", ["missing run", "not an image", "missing image"])
def test_bad_input_is_one_line_and_exit_2(patch_run, tmp_path, capsys, case):
    run, held_out = patch_run
    image = str(next(iter(held_out)))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    args = {
        "missing run": [str(tmp_path / "no_run"), image],
        "not an image": [str(run), image, str(text)],
        "missing image": [str(run), str(tmp_path / "gone.jpg")],
    }[case]
    assert main(["explain", *args, "--output", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ")
    assert {"missing run": "no_run", "not an image": "notes.png", "missing image": "gone.jpg"}[case] in stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are checked"


def test_without_captum_the_command_names_the_pip_install(patch_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr now raises ImportError
    run, held_out = patch_run
    assert main(["explain", str(run), str(next(iter(held_out))), "--output", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "pip install 'tlbench[explain]'" in stderr


@pytest.mark.parametrize(
    "backbone, layer",
    [("efficientnet_lite0", "bn2"), ("cnn6", "stages"), ("resnet18", "layer4"), ("vgg11", "features")],
)
def test_the_target_layer_is_the_last_with_a_spatial_map(backbone, layer):
    built = create_backbone(backbone, pretrained=False)
    assert target_layer(built.extractor, 64)[0] == layer


def test_a_backbone_without_a_spatial_map_is_refused_and_keeps_plain_top_losses(tmp_path):
    built = create_backbone("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(TLBenchError, match="Grad-CAM needs a convolutional feature map"):
        target_layer(built.extractor, 224)
    module = SimpleNamespace(
        backbone=built.extractor, head=nn.Identity(), classes=["a"], preprocessing=built.preprocessing
    )
    assert overlays_of(module)([tmp_path / "a.png"]) == [None], "a fit's figure falls back to the plain images"


def test_the_heatmap_lands_on_the_part_of_the_photo_the_centre_crop_kept():
    # 100x60 px, input 32 at crop 0.875: resized to 60x36 and cropped at x 14, y 2, i.e. a 53 px square at x 23, y 3
    frame = to_image_frame(np.ones((32, 32)), 100, 60, Preprocessing(input_size=32, crop_pct=0.875))
    rows, columns = np.nonzero(frame)
    assert frame.shape == (60, 100)
    assert (columns.min(), columns.max(), rows.min(), rows.max()) == (23, 75, 3, 55)
