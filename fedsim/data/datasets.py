"""Dataset registry.

Every dataset is held as uint8 image tensors (N, C, H, W) plus int64 labels, loaded once per
process (``load_dataset`` is cached) and normalised per batch, so simulated clients never
re-read files and idle clients cost no copies.

The offline default is Fashion-MNIST: the loader looks in ``data_root``, then in the folder of
Debian's ``dataset-fashion-mnist`` package, and only then asks torchvision to download (when
``download=true``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedsim.data.idx import read_idx
from fedsim.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in memory as uint8 tensors."""

    name: str
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True  # whether a horizontal flip keeps the label (not for digits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        channels, height, width = self.x_train.shape[1:]
        return (channels, height, width)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32, scaled to [0, 1] then standardised per channel."""
        return self.standardize(x.float().div_(255.0))

    def standardize(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] standardised per channel (the second half of ``normalize``)."""
        mean, std = _channel_statistics(self.mean, self.std, x01.device)
        return (x01 - mean) / std

    def scale_difference(self, d: torch.Tensor) -> torch.Tensor:
        """The linear part of ``normalize`` for a difference of [0, 1] images (no mean shift)."""
        return d / _channel_statistics(self.mean, self.std, d.device)[1]


@lru_cache(maxsize=16)
def _channel_statistics(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (1, C, 1, 1) tensors on ``device``, made once.

    Made once per device: a tensor built from a tuple costs about as much as normalising a small batch.
    """
    return (
        torch.tensor(mean, device=device).view(1, -1, 1, 1),
        torch.tensor(std, device=device).view(1, -1, 1, 1),
    )


def _nchw(images: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.array(images, dtype=np.uint8))
    if t.ndim == 3:
        return t.unsqueeze(1).contiguous()
    return t.permute(0, 3, 1, 2).contiguous() if channels_last else t.contiguous()


def _labels(labels) -> torch.Tensor:
    return torch.from_numpy(np.array(labels, dtype=np.int64))


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_idx_dataset(folders: list[Path]) -> tuple[torch.Tensor, ...] | None:
    """Load (x_train, y_train, x_test, y_test) from the original IDX files, if all are present."""
    found = {stem: _find_idx(folders, stem) for pair in _IDX_FILES.values() for stem in pair}
    paths = {stem: path for stem, path in found.items() if path is not None}
    if len(paths) < len(found):
        return None
    out = []
    for images, labels in _IDX_FILES.values():
        out += [_nchw(read_idx(paths[images]), False), _labels(read_idx(paths[labels]))]
    return tuple(out)


def _torchvision_error(label: str, root: Path, expected: str, err: Exception) -> DataError:
    return DataError(
        f"{label} not found under {root} (expected {expected}): copy the files there or run with "
        f"dataset.download=true on a machine with a network [{type(err).__name__}]"
    )


def _fashion_mnist(root: Path, download: bool):
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST]
    found = _load_idx_dataset(folders)
    if found is not None:
        return found
    if not download:
        raise DataError(
            f"Fashion-MNIST files not found in {root}/FashionMNIST/raw or {DEBIAN_FASHION_MNIST}: "
            "install them with `apt-get install dataset-fashion-mnist` or set dataset.download=true"
        )
    return _torchvision_train_test("FashionMNIST", "Fashion-MNIST", "{root}/FashionMNIST/raw/*-ubyte", False)(
        root, download
    )


def _torchvision_train_test(cls_name: str, label: str, expected: str, channels_last: bool):
    """Loader for a torchvision dataset with train=True/False splits; ``expected`` names the files."""

    def load(root: Path, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
        except (RuntimeError, OSError) as err:
            raise _torchvision_error(label, root, expected.format(root=root), err) from err
        return (
            _nchw(train.data, channels_last),
            _labels(train.targets),
            _nchw(test.data, channels_last),
            _labels(test.targets),
        )

    return load


# CIFAR in its python-pickle release: (folder, train files, test files, label key, torchvision class)
_CIFAR = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _read_cifar(folder: Path, names: list[str], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise DataError(
                f"{folder / name} is not a CIFAR batch file ({type(err).__name__}: {err}): replace it with the original"
            ) from err
    return torch.from_numpy(np.concatenate(xs)).contiguous(), torch.from_numpy(np.concatenate(ys))


def _cifar(cls_name: str):
    """CIFAR-10/100 from the original python batches.

    CIFAR-10/100 read from the original python batches (``data`` rows of 3x32x32 uint8, labels), downloaded by
    torchvision first when ``download`` is set.
    """
    folder_name, train_files, test_files, label_key = _CIFAR[cls_name]

    def load(root: Path, download: bool):
        folder = root / folder_name
        if download and not all((folder / f).is_file() for f in train_files + test_files):
            import torchvision.datasets as tvd

            getattr(tvd, cls_name)(root, train=True, download=True)
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
        if missing:
            raise DataError(
                f"{cls_name} not found under {root} (expected {folder}/ with {', '.join(train_files + test_files)}; "
                f"missing {', '.join(missing)}): copy the files there or run with dataset.download=true on a machine "
                "with a network"
            )
        return (*_read_cifar(folder, train_files, label_key), *_read_cifar(folder, test_files, label_key))

    return load


def _mnist(root: Path, download: bool):
    found = _load_idx_dataset([root / "MNIST" / "raw", root / "mnist"])
    return (
        found
        if found is not None
        else _torchvision_train_test("MNIST", "MNIST", "{root}/MNIST/raw/*-ubyte", False)(root, download)
    )


def _svhn(root: Path, download: bool):
    import torchvision.datasets as tvd

    try:
        train = tvd.SVHN(root, split="train", download=download)
        test = tvd.SVHN(root, split="test", download=download)
    except (RuntimeError, OSError) as err:
        raise _torchvision_error("SVHN", root, f"{root}/train_32x32.mat and test_32x32.mat", err) from err
    return (_nchw(train.data, False), _labels(train.labels), _nchw(test.data, False), _labels(test.labels))


def _digits(root: Path, download: bool):
    """scikit-learn's bundled 8x8 digits (1,797 images): the fastest offline data, for tests."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1500], order[1500:]
    return (
        _nchw(images[train], False),
        _labels(bunch.target[train]),
        _nchw(images[test], False),
        _labels(bunch.target[test]),
    )


@dataclass(frozen=True)
class _Spec:
    load: Callable[[Path, bool], tuple]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True


DATASETS: dict[str, _Spec] = {
    "fashion_mnist": _Spec(_fashion_mnist, 10, (0.2860,), (0.3530,)),
    "mnist": _Spec(_mnist, 10, (0.1307,), (0.3081,), hflip=False),
    "cifar10": _Spec(_cifar("CIFAR10"), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec(_cifar("CIFAR100"), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": _Spec(_svhn, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), hflip=False),
    "digits": _Spec(_digits, 10, (0.3,), (0.37,), hflip=False),
}


def dataset_from_config(cfg) -> ImageDataset:
    """The dataset a run config names (``dataset.name``, ``data_root``, ``dataset.download``), cached."""
    return load_dataset(cfg.dataset.name, str(cfg.data_root), bool(cfg.dataset.download))


@lru_cache(maxsize=4)
def load_dataset(name: str, root: str = "./data", download: bool = False) -> ImageDataset:
    """Load a dataset by registry name (cached: once per process)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    x_tr, y_tr, x_te, y_te = spec.load(Path(root).expanduser(), download)
    return ImageDataset(name, x_tr, y_tr, x_te, y_te, spec.num_classes, spec.mean, spec.std, spec.hflip)
