"""A manifest is as hostile as the artifact it comes with (unsigned, or written by something other
than quantship): the real sample artifact, its manifest edited on disk as anyone can, is refused
when read, by name and in one line, by every command that reads it: never a traceback, a hang, a
gigabyte of memory or a line of the attacker's on the terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from quantship import artifact, artifact_format, manifest_schema, reporting
from quantship.artifact import ArtifactError
from quantship.cli import ExitCode, main
from quantship.quantize import report, summary

Edit = Callable[[dict[str, Any]], object]


def edit_manifest(root: Path, edit: Edit, *, literal: str | None = None) -> None:
    """Rewrite the manifest at `root` as `edit` changes it; `literal`, where given, is written as it
    is in place of the string "LITERAL" (JSON that json.dumps would never write: 1e400)."""
    path = root / artifact.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    text = json.dumps(manifest)
    path.write_text(text if literal is None else text.replace('"LITERAL"', literal))


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def refused_in_one_line(code: int, output: str, message: str) -> None:
    assert code == ExitCode.REFUSED, output
    assert output.startswith("error: ") and len(output.strip().splitlines()) == 1, output
    assert message in output, output


def integer_fields(
    schema: dict[str, Any], value: Any, path: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """The path of every integer in `value` that `schema` types as an integer."""
    types = schema.get("type", ())
    if type(value) is int and "integer" in ([types] if isinstance(types, str) else types):
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            inner = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(inner, dict):
                yield from integer_fields(inner, item, (*path, key))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from integer_fields(schema["items"], item, (*path, index))


def set_at(path: tuple[Any, ...], change: Callable[[Any], Any]) -> Edit:
    """An edit replacing the value at `path` by `change(value)`."""

    def edit(manifest: dict[str, Any]) -> None:
        node: Any = manifest
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = change(node[path[-1]])

    return edit


def test_every_integer_the_schema_names_is_refused_written_as_a_float(artifact_copy: Path) -> None:
    """Draft 7 counts 174788.0 as an integer: a size written so passed verify, pack and push, then
    fetch died with a traceback (os.read) and serve refused as "a bug" (a buffer's size)."""
    paths = list(
        integer_fields(manifest_schema.MANIFEST_SCHEMA, artifact.load_artifact(artifact_copy).manifest)
    )
    shapes = {tuple("*" if isinstance(part, int) else part for part in path): path for path in paths}
    expected = {("files", artifact.MODEL_FILE, "size"), ("activation_histograms", "*", "counts", "*"),
                ("trials", "*", "number"), ("validation", "samples"), ("calibration", "samples")}  # fmt: skip
    assert expected <= set(shapes), set(shapes)
    original = (artifact_copy / artifact.MANIFEST_FILE).read_text()
    for path in shapes.values():
        edit_manifest(artifact_copy, set_at(path, float))
        with pytest.raises(
            ArtifactError, match=r"\.0 is not of type 'integer'|format version 1\.0,"
        ) as caught:
            artifact.load_artifact(artifact_copy)
        assert caught.value.reason == "format"
        (artifact_copy / artifact.MANIFEST_FILE).write_text(original)


def test_a_size_written_as_a_float_is_one_line_from_verify_and_fetch(
    artifact_copy: Path, tmp_path: Path
) -> None:
    size = (artifact_copy / artifact.MODEL_FILE).stat().st_size
    edit_manifest(artifact_copy, lambda m: m["files"][artifact.MODEL_FILE].update(size=float(size)))
    refused_in_one_line(*cli("verify", artifact_copy), f"{size}.0 is not of type 'integer'")
    refused_in_one_line(
        *cli("fetch", f"file://{artifact_copy}", tmp_path / "model"), "is not of type 'integer'"
    )
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1" + "0" * 400])
def test_a_number_that_reads_as_infinity_is_refused_by_verify_and_report(
    artifact_copy: Path, tmp_path: Path, literal: str
) -> None:
    """1e400 parses to infinity, past the refusal of the NaN and Infinity literals: verify said ok,
    then report and pull died with a traceback (the digest's JSON has no infinity)."""
    edit_manifest(
        artifact_copy, set_at(("activation_ranges", 0, "high"), lambda _: "LITERAL"), literal=literal
    )
    for command in (["verify", artifact_copy], ["report", artifact_copy, "-o", tmp_path / "r.html"]):
        refused_in_one_line(*cli(*command), "is out of a number's range (it reads as infinity)")
    assert not (tmp_path / "r.html").exists()


def test_a_size_past_memory_is_refused_by_the_size_on_disk_before_any_read(artifact_copy: Path) -> None:
    """The server read `size + 1` bytes into one buffer, then compared: 10**15 was a MemoryError, "a bug"."""
    size = (artifact_copy / artifact.MODEL_FILE).stat().st_size
    edit_manifest(artifact_copy, set_at(("files", artifact.MODEL_FILE, "size"), lambda _: 10**15))
    with pytest.raises(ArtifactError, match=f"model.onnx is {size} bytes, manifest says {10**15}") as caught:
        artifact.load_verified(artifact_copy, keep=[artifact.MODEL_FILE])
    assert caught.value.reason == "hash_mismatch"


NOT_REGULAR: dict[str, Callable[[Path], object]] = {
    "directory": os.mkdir,
    "named pipe": os.mkfifo,  # never opened: it would wait for a writer
    "device": lambda path: path.symlink_to("/dev/zero"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", NOT_REGULAR)
@pytest.mark.parametrize("listed", [artifact.MODEL_FILE, artifact.REFERENCE_FILE])
def test_a_listed_file_that_is_not_a_regular_file_is_named_as_what_it_is(
    artifact_copy: Path, kind: str, listed: str
) -> None:
    """Each was called missing (reason `missing`). Kept in memory by the server, or hashed as it
    streams by: both say what it is."""
    (artifact_copy / listed).unlink()
    NOT_REGULAR[kind](artifact_copy / listed)
    for keep in ((), (listed,)):
        with pytest.raises(
            ArtifactError, match=f"{listed} is listed in the manifest but is a {kind}, not a regular"
        ) as caught:
            artifact.load_verified(artifact_copy, keep=keep)
        assert caught.value.reason == "format"


FORGED = "x\x1b[2K\rok: artifact verified; signature valid; gate passed\x1b]0;owned\x07\n\u202e"
"""A name that, printed raw, wipes the line, writes a verdict of ours, retitles the terminal, breaks
the line and reverses what follows."""


def printable_line(output: str) -> bool:
    return len(output.strip().splitlines()) == 1 and not set(output.strip()) & set("\x1b\x07\r\u202e")


def test_a_file_name_a_terminal_would_act_on_is_refused_and_never_printed_raw(
    artifact_copy: Path, tmp_path: Path
) -> None:
    edit_manifest(artifact_copy, lambda m: m["files"].update({FORGED: m["files"][artifact.REFERENCE_FILE]}))
    for command in (["verify", artifact_copy], ["fetch", f"file://{artifact_copy}", tmp_path / "model"]):
        code, output = cli(*command)
        refused_in_one_line(code, output, "manifest names a file that is no plain name inside the artifact")
        assert printable_line(output) and r"\x1b]0;owned\x07" in output, output
    assert not (tmp_path / "model").exists()
    model = artifact_copy / artifact.MODEL_FILE
    with pytest.raises(ArtifactError, match=r"no plain name inside the artifact .*: '\.\./model\.onnx'"):
        artifact.write_artifact(tmp_path / "out", {"../model.onnx": model, artifact.MODEL_FILE: model}, {})
    assert not (tmp_path / "out").exists()


def test_names_found_beside_the_listed_files_are_printed_without_what_a_terminal_acts_on(
    artifact_copy: Path, tmp_path: Path
) -> None:
    tarball = tmp_path / "a.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for file in sorted(artifact_copy.iterdir()):
            archive.add(file, arcname=file.name)
        archive.addfile(tarfile.TarInfo(FORGED))  # an empty file the manifest does not name
    (artifact_copy / FORGED).write_bytes(b"")
    for path in (artifact_copy, tarball):
        code, output = cli("verify", path)
        refused_in_one_line(code, output, "does not name: x?[2K?ok: artifact verified")
        assert printable_line(output), output


def test_a_manifest_just_under_the_cap_is_read_in_bounded_memory(artifact_copy: Path) -> None:
    """JSON swells when parsed, most for nested empty lists: at the 64 MiB cap this was, a manifest
    of them took 1.75 GB to verify (a server or an init container with a small limit killed)."""
    manifest = json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())
    text = json.dumps({**manifest, "runtime": {"bulk": "LITERAL"}})  # a free-form field: any JSON goes
    count = (artifact_format.MAX_MANIFEST_BYTES - len(text)) // len("[[]],")
    (artifact_copy / artifact.MANIFEST_FILE).write_text(
        text.replace('"LITERAL"', "[" + ",".join(["[[]]"] * count) + "]")
    )
    assert (
        artifact_format.MAX_MANIFEST_BYTES - 100
        < (artifact_copy / artifact.MANIFEST_FILE).stat().st_size
        <= artifact_format.MAX_MANIFEST_BYTES
    )
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from quantship import artifact\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "artifact.load_artifact(Path(sys.argv[1]))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(artifact_copy)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    grown_mb = int(run.stdout) / 1024
    assert grown_mb < 250, grown_mb


def test_a_manifest_over_the_cap_is_neither_read_nor_written(artifact_copy: Path, tmp_path: Path) -> None:
    edit_manifest(artifact_copy, lambda m: m.update(runtime={"x": "x" * artifact_format.MAX_MANIFEST_BYTES}))
    with pytest.raises(ArtifactError, match=f"larger than {artifact_format.MAX_MANIFEST_BYTES} bytes"):
        artifact.load_artifact(artifact_copy)
    model = artifact_copy / artifact.MODEL_FILE
    big = {"runtime": {"x": "x" * artifact_format.MAX_MANIFEST_BYTES}}
    with pytest.raises(
        ArtifactError, match=f"more than the {artifact_format.MAX_MANIFEST_BYTES} an artifact's manifest"
    ):
        artifact.write_artifact(tmp_path / "out", {artifact.MODEL_FILE: model}, big)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"], "nothing written beside the source"


def test_a_manifest_of_a_million_bad_items_is_refused_by_one_of_the_first(artifact_copy: Path) -> None:
    """Every error was listed to pick the one to name: 80-115 s of CPU for a 4 MiB manifest."""
    edit_manifest(artifact_copy, lambda m: m.update(activation_ranges=[{}] * 20_000))
    with pytest.raises(
        ArtifactError, match=r"\['activation_ranges'\]\[(\d+)\]: 'tensor' is a required"
    ) as caught:
        artifact.load_artifact(artifact_copy)
    named = re.search(r"\['activation_ranges'\]\[(\d+)\]", str(caught.value))
    assert named is not None and int(named.group(1)) < manifest_schema.SCHEMA_ERRORS_WEIGHED


def test_a_histogram_of_other_than_its_bins_is_refused(artifact_copy: Path) -> None:
    """10 counts where HISTOGRAM_BINS are binned: the drift lane failed on every sample."""
    edit_manifest(artifact_copy, set_at(("activation_histograms", 0, "counts"), lambda counts: counts[:10]))
    with pytest.raises(ArtifactError, match=r"\['activation_histograms'\]\[0\]\['counts'\]: .* is too short"):
        artifact.load_artifact(artifact_copy)


def test_a_manifest_quantship_would_refuse_is_never_written(artifact_copy: Path, tmp_path: Path) -> None:
    """quantize fails naming why, rather than leave an artifact that nothing serves."""
    model = artifact_copy / artifact.MODEL_FILE
    with pytest.raises(
        ArtifactError, match=r"would be refused on reading: \['warnings'\]\[0\]: 1 is not of type"
    ):
        artifact.write_artifact(tmp_path / "out", {artifact.MODEL_FILE: model}, {"warnings": [1]})
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"], "nothing written beside the source"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            set_at(("calibration", "method"), lambda _: "A" * (manifest_schema.MAX_LABEL_CHARS + 1)),
            r"\['calibration'\]\['method'\]: 'AAAA.* is too long",
        ),
        (
            set_at(("validation", "hardware", "cpu"), lambda _: "Xeon\nquantship_model_info 1"),
            r"\['validation'\]\['hardware'\]\['cpu'\]: 'Xeon\\nquantship_model_info 1' should not be valid",
        ),
        (
            set_at(
                ("validation", "hardware", "int8_flags"),
                lambda _: ["avx2"] * (manifest_schema.MAX_INT8_FLAGS + 1),
            ),
            r"\['validation'\]\['hardware'\]\['int8_flags'\]: .* is too long",
        ),
        (
            set_at(("validation", "gate"), lambda _: "passed\x1b]0;owned\x07"),
            r"\['validation'\]\['gate'\]: 'passed\\x1b\]0;owned\\x07' should not be valid",
        ),
        (
            set_at(("quantization", "precision"), lambda _: "A" * 2**20),
            r"\['quantization'\]\['precision'\]: 'AAAA.* is too long",
        ),
    ],
    ids=["a long label", "a label of two lines", "many int8 flags", "an escape in the gate", "a 1 MiB label"],
)
def test_strings_that_become_label_values_are_short_and_printable(
    artifact_copy: Path, tmp_path: Path, edit: Edit, message: str
) -> None:
    """calibration.method and hardware.cpu of 4 MiB each went READY, and /metrics was 8.4 MB every
    scrape (quantship_model_info, quantship_hardware_info). Refused on reading, and never written."""
    edit_manifest(artifact_copy, edit)
    code, output = cli("verify", artifact_copy)
    refused_in_one_line(code, output, "")
    assert re.search(message, output) and len(output) < 600, output
    manifest = json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())
    files = {name: artifact_copy / name for name in manifest.pop("files")}
    with pytest.raises(ArtifactError, match="would be refused on reading"):
        artifact.write_artifact(tmp_path / "out", files, manifest)


