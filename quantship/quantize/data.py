"""Calibration and evaluation data: loading, checking against the model, batching.

Data is an `.npz` keyed by input name, or a folder of `<input name>.npy` files; an optional
labels array (key `labels`) makes it evaluation data. The leading axis counts samples. When an
array has the model input's rank, the samples are stacked along the model's batch axis; when
it has one more dimension, the model has no batch axis and each sample is run alone.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader

from quantship.quantize.errors import QuantizeInputError

LABELS_KEY = "labels"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def batch_dim(self) -> int | None:
        """The model's own batch size when fixed (often 1), None when dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) else None

    def describe(self) -> str:
        # a named dimension by its name (input_ids int64[batch, seq]), an unnamed open one as ?
        dims = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return specs


@dataclass(frozen=True)
class Dataset:
    """Samples for every model input, and labels when the data has them."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    stacked: bool
    """True: samples run in batches along the model's batch axis. False: one at a time."""
    sha256: str
    source: str

    @property
    def size(self) -> int:
        return len(next(iter(self.arrays.values())))

    def row_shapes(self) -> dict[str, list[int]]:
        """Each input's shape in a call of one sample: sizes the model ran at for the dimensions it
        leaves open (a waveform's samples, an image's height), which a length of 1 may not be."""
        return {
            name: [1, *array.shape[1:]] if self.stacked else list(array.shape[1:])
            for name, array in self.arrays.items()
        }

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        step = batch_size if self.stacked else 1
        for begin in range(0, self.size, step):
            end = min(begin + step, self.size)
            if self.stacked:
                yield {name: array[begin:end] for name, array in self.arrays.items()}
            else:
                yield {name: array[begin] for name, array in self.arrays.items()}

    def subset(self, count: int, start: int = 0) -> Dataset:
        end = start + count
        arrays = {name: array[start:end] for name, array in self.arrays.items()}
        labels = None if self.labels is None else self.labels[start:end]
        return Dataset(arrays, labels, self.stacked, _digest(arrays, labels), f"{self.source}[{start}:{end}]")

    def chunks(self, count: int) -> Iterator[Dataset]:
        """Consecutive subsets of `count` samples (the last may be shorter)."""
        for start in range(0, self.size, count):
            yield self.subset(min(count, self.size - start), start)


