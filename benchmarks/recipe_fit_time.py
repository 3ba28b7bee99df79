"""The recipe grid's time limit: a whole ``fit`` of each candidate recipe on 400 images, cold caches.

Issue 12 chooses the default recipe by the best mean accuracy among candidates whose whole fit (process start to
exit: decoding, feature caching, both phases, testing) on 400 images stays under 3 minutes on a 2-core CPU. The
400 images are the first 40 (by name) of each butterflies10 class, copied to a temporary folder; every candidate
runs in a fresh process with its own empty caches, one after another, so the ratios are side by side.

    python benchmarks/recipe_fit_time.py [--data ../shared/data/butterflies10] [--per-class 40]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from common import REPO, SHARED_DATA, print_table, run_fit

LIMIT_SECONDS = 180


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
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "butterflies10")
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args()
    recipes = yaml.safe_load((REPO / "configs" / "grids" / "recipe.yaml").read_text())["recipes"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = subset(args.data, scratch / "data", args.per_class)
        baseline = None
        for recipe in recipes:
            model = REPO / "configs" / "recipes" / f"{recipe}.yaml"
            fit_args = ("--model", str(model), "--data.root", str(scratch / "data"), "--data.dedupe", "true")
            metrics = run_fit(scratch / "runs", recipe, *fit_args, cache_dir=scratch / f"cache_{recipe}")
            wall = metrics["wall_seconds"]
            baseline = baseline or wall
            phases = ", ".join(f"{name} {p['epochs']} ep" for name, p in metrics["phases"].items())
            verdict = "under" if wall < LIMIT_SECONDS else "OVER"
            rows.append((recipe, f"{wall:.0f} s ({verdict} {LIMIT_SECONDS} s; {phases})", f"{wall / baseline:.2f}x"))
    print_table(f"Whole fit on {images} images, cold caches (ratio to {recipes[0]})", rows)


if __name__ == "__main__":
    main()