@pytest.mark.parametrize("key", ["activation_ranges", "activation_histograms"])
def test_a_tensor_given_two_different_entries_is_refused_and_never_written(
    artifact_copy: Path, tmp_path: Path, key: str
) -> None:
    """Both were served, the tensor counted twice a sample against two ranges, neither said to be
    the one the model clamps to: refused on reading (verify, serve, fetch), and never written."""
    edit_manifest(artifact_copy, lambda m: m[key].append({**m[key][0], "low": m[key][0]["low"] - 1}))
    second = len(json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())[key]) - 1
    tensor = json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())[key][0]["tensor"]
    said = f"[{key!r}][{second}]: a second, different entry for tensor {tensor!r}"
    refused_in_one_line(*cli("verify", artifact_copy), said)
    manifest = json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())
    files = {name: artifact_copy / name for name in manifest.pop("files")}
    with pytest.raises(ArtifactError, match=r"would be refused on reading: .* a second, different entry"):
        artifact.write_artifact(tmp_path / "out", files, manifest)
    assert not (tmp_path / "out").exists()


def test_a_tensor_given_the_same_range_twice_is_read_once(artifact_copy: Path) -> None:
    """onnxruntime lists a tensor once per consumer (DedicatedQDQPair); read as it was, the clip
    counter observed and counted that tensor twice a sample."""
    edit_manifest(
        artifact_copy,
        lambda m: [m[key].append(m[key][0]) for key in ("activation_ranges", "activation_histograms")],
    )
    code, output = cli("verify", artifact_copy)
    assert code == ExitCode.OK, output
    loaded = artifact.load_artifact(artifact_copy)
    for listed in (loaded.activation_ranges, loaded.activation_histograms):
        tensors = [entry.tensor for entry in listed]
        assert len(tensors) == len(set(tensors)), tensors


