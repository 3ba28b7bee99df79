"""The run's final model: of the phases trained, the one whose best epoch scored the lower validation loss.

Validation (never the test split) decides, so the test numbers of the final model stay an unbiased estimate.
A tie goes to the simpler phase (the head on a frozen backbone: cheaper to serve, fewer weights fitted to a
small validation split); a phase without a finite validation loss only wins when no phase has one.
"""

from __future__ import annotations

import math

SIMPLICITY_ORDER = ("head", "finetune")


def _val_loss(values: dict) -> float:
    loss = values.get("val_loss")
    return float(loss) if loss is not None and math.isfinite(float(loss)) else math.inf


def choose_final(phases: dict[str, dict]) -> dict[str, str] | None:
    """``{"phase": ..., "why": ...}`` for a run's ``metrics.json["phases"]``; None when no phase was trained."""
    if not phases:
        return None
    order = sorted(phases, key=lambda phase: SIMPLICITY_ORDER.index(phase) if phase in SIMPLICITY_ORDER else 99)
    final = min(order, key=lambda phase: _val_loss(phases[phase]))  # min keeps the first (simplest) of equals
    if len(order) == 1:
        return {"phase": final, "why": "the only phase trained"}
    loss = _val_loss(phases[final])
    if math.isinf(loss):
        return {"phase": final, "why": "no phase has a validation loss; the simplest phase"}
    # The final phase beats every simpler phase strictly and every more complex one at least by the tie rule.
    others = ", ".join(
        f"{'<=' if order.index(final) < order.index(other) else '<'} {other} {_fmt(phases[other])}"
        for other in order
        if other != final
    )
    return {"phase": final, "why": f"val_loss {loss:.3f} {others}"}


def _fmt(values: dict) -> str:
    loss = _val_loss(values)
    return "nan" if math.isinf(loss) else f"{loss:.3f}"


def final_phase(metrics: dict) -> str | None:
    """The final phase recorded in ``metrics`` (``finish_run``), or chosen now for a run written before it was."""
    recorded = (metrics.get("final") or {}).get("phase")
    if recorded in metrics.get("phases", {}):
        return recorded
    chosen = choose_final(metrics.get("phases", {}))
    return chosen["phase"] if chosen else None
