import gzip
import struct

import numpy as np
import pytest
import torch

from fedsim.data import load_dataset
from fedsim.data.datasets import DEBIAN_FASHION_MNIST
from fedsim.data.idx import read_idx
from fedsim.errors import ConfigError, DataError


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)


def test_read_idx_rejects_truncated_file(tmp_path):
    images = np.zeros((5, 2, 2), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", d) for d in images.shape)
    (tmp_path / "bad").write_bytes(header + b"\x00" * 7)
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(tmp_path / "bad")


def test_a_corrupt_dataset_file_is_one_line(tmp_path, capsys):
    """A cut-off gzip (an interrupted copy) names the file instead of a traceback."""
    from fedsim.cli import main

    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for name, shape in (
        ("train-images-idx3-ubyte", (60, 28, 28)),
        ("train-labels-idx1-ubyte", (60,)),
        ("t10k-images-idx3-ubyte", (10, 28, 28)),
        ("t10k-labels-idx1-ubyte", (10,)),
    ):
        write_idx(folder / f"{name}.gz", np.zeros(shape, dtype=np.uint8))
    whole = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    assert (
        main(["run", f"data_root={tmp_path}", f"runs_root={tmp_path}/runs", "backend=inprocess", "num_rounds=1"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz cannot be read" in err


def test_fashion_mnist_from_data_root(tmp_path):
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    ds = load_dataset.__wrapped__("fashion_mnist", str(tmp_path), False)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="needs apt package dataset-fashion-mnist (.ci/run installs it)"
)
def test_fashion_mnist_offline_default(tmp_path):
    ds = load_dataset("fashion_mnist", str(tmp_path), False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert sorted(ds.y_train.unique().tolist()) == list(range(10))
    x = ds.normalize(ds.x_train[:1000])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


@pytest.mark.parametrize(
    "name, expected", [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw"), ("svhn", "train_32x32.mat")]
)
def test_missing_files_give_one_clear_line(tmp_path, name, expected):
    with pytest.raises(DataError) as err:
        load_dataset.__wrapped__(name, str(tmp_path), False)
    message = str(err.value)
    assert "\n" not in message and expected in message and "dataset.download=true" in message


@pytest.mark.parametrize("variant, train, test, classes", [("cifar10", 100, 20, 10), ("cifar100", 100, 100, 100)])
def test_cifar_reads_the_original_file_format(tmp_path, variant, train, test, classes):
    from tests.conftest import write_cifar

    write_cifar(tmp_path, variant)
    ds = load_dataset.__wrapped__(variant, str(tmp_path), False)
    assert (
        ds.x_train.shape == (train, 3, 32, 32)
        and ds.x_test.shape == (test, 3, 32, 32)
        and ds.x_train.dtype == torch.uint8
    )
    assert ds.num_classes == classes and int(ds.y_train.max()) == min(train, classes) - 1
    folder = tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    first = next(p for p in sorted(folder.iterdir()))
    first.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="is not a CIFAR batch file"):
        load_dataset.__wrapped__(variant, str(tmp_path), False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="choose one of"):
        load_dataset.__wrapped__("imagenet", "./data", False)


def test_digits_is_offline_and_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1500, 1, 8, 8) and ds.x_test.shape == (297, 1, 8, 8)
    assert ds.num_classes == 10