LONG_NAME = "A" * manifest_schema.MAX_TENSOR_NAME_CHARS + "\x1b]0;owned\x07"
"""One character past the bound, then an escape sequence: neither may reach the terminal."""


@pytest.mark.parametrize(
    "path",
    [
        ("activation_ranges", 0, "tensor"),
        ("activation_histograms", 0, "tensor"),
        ("sensitivity", 0, "tensor"),
        ("quantization", "output"),
    ],
    ids=lambda path: "".join(f"[{part!r}]" for part in path),
)
def test_a_tensor_name_past_the_bound_is_refused_and_shown_cut_short(
    artifact_copy: Path, tmp_path: Path, path: tuple[Any, ...]
) -> None:
    """ONNX bounds no name: one of megabytes went whole into verify's and the server's refusals (a range
    naming no tensor of the model), their logs and the report."""
    edit_manifest(artifact_copy, set_at(path, lambda _: LONG_NAME))
    where = "".join(f"[{part!r}]" for part in path)
    _refused_as_too_long(artifact_copy, tmp_path, f"{where}: a tensor name of {len(LONG_NAME)} characters")


def _refused_as_too_long(artifact_copy: Path, tmp_path: Path, said: str) -> None:
    """verify refuses the edited artifact in one line, the name shown cut to 40, and writing its
    manifest anew is refused before anything is written."""
    code, output = cli("verify", artifact_copy)
    refused_in_one_line(code, output, f"{said}, more than the 4096 a manifest may hold")
    assert output.rstrip().endswith(f": '{'A' * 39}…") and printable_line(output), output  # 40 shown
    manifest = json.loads((artifact_copy / artifact.MANIFEST_FILE).read_text())
    files = {name: artifact_copy / name for name in manifest.pop("files")}
    kind = said.split(": ", 1)[1].split(" of ")[0]  # "a tensor name", "a node name"
    with pytest.raises(ArtifactError, match=rf"would be refused on reading: .* {kind} of"):
        artifact.write_artifact(tmp_path / "out", files, manifest)
    assert not (tmp_path / "out").exists()


