"""The final-model rule: the phase with the lower validation loss, ties to the head, a lone phase wins alone."""

import math

import pytest

from tlbench.evaluation.final import choose_final, final_phase
from tlbench.evaluation.summary import format_summary


def phases(head: float | None, finetune: float | None) -> dict:
    return {"head": {"val_loss": head}, "finetune": {"val_loss": finetune}}


@pytest.mark.parametrize(
    ("head", "finetune", "expected", "why"),
    [
        (0.213, 0.245, "head", "val_loss 0.213 <= finetune 0.245"),
        (0.3, 0.1, "finetune", "val_loss 0.100 < head 0.300"),
        (0.2, 0.2, "head", "val_loss 0.200 <= finetune 0.200"),
        (math.nan, 0.4, "finetune", "val_loss 0.400 < head nan"),
        (0.4, math.nan, "head", "val_loss 0.400 <= finetune nan"),
        (None, 0.4, "finetune", "val_loss 0.400 < head nan"),
        (math.nan, math.nan, "head", "no phase has a validation loss; the simplest phase"),
    ],
)
def test_the_lower_validation_loss_wins_and_ties_go_to_the_head(head, finetune, expected, why):
    assert choose_final(phases(head, finetune)) == {"phase": expected, "why": why}


def test_the_order_phases_were_recorded_in_does_not_matter():
    reordered = {"finetune": {"val_loss": 0.2}, "head": {"val_loss": 0.2}}
    assert choose_final(reordered)["phase"] == "head"


@pytest.mark.parametrize("loss", [0.5, math.nan])
def test_a_one_phase_run_ends_with_that_phase(loss):
    assert choose_final({"finetune": {"val_loss": loss}}) == {"phase": "finetune", "why": "the only phase trained"}
    assert choose_final({}) is None


def test_recorded_final_is_used_and_older_runs_get_it_computed():
    assert final_phase({"phases": phases(0.1, 0.5), "final": {"phase": "finetune"}}) == "finetune"
    assert final_phase({"phases": phases(0.1, 0.5)}) == "head"


def test_summary_names_and_marks_the_final_phase():
    metrics = {"phases": phases(0.213, 0.245), "final": choose_final(phases(0.213, 0.245))}
    text = format_summary(metrics)
    assert "final model: head (val_loss 0.213 <= finetune 0.245)" in text
    rows = [line.split()[:2] for line in text.splitlines() if line.startswith(("head", "finetune"))]
    assert rows == [["head", "(final)"], ["finetune", "-"]]


def test_summary_says_when_the_split_that_chose_came_from_train_and_the_reported_one_did_not():
    carved = {"phases": phases(0.3, 0.1), "final": choose_final(phases(0.3, 0.1)), "selection_from_train": True}
    assert "'val' (which chose the checkpoints and the final phase) was carved from train" in format_summary(carved)
    carved_select = {**carved, "split_sizes": {"train": 8, "select": 1, "val": 2}, "test_on": "val"}
    assert "'select' (which chose the checkpoints and the final phase) was carved from train" in format_summary(
        carved_select
    )
    assert "carved from train" not in format_summary({**carved, "selection_from_train": False})
