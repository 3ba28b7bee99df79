"""``tlbench grid``: every dataset x backbone x seed as its own ``fit`` run, resumable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from tlbench.commands import show_progress
from tlbench.configs import load_grid_file
from tlbench.grid import (
    Resources,
    build_spec,
    describe,
    die_with_parent,
    grid_cells,
    read_grid,
    run_grid,
    submit_grid,
)


def grid(
    datasets: str | None = None,
    backbones: str | None = None,
    recipes: str | None = None,
    seeds: str | None = None,
    data_dir: str | None = None,
    output: str = ".",
    grid: str | None = None,
    fit_args: list[str] | None = None,
    progress: bool | None = None,
    jobs: int = 1,
    list: bool = False,
    cell: int | None = None,
    launcher: Literal["local", "submitit", "submitit_local", "ray"] = "local",
    slurm_partition: str | None = None,
    cpus_per_cell: int = 4,
    gpus_per_cell: int = 0,
    timeout_min: int = 120,
    address: str = "auto",
    retries: int = 3,
) -> int:
    """Run a grid of fits; rerun the same command to resume (finished cells are skipped).

    Each cell is ``fit --experiment <dataset>_<backbone>_seed<k> --data.split_seed k --seed_everything k``,
    landing in OUTPUT/lightning_logs/<experiment>/version_N like any fit, with configs/<dataset>_<backbone>.yaml
    when the study ships one, else configs/models/<backbone>.yaml. Fit overrides for every cell go after ``--``:
    ``tlbench grid --datasets birds10 --backbones cnn6 -- --model.finetune_epochs 2``.
    The grid's status and cell logs go to OUTPUT/lightning_logs/grids/<name>/ (name: the grid file's, else
    <datasets>_<backbones>_seed<seeds>). Exit status 1 if any cell failed (see grid_status.csv there).

    Args:
        datasets: comma-separated dataset folders: names under DATA_DIR, or paths (each one a ``--data.root``).
        backbones: comma-separated backbone names (cnn6, efficientnet_lite0, vgg16, any timm name).
        recipes: comma-separated recipe names (configs/recipes/<name>.yaml, or paths): whole model settings
            compared as candidates; a cell is ``fit --model <recipe file>``, named <dataset>_<recipe>_seed<k>.
        seeds: comma-separated seeds; each sets both the split and the training seed (default 0).
        data_dir: folder of datasets (default data, where ``data download`` puts them) in which DATASETS names
            are looked up; not one dataset, so not ``--data.root``, which each cell gets as DATA_DIR/NAME.
        output: folder whose lightning_logs/ (and checkpoints/) receive the runs and the grid's status files.
        grid: a grid YAML (configs/grids/quick.yaml) with datasets, backbones, seeds, data_dir, overrides;
            command-line values win over it.
        fit_args: fit overrides for every cell; what follows ``--`` lands here, after the grid file's overrides.
        progress: redraw the running cell's newest log line in place on stderr (default: when stderr is a
            terminal, with one job); otherwise it is printed as a line at most every 10 seconds.
        jobs: cells run at once by this process, each with cores/JOBS CPU threads and, with GPUs, one GPU.
            Any number of grid processes, here or on machines sharing OUTPUT, may run one grid: each cell runs once.
        list: print every cell (number, run name, state) and exit.
        cell: run only cell number CELL (as --list numbers them), e.g. one SLURM array task per cell.
        launcher: local (this process runs the cells), submitit (one job array of ``grid ... --cell K`` tasks on
            SLURM, or local processes where there is no SLURM; needs ``pip install 'tlbench[slurm]'``),
            submitit_local (submitit's local executor even where SLURM exists) or ray (one Ray task per cell on the
            cluster at ADDRESS, every node seeing OUTPUT and the data at the same paths; needs
            ``pip install "tlbench[ray]"``). The grid waits for its tasks.
        slurm_partition: the SLURM partition of the array tasks (submitit launchers).
        cpus_per_cell: CPUs per array task or Ray task, also its OMP_NUM_THREADS (submitit and ray launchers).
        gpus_per_cell: GPUs per array task or Ray task (submitit and ray launchers).
        timeout_min: each array task's time limit in minutes (submitit launchers).
        address: the Ray cluster: auto (RAY_ADDRESS, else the cluster this machine is a node of) or the head's
            HOST:PORT (ray launcher; run the grid on a node of the cluster).
        retries: how often Ray reruns a cell whose worker or node died, or whose fit was killed (ray launcher);
            the rerun takes the cell over and resumes it from its last.ckpt.
    """
    die_with_parent()
    file_values = load_grid_file(grid) if grid else {}
    if fit_args:
        file_values["overrides"] = [*(file_values.get("overrides") or []), *fit_args]
    values = {"datasets": datasets, "backbones": backbones, "recipes": recipes, "seeds": seeds, "data_dir": data_dir}
    spec = build_spec(file_values, values)
    name = Path(grid).stem if grid else None
    if list:
        for one in grid_cells(spec, Path(output), name):
            print(f"{one.index:>4}  {one.experiment}  {describe(one)}")
        return 0
    if launcher == "local":
        cells = run_grid(spec, output, name, progress=show_progress(progress), jobs=jobs, cell=cell)
    else:
        given = {**values, "output": output, "grid": grid}
        grid_args = [arg for key, value in given.items() if value is not None for arg in (f"--{key}", str(value))]
        resources = Resources(cpus_per_cell, gpus_per_cell, timeout_min, slurm_partition)
        if launcher == "ray":
            from tlbench.grid_ray import ray_grid

            cells = ray_grid(spec, grid_args, fit_args or [], resources, output, name, address, retries, cell=cell)
        else:
            cluster = "local" if launcher == "submitit_local" else None
            cells = submit_grid(spec, grid_args, fit_args or [], resources, output, name, cluster, cell=cell)
    return 1 if any(one.status == "failed" for one in cells) else 0


def status(folder: str = ".") -> int:
    """Summarise a grid, running or finished, from its output folder alone (claims, status rows, metrics.json).

    Args:
        folder: a grid's OUTPUT folder (every grid under OUTPUT/lightning_logs/grids/) or one grid's status folder.
    """
    for status_folder, cells in read_grid(folder):
        counts = Counter(one.status for one in cells)
        print(f"{status_folder}: {len(cells)} cells, " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        for one in cells:
            print(f"{one.index:>4}  {one.experiment}  {describe(one)}")
    return 0