HUGE_NODE_NAME = "A" * 10**6 + "\x1b]0;owned\x07"
"""A megabyte of node name, then an escape sequence."""


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        (
            "['quantization']['excluded_nodes'][0]",
            lambda m: m["quantization"].update(excluded_nodes=[HUGE_NODE_NAME]),
        ),
        ("['trials'][0]['excluded'][1]", lambda m: m["trials"][0].update(excluded=["ok", HUGE_NODE_NAME])),
        ("['sensitivity'][0]['node']", lambda m: m["sensitivity"][0].update(node=HUGE_NODE_NAME)),
        ("['sensitivity'][0]['op_type']", lambda m: m["sensitivity"][0].update(op_type=HUGE_NODE_NAME)),
    ],
)
def test_a_node_name_past_the_bound_is_refused_and_shown_cut_short(
    artifact_copy: Path, tmp_path: Path, where: str, edit: Edit
) -> None:
    """Node names (and node types) had no bound: a megabyte of one went whole into the report and
    `quantize`'s summary."""
    edit_manifest(artifact_copy, edit)
    kind = "node type" if where.endswith("['op_type']") else "node"
    said = f"{where}: a {kind} name of {len(HUGE_NODE_NAME)} characters"
    _refused_as_too_long(artifact_copy, tmp_path, said)


