"""Reads time-series classification sets in the sktime/aeon ``.ts`` text format.

Independent of rnnattn (only numpy), so the examples' data path can be tested
and reused on its own.

The UEA/UCR archive sets the examples use are shipped, as plain ``.ts`` files,
inside the wheels of two PyPI packages: ``aeon`` (``aeon/datasets/data/``) and
``sktime`` (``sktime/datasets/data/``). Only those files are needed, so install
either package WITHOUT its dependency tree::

    pip install --no-deps aeon

:func:`find_split` locates the files without importing the package (its
dependencies need not be installed); ``data_dir`` points at a folder of your
own instead (e.g. files downloaded from timeseriesclassification.com).

Format (what this parser accepts): ``#`` / ``%`` comment lines; ``@key value``
header lines up to ``@data``; then one case per line, its dimensions separated
by ``:`` and each dimension's values by ``,``, the class label last when
``@classLabel true``. ``?`` (or ``NaN``) is a missing value. Timestamped files
(``@timeStamps true``) are rejected with an error rather than read wrongly.
"""
import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TSDataset", "parse_ts", "load_ts", "find_split", "load_split", "DATA_PACKAGES"]

# Packages whose wheels carry <name>/datasets/data/<Problem>/<Problem>_{TRAIN,TEST}.ts.
DATA_PACKAGES = ("aeon", "sktime")


@dataclass
class TSDataset:
    """One split of a classification set.

    ``series[i]`` is a float32 array ``(length_i, channels)``; ``labels`` holds
    int64 indices into ``classes`` (the labels in the file's declared order).
    """

    name: str
    series: List[np.ndarray]
    labels: np.ndarray
    classes: List[str]
    header: Dict[str, str]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], dtype=np.int64)

    @property
    def channels(self) -> int:
        return self.series[0].shape[1]

    def __len__(self) -> int:
        return len(self.series)


def _is_true(value: str) -> bool:
    return value.strip().lower() == "true"


def _parse_values(text: str, where: str) -> np.ndarray:
    try:
        return np.array([float("nan") if v.strip() == "?" else float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{where}: bad value ({err})") from None


def parse_ts(lines: Union[str, Iterable[str]], name: str = "<string>", strip_missing_tail: bool = True) -> TSDataset:
    """Parses ``.ts`` text (a string or an iterable of lines).

    With ``strip_missing_tail`` (default), steps at the end of a case that are
    missing in every dimension are dropped: that is how unequal-length sets are
    padded to a common length in some releases, and the model wants the true
    lengths. Missing values anywhere else are kept as NaN.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    header: Dict[str, str] = {}
    classes: Optional[List[str]] = None
    series: List[np.ndarray] = []
    labels: List[int] = []
    in_data = False
    channels = None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f"{name}:{lineno}"
        if not line or line.startswith(("#", "%")):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f"{where}: expected a '@key value' header line before @data, got {line[:40]!r}")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                if _is_true(header.get("timestamps", "false")):
                    raise ValueError(f"{name}: timestamped .ts files (@timeStamps true) are not supported")
                if classes is None:
                    raise ValueError(f"{name}: no '@classLabel true <labels>' header; this reader is for classification sets")
                if "dimensions" in header:
                    channels = int(header["dimensions"])
                elif _is_true(header.get("univariate", "false")):
                    channels = 1
                continue
            header[key] = value.strip()
            if key == "classlabel":
                flag, *labs = value.split()
                classes = labs if _is_true(flag) else None
            continue
        parts = line.split(":")
        label, dims = parts[-1].strip(), parts[:-1]
        if label not in classes:
            raise ValueError(f"{where}: class label {label!r} is not among the declared @classLabel {classes}")
        if channels is None:
            channels = len(dims)
        if len(dims) != channels:
            raise ValueError(f"{where}: expected {channels} dimension(s) separated by ':', got {len(dims)}")
        values = [_parse_values(d, where) for d in dims]
        length = len(values[0])
        if any(len(v) != length for v in values):
            raise ValueError(f"{where}: dimensions of one case have different lengths {[len(v) for v in values]}")
        x = np.stack(values, axis=1)  # (T, C)
        if strip_missing_tail:
            valid = ~np.isnan(x).all(axis=1)
            x = x[: (np.flatnonzero(valid)[-1] + 1) if valid.any() else 0]
        if len(x) == 0:
            raise ValueError(f"{where}: case has no values")
        series.append(x.astype(np.float32))
        labels.append(classes.index(label))
    if not in_data:
        raise ValueError(f"{name}: no @data line")
    if not series:
        raise ValueError(f"{name}: no cases after @data")
    return TSDataset(header.get("problemname", name), series, np.array(labels, dtype=np.int64), classes, header)


def load_ts(path: str, **kwargs) -> TSDataset:
    """Reads one ``.ts`` file."""
    with open(path, encoding="utf-8") as f:
        return parse_ts(f, name=os.path.basename(path), **kwargs)


def _package_data_dirs(packages: Sequence[str]) -> List[Tuple[str, str]]:
    found = []
    for pkg in packages:
        # find_spec on a top-level name locates the package without running its
        # __init__ (which would need the dependencies we chose not to install).
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                found.append((pkg, os.path.join(loc, "datasets", "data")))
    return found


def find_split(problem: str, split: str, data_dir: Optional[str] = None, packages: Sequence[str] = DATA_PACKAGES) -> str:
    """Path of ``<problem>_<split>.ts`` (split ``TRAIN`` or ``TEST``).

    Looks in ``data_dir`` (the file itself or a ``<problem>/`` folder below it)
    when given, else in the data folder of the first installed package of
    ``packages``. Raises ``FileNotFoundError`` saying how to get the data.
    """
    split = split.upper()
    if split not in ("TRAIN", "TEST"):
        raise ValueError(f"split must be 'TRAIN' or 'TEST', got {split!r}")
    fname = f"{problem}_{split}.ts"
    if data_dir is not None:
        candidates = [os.path.join(data_dir, fname), os.path.join(data_dir, problem, fname)]
        where = f"in {data_dir!r}"
    else:
        dirs = _package_data_dirs(packages)
        candidates = [os.path.join(d, problem, fname) for _, d in dirs]
        where = (
            "in the data of the installed package(s) " + ", ".join(p for p, _ in dirs)
            if dirs
            else "because none of the packages " + ", ".join(packages) + " is installed"
        )
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{fname} not found {where}. The UEA/UCR archive files ship inside the aeon and "
        f"sktime wheels; only the data is needed, so install one without its dependencies: "
        f"`pip install --no-deps aeon` (or `pip install --no-deps sktime`), or pass --data-dir "
        f"pointing at a folder holding {fname}."
    )


def load_split(problem: str, split: str, data_dir: Optional[str] = None, **kwargs) -> TSDataset:
    """:func:`find_split` then :func:`load_ts`."""
    return load_ts(find_split(problem, split, data_dir), **kwargs)
