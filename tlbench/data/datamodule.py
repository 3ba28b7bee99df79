"""``ImageFolderDataModule``: a class-folder dataset, split once, served to Lightning.

The datamodule takes its preprocessing from the LightningModule it is trained with (the backbone decides
input size and normalisation), so a config never repeats what the weights already know.

The training loader's randomness (the order of each epoch, each image's augmentation) is a function of the run's
seed and the epoch only (``EpochOrder``), and its position inside an epoch is part of the checkpoint
(``ResumableLoader``): a resumed fit trains on the same batches as an uninterrupted one, whatever the number of
loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlbench.cache import Cache
from tlbench.console import warn
from tlbench.data.audit import preflight, scan_files
from tlbench.data.decode_cache import DecodedImageCache
from tlbench.data.discover import check_root, files_under
from tlbench.data.images import is_image_file, load_rgb
from tlbench.data.split import (
    DEFAULT_SELECT_FRACTION,
    DEFAULT_VAL_FRACTION,
    SELECT,
    imbalance_note,
    read_split,
    split_dataset,
    split_summary,
)
from tlbench.data.transforms import AugmentPolicy, Preprocessing, loader_transform
from tlbench.errors import TLBenchError
from tlbench.machine import usable_cores
from tlbench.rundir import run_dir

# Streams derived from the run's seed (``derived_seed``): the training loader's, and the process-wide ones that
# ``callbacks/rng_state.py: RandomState`` seeds every epoch.
TRAIN_LOADER_STREAM = 1
PROCESS_STREAMS = 2


def run_seed() -> int:
    """The seed of this run: the one ``seed_everything`` set (Lightning keeps it in ``PL_GLOBAL_SEED``), else the
    seed PyTorch's generator started from."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def derived_seed(*keys: int) -> int:
    """A 32-bit seed for the stream named by ``keys`` (the run's seed, a stream, an epoch...): NumPy's
    ``SeedSequence`` mixes them, so neighbouring keys give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class EpochOrder(Sampler):
    """The training loader's keys for one epoch, drawn from the run's seed and the epoch alone: a shuffle (each
    item once) or, with ``weights``, draws with replacement. Lightning calls ``set_epoch`` before every epoch.

    With ``item_seeds`` each key is ``(index, seed)``, the seed of that item's augmentation
    (``ImageTableDataset``): an image is augmented the same whichever worker loads it, and whatever that worker
    loaded before. ``start`` keys of the epoch are skipped: those a run interrupted inside the epoch had trained on
    (``ResumableLoader``).
    """

    def __init__(
        self, size: int, seed: int, epoch: int, weights: torch.Tensor | None = None, item_seeds: bool = True
    ) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.weights = weights
        self.item_seeds = item_seeds
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a position belongs to the epoch it was saved in
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(derived_seed(self.seed, TRAIN_LOADER_STREAM, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        start, self.start = self.start, 0
        keys = order[start:].tolist()
        if not self.item_seeds:
            return iter(keys)
        seeds = torch.randint(2**63 - 1, (self.size,), generator=generator)
        return zip(keys, seeds[start:].tolist())


class ResumableLoader(DataLoader):
    """The training loader, with its position inside the epoch as state: Lightning stores a loader's
    ``state_dict`` in every checkpoint and, resuming inside an epoch (from the ``last.ckpt`` Ctrl-C writes), hands
    it back before iterating, so the run goes on with the batch after the last one it trained instead of starting
    the epoch's order over. It has its own generator, so iterating it draws nothing from PyTorch's global stream
    (the workers' base seed; augmentation is seeded per image by ``EpochOrder``)."""

    served = 0  # batches of the current epoch handed to the training loop

    def __iter__(self):
        order = self.sampler
        self.served = order.start // self.batch_size if isinstance(order, EpochOrder) else 0
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"batches": self.served}

    def load_state_dict(self, state_dict: dict) -> None:
        if isinstance(self.sampler, EpochOrder):  # under DDP Lightning wraps the sampler: resumes at the epoch start
            self.sampler.start = state_dict["batches"] * self.batch_size


class ImageTableDataset(Dataset):
    """Rows of a split table as ``(uint8_image, class_index, row_index)``; the row index maps predictions back to
    files, and the model normalises the images (``Preprocessing.normalize``). A key ``(row, seed)`` (from
    ``EpochOrder``) transforms the image with PyTorch's stream seeded by ``seed``, which every augmentation here
    draws from (``data/transforms.py``), and leaves the stream as it was."""

    def __init__(
        self, root: Path, table: pd.DataFrame, classes: list[str], transform, decoded: DecodedImageCache | None = None
    ) -> None:
        self.root = root
        self.paths = list(table.path)
        self.hashes = list(table.sha256) if decoded is not None and "sha256" in table else None
        index = {name: i for i, name in enumerate(classes)}
        self.targets = [index[label] for label in table.label]
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        path = self.root / self.paths[i]
        image = self.decoded.load(path, self.hashes[i]) if self.hashes is not None else load_rgb(path)
        if seed is None:
            return self.transform(image), self.targets[i], i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), self.targets[i], i