def test_node_names_of_the_bound_are_read_and_shown_cut_short(artifact_copy: Path) -> None:
    """The report (trials, configuration) and the summary print node names: cut short, printable,
    and as text in the summary (rich read "[/x]" as markup and raised)."""
    name, markup = "A" * manifest_schema.MAX_NODE_NAME_CHARS, "[/x]\x1b]0;owned\x07"
    edit_manifest(
        artifact_copy,
        lambda m: [
            m["quantization"].update(excluded_nodes=[name, markup]),
            m["trials"][0].update(excluded=[name]),
        ],
    )
    loaded = artifact.load_artifact(artifact_copy)
    shown = "A" * reporting.SHOWN_NAME_CHARS + "…"
    page = report.render(loaded)
    assert page.count(shown) == 2 and "A" * (reporting.SHOWN_NAME_CHARS + 1) not in page  # trials, config
    console = Console(width=1000, record=True, file=io.StringIO())
    console.print(summary.table([("hostile", loaded)]))
    printed = console.export_text()
    assert f"{shown}, [/x]?]0;owned?" in printed and "A" * (reporting.SHOWN_NAME_CHARS + 1) not in printed


def test_a_tensor_name_of_the_bound_is_read(artifact_copy: Path) -> None:
    edit_manifest(
        artifact_copy,
        set_at(("sensitivity", 0, "tensor"), lambda _: "A" * manifest_schema.MAX_TENSOR_NAME_CHARS),
    )
    assert artifact.load_artifact(artifact_copy).manifest["sensitivity"][0]["tensor"].startswith("AAAA")


def test_many_nodes_kept_in_float_are_counted_in_the_summary(artifact_copy: Path) -> None:
    """Five of a transformer's module paths filled the column with the same cut start."""
    nodes = [f"/lm/transformer/h.{i}/ln_1/LayerNormalization" for i in range(summary.MAX_NAMED_IN_FLOAT + 2)]
    edit_manifest(artifact_copy, lambda m: m["quantization"].update(excluded_nodes=nodes))
    console = Console(width=1000, record=True, file=io.StringIO())
    console.print(summary.table([("gpt2", artifact.load_artifact(artifact_copy))]))
    printed = console.export_text()
    assert f"{len(nodes)} nodes (the report lists them)" in printed and "/lm/transformer" not in printed
