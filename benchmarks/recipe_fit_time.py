"""The fine-tuning grid's time limit: a whole ``fit`` of each candidate recipe on about 1,000 images, cold caches.

The default recipe is chosen by the best mean accuracy among candidates whose whole fit (process start to exit:
decoding, feature caching, both phases, testing) on 1,000 images stays under 10 minutes on a 2-core CPU
(configs/grids/recipe.yaml). The images are the first 16 (by name) of each plankton65 class, 1,040 in all, copied to
a temporary folder: many classes and far from ImageNet, where fine-tuning does the most work. Every candidate runs in
a fresh process with its own empty caches, one after another, so the ratios are side by side. ``--budgets`` runs
one recipe at each ``--model.budget`` instead: the time side of the budget trade.

    python benchmarks/recipe_fit_time.py [--data ../shared/data/plankton65] [--per-class 16] [--recipes a,b]
    python benchmarks/recipe_fit_time.py --budgets deep5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from common import REPO, SHARED_DATA, print_table, record_results, run_fit

LIMIT_MINUTES = 10
BUDGETS = ("fast", "default", "thorough")


def subset(source: Path, target: Path, per_class: int) -> int:
    """Copy the first ``per_class`` images of each class folder of ``source`` into ``target``; the image count."""
    count = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            shutil.copy2(image, target / folder.name / image.name)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "plankton65")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--recipes", help="comma-separated recipe names (default: the grid's candidates)")
    parser.add_argument("--budgets", metavar="RECIPE", help="time RECIPE at each budget (fast, default, thorough)")
    args = parser.parse_args()
    if args.budgets:
        runs = [(f"{args.budgets} {budget}", args.budgets, ("--model.budget", budget)) for budget in BUDGETS]
    else:
        names = args.recipes.split(",") if args.recipes else None
        recipes = names or yaml.safe_load((REPO / "configs" / "grids" / "recipe.yaml").read_text())["recipes"]
        runs = [(recipe, recipe, ()) for recipe in recipes]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = subset(args.data, scratch / "data", args.per_class)
        baseline = None
        for label, recipe, extra in runs:
            model = REPO / "configs" / "recipes" / f"{recipe}.yaml"
            fit_args = ("--model", str(model), "--data.root", str(scratch / "data"), "--data.dedupe", "true", *extra)
            name = label.replace(" ", "_")
            metrics = run_fit(scratch / "runs", name, *fit_args, cache_dir=scratch / f"cache_{name}")
            wall = metrics["wall_seconds"]
            baseline = baseline or wall
            phases = ", ".join(f"{phase} {p['epochs']} ep" for phase, p in metrics["phases"].items())
            verdict = "under" if wall < LIMIT_MINUTES * 60 else "OVER"
            final = metrics["phases"][metrics["final"]["phase"]]["test_acc"]
            value = f"{wall / 60:.1f} min ({verdict} {LIMIT_MINUTES} min; {phases}; final test acc {final:.3f})"
            rows.append((label, value, f"{wall / baseline:.2f}x"))
    print_table(f"Whole fit on {images} images of {args.data.name}, cold caches (ratio to {runs[0][0]})", rows)


if __name__ == "__main__":
    record_results(main)