def load_dataset(
    path: Path,
    inputs: list[InputSpec],
    *,
    role: str,
    labels_key: str = LABELS_KEY,
    require_labels: bool = False,
) -> Dataset:
    """Read and check data for `inputs`. `role` ("calibration", "evaluation") names it in errors."""
    raw = _read_arrays(path, role)
    labels = raw.pop(labels_key, None)
    names = {spec.name for spec in inputs}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise QuantizeInputError(
            f"{role} data {path} has arrays {unknown} that match no model input "
            f"(inputs: {', '.join(spec.describe() for spec in inputs)})"
        )
    missing = [spec.describe() for spec in inputs if spec.name not in raw]
    if missing:
        raise QuantizeInputError(f"{role} data {path} is missing model input(s): {', '.join(missing)}")

    stacked_flags = {spec.name: _check_array(raw[spec.name], spec, role, path) for spec in inputs}
    sizes = {name: len(array) for name, array in raw.items()}
    if len(set(sizes.values())) > 1:
        raise QuantizeInputError(f"{role} data {path}: inputs hold different sample counts {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise QuantizeInputError(f"{role} data {path} is empty: it holds 0 samples")
    if len(set(stacked_flags.values())) > 1:
        raise QuantizeInputError(f"{role} data {path}: inputs mix batched and unbatched layouts")
    stacked = next(iter(stacked_flags.values()))
    for spec in inputs:
        array = raw[spec.name]
        if array.dtype.kind == "f" and np.isnan(array).any():  # an infinity may mean something: a -inf mask
            raise QuantizeInputError(
                f"{role} data {path}: '{spec.name}' holds {int(np.count_nonzero(np.isnan(array)))} NaN "
                "values: the FP32 model's answers to them judge nothing, and calibration cannot range them"
            )
        fixed = spec.batch_dim
        if stacked and fixed is not None and size % fixed:
            raise QuantizeInputError(
                f"{role} data {path}: {size} samples cannot be cut into batches of {fixed} "
                f"(input {spec.describe()} has a fixed batch size)"
            )

    if labels is not None:
        labels = _check_labels(labels, size, role, path)
    elif require_labels:
        raise QuantizeInputError(f"{role} data {path} has no '{labels_key}' array")
    arrays = {spec.name: raw[spec.name] for spec in inputs}
    return Dataset(arrays, labels, stacked, _digest(arrays, labels), str(path))


_NPZ_MAGIC = b"PK\x03\x04"  # a zip archive's first local header
_EMPTY_NPZ_MAGIC = b"PK\x05\x06"  # an archive that is only its end record: np.savez() of nothing
_NPY_MAGIC = b"\x93NUMPY"


def _read_arrays(path: Path, role: str) -> dict[str, np.ndarray]:
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise QuantizeInputError(f"{role} data folder {path} holds no .npy files")
            return {file.stem: np.load(file, allow_pickle=False) for file in files}
        with path.open("rb") as stream:  # ours to close: numpy leaks a file it opened on a bad zip
            start = stream.read(len(_NPY_MAGIC))
            if start.startswith(_EMPTY_NPZ_MAGIC):
                raise QuantizeInputError(
                    f"{role} data {path} is an .npz of no arrays: key them by input name"
                )
            if not start.startswith((_NPZ_MAGIC, _NPY_MAGIC)):  # numpy would call it a pickle
                raise QuantizeInputError(
                    f"{role} data {path} is not .npz or .npy data (it starts with {start!r}): give an "
                    ".npz keyed by input name, or a folder of .npy files"
                )
            stream.seek(0)
            loaded = np.load(stream, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise QuantizeInputError(
                    f"{role} data {path} is a single array; use an .npz keyed by input name"
                )
            with loaded:
                return {name: loaded[name] for name in loaded.files}
    except QuantizeInputError:
        raise
    except FileNotFoundError as exc:
        raise QuantizeInputError(f"{role} data {path} does not exist") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOFError: an empty file
        raise QuantizeInputError(f"{role} data {path} is not readable .npz/.npy data: {exc!s}") from exc


def _check_array(array: np.ndarray, spec: InputSpec, role: str, path: Path) -> bool:
    """Check one array against its input; True when samples stack along the batch axis."""
    if array.dtype != spec.dtype:
        raise QuantizeInputError(
            f"{role} data {path}: '{spec.name}' is {array.dtype.name}, the model wants {spec.dtype.name} "
            f"(convert with .astype(np.{spec.dtype.name}))"
        )
    rank = len(spec.shape)
    if array.ndim == rank and rank > 0:
        stacked, sample_dims, model_dims = True, array.shape[1:], spec.shape[1:]
    elif array.ndim == rank + 1:
        stacked, sample_dims, model_dims = False, array.shape[1:], spec.shape
    else:
        raise QuantizeInputError(
            f"{role} data {path}: '{spec.name}' has shape {list(array.shape)}, which does not fit "
            f"{spec.describe()} (expected rank {rank}, or {rank + 1} for unbatched samples)"
        )
    for got, want in zip(sample_dims, model_dims, strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise QuantizeInputError(
                f"{role} data {path}: '{spec.name}' has shape {list(array.shape)}, the model wants "
                f"{spec.describe()}"
            )
    return stacked


def _check_labels(labels: np.ndarray, size: int, role: str, path: Path) -> np.ndarray:
    """A class id a sample ([N]), or a class id a position ([N, seq]: a token classifier's or an LM's
    next tokens), where a negative id marks a position without a label (a tokenizer's -100)."""
    if labels.ndim not in (1, 2) or len(labels) != size:
        raise QuantizeInputError(
            f"{role} data {path}: labels do not match the samples: labels have shape {list(labels.shape)}, "
            f"expected [{size}] (a class a sample) or [{size}, positions] (a class a position)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise QuantizeInputError(
            f"{role} data {path}: labels must be integer class ids, got {labels.dtype.name}"
        )
    if labels.ndim == 1 and labels.size and labels.min() < 0:
        raise QuantizeInputError(f"{role} data {path}: labels must be class ids >= 0, got {labels.min()}")
    return labels


def _digest(arrays: Mapping[str, np.ndarray], labels: np.ndarray | None) -> str:
    """A hash of the data itself (not of its file), so .npz and .npy folders of it hash alike."""
    digest = hashlib.sha256()
    items = [*sorted(arrays.items()), *([(LABELS_KEY, labels)] if labels is not None else [])]
    for name, array in items:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape};".encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


EVALUATION_BATCH_BYTES = 16 * 2**20
"""Input bytes per evaluation batch at most: 256 digits rows, 27 EfficientNet-Lite0 images. A
plain session frees activations as it goes; its peak grows with the batch all the same."""
CALIBRATION_BATCH_BYTES = 4 * 2**20
"""Input bytes per calibration batch at most: 5 EfficientNet-Lite0 images. The calibrator's
augmented session keeps every activation of a batch alive (measured: ~90 MB per 224x224 image),
so this bounds calibration memory whatever the sample count."""


def rows_per_batch(dataset: Dataset, wanted: int, max_bytes: int) -> int:
    """`wanted`, lowered so that one batch of inputs stays within `max_bytes`."""
    row_bytes = sum(array[0].nbytes for array in dataset.arrays.values()) or 1
    return max(1, min(wanted, max_bytes // row_bytes))


def calibration_batch_size(dataset: Dataset, wanted: int, inputs: list[InputSpec]) -> int:
    """The batch size to calibrate with: the model's own when fixed, else the largest divisor of the
    sample count within `wanted` and CALIBRATION_BATCH_BYTES (histogram calibrators reject a short
    last batch)."""
    fixed = {spec.batch_dim for spec in inputs} - {None}
    if fixed:
        return fixed.pop()  # type: ignore[return-value]
    limit = rows_per_batch(dataset, min(wanted, dataset.size), CALIBRATION_BATCH_BYTES)
    return max(d for d in range(1, limit + 1) if dataset.size % d == 0)


def why_fewer_calibration_rows(dataset: Dataset, wanted: int, used: int, inputs: list[InputSpec]) -> str:
    """Why `calibration_batch_size` calibrates `used` rows per batch where `wanted` were asked."""
    if {spec.batch_dim for spec in inputs} - {None}:
        return "the model's fixed batch size"
    within_memory = rows_per_batch(dataset, min(wanted, dataset.size), CALIBRATION_BATCH_BYTES)
    reasons = []
    if within_memory < min(wanted, dataset.size):
        reasons.append(
            f"at most {CALIBRATION_BATCH_BYTES // 2**20} MiB of input per batch, which bounds calibration "
            "memory: the calibrator keeps every activation of a batch"
        )
    if used < within_memory:
        reasons.append(f"the largest batch that divides the {dataset.size} samples")
    return "; ".join(reasons) or f"all {dataset.size} samples"


class CalibrationReader(CalibrationDataReader):
    """Feeds a Dataset to onnxruntime's calibrators, reporting each batch to `on_batch`."""

    def __init__(
        self, dataset: Dataset, batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.on_batch = on_batch
        self._iterator = dataset.batches(batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iterator, None)
        if batch is not None and self.on_batch is not None:
            self.on_batch(len(next(iter(batch.values()))) if self.dataset.stacked else 1)
        return batch