class UnlabelledImages(Dataset):
    """Image files as ``(uint8_image, -1, index)``: the test split's item layout, with no label, for predict."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.paths[i])), -1, i


# A warning at fit start for images whose shorter side is below this part of the network's input size.
SMALL_IMAGE_RATIO = 0.5


def default_num_workers() -> int:
    """Leave one core to the training process; loader workers beyond the cores only contend with it."""
    return max(0, min(8, usable_cores() - 1))


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: str = "data/birds",
        split_seed: int = 0,
        split_file: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        augment: bool = True,
        augment_policy: AugmentPolicy = "none",
        sampler: Literal["random", "balanced"] = "random",
        skip_bad_images: bool = False,
        dedupe: bool = False,
        decode_cache: bool = True,
        predict_dir: str | None = None,
        select_fraction: float = DEFAULT_SELECT_FRACTION,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        labels_csv: str | None = None,
        allow_external_links: bool = False,
    ) -> None:
        """
        Args:
            root: folder of class sub-folders, or of ``train/`` with ``val/`` and/or ``test/`` folders of class
                folders (used as given), or of images listed in ``labels_csv``.
            split_seed: seed of the stratified 70/20/10 split (and of the val or select split carved from train);
                the same seed gives the same split for every model.
            split_file: reuse a ``split.csv`` (path,label,split) instead of splitting.
            batch_size: images per batch for every split.
            num_workers: data-loading processes; default: one less than the available cores.
            augment: random crop/flip/rotation/shift for training images.
            augment_policy: also apply timm's RandAugment ("randaugment", rand-m9-mstd0.5) or torchvision's
                TrivialAugmentWide ("trivialaugment") to training images, before the crop/flip; needs ``augment``.
                The head phase on cached features (``--model.cache_features``) sees it only in the augmented views
                of ``--model.cached_views`` K > 1 (the feature cache is keyed on the policy); with K = 1 it trains on
                centre crops, so the policy acts in fine-tuning only.
            sampler: order of training images each epoch: "random" (shuffled, each image once) or "balanced" (drawn
                with replacement, every class equally likely; as many draws as images), for imbalanced classes.
                Follows the run's seed and the epoch only (``EpochOrder``); the head phase's cached features are
                drawn the same way.
            skip_bad_images: train without unusable files (listed in metrics.json "skipped") instead of stopping.
            dedupe: drop later copies of images duplicated across train/val/test instead of stopping.
            decode_cache: keep images decoded and shrunk to the training resolution on disk, so later epochs and
                runs skip JPEG decoding (see data/decode_cache.py).
            predict_dir: a folder of images (searched recursively) for ``predict``; default: the test split.
            select_fraction: for a ``train/ val/`` layout without a test folder, the part of each class's training
                images held out (split ``select``) to choose checkpoints and the final phase, so the reported val
                split stays untouched by selection; 0 selects on val as well.
            val_fraction: for a ``train/ test/`` layout (no val folder), the part of each class's training images
                held out as the val split (stratified, seeded by ``split_seed``); test stays as given.
            labels_csv: a CSV with columns path,label[,split] (paths relative to ``root``) labelling the images
                under ``root``, instead of class folders; without a split column the images are split 70/20/10.
            allow_external_links: follow image symlinks that lead outside ``root`` (a subset linked from a larger
                copy) instead of refusing the dataset.
        """
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.split_seed = split_seed
        self.split_file = split_file
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        if augment_policy != "none" and not augment:
            raise TLBenchError(
                f"--data.augment_policy {augment_policy} augments training images but --data.augment is false;"
                " pass --data.augment true or drop --data.augment_policy"
            )
        if split_file and labels_csv:
            raise TLBenchError(
                f"--data.split_file {split_file} and --data.labels_csv {labels_csv} both label the images; pass one"
            )
        self.augment = augment
        self.augment_policy = augment_policy
        self.sampler = sampler
        self.skip_bad_images = skip_bad_images
        self.dedupe = dedupe
        self.decode_cache = decode_cache
        self.predict_dir = predict_dir
        self.select_fraction = select_fraction
        self.val_fraction = val_fraction
        self.labels_csv = labels_csv
        self.allow_external_links = allow_external_links
        self.layout = ""
        self.selection_from_train = False  # see DatasetSplit
        self._predict_rows: pd.DataFrame | None = None
        self._discovered: pd.DataFrame | None = None
        self.skipped: list[tuple[str, str]] = []
        self.image_sizes: dict[str, tuple[int, int]] = {}
        self.preprocessing: Preprocessing | None = None
        self.table: pd.DataFrame | None = None
        self.classes: list[str] = []
        # Asked for each split's inputs whenever Lightning builds its train or val loader: a dataset of
        # ``(input, target, row)`` computed ahead (cached backbone features) to serve instead of the images, or None.
        # Set by ``callbacks/feature_cache.py: FeatureCaching`` for the length of a fit.
        self.precomputed_inputs: Callable[[str], Dataset | None] | None = None
        # The seed of the training loader's order and augmentation: the run's, taken when a fit starts and kept in
        # checkpoints (``state_dict``), so a resumed fit draws what the interrupted one would have drawn.
        self.train_seed: int | None = None

    def state_dict(self) -> dict:
        return {"train_seed": self.train_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seed = state_dict.get("train_seed", self.train_seed)

    @property
    def dataset_name(self) -> str:
        return self.root.resolve().name

    @property
    def test_on(self) -> str:
        """'test', or 'val' for a pre-split dataset without a test folder (reported as such)."""
        return "test" if (self.table.split == "test").any() else "val"

    @property
    def validation_split(self) -> str:
        """The split the validation loader serves (checkpoint and phase selection): 'select' when the table has
        one (carved from train because val is the reported split), else 'val'."""
        return SELECT if (self.prepare_split().split == SELECT).any() else "val"

    def discover(self) -> pd.DataFrame:
        """The split table from listing files only (no decoding): fast, so ``fit`` calls it before the trainer
        creates a run folder, and a missing, empty or imageless data root leaves nothing behind."""
        if self._discovered is None:
            root = check_root(self.root)
            if self.split_file:
                self._discovered = read_split(self.split_file)
                self.layout = f"layout: split file {self.split_file} (used as given)"
            else:
                split = split_dataset(
                    root,
                    self.split_seed,
                    self.select_fraction,
                    self.val_fraction,
                    self.labels_csv,
                    self.allow_external_links,
                )
                self._discovered, self.layout = split.table, split.layout
                self.selection_from_train = split.selection_from_train
        return self._discovered

    def prepare_split(self) -> pd.DataFrame:
        """Discover, split and pre-flight the data once: every file decoded before training, duplicates across
        splits caught; the resulting table (with content hashes) is the run's manifest."""
        if self.table is not None:
            return self.table
        root = check_root(self.root)
        table = self.discover()
        trainer = self.trainer  # the scan's bar follows --trainer.enable_progress_bar, on rank 0 only
        if trainer is None or trainer.is_global_zero:
            print(f"{root}: {self.layout}")
        # reports (bad_files.csv, duplicates.csv) go to the run directory of a run, on rank 0 only
        report_dir = (
            run_dir(trainer) if trainer is not None and trainer.is_global_zero and trainer.lightning_module else None
        )
        progress = trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None
        checked = preflight(
            root,
            table,
            skip_bad=self.skip_bad_images,
            dedupe=self.dedupe,
            report_dir=report_dir,
            progress=progress,
            allow_external_links=self.allow_external_links,
        )
        if trainer is None or trainer.is_global_zero:
            print(f"{root}: {checked.summary(report_dir)}")
        self.skipped = checked.skipped
        self.image_sizes = checked.sizes
        self.table = checked.table
        self.classes = sorted(set(table.label))
        return self.table

    def split_sizes(self) -> dict[str, int]:
        return split_summary(self.prepare_split())

    def train_class_counts(self) -> list[int]:
        """Training images per class, in class-index order (``classes``)."""
        table = self.prepare_split()
        counts = table[table.split == "train"].label.value_counts()
        return [int(counts.get(name, 0)) for name in self.classes]

    def _warn_if_imbalanced(self) -> None:
        note = imbalance_note(self.prepare_split())
        if note:
            warn(note)

    def _warn_if_small(self) -> None:
        """One warning for all images far below the network's input: they are upscaled, so blurred."""
        input_size = self.preprocessing.input_size
        small = [min(size) for size in self.image_sizes.values() if size and min(size) < input_size * SMALL_IMAGE_RATIO]
        if small:
            warn(
                f"{len(small)} of {len(self.image_sizes)} images have a shorter side under"
                f" {input_size * SMALL_IMAGE_RATIO:g} px (smallest {min(small)} px): they are upscaled to the"
                f" {input_size} px input, which blurs them; a smaller --model.input_size (or a backbone made for small"
                " images) may suit them better"
            )

    def setup(self, stage: str | None = None) -> None:
        self.prepare_split()
        if self.decode_cache:
            Cache("decoded").prune()
        if self.preprocessing is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.preprocessing = getattr(module, "preprocessing", None) or Preprocessing()
        if stage == "fit":
            self.train_seed = run_seed()  # a resumed fit then loads the checkpoint's
            self._warn_if_imbalanced()
            self._warn_if_small()

    def dataset(self, split: str, train_transforms: bool = False) -> ImageTableDataset:
        table = self.prepare_split()
        rows = table[table.split == split].reset_index(drop=True)
        pre = self.preprocessing or Preprocessing()
        augment = train_transforms and self.augment
        transform = loader_transform(pre, augment=augment, policy=self.augment_policy if augment else "none")
        decoded = DecodedImageCache(pre.resize_size, pre.interpolation) if self.decode_cache else None
        return ImageTableDataset(check_root(self.root), rows, self.classes, transform, decoded)

    def _loader(self, dataset: Dataset, order: EpochOrder | None = None) -> DataLoader:
        """``dataset`` in row order, or in the training ``order`` through a ``ResumableLoader``."""
        options = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }
        if order is None:
            return DataLoader(dataset, **options)
        return ResumableLoader(dataset, sampler=order, generator=torch.Generator(), **options)

    def _precomputed(self, split: str) -> Dataset | None:
        return self.precomputed_inputs(split) if self.precomputed_inputs is not None else None

    def _train_order(self, size: int, item_seeds: bool) -> EpochOrder:
        """The order of the ``size`` training items in the epoch Lightning is about to run: shuffled, or with
        ``sampler`` "balanced" drawn with replacement, each training image weighted by one over its class's size so
        every class is equally likely."""
        weights = None
        if self.sampler == "balanced":
            table = self.prepare_split()
            labels = table[table.split == "train"].label
            if len(labels) != size:
                raise RuntimeError(f"the training loader serves {size} items for {len(labels)} training images")
            weights = torch.from_numpy(1.0 / labels.map(labels.value_counts()).to_numpy(dtype="float64"))
        seed = run_seed() if self.train_seed is None else self.train_seed
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return EpochOrder(size, seed, epoch, weights, item_seeds)

    def train_dataloader(self) -> DataLoader:
        precomputed = self._precomputed("train")
        if precomputed is not None:  # cached features: no augmentation to seed, nothing for workers to do
            order = self._train_order(len(precomputed), item_seeds=False)
            return ResumableLoader(precomputed, batch_size=self.batch_size, sampler=order, generator=torch.Generator())
        dataset = self.dataset("train", train_transforms=True)
        return self._loader(dataset, self._train_order(len(dataset), item_seeds=True))

    def val_dataloader(self) -> DataLoader:
        precomputed = self._precomputed("val")
        if precomputed is not None:
            return DataLoader(precomputed, batch_size=self.batch_size, shuffle=False)
        return self._loader(self.dataset(self.validation_split))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.test_on))

    def predict_rows(self) -> pd.DataFrame:
        """The files ``predict_dataloader`` serves, in its row order: the test split's rows, or the usable images
        under ``predict_dir`` (absolute ``path``). Non-image and unusable files there are warned about and left out."""
        if self.predict_dir is None:
            table = self.prepare_split()
            return table[table.split == self.test_on].reset_index(drop=True)
        if self._predict_rows is None:
            folder = Path(self.predict_dir).expanduser()
            if not folder.is_dir():
                raise TLBenchError(f"--data.predict_dir {folder} is not a folder; pass a folder of images")
            files = [path.relative_to(folder).as_posix() for path in files_under(folder)]
            images = [path for path in files if is_image_file(Path(path))]
            scans = scan_files(folder, images, allow_external_links=self.allow_external_links)
            skipped = [(path, "not an image file") for path in files if path not in scans]
            skipped += [(path, scan.reason) for path, scan in scans.items() if scan.reason]
            for path, reason in skipped:
                warn(f"{folder / path}: skipped, {reason}")
            usable = [str((folder / path).resolve()) for path, scan in scans.items() if not scan.reason]
            if not usable:
                raise TLBenchError(
                    f"--data.predict_dir {folder} holds no usable image; put .jpg, .png, .bmp, .webp or .tif files"
                    " there, or pass the folder that holds them"
                )
            self._predict_rows = pd.DataFrame({"path": usable})
        return self._predict_rows

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is None:
            return self.test_dataloader()
        transform = loader_transform(self.preprocessing or Preprocessing(), augment=False)
        images = UnlabelledImages([Path(path) for path in self.predict_rows().path], transform)
        return self._loader(images)
