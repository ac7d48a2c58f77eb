"""Reader for the IDX format of the original MNIST / Fashion-MNIST files (gzip'd or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedsim.errors import ConfigError

_DTYPES: dict[int, np.dtype] = {
    code: np.dtype(kind)
    for code, kind in {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.items()
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format).

    Read an IDX file: 2 zero bytes, a dtype code, the number of dims, big-endian sizes, data. A file that
    cannot be read (a truncated or corrupt gzip, a bad header) is one ConfigError line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a cut-off gzip an EOFError
        raise ConfigError(
            f"{path} cannot be read ({type(err).__name__}: {err}): replace it with the original file"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number): replace it with the original file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ConfigError(
            f"{path}: header says {shape} but holds {data.size} values (truncated file?): replace it with the "
            "original file"
        )
    return data.reshape(shape)
