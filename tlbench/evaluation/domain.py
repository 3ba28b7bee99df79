"""How close is a dataset to ImageNet? Read off the pretrained classifier's own predictions, before training.

The cs231n transfer-learning rule of thumb (https://cs231n.github.io/transfer-learning/) decides between a
linear probe and fine-tuning by two things: how much data there is, and how similar it is to the
pretraining data. Size is counted. Similarity is estimated from the 1000-class ImageNet predictions on a few
images per class:

* **confidence** - the class's mean top-1 probability. Images ImageNet has concepts for get a peaked softmax
  ("pelican" 0.9); images it has no concept for spread their mass over unrelated labels ("envelope" 0.1).
* **consistency** - the share of the class's images whose top-1 label is the class's most common top-1 label.
  One concept per class means ImageNet's features already group these images.
* **collisions** - classes whose most common top-1 label is the same. Not counted against similarity (fine
  species of one ImageNet concept are still ImageNet-like images), but reported: the head must learn
  distinctions ImageNet's labels do not make.

Thresholds, stated as what they are - rules of thumb, not calibrated:

* similar domain when the median class confidence is at least ``SIMILAR_CONFIDENCE`` (0.30) **and** the mean
  consistency is at least ``SIMILAR_CONSISTENCY`` (0.60). Chosen from efficientnet_lite0 on the study's data:
  birds10 (ImageNet has ~60 bird classes) gives a median confidence around 0.35-0.45, leaves3 (leaf scans on
  white paper, "envelope"/"ruler"/"head cabbage") around 0.15. Softmax sharpness differs between backbones and
  a 2-image sample is noisy, so values near a threshold mean "try both"; fit's paired head-vs-finetune
  comparison then settles it on the real test set.
* small data below ``SMALL_TRAIN_PER_CLASS`` (1000) training images per class (median over classes): about
  ImageNet's own ~1300 per class, below which cs231n's "small dataset" advice applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SIMILAR_CONFIDENCE = 0.30
SIMILAR_CONSISTENCY = 0.60
SMALL_TRAIN_PER_CLASS = 1000


def class_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per class (``label`` column): images, confidence, most common top-1 label, consistency, collisions.

    ``predictions`` has ``label, top1_label, top1_prob`` and an ``error`` column; unreadable rows are left
    out. Ties for the most common label go to the label seen first, so the result is deterministic.
    """
    readable = predictions[predictions.error.fillna("") == ""]
    rows = []
    for label, group in readable.groupby("label", sort=True):
        counts = group.top1_label.value_counts(sort=True)
        top = counts.index[0]
        rows.append(
            {
                "label": label,
                "images": len(group),
                "confidence": float(group.top1_prob.mean()),
                "imagenet_label": top,
                "consistency": counts.iloc[0] / len(group),
            }
        )
    summary = pd.DataFrame(rows)
    summary["collides_with"] = [
        ", ".join(summary.label[(summary.imagenet_label == top) & (summary.label != label)])
        for label, top in zip(summary.label, summary.imagenet_label)
    ]
    return summary


@dataclass(frozen=True)
class Recommendation:
    similar: bool
    small: bool
    advice: str
    reason: str


ADVICE = {
    (True, True): "head only (linear probe): --model.finetune_epochs 0",
    (
        False,
        True,
    ): "fine-tune more blocks: --model.unfreeze_blocks 4 (or -1 for all), keeping the low --model.finetune_lr",
    (True, False): "fine-tune the top blocks (the default recipe: --model.unfreeze_blocks 2)",
    (False, False): "fine-tune the whole network: --model.unfreeze_blocks -1",
}


def recommend(summary: pd.DataFrame, train_per_class: float) -> Recommendation:
    """The cs231n advice for this data size and ImageNet similarity, with the numbers that decided it."""
    confidence = float(summary.confidence.median())
    consistency = float(summary.consistency.mean())
    similar = confidence >= SIMILAR_CONFIDENCE and consistency >= SIMILAR_CONSISTENCY
    small = train_per_class < SMALL_TRAIN_PER_CLASS
    size = (
        f"{'small' if small else 'large'} ({train_per_class:g} training images per class,"
        f" threshold {SMALL_TRAIN_PER_CLASS})"
    )
    domain = (
        f"{'similar to' if similar else 'different from'} ImageNet (median top-1 probability {confidence:.2f},"
        f" threshold {SIMILAR_CONFIDENCE}; consistency {consistency:.2f}, threshold {SIMILAR_CONSISTENCY})"
    )
    why = {
        (True, True): (
            "ImageNet features already describe these images and a small dataset would mostly teach"
            " fine-tuned blocks to overfit"
        ),
        (False, True): (
            "ImageNet's top-level features are about other things, so more of the network must adapt;"
            " small data means a low learning rate and watching val_loss"
        ),
        (True, False): (
            "enough data to adapt the top blocks without overfitting,"
            " and the lower ImageNet features transfer as they are"
        ),
        (False, False): "enough data to retrain every block, and ImageNet features fit this domain poorly",
    }[(similar, small)]
    return Recommendation(similar, small, ADVICE[(similar, small)], f"data is {size}; images are {domain}: {why}")
