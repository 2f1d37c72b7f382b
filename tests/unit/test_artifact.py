"""The artifact contract: written all or nothing, loaded only when every byte checks out."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantship import artifact, artifact_dirs, artifact_format, artifact_keys, artifact_manifest
from quantship.activations import BIN_CHUNK, HISTOGRAM_BINS, ActivationHistogram, ActivationRange
from quantship.artifact import ArtifactError


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "key.pem", tmp_path / "key.pub"
    artifact_keys.generate_keypair(private, public)
    return private, public


def _write(tmp_path: Path, out: Path, sign: Path | None = None) -> artifact.Artifact:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model, but bytes to hash")
    key = artifact_keys.load_private_key(sign) if sign else None
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model}, {"note": "test"}, sign_key=key)


def test_written_artifact_loads_and_records_hashes(tmp_path: Path) -> None:
    written = _write(tmp_path, tmp_path / "a")
    loaded = artifact.load_artifact(tmp_path / "a")
    assert loaded.manifest == written.manifest
    entry = loaded.manifest["files"][artifact.MODEL_FILE]
    assert entry["size"] == len(b"not really a model, but bytes to hash")
    assert entry["sha256"] == artifact_format.sha256_file(loaded.model_path)
    assert loaded.reference_path is None
    assert not loaded.signed


def test_rewriting_an_artifact_replaces_it_whole(tmp_path: Path) -> None:
    _write(tmp_path, tmp_path / "a")
    (tmp_path / "m.onnx").write_bytes(b"second version")
    artifact.write_artifact(tmp_path / "a", {artifact.MODEL_FILE: tmp_path / "m.onnx"}, {})
    assert artifact.load_artifact(tmp_path / "a").model_path.read_bytes() == b"second version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.onnx"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        artifact.write_artifact(tmp_path / "a", {artifact.MODEL_FILE: tmp_path / "missing.onnx"}, {})
    assert list(tmp_path.iterdir()) == []


def test_a_replacement_failing_between_its_two_renames_puts_the_older_artifact_back(tmp_path: Path) -> None:
    """The except path an interrupt (Ctrl-C, SIGTERM) between the renames takes: it left nothing at
    the destination and the good artifact hidden in `.NAME.old`."""
    written = _write(tmp_path, tmp_path / "a")
    with pytest.raises(FileNotFoundError):  # the second rename: its source is gone
        artifact_dirs.replace_dir(tmp_path / "vanished", tmp_path / "a")
    assert artifact.load_artifact(tmp_path / "a").manifest == written.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.onnx"]


def test_an_artifact_a_killed_replacement_moved_aside_is_put_back(tmp_path: Path) -> None:
    """kill -9 between the two renames: nothing at `a`, the previous artifact in `.a.old`."""
    written = _write(tmp_path, tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / ".a.old")
    artifact_dirs.restore_interrupted(tmp_path / "a")
    assert artifact.load_artifact(tmp_path / "a").manifest == written.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.onnx"]
    artifact_dirs.restore_interrupted(tmp_path / "b")  # nothing moved aside: nothing to do
    assert not (tmp_path / "b").exists()


def test_the_staging_of_a_write_killed_mid_copy_is_swept_by_the_next(tmp_path: Path) -> None:
    killed = tmp_path / f".a.{artifact.WRITE_SCRATCH}-k1ll3d00"  # kill -9 mid-copy: artifact-sized
    killed.mkdir()
    (killed / artifact.MODEL_FILE).write_bytes(b"half a model")
    _write(tmp_path, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.onnx"]


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("years of work")
    with pytest.raises(ArtifactError, match="not an artifact"):
        _write(tmp_path, tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "years of work"


def test_tampered_model_is_refused(artifact_copy: Path) -> None:
    with (artifact_copy / artifact.MODEL_FILE).open("r+b") as stream:
        stream.seek(100)
        byte = stream.read(1)
        stream.seek(100)
        stream.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="does not match its sha256") as caught:
        artifact.load_artifact(artifact_copy)
    assert caught.value.reason == "hash_mismatch"


def test_truncated_model_is_refused_by_size(artifact_copy: Path) -> None:
    data = (artifact_copy / artifact.MODEL_FILE).read_bytes()
    (artifact_copy / artifact.MODEL_FILE).write_bytes(data[:-10])
    with pytest.raises(ArtifactError, match="bytes, manifest says"):
        artifact.load_artifact(artifact_copy)


def test_missing_listed_file_is_refused(artifact_copy: Path) -> None:
    (artifact_copy / artifact.REFERENCE_FILE).unlink()
    with pytest.raises(
        ArtifactError, match=r"reference\.onnx is listed in the manifest but missing"
    ) as caught:
        artifact.load_artifact(artifact_copy)
    assert caught.value.reason == "missing"


def test_the_kept_files_are_the_bytes_hashed_and_are_given_once(artifact_copy: Path) -> None:
    """What the server builds from: the listed files it asked for, read once and checked, handed
    over (and forgotten) by `take`; files it did not ask for are checked but not kept."""
    on_disk = (artifact_copy / artifact.MODEL_FILE).read_bytes()
    verified = artifact.load_verified(artifact_copy, keep=[artifact.MODEL_FILE])
    assert verified.artifact.manifest == artifact.load_artifact(artifact_copy).manifest
    assert set(verified.contents) == {artifact.MODEL_FILE}
    assert verified.take(artifact.MODEL_FILE) == on_disk
    assert verified.take(artifact.MODEL_FILE) is None and verified.take(artifact.REFERENCE_FILE) is None


def test_a_kept_file_is_checked_like_any_other(artifact_copy: Path) -> None:
    model = artifact_copy / artifact.MODEL_FILE
    listed = model.stat().st_size
    model.write_bytes(model.read_bytes() + b"one byte past its listed size, and more")
    # its size on disk, checked before any read (never a size it never read: it said listed + 1)
    grown = listed + len(b"one byte past its listed size, and more")
    with pytest.raises(ArtifactError, match=f"model.onnx is {grown} bytes, manifest says {listed}") as caught:
        artifact.load_verified(artifact_copy, keep=[artifact.MODEL_FILE])
    assert caught.value.reason == "hash_mismatch"
    reference = artifact_copy / artifact.REFERENCE_FILE
    tampered = bytearray(reference.read_bytes())
    tampered[100] ^= 0xFF
    reference.write_bytes(bytes(tampered))
    model.write_bytes(model.read_bytes()[: -len(b"one byte past its listed size, and more")])
    with pytest.raises(ArtifactError, match="does not match its sha256") as caught:
        artifact.load_verified(artifact_copy, keep=[artifact.MODEL_FILE, artifact.REFERENCE_FILE])
    assert caught.value.reason == "hash_mismatch"


def test_a_tarball_s_kept_files_are_its_unpacked_bytes(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    tarball = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, tarball)
    verified = artifact.load_verified(tarball, keep=[artifact.REFERENCE_FILE], extract_to=tmp_path / "x")
    assert verified.artifact.digest == good_artifact.digest
    assert verified.contents == {artifact.REFERENCE_FILE: good_artifact.reference_path.read_bytes()}


@pytest.mark.parametrize(
    ("manifest_text", "message"),
    [
        ("{not json", "unreadable manifest"),
        ("[]", "no file list"),
        ('{"format_version": 99, "files": {}}', "format version 99"),
        (
            '{"format_version": 1, "files": {"../../etc/passwd": {"size": 1, "sha256": "%s"}}}' % ("0" * 64),
            r"names a file that is no plain name inside the artifact .*: '\.\./\.\./etc/passwd'",
        ),
        ('{"format_version": 1, "files": {}}', "lists no model.onnx"),
        # hostile or damaged: refused by name on loading, never a traceback in whatever reads the field
        ('{"format_version": true, "files": {}}', "format version True"),
        (
            '{"format_version": 1, "files": {"model.onnx": "deadbeef"}}',
            r"\['files'\]\['model.onnx'\]: 'deadbeef' is not of type 'object'",
        ),
        (
            '{"format_version": 1, "files": {"model.onnx": {"size": "9", "sha256": "%s"}}}' % ("0" * 64),
            r"\['size'\]: '9' is not of type 'integer'",
        ),
        ('{"format_version": 1, "files": {}, "validation": null}', r"\['validation'\]: None is not of type"),
        ('{"format_version": 1, "files": {}, "signature": {"value": 123}}', r"\['value'\]: 123 is not"),
        (
            '{"format_version": 1, "files": {}, "activation_ranges": [{"tensor": 5, "low": "x"}]}',
            r"\['activation_ranges'\]\[0\]",
        ),
        ('{"format_version": 1, "files": {}, "x": NaN}', "NaN is not a JSON number"),
        ('{"format_version": 1, "files": {}, "x": %s}' % ("9" * 5000), "unreadable manifest"),
        ("[" * 100_000 + "]" * 100_000, "unreadable manifest"),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, manifest_text: str, message: str) -> None:
    (tmp_path / artifact.MANIFEST_FILE).write_text(manifest_text)
    with pytest.raises(ArtifactError, match=message):
        artifact.load_artifact(tmp_path)


def test_not_an_artifact_at_all(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such artifact"):
        artifact.load_artifact(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="not an artifact"):
        artifact.load_artifact(tmp_path)


def test_signed_artifact_verifies_with_its_public_key(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    _write(tmp_path, tmp_path / "a", sign=private)
    loaded = artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(public))
    assert loaded.signed


def test_edited_manifest_breaks_the_signature(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    _write(tmp_path, tmp_path / "a", sign=private)
    manifest_path = tmp_path / "a" / artifact.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["note"] = "edited after signing"
    manifest_path.write_text(json.dumps(manifest))
    artifact.load_artifact(tmp_path / "a")  # hashes still match: only the signature can tell
    with pytest.raises(ArtifactError, match="signature does not verify") as caught:
        artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(public))
    assert caught.value.reason == "signature"


def test_someone_elses_key_is_refused(tmp_path: Path) -> None:
    private, _ = _keys(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_public = _keys(tmp_path / "other")
    _write(tmp_path, tmp_path / "a", sign=private)
    with pytest.raises(ArtifactError, match="signature does not verify"):
        artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(other_public))


def test_unsigned_artifact_is_refused_when_a_key_is_required(tmp_path: Path) -> None:
    _, public = _keys(tmp_path)
    _write(tmp_path, tmp_path / "a")
    with pytest.raises(ArtifactError, match="unsigned, but a public key is required"):
        artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(public))


def test_key_files_that_are_not_keys(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ArtifactError, match="cannot read private key"):
        artifact_keys.load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ArtifactError, match=r"junk.pem is not a public key \(it holds no PEM public key\)"):
        artifact_keys.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ArtifactError, match=r"cannot read public key .*missing\.pem"):
        artifact_keys.load_public_key(tmp_path / "missing.pem")


def test_tarball_round_trip(good_artifact: artifact.Artifact, tmp_path: Path) -> None:
    tarball = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, tarball)
    loaded = artifact.load_artifact(tarball, extract_to=tmp_path / "unpacked")
    assert loaded.digest == good_artifact.digest
    assert loaded.root == tmp_path / "unpacked"


def test_tarball_with_a_top_level_folder_and_one_without_manifest(tmp_path: Path) -> None:
    _write(tmp_path, tmp_path / "a")
    nested = tmp_path / "nested.tar.gz"
    with tarfile.open(nested, "w:gz") as archive:
        archive.add(tmp_path / "a", arcname="release-1")
    assert artifact.load_artifact(nested, extract_to=tmp_path / "x").root.name == "release-1"
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as archive:
        archive.add(tmp_path / "m.onnx", arcname="m.onnx")
    with pytest.raises(ArtifactError, match=r"holds no manifest\.json"):
        artifact.load_artifact(empty, extract_to=tmp_path / "y")


def test_corrupt_tarball(tmp_path: Path) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ArtifactError, match="unreadable archive"):
        artifact.load_artifact(tmp_path / "bad.tar.gz", extract_to=tmp_path / "x")


def test_clip_counting_saturates_beyond_half_a_step_and_respects_folded_relu() -> None:
    plain = ActivationRange(tensor="t", low=-1.0, high=1.0, scale=0.1)
    values = np.array([-1.2, -1.04, 0.0, 1.04, 1.06, 3.0])
    assert plain.count_clipped(values) == 3  # -1.2, 1.06 and 3.0; +-1.04 only round
    relu = ActivationRange(tensor="t", low=0.0, high=1.0, scale=0.1, activation_low=0.0)
    assert relu.count_clipped(np.array([-5.0, -0.5, 0.5, 2.0])) == 1  # negatives are the Relu's job


@given(
    values=arrays(np.float32, st.integers(0, 300), elements=st.floats(width=32, allow_nan=True)),
    low=st.floats(-100, 100, width=32),
    width=st.sampled_from([0.0, 1e-3, 0.5, 1.0, 7.0, 250.0]),
)
def test_activation_histogram_bins_are_numpys_histogram_bins(
    values: np.ndarray, low: float, width: float
) -> None:
    """`bin` counts by arithmetic for speed; it must put every value where np.histogram does, since
    artifacts already carry histograms binned that way."""
    high = float(np.float32(low + width))
    _assert_binned_as_numpy_bins(values, low, high)


def _assert_binned_as_numpy_bins(values: np.ndarray, low: float, high: float) -> None:
    counts, below, above = ActivationHistogram.bin(values, low, high)
    finite = values[np.isfinite(values)].astype(np.float64)
    expected, _ = np.histogram(finite[(finite >= low) & (finite <= high)], bins=HISTOGRAM_BINS,
                               range=(low, high))  # fmt: skip
    np.testing.assert_array_equal(counts, expected)
    assert (below, above) == (np.count_nonzero(finite < low), np.count_nonzero(finite > high))


def test_a_tensor_of_many_chunks_is_binned_as_numpy_bins_it_whole() -> None:
    """quantize bins whole calibration tensors (a transformer's attention scores run to millions of
    values) BIN_CHUNK values at a time: the chunks add up to np.histogram's bins of the whole."""
    low, high = -2.5, 3.0
    values = np.random.default_rng(0).normal(0.0, 2.0, (7, 3 * BIN_CHUNK // 5)).astype(np.float32)
    values[0, :65] = np.linspace(low, high, 65)  # every edge, where rounding puts a value one bin off
    values[1, ::97], values[2, ::89], values[3, ::83] = np.nan, np.inf, -np.inf
    _assert_binned_as_numpy_bins(values, low, high)


def test_binning_a_large_tensor_takes_the_memory_of_a_chunk_not_of_the_tensor() -> None:
    """A whole tensor's float64 temporaries, a dozen passes over each, made binning the calibration
    data take longer than the quantization trials on a small GPT-2 (hunt H5): a chunk's stay in cache."""
    values = np.random.default_rng(1).normal(size=2**21).astype(np.float32)  # 8 MiB
    tracemalloc.start()
    try:
        ActivationHistogram.bin(values, -2.0, 2.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < values.nbytes / 8, peak


def test_a_key_not_written_whole_is_removed_so_a_rerun_can_write_the_pair(tmp_path: Path) -> None:
    """A full disk mid-write (here a file-size limit of 60 bytes) left a truncated private key, and
    every rerun was refused: 'exists'."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from quantship import artifact, artifact_keys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    artifact_keys.generate_keypair(Path(sys.argv[1]) / 'k.pem', Path(sys.argv[1]) / 'k.pub')\n"
        "except artifact.ArtifactError as error:\n"
        "    print(error)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.stdout.startswith(f"cannot write the key pair: {tmp_path / 'k.pem'}: File too large"), (
        run.stderr
    )
    assert list(tmp_path.iterdir()) == []
    artifact_keys.generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")


def test_a_qlinear_output_counts_its_saturated_end_codes_only() -> None:
    """QOperator: the observed values are the op's int8 codes; an end code is clipping unless it
    stands for 0 or for the op's own bound (a Softmax's 1.0, a step past the last code)."""
    matmul = ActivationRange(
        "t", low=-1.28, high=1.27, scale=0.01, requantized_by="QLinearMatMul", zero_point=0
    )
    codes = np.array([-128, -127, 0, 126, 127, 127], dtype=np.int8)
    assert matmul.count_clipped(codes) == 3
    shifted = ActivationRange(  # a zero point off 0: the ends are still the type's
        "t", low=-0.05 * 131, high=0.05 * 124, scale=0.05, requantized_by="QLinearConv", zero_point=3
    )
    assert shifted.count_clipped(np.array([-128, -127, 3, 126, 127], dtype=np.int8)) == 2
    relu = ActivationRange(
        "t", 0.0, 2.55, 0.01, activation_low=0.0, requantized_by="QLinearAdd", zero_point=-128
    )
    assert relu.count_clipped(np.array([-128, -128, 0, 127], dtype=np.int8)) == 1
    softmax = ActivationRange(
        "t", 0.0, 255 / 256, 1 / 256, 0.0, 1.0, 0.0, 1.0, requantized_by="QLinearSoftmax", zero_point=0
    )
    assert softmax.count_clipped(np.array([0, 255, 255], dtype=np.uint8)) == 0
    assert matmul.requantized(np.array([-5.0, 0.004, 0.006, 5.0])).tolist() == pytest.approx(
        [-1.28, 0.0, 0.01, 1.27]
    )


GPT2_48_ACTIVATIONS = 1878
"""Activations a 48-layer GPT-2 (GPT-2 XL's depth) quantizes statically: measured on one exported as
the zoo's gpt2-lm (random weights, narrow: the count depends on depth, not width)."""
GPT2_48_SENSITIVITIES = 2082
"""Its manifest's sensitivity entries: one an activation's node, and 204 of weights."""


def _deep_lm_manifest(activations: int, sensitivities: int) -> dict[str, object]:
    """A manifest of GPT-2-like ranges, histograms and sensitivities: names as long as its (44
    characters), floats of 16-17 digits, counts as a few thousand calibration values give."""
    rng = np.random.default_rng(0)
    names = [f"/lm/transformer/h.{i % 48}/mlp/c_fc/Gemm_output_{i}" for i in range(activations)]
    lows, highs = -rng.random(activations), rng.random(activations)
    ranges = [
        ActivationRange(name, lows[i], highs[i], highs[i] / 127, lows[i], highs[i])
        for i, name in enumerate(names)
    ]
    histograms = [
        ActivationHistogram(name, lows[i], highs[i], tuple(rng.integers(0, 2000, 64).tolist()), 1, 0)
        for i, name in enumerate(names)
    ]
    sensitivity = [
        {
            "kind": "activation",
            "node": name.replace("_output", ""),
            "op_type": "Gemm",
            "tensor": name,
            "qdq_sqnr_db": float(rng.random() * 40),
            "sqnr_db": float(rng.random() * 40),
        }
        for name in names
    ]
    sensitivity += [
        {"kind": "weight", "sqnr_db": 0.0, "tensor": f"lm.transformer.h.{i}.attn.c_attn.bias"}
        for i in range(sensitivities - activations)
    ]
    return {
        "activation_ranges": [r.to_json() for r in ranges],
        "activation_histograms": [h.to_json() for h in histograms],
        "sensitivity": sensitivity,
    }


def test_a_48_layer_gpt2_manifest_fits_in_half_the_cap_and_reads_back_identical(tmp_path: Path) -> None:
    """Written indented, every count on a line of its own, it took 2.9 MB of the 4 MiB: twice as deep
    a model could not be written. Half the cap leaves room for a GPT-2 of some 100 layers."""
    private, public = _keys(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    manifest = _deep_lm_manifest(GPT2_48_ACTIVATIONS, GPT2_48_SENSITIVITIES)
    written = artifact.write_artifact(
        tmp_path / "a",
        {artifact.MODEL_FILE: model},
        manifest,
        sign_key=artifact_keys.load_private_key(private),
    )
    size = (tmp_path / "a" / artifact.MANIFEST_FILE).stat().st_size
    assert size < artifact_format.MAX_MANIFEST_BYTES / 2, size
    loaded = artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(public))
    assert loaded.manifest == written.manifest
    assert loaded.digest == written.digest
    written_text = (tmp_path / "a" / artifact.MANIFEST_FILE).read_text()
    assert artifact_manifest.manifest_text(loaded.manifest) == written_text
    assert len(loaded.activation_histograms) == GPT2_48_ACTIVATIONS
    assert _least_bytes(manifest) <= size


def test_the_manifest_layout_writes_keys_as_json_does() -> None:
    """The one-line layout wrote a key that is no string bare ({1: [1, 2]} as `1: [1, 2]`), which no
    JSON reader takes; json.dumps writes it as "1", and the digest is taken over json.dumps' text."""
    manifest = {"a": {1: [1, 2], 2: {"x": [3]}}, "b": {True: [1], None: {"y": 2}, 1.5: [0]}}
    text = artifact_manifest.manifest_text(manifest)
    assert json.loads(text) == json.loads(json.dumps(manifest))


def _least_bytes(manifest: dict[str, object]) -> int:
    ranges = manifest["activation_ranges"]
    assert isinstance(ranges, list)
    return artifact_manifest.least_manifest_bytes([entry["tensor"] for entry in ranges])


def test_least_manifest_bytes_is_at_most_what_the_ranges_and_histograms_take(
    good_artifact: artifact.Artifact,
) -> None:
    """`quantize` refuses a model by it before calibrating: were it ever more than the bytes written,
    a model whose artifact fits would be refused."""
    for manifest in (good_artifact.manifest, _deep_lm_manifest(200, 200)):
        sections = {key: manifest[key] for key in ("activation_ranges", "activation_histograms")}
        assert 0 < _least_bytes(manifest) <= len(artifact_manifest.manifest_text(sections).encode())


def test_a_manifest_written_indented_by_an_older_quantship_loads_and_verifies(tmp_path: Path) -> None:
    """Up to this layout, manifests were written by json.dumps(indent=2): every one signed then still
    verifies, and names the same revision (the digest covers the values, not the layout)."""
    private, public = _keys(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    written = artifact.write_artifact(
        tmp_path / "a",
        {artifact.MODEL_FILE: model},
        _deep_lm_manifest(40, 50),
        sign_key=artifact_keys.load_private_key(private),
    )
    path = tmp_path / "a" / artifact.MANIFEST_FILE
    indented = json.dumps(written.manifest, indent=2, sort_keys=True) + "\n"
    assert path.read_text() != indented
    path.write_text(indented)
    loaded = artifact.load_artifact(tmp_path / "a", public_key=artifact_keys.load_public_key(public))
    assert loaded.signed
    assert loaded.manifest == written.manifest
    assert loaded.digest == written.digest
