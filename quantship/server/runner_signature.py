"""A model's inputs and outputs as onnxruntime declares them (`Signature`, `TensorSpec`), and a
request checked against them: names, datatypes, shapes, dimensions the model names alike, and
negative indices into an embedding's table. A refusal is an InvalidInput (400) that says what the
model takes. Built by `runner.Runner`; read by the service, the batch policy, capture and the
OpenAPI schema. Knows nothing of onnxruntime's calls.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort

from quantship.server.errors import InvalidInput
from quantship.server.protocol import DATATYPES, datatype_of

Tensors = Mapping[str, np.ndarray]


_ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class UnsupportedModel(Exception):
    """A model this server cannot serve (an input or output that is not a plain tensor)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int | None, ...]
    """Dimensions; None where the model leaves one open (a symbolic or unknown dimension)."""
    dim_names: tuple[str | None, ...] = ()
    """The model's name for each open dimension (`batch`, `seq`), None where it gives none. Inputs
    sharing a name must agree on its size: checked here rather than failing deep in a kernel."""
    table_rows: int | None = None
    """For an integer input the model gathers rows of a table with (an embedding's token ids,
    `index_tables`): the table's rows. A negative value is refused: ONNX's Gather counts it from the
    table's end, so id -1 answered as the last token (gpt2: 200 with a wrong answer), where an id
    past the end is onnxruntime's INVALID_ARGUMENT (400) already."""

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    @property
    def wire_shape(self) -> list[int]:
        """The shape as the protocol writes it: -1 for an open dimension."""
        return [-1 if dim is None else dim for dim in self.shape]

    def describe(self) -> str:
        return f"{self.name} ({self.datatype} {self.wire_shape})"

    def one_row(self, row_shape: Sequence[int] = ()) -> tuple[int, ...]:
        """A shape to call the model at with one sample: `row_shape` (one sample of the gate's data,
        `Artifact.row_shapes`) where it fits this input, else 1 for every open dimension. A length of 1
        is refused by a model with a convolution along an open axis (a waveform's samples)."""
        if len(row_shape) == len(self.shape) and all(
            dim in (None, size) for dim, size in zip(self.shape, row_shape, strict=True)
        ):
            return tuple(row_shape)
        return tuple(1 if dim is None else dim for dim in self.shape)

    @classmethod
    def from_ort(cls, node: ort.NodeArg) -> TensorSpec:
        datatype = _ORT_DATATYPES.get(node.type)
        if datatype is None:
            raise UnsupportedModel(f"'{node.name}' is {node.type}; only plain tensors can be served")
        dims = node.shape or ()
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in dims)
        names = tuple(dim if isinstance(dim, str) and dim else None for dim in dims)
        return cls(node.name, datatype, shape, names)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_session(
        cls, session: ort.InferenceSession, tables: Mapping[str, int] | None = None
    ) -> Signature:
        """`tables`: the rows of the table each index input gathers from (`index_tables`)."""
        tables = tables or {}
        return cls(
            tuple(
                dataclasses.replace(spec, table_rows=tables.get(spec.name))
                for spec in map(TensorSpec.from_ort, session.get_inputs())
            ),
            tuple(TensorSpec.from_ort(node) for node in session.get_outputs()),
        )

    @functools.cached_property
    def batchable(self) -> bool:
        """True when every input's first dimension is open: a batch dimension requests can share."""
        return bool(self.inputs) and all(spec.shape and spec.shape[0] is None for spec in self.inputs)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def validate(self, inputs: Tensors) -> int:
        """Check names, dtypes and shapes against the model; return the request's row count."""
        for name in inputs:
            if name not in self._input_names:
                raise InvalidInput(f"unknown input '{name}'; the model takes {self._takes()}")
        rows: int | None = None
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"missing input '{spec.name}'; the model takes {self._takes()}")
            _check_tensor(spec, array)
            if spec.table_rows is not None and array.size:
                _check_indices(spec, array, inputs, spec.table_rows, self._index_inputs)
            if not self.batchable:
                continue
            if array.shape[0] == 0:
                raise InvalidInput(f"input '{spec.name}' has no rows (shape {list(array.shape)})")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size: '{spec.name}' has {array.shape[0]} rows, "
                    f"others {rows}"
                )
            rows = array.shape[0]
        self._check_named_dims(inputs)
        return rows if rows is not None else 1

    @functools.cached_property
    def _index_inputs(self) -> frozenset[str]:
        """The inputs whose values index a table's rows (`TensorSpec.table_rows`)."""
        return frozenset(spec.name for spec in self.inputs if spec.table_rows is not None)

    @functools.cached_property
    def _input_names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs)

    def _takes(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def _check_named_dims(self, inputs: Tensors) -> None:
        """Open dimensions the model names alike (`seq` of input_ids and attention_mask) must agree."""
        seen: dict[str, tuple[str, int]] = {}
        for spec in self.inputs:
            for axis, name in enumerate(spec.dim_names):
                if name is None:
                    continue
                size = inputs[spec.name].shape[axis]
                first = seen.setdefault(name, (spec.name, size))
                if first[1] != size:
                    raise InvalidInput(
                        f"inputs disagree on dimension '{name}': '{spec.name}' has {size} "
                        f"(axis {axis}), '{first[0]}' has {first[1]}"
                    )

    def check_outputs(self, names: Sequence[str]) -> None:
        known = [spec.name for spec in self.outputs]
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown output '{name}'; the model gives {', '.join(known)}")


def _check_indices(
    spec: TensorSpec, array: np.ndarray, inputs: Tensors, rows: int, index_inputs: frozenset[str]
) -> None:
    """Refuse an index Gather fails on, padding or not: past the table's end (`TensorSpec.table_rows`),
    or below -rows (gpt2-lm, -1000000 at a masked position); its message gave the valid range as
    [-30522,30521] (all-MiniLM-L6-v2). Refuse any other negative one at a position the request says is
    real: one that another 0/1 input of the same shape (an attention mask) does not mark 0. Position
    ids built as mask.cumsum(-1) - 1 hold -1 at left padding, which the mask hides from the answer. An
    input that itself indexes a table (`index_inputs`) is ids, not a mask: BERT's token_type_ids, all
    0s for one sentence, hid every negative token id (all-MiniLM-L6-v2 answered -3 with 200)."""
    if (highest := array.max()) >= rows:
        _refuse_index(spec, highest, rows)
    if (lowest := array.min()) >= 0:
        return
    if lowest < -rows:
        _refuse_index(spec, lowest, rows)
    negative = array < 0
    for name, other in inputs.items():
        if name not in index_inputs and other.shape == array.shape and _zeros_and_ones(other):
            negative &= other != 0
    if negative.any():
        _refuse_index(spec, array[negative].min(), rows)


def _refuse_index(spec: TensorSpec, value: int, rows: int) -> NoReturn:
    raise InvalidInput(
        f"input '{spec.name}' holds {value}: its values index a table of {rows} rows, 0 to {rows - 1}"
    )


def _zeros_and_ones(array: np.ndarray) -> bool:
    return array.dtype.kind in "iub" and bool(array.size) and array.min() >= 0 and array.max() <= 1


def _check_tensor(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype != spec.dtype and not (spec.datatype == "BYTES" and array.dtype.kind in "OUS"):
        raise InvalidInput(
            f"input '{spec.name}' is {datatype_of(array.dtype)}; the model expects {spec.datatype}"
        )
    if len(array.shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(array.shape)} ({len(array.shape)} dimensions); "
            f"the model expects {spec.wire_shape} ({len(spec.shape)} dimensions)"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if want is not None and got != want:
            raise InvalidInput(
                f"input '{spec.name}' has shape {list(array.shape)}; dimension {axis} must be {want} "
                f"(the model expects {spec.wire_shape})"
            )
