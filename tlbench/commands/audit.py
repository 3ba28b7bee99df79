"""``tlbench data audit DIR``: find bad files and duplicates before they cost a training run.

Exit status: 0 when every image decodes and no duplicates were found, 1 when problems were found (listed on
screen and in ``bad_files.csv`` / ``duplicates.csv``), 2 when the command itself cannot run (no such folder).
Scripts can therefore gate training on ``tlbench data audit DIR``.
"""

from __future__ import annotations

from tlbench.commands import show_progress
from tlbench.data.audit import NEAR_THRESHOLD, AuditResult, audit_dataset
from tlbench.data.images import MIN_SIDE
from tlbench.data.split import DEFAULT_VAL_FRACTION


def _print_summary(result: AuditResult, layout: str) -> None:
    counts = result.usable_counts()
    print(layout)
    print(f"{result.root}: {len(result.files)} image files in {len(counts)} classes")
    for label in sorted(counts):
        by_split = counts[label]
        detail = ", ".join(f"{split} {by_split[split]}" for split in ("train", "val", "test") if by_split.get(split))
        print(f"  {label}: {sum(by_split.values())} usable" + (f" ({detail})" if detail else ""))
    if result.ignored:
        examples = ", ".join(path for path, _ in result.ignored[:3])
        print(f"ignored {len(result.ignored)} non-image or misplaced entries (e.g. {examples})")
    print(f"bad files: {len(result.bad)}")
    for path, reason in result.bad:
        print(f"  {path}: {reason}")
    print(f"duplicate groups: {len(result.duplicates)}")
    for number, group in enumerate(result.duplicates, 1):
        print(f"  {number}. {group.describe()}")


def audit(
    root: str,
    output: str | None = None,
    split_seed: int = 0,
    near_threshold: int = NEAR_THRESHOLD,
    min_side: int = MIN_SIDE,
    progress: bool | None = None,
    labels_csv: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    allow_external_links: bool = False,
) -> int:
    """Decode every image under ROOT once and report bad files and duplicates; exit 0 clean, 1 problems found.

    Args:
        root: data root: class folders, train/ with val/ and/or test/ folders of class folders, or images listed in
            labels_csv.
        output: folder for bad_files.csv and duplicates.csv (default: lightning_logs/audit/<ROOT name>); always
            written, so an old report never outlives its fix.
        split_seed: seed of the stratified split whose train/val/test leakage is checked (as in fit).
        near_threshold: pHash bits (of 64) within which two images count as the same picture; -1: exact only.
        min_side: images whose shorter side is below this many pixels are bad ("too small").
        progress: progress bar on stderr (default: only when stderr is a terminal).
        labels_csv: CSV with columns path,label[,split] labelling the images under ROOT (instead of class folders).
        val_fraction: for a train/test layout, the part of train carved out as val (as in fit).
        allow_external_links: follow image symlinks that lead outside ROOT instead of refusing the dataset.
    """
    report = audit_dataset(
        root,
        output,
        split_seed,
        near_threshold,
        min_side,
        show_progress(progress),
        labels_csv,
        val_fraction,
        allow_external_links,
    )
    result = report.result
    _print_summary(result, report.layout)
    print(f"wrote {report.bad_files_csv} and {report.duplicates_csv}")
    print(
        "clean"
        if result.clean
        else f"problems found: {len(result.bad)} bad files, {len(result.duplicates)} duplicate groups"
    )
    return 0 if result.clean else 1
