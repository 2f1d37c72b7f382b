"""Calibration and evaluation data are checked against the model before any work starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantship.quantize import QuantizeInputError, data

DIGITS = [data.InputSpec("X", np.dtype(np.float32), (None, 64))]


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_good_data_loads_with_labels_and_a_content_hash(tmp_path: Path) -> None:
    x = np.ones((10, 64), np.float32)
    dataset = data.load_dataset(_npz(tmp_path, X=x, labels=np.arange(10)), DIGITS, role="evaluation")
    assert dataset.size == 10 and dataset.stacked
    assert dataset.labels is not None
    again = data.load_dataset(_npz(tmp_path, X=x, labels=np.arange(10)), DIGITS, role="evaluation")
    assert again.sha256 == dataset.sha256
    x[0, 0] = 2
    changed = data.load_dataset(_npz(tmp_path, X=x, labels=np.arange(10)), DIGITS, role="evaluation")
    assert changed.sha256 != dataset.sha256


def test_a_folder_of_npy_files_is_read_like_an_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", np.zeros((4, 64), np.float32))
    dataset = data.load_dataset(tmp_path, DIGITS, role="calibration")
    assert dataset.size == 4


def test_unbatched_samples_run_one_at_a_time(tmp_path: Path) -> None:
    spec = [data.InputSpec("X", np.dtype(np.float32), (64,))]
    dataset = data.load_dataset(_npz(tmp_path, X=np.zeros((3, 64), np.float32)), spec, role="calibration")
    assert not dataset.stacked
    assert [batch["X"].shape for batch in dataset.batches(32)] == [(64,)] * 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"Y": np.zeros((4, 64), np.float32)}, r"arrays \['Y'\] that match no model input"),
        ({}, "holds no .npy files"),
        ({"X": np.zeros((4, 64), np.float64)}, "'X' is float64, the model wants float32"),
        (
            {"X": np.zeros((4, 32), np.float32)},
            r"'X' has shape \[4, 32\], the model wants X float32\[\?, 64\]",
        ),
        ({"X": np.zeros((4, 8, 8, 1), np.float32)}, "does not fit"),
        ({"X": np.zeros((0, 64), np.float32)}, "holds 0 samples"),
        ({"X": np.zeros((4, 64), np.float32), "labels": np.arange(3)}, "labels do not match the samples"),
        ({"X": np.zeros((4, 64), np.float32), "labels": np.ones(4)}, "labels must be integer class ids"),
        ({"X": np.zeros((4, 64), np.float32), "labels": np.array([0, 1, -4, 2])}, "class ids >= 0, got -4"),
        ({"X": np.full((4, 64), np.nan, np.float32)}, "'X' holds 256 NaN values"),
    ],
)
def test_bad_data_is_refused_with_a_reason(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _npz(tmp_path, **arrays) if arrays else tmp_path / "empty-folder"
    if not arrays:
        path.mkdir()
    with pytest.raises(QuantizeInputError, match=message):
        data.load_dataset(path, DIGITS, role="calibration")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(QuantizeInputError, match="does not exist"):
        data.load_dataset(tmp_path / "nope.npz", DIGITS, role="calibration")
    (tmp_path / "junk.npz").write_text("not numpy")
    (tmp_path / "sentences.json").write_text('["a sentence"]')  # numpy: "pickled data ... allow_pickle"
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("junk.npz", "sentences.json", "empty.npz"):
        refusal = r"is not \.npz or \.npy data \(it starts with"
        with pytest.raises(QuantizeInputError, match=refusal) as refused:
            data.load_dataset(tmp_path / name, DIGITS, role="calibration")
        assert "pickle" not in str(refused.value)
    (tmp_path / "broken.npz").write_bytes(
        b"PK\x03\x04" + b"\0" * 40
    )  # a zip's magic, then nothing: BadZipFile
    with pytest.raises(QuantizeInputError, match="not readable"):
        data.load_dataset(tmp_path / "broken.npz", DIGITS, role="calibration")


def test_an_npz_of_no_arrays_is_called_empty_not_foreign(tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz")  # was "is not .npz or .npy data (it starts with b'PK\\x05...')"
    with pytest.raises(QuantizeInputError, match=r"is an \.npz of no arrays"):
        data.load_dataset(tmp_path / "empty.npz", DIGITS, role="calibration")


def test_inputs_are_described_by_their_dimensions_names() -> None:
    spec = data.InputSpec("input_ids", np.dtype(np.int64), ("batch", "seq", 8, None))
    assert spec.describe() == "input_ids int64[batch, seq, 8, ?]"


def test_a_single_npy_file_is_not_enough(tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", np.zeros((4, 64), np.float32))
    with pytest.raises(QuantizeInputError, match="is a single array"):
        data.load_dataset(tmp_path / "X.npy", DIGITS, role="calibration")


def test_an_infinity_may_be_meant_as_a_mask_value(tmp_path: Path) -> None:
    masked = np.zeros((4, 64), np.float32)
    masked[:, 60:] = -np.inf  # an additive attention mask's "never attend"
    assert data.load_dataset(_npz(tmp_path, X=masked), DIGITS, role="calibration").size == 4


def test_required_labels(tmp_path: Path) -> None:
    with pytest.raises(QuantizeInputError, match="has no 'labels' array"):
        data.load_dataset(
            _npz(tmp_path, X=np.zeros((4, 64), np.float32)), DIGITS, role="evaluation", require_labels=True
        )


def test_fixed_batch_models_need_whole_batches(tmp_path: Path) -> None:
    spec = [data.InputSpec("X", np.dtype(np.float32), (4, 64))]
    with pytest.raises(QuantizeInputError, match="cannot be cut into batches of 4"):
        data.load_dataset(_npz(tmp_path, X=np.zeros((6, 64), np.float32)), spec, role="calibration")
    dataset = data.load_dataset(_npz(tmp_path, X=np.zeros((8, 64), np.float32)), spec, role="calibration")
    assert data.calibration_batch_size(dataset, 32, spec) == 4


@pytest.mark.parametrize(
    ("size", "wanted", "expected"), [(256, 32, 32), (100, 32, 25), (97, 32, 1), (16, 32, 16)]
)
def test_calibration_batches_divide_the_set(tmp_path: Path, size: int, wanted: int, expected: int) -> None:
    dataset = data.load_dataset(
        _npz(tmp_path, X=np.zeros((size, 64), np.float32)), DIGITS, role="calibration"
    )
    assert data.calibration_batch_size(dataset, wanted, DIGITS) == expected
    assert {len(batch["X"]) for batch in dataset.batches(expected)} == {expected}


def test_why_fewer_calibration_rows_names_the_memory_cap_the_divisor_or_the_sample_count(
    tmp_path: Path,
) -> None:
    """--batch-size 200 on EfficientNet-Lite0 calibrated 5 images per batch, and nothing said why."""
    image = [data.InputSpec("images", np.dtype(np.float32), (None, 3, 224, 224))]
    images = data.load_dataset(
        _npz(tmp_path, images=np.zeros((20, 3, 224, 224), np.float32)), image, role="calibration"
    )
    used = data.calibration_batch_size(images, 200, image)
    assert used == 5
    assert "at most 4 MiB of input per batch" in data.why_fewer_calibration_rows(images, 200, used, image)
    rows = data.load_dataset(_npz(tmp_path, X=np.zeros((100, 64), np.float32)), DIGITS, role="calibration")
    assert data.why_fewer_calibration_rows(rows, 32, 25, DIGITS) == (
        "the largest batch that divides the 100 samples"
    )
    assert data.why_fewer_calibration_rows(rows, 200, 100, DIGITS) == "all 100 samples"
