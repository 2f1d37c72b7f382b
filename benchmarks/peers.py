"""quantship against its peers, KServe and MLServer, and raw onnxruntime: same ONNX files, same load.

For each model (digits FP32 and INT8, an MLP 784-2048-2048-10 FP32) and concurrency (1, 8, 32):
wrk 4.1 (Debian's `wrk`) on core 0 sends the same one-row JSON v2 request to each server, pinned to
core 1, for a warm-up then `PEERS_SECONDS`, in `PEERS_ROUNDS` rounds whose medians a cell shows;
every server runs one process and one onnxruntime intra-op thread; quantship runs its default SLIs
(shadow 5%, clip 5% where the artifact has them).
Raw onnxruntime is one thread, pinned to the servers' core, calling session.run on the request's row
(in this process) for 1 s before a cell's first round and after each, the median shown: one second
before the cell alone read the MLP's raw a fifth apart from one cell to the next (1,310 / 1,588 /
1,544 calls/s, 2026-12-04), and moved the cell's share of raw with it.
Beside the peers runs a floor, the least a Python server can do at c=1 (benchmarks/floor_server.py).
A model's servers are all up at once and take their turns
within each cell, in an order that flips from round to round and cell to cell, so that a ratio
compares minutes-apart runs of this noisy VM no more. Each cell prints req/s, p50/p99, the server's CPU time
per request (/proc/PID/stat), and the 1-minute load average at the end of the cell: figures from a
loaded machine are not figures.

The peers go into their own virtualenvs under build/peers/ (created on first use, git-ignored,
never .venv): `kserve==0.21.*` and `mlserver==1.7.1`, each with onnxruntime. A peer that cannot
be installed (no network) is left out of the table with the reason. wrk must be on PATH: as root
this installs it (`apt-get install -y wrk`), otherwise it says so and stops.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from benchmarks import children, goals, peer_servers, peers_heavy
from benchmarks.process_cpu import cpu_seconds
from quantship import artifact, runtime, zoo
from quantship.choices import ONNXRUNTIME_SPINNING
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "build" / "peers"
PEERS = {"kserve": ["kserve==0.21.*", "onnxruntime"], "mlserver": ["mlserver==1.7.1", "onnxruntime"]}
CONCURRENCY = (1, 8, 32)
SECONDS = int(os.environ.get("PEERS_SECONDS", 5))
ROUNDS = int(os.environ.get("PEERS_ROUNDS", 3))
"""Rounds of each cell, the servers' order flipping from round to round; a cell shows the medians.
With one 5 s window a cell, a run's verdict on a sub-millisecond p99 was the VM's: one quantship
server read p99 0.71-2.69 ms at c=1 over 12 windows of 5 s in five minutes (digits INT8, 2026-12-03),
and most runs of this suite had one cell's p99 over a peer's, a different cell each time."""
WARMUP_S = 1
LOAD_CORE, SERVER_CORE = "0", "1"
FLOOR = "bare ASGI + ORT"
RAW_IDLE_S = 0.0003
"""The sleep before each call of the "raw after idle" column (c=1 rows): about what a one-row request's
round trip leaves a server's core idle between calls at c=1 (the floor answers digits in ~0.24 ms
a request). A call after such a pause is slower than one in a tight loop: the MLP's 0.80 ms
became 1.12 ms (medians of 6 interleaved rounds, 2026-12-03), so at c=1 even the call alone takes
longer than the raw column's, in any server."""


@dataclass(frozen=True)
class Model:
    name: str
    onnx_path: Path
    artifact: Path
    body: str
    compute_heavy: bool = False
    """One of issue 11's compute-heavy models, judged against raw onnxruntime (goals.py)."""


@dataclass(frozen=True)
class Cell:
    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None
    load: float
    errors: int


# -- tools and peers ---------------------------------------------------------------------------


def ensure_tool(command: str, package: str) -> str:
    """The path of a load generator, installed from Debian's `package` when this runs as root."""
    found = shutil.which(command)
    if found:
        return found
    tried = ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        tried = _apt_install(package)
        found = shutil.which(command)
    if not found:
        raise SystemExit(
            f"{command} is not installed: `apt-get install {package}` (Debian/Ubuntu) as root, then rerun"
            + (f" ({tried})" if tried else "")
        )
    return found


def _apt_install(package: str) -> str:
    """apt-get install `package`, after an update (a fresh image has no package lists); what failed,
    if anything, for ensure_tool's message rather than a traceback."""
    subprocess.run(["apt-get", "update"], capture_output=True)
    installed = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", package], capture_output=True, text=True
    )
    if installed.returncode == 0:
        return ""
    said = installed.stderr.strip().splitlines()
    return (
        f"apt-get install {package} failed here: {said[-1] if said else f'exit code {installed.returncode}'}"
    )


def ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


def peer_python(name: str) -> Path | str:
    """The peer's virtualenv python, created and installed on first use; a string says why not."""
    env = PEERS_DIR / name
    python = env / "bin" / "python"
    marker = env / ".installed"
    if marker.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PEERS[name]], capture_output=True, text=True
    )
    if installed.returncode != 0:
        return f"pip install {' '.join(PEERS[name])} failed: {installed.stderr.strip()[-300:]}"
    marker.touch()
    return python


# -- models --------------------------------------------------------------------------------------


def build_mlp(path: Path, sizes: tuple[int, ...] = (784, 2048, 2048, 10)) -> Path:
    """A compute-heavy FP32 MLP with random weights: ~5.8 M multiply-adds a row."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "X"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = numpy_helper.from_array(
            (rng.standard_normal((fan_in, fan_out)) / fan_in**0.5).astype(np.float32), f"W{index}"
        )
        b = numpy_helper.from_array(np.zeros(fan_out, dtype=np.float32), f"B{index}")
        weights += [w, b]
        out = "logits" if index == len(sizes) - 2 else f"h{index}"
        nodes.append(
            helper.make_node("Gemm", [previous, w.name, b.name], [f"g{index}" if out != "logits" else out])
        )
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"g{index}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])],
        weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _fp32_artifact(model: Path, out: Path) -> Path:
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model}, manifest).root


def _body(width: int, row: np.ndarray) -> str:
    data = [round(float(v), 4) for v in row.ravel()]
    return json.dumps({"inputs": [{"name": "X", "shape": [1, width], "datatype": "FP32", "data": data}]})


def models(workdir: Path) -> list[Model]:
    sample = zoo.build_digits(workdir / "peers-zoo")
    digits_row = np.load(sample.requests)[zoo.INPUT_NAME][0]
    int8 = quantize(
        sample.model, workdir / "peers-digits-int8", QuantizeConfig(), calibration=sample.calibration
    )
    mlp = build_mlp(workdir / "mlp.onnx")
    mlp_row = np.random.default_rng(1).random(784, dtype=np.float32)
    return [
        Model("digits FP32", sample.model, _fp32_artifact(sample.model, workdir / "peers-digits-fp32"),
              _body(64, digits_row)),
        Model("digits INT8", int8.artifact.model_path, int8.artifact.root, _body(64, digits_row)),
        Model("MLP 784-2048-2048-10", mlp, _fp32_artifact(mlp, workdir / "peers-mlp"), _body(784, mlp_row),
              compute_heavy=True),
    ]  # fmt: skip


# -- servers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    grpc_port: int | None = None
    name: str = "server"
    log: Path | None = None
    """Where its output goes, for a message when it fails."""


def _pin(pid: int) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):
        subprocess.run(["taskset", "-pc", SERVER_CORE, task], capture_output=True)


def _wait(url: str, body: str, process: subprocess.Popen[bytes] | None, timeout: float = 120) -> None:
    deadline, seen = time.monotonic() + timeout, "nothing"
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
            if answer.status_code == 200:
                return
            seen = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            seen = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200 (last: {seen})")


class PinnedServer(ServerProcess):
    """quantship started on the server core, not moved there once up: its batch policy depends on
    the CPUs it may use when it loads (BatchPolicy.overlap: with one, lone requests are not probed
    for concurrency). The peers' do not, so they are moved once up, as before."""

    def command(self) -> list[str]:
        return ["taskset", "-c", SERVER_CORE, *super().command()]


@contextmanager
def quantship(model: Model, workdir: Path, *flags: str, log_name: str = "quantship") -> Iterator[Running]:
    server = PinnedServer(
        model.artifact, model="m", revision="bench",
        extra_args=["--threads", "1", "--log-level", "warning", *flags], log_path=workdir / f"{log_name}.log",
    )  # fmt: skip
    server.start()
    try:
        asyncio.run(server.wait_ready())
        assert server.pid is not None
        _wait(f"{server.url}/v2/models/m/infer", model.body, None)
        yield Running(server.url, server.pid, name="quantship", log=workdir / f"{log_name}.log")
    finally:
        server.stop()


@contextmanager
def floor(
    model: Model, workdir: Path, *, threads: int = 1, grpc: bool = False, pin: bool = True, name: str = FLOOR
) -> Iterator[Running]:
    """benchmarks.floor_server on the model, started on the server core unless `pin` is off."""
    port, grpc_port = free_port(), (free_port() if grpc else None)
    command = [sys.executable, "-m", "benchmarks.floor_server", str(model.onnx_path), str(port),
               "--threads", str(threads)]  # fmt: skip
    if grpc_port is not None:
        command += ["--grpc-port", str(grpc_port)]
    if pin:
        command = ["taskset", "-c", SERVER_CORE, *command]
    log_path = workdir / "floor.log"
    with open(log_path, "wb") as log:
        process = children.start(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/v2/models/m/infer", model.body, process)
            yield Running(url, process.pid, grpc_port, name, log_path)
        finally:
            children.stop(process)


@contextmanager
def peer(
    name: str, python: Path, model: Model, workdir: Path, *, threads: int = 1, pin: bool = True
) -> Iterator[Running]:
    port, grpc_port = free_port(), free_port()
    home = workdir / f"{name}-{model.name.split()[0]}"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "PEER_MODEL_NAME": "m", "PEER_MODEL_PATH": str(model.onnx_path),
           "PEER_THREADS": str(threads)}  # fmt: skip
    if name == "kserve":
        (home / "server.py").write_text(peer_servers.KSERVE)
        command = [str(python), "server.py", "--http_port", str(port), "--grpc_port", str(grpc_port),
                   "--workers", "1", "--enable_latency_logging", "false"]  # fmt: skip
    else:
        (home / "runtime.py").write_text(peer_servers.MLSERVER_RUNTIME)
        settings = {"http_port": port, "grpc_port": grpc_port, "metrics_port": free_port(),
                    "parallel_workers": 0, "host": "127.0.0.1"}  # fmt: skip
        (home / "settings.json").write_text(json.dumps(settings))
        model_settings = {"name": "m", "implementation": "runtime.OnnxRuntime",
                          "parameters": {"uri": str(model.onnx_path)}}  # fmt: skip
        (home / "model-settings.json").write_text(json.dumps(model_settings))
        command = [str(python.parent / "mlserver"), "start", "."]
    with open(home / "server.log", "wb") as log:
        process = children.start(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/v2/models/m/infer", model.body, process)
            if pin:
                _pin(process.pid)
            yield Running(url, process.pid, grpc_port, name, home / "server.log")
        finally:
            children.stop(process)


# -- measuring -----------------------------------------------------------------------------------


def post_script(path: Path, body: str) -> Path:
    """A wrk script that POSTs `body` as JSON."""
    path.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{body}]]\n'
    )
    return path


def wrk_command(wrk: str, url: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    """wrk on the load core: one thread, `concurrency` connections, latency percentiles printed."""
    return ["taskset", "-c", LOAD_CORE, wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
            "-s", str(script), f"{url}/v2/models/m/infer"]  # fmt: skip


class LoadFailed(RuntimeError):
    """The load generator could not measure a server (it died, or never listened): one line naming
    the server, the generator's own words and the server's log."""


def _wrk(wrk: str, server: Running, script: Path, concurrency: int, seconds: int) -> str:
    command = wrk_command(wrk, server.url, script, concurrency, seconds)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise LoadFailed(f"{server.name} at {server.url}: wrk failed: {said} (server log: {server.log})")
    return done.stdout


def parse_wrk(out: str, cpu_s: float | None, seconds: float = SECONDS) -> Cell:
    """A cell from wrk's report of `seconds` of load and the server CPU seconds they took. Its errors
    are the answers not 2xx/3xx and the socket errors (connect, read, write, timeout): a server that
    died mid-cell shows as errors, not as a quiet low figure."""
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise LoadFailed(f"no Requests/sec in wrk's report: {' '.join(out.split())[:300]}")
    per_s = float(found.group(1))
    requests = per_s * seconds
    cpu_us = cpu_s / requests * 1e6 if cpu_s is not None and requests else None
    return Cell(per_s, _ms(out, 50), _ms(out, 99), cpu_us, os.getloadavg()[0], wrk_errors(out))  # fmt: skip


def wrk_errors(out: str) -> int:
    """Non-2xx/3xx answers plus socket errors, from wrk's report."""
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return (int(refused.group(1)) if refused else 0) + (sum(map(int, socket.groups())) if socket else 0)


def _ms(text: str, percent: int) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if found is None:
        return float("nan")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


def median_cell(rounds: list[Cell]) -> Cell:
    """One cell of several rounds: the median of each figure, the highest load, every error."""
    cpus = [cell.cpu_us for cell in rounds]
    return Cell(
        statistics.median(cell.per_s for cell in rounds),
        statistics.median(cell.p50_ms for cell in rounds),
        statistics.median(cell.p99_ms for cell in rounds),
        None if None in cpus else statistics.median(cpu for cpu in cpus if cpu is not None),
        max(cell.load for cell in rounds),
        sum(cell.errors for cell in rounds),
    )


def measure(wrk: str, server: Running, script: Path, concurrency: int) -> Cell:
    _wrk(wrk, server, script, concurrency, WARMUP_S)
    before = cpu_seconds(server.pid)
    out = _wrk(wrk, server, script, concurrency, SECONDS)
    return parse_wrk(out, cpu_seconds(server.pid) - before)


def body_feed(body: str) -> dict[str, np.ndarray]:
    """The one-row JSON request's tensor as session.run's feed: raw onnxruntime runs the row the servers
    get (zeros take other paths through ReLUs and quantized ops)."""
    tensor = json.loads(body)["inputs"][0]
    return {tensor["name"]: np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])}


def pinned_raw_calls_per_s(model: Path, feed: dict[str, np.ndarray], *, idle_s: float = 0.0) -> float:
    """raw_calls_per_s on the servers' core, as the main table's servers run."""
    with peers_heavy.pinned_to(int(SERVER_CORE)):
        return raw_calls_per_s(model, feed, idle_s=idle_s)


def raw_calls_per_s(
    model: Path,
    feed: dict[str, np.ndarray],
    *,
    threads: int = 1,
    seconds: float = 1.0,
    idle_s: float = 0.0,
    spinning: bool = ONNXRUNTIME_SPINNING,
) -> float:
    """session.run calls on `feed` a second of their own time, for `seconds`: back to back, or each
    after `idle_s` asleep (RAW_IDLE_S). Both tables' raw onnxruntime."""
    session = runtime.create_session(model, threads=threads, spinning=spinning)
    for _ in range(peers_heavy.WARMUP_CALLS):
        session.run(None, feed)
    calls, running, deadline = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if idle_s:
            time.sleep(idle_s)
        started = time.perf_counter()
        session.run(None, feed)
        running += time.perf_counter() - started
        calls += 1
    return calls / running


# -- the run ---------------------------------------------------------------------------------------


def run(workdir: Path) -> None:
    console = Console(width=240)
    wrk = ensure_wrk()
    hardware = runtime.hardware()
    pythons: dict[str, Path] = {}
    for name in PEERS:
        found = peer_python(name)
        if isinstance(found, Path):
            pythons[name] = found
        else:
            console.print(f"[yellow]{name} left out[/]: {found}")
    if not pythons:
        console.print(f"[yellow]no peer measured[/]: the goals against the peers will read '{goals.NO_PEER}'")
    console.print(
        f"{time.strftime('%Y-%m-%d')}, CPU: {hardware.cpu}, {os.cpu_count()} cores; wrk on core {LOAD_CORE}, "
        f"each server pinned to core {SERVER_CORE}; one onnxruntime thread each; {ROUNDS} rounds of "
        f"{SECONDS} s a cell, medians shown"
    )
    table = Table(
        title="quantship vs peers: one-row JSON v2 requests (req/s, p50/p99 ms, server CPU µs a request)"
    )
    ratio_columns = ("quantship / peers", "floor / peers", "of floor", "of raw")
    raw_columns = ("raw ORT b1", "raw after idle")
    for column in ("model", "c", "quantship", *pythons, FLOOR, *raw_columns, *ratio_columns, "load"):
        table.add_column(column, justify="left" if column == "model" else "right")
    judged: list[goals.PeersRow] = []
    for model in models(workdir):
        script = post_script(workdir / "post.lua", model.body)
        feed = body_feed(model.body)
        rounds: dict[tuple[str, int], list[Cell]] = {}
        raws: dict[int, float] = {}
        raw_after_idle = 0.0
        with ExitStack() as stack, _keeping_what_was_measured(console, table, model, rounds):
            # All up at once (idle but for the one under load), measured back to back in each cell:
            # this VM's speed drifts by a third within an hour, so a ratio of cells minutes apart
            # would measure the drift. The order flips from round to round and cell to cell, so no
            # server is always first.
            servers = {"quantship": stack.enter_context(quantship(model, workdir))}
            for name, python in pythons.items():
                servers[name] = stack.enter_context(peer(name, python, model, workdir))
            servers[FLOOR] = stack.enter_context(floor(model, workdir))
            for index, c in enumerate(CONCURRENCY):
                raw_spread = [pinned_raw_calls_per_s(model.onnx_path, feed)]
                if c == 1:
                    raw_after_idle = pinned_raw_calls_per_s(model.onnx_path, feed, idle_s=RAW_IDLE_S)
                for turn in range(ROUNDS):
                    for name in list(servers)[:: 1 if (index + turn) % 2 == 0 else -1]:
                        rounds.setdefault((name, c), []).append(measure(wrk, servers[name], script, c))
                    raw_spread.append(pinned_raw_calls_per_s(model.onnx_path, feed))
                raws[c] = statistics.median(raw_spread)
        cells = {key: median_cell(found) for key, found in rounds.items()}
        for c in CONCURRENCY:
            raw = raws[c]
            ours, least = cells["quantship", c], cells[FLOOR, c]
            loads = max(cells[name, c].load for name in ("quantship", *pythons, FLOOR))
            shown = [_cell(cells[name, c]) for name in ("quantship", *pythons, FLOOR)]
            versus = [_ratios(ours, cells, pythons, c), _ratios(least, cells, pythons, c)]
            of = [f"{ours.per_s / least.per_s:.0%}", f"{ours.per_s / raw:.0%}"]
            after_idle = f"{raw_after_idle:,.0f}" if c == 1 else ""
            table.add_row(model.name, str(c), *shown, f"{raw:,.0f}", after_idle, *versus, *of, f"{loads:.2f}")
            peer_figures = {name: _figures(cells[name, c]) for name in pythons}
            judged.append(goals.PeersRow(
                model.name, c, _figures(ours), peer_figures, _figures(least), raw, model.compute_heavy
            ))  # fmt: skip
    console.print(table)
    console.print(
        f"{FLOOR}: benchmarks/floor_server.py, the least a Python server on uvicorn can do (orjson, one "
        "session.run on the event loop, nothing else, no batching): at c=1 no server on uvicorn does less"
    )
    console.print(
        "raw ORT b1: session.run calls a second of their own time, back to back, the median of 1 s "
        "measured before the cell's first round and after each; raw after idle: 1 s with "
        f"{RAW_IDLE_S * 1e3:g} ms asleep before each call, as a server's core idles between requests at c=1"
    )
    console.print(
        f"each figure: the median of the cell's {ROUNDS} rounds; load: the highest 1-minute load average "
        "seen at the end of the cell's runs (2 cores)"
    )
    verdicts = goals.peers_verdicts(judged)
    verdicts += heavy_table(console, wrk, pythons, workdir)
    goals.show(console, verdicts)


HEAVY_ROUNDS = 3
"""Rounds of the compute-heavy cell, the order of its servers flipped each round (see heavy_table).
Two were too few on a VNNI host, where a ~4 ms call makes the share of raw move by 30 points from
one round to the next (HTTP binary 106% then 76%, 2026-12-03)."""
GRPC, HTTP_BINARY = "gRPC", "HTTP binary"
HEAVY_FLOOR = "floor"
"""The floor server in the compute-heavy table, on gRPC and on HTTP binary: bare grpcio or uvicorn."""
HEAVY_SLIS_OFF = "quantship, SLIs off"
"""quantship in the compute-heavy table with no SLI sampling, over gRPC: beside the default server's
row, what the SLIs cost a model whose reference and observer sessions are dear."""


def heavy_table(console: Console, wrk: str, pythons: dict[str, Path], workdir: Path) -> list[goals.Verdict]:
    """EfficientNet-Lite0 INT8 at c=1 over binary transports, against raw onnxruntime (peers_heavy)
    and the floor server on the same transports (the least a Python server on uvicorn or grpcio can
    add to a call). As in the main table, every server is up at once and they take turns in
    HEAVY_ROUNDS rounds whose order flips; raw onnxruntime is measured before the first cell and
    after every cell, so that each cell's share of raw is of the raw measured on either side of it."""
    artifact_root, row = peers_heavy.build(workdir)
    name = "images"
    ready_body = json.dumps(  # JSON, only to see each server answer once before the measurement
        {
            "inputs": [
                {"name": name, "shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}
            ]
        }
    )
    model = Model("EfficientNet-Lite0 INT8", artifact_root / artifact.MODEL_FILE, artifact_root, ready_body)
    payload = peers_heavy.grpc_request("m", name, row)
    rounds: dict[tuple[str, str], list[peers_heavy.HeavyCell]] = {}
    raws: list[float] = []
    of_raw: dict[tuple[str, str], list[float]] = {}
    """Each cell's req/s over the mean of the raw onnxruntime measured just before and just after
    it: raw calls/s moved by 3x within minutes on one host (120-364, 2026-12-03), so a share of a
    raw measured a round earlier measured the drift as much as the server."""
    with ExitStack() as stack:
        running: dict[str, Running] = {}
        quantships = (
            ("quantship", (), "quantship-heavy"),
            (HEAVY_SLIS_OFF, peers_heavy.SLIS_OFF, "quantship-heavy-slis-off"),
        )
        for server_name, flags, log_name in quantships:
            server, grpc_port = stack.enter_context(
                peers_heavy.quantship_server(artifact_root, workdir, *flags, log_name=log_name)
            )
            assert server.pid is not None
            running[server_name] = Running(
                server.url, server.pid, grpc_port, server_name, workdir / f"{log_name}.log"
            )
        running[HEAVY_FLOOR] = stack.enter_context(
            floor(model, workdir, threads=peers_heavy.THREADS, grpc=True, pin=False, name=HEAVY_FLOOR)
        )
        for peer_name, python in pythons.items():
            running[peer_name] = stack.enter_context(
                peer(peer_name, python, model, workdir, threads=peers_heavy.THREADS, pin=False)
            )

        def over_grpc(server_name: str) -> peers_heavy.HeavyCell:
            port = running[server_name].grpc_port
            assert port is not None
            with peers_heavy.pinned_client():
                infer, close = peers_heavy.grpc_caller(port, payload)
                try:
                    return peers_heavy.measure(infer, running[server_name].pid)
                finally:
                    close()

        def over_http_binary(server_name: str) -> peers_heavy.HeavyCell:
            target = running[server_name]
            before = cpu_seconds(target.pid)
            out = peers_heavy.wrk_binary(wrk, target.url, "m", name, row, workdir)
            cell = parse_wrk(out, cpu_seconds(target.pid) - before, peers_heavy.SECONDS)
            if cell.errors:  # as the gRPC client raises on a failed call: errors are not throughput
                raise RuntimeError(f"{server_name} answered {cell.errors} binary requests with an error")
            cpu_ms = None if cell.cpu_us is None else cell.cpu_us / 1e3
            return peers_heavy.HeavyCell(cell.per_s, cell.p50_ms, cell.p99_ms, cpu_ms, cell.load)

        cells: dict[tuple[str, str], Callable[[], peers_heavy.HeavyCell]] = {}
        for server_name in ("quantship", HEAVY_SLIS_OFF, HEAVY_FLOOR, *pythons):
            cells[server_name, GRPC] = functools.partial(over_grpc, server_name)
            if server_name in ("quantship", HEAVY_FLOOR):  # the servers with the binary extension
                cells[server_name, HTTP_BINARY] = functools.partial(over_http_binary, server_name)

        def measure_raw() -> None:
            """The better of onnxruntime's calls with its pool spinning (its default) and asleep
            (quantship's): spinning is faster on idle cores, slower where anything else runs."""
            raws.append(max(
                raw_calls_per_s(model.onnx_path, {name: row}, threads=peers_heavy.THREADS,
                                seconds=peers_heavy.SECONDS / 4, spinning=spinning)
                for spinning in (True, False)
            ))  # fmt: skip

        measure_raw()
        for index in range(HEAVY_ROUNDS):
            for label in list(cells)[:: 1 if index % 2 == 0 else -1]:
                rounds.setdefault(label, []).append(cells[label]())
                measure_raw()
                of_raw.setdefault(label, []).append(rounds[label][-1].per_s / statistics.mean(raws[-2:]))
    raw = statistics.mean(raws)
    table = Table(
        title=f"compute-heavy: EfficientNet-Lite0 INT8 (the tuned artifact), c=1, binary transports, "
        f"{peers_heavy.THREADS} onnxruntime threads; raw onnxruntime {raw:.1f} calls/s "
        f"({min(raws):.1f}-{max(raws):.1f} measured before and after each cell)"
    )
    columns = (
        "server, transport",
        "req/s",
        "of raw",
        "of floor",
        "p50 / p99 (highest) ms",
        "server CPU ms a request",
        "load",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "server, transport" else "right")
    per_s = {label: statistics.mean(cell.per_s for cell in measured) for label, measured in rounds.items()}
    for label, measured in rounds.items():
        cpus = [cell.cpu_ms for cell in measured if cell.cpu_ms is not None]
        cpu = f"{statistics.mean(cpus):.2f}" if cpus else ""
        p50 = statistics.mean(cell.p50_ms for cell in measured)
        p99s = [cell.p99_ms for cell in measured]
        latency = f"{p50:.1f} / {statistics.median(p99s):.1f} ({max(p99s):.1f})"
        shares = " ".join(f"{share:.0%}" for share in of_raw[label])
        floor_label = (HEAVY_FLOOR, label[1])
        of_floor = "" if label == floor_label else f"{per_s[label] / per_s[floor_label]:.0%}"
        share = f"{statistics.mean(of_raw[label]):.0%} ({shares})"
        table.add_row(" ".join(label), f"{per_s[label]:.1f}", share, of_floor, latency, cpu,
                      f"{max(c.load for c in measured):.2f}")  # fmt: skip
    console.print(table)
    console.print(
        f"compute-heavy: req/s, p50 and CPU are the means of {HEAVY_ROUNDS} rounds of "
        f"{peers_heavy.SECONDS:g} s, p99 their median (the highest in brackets) as in the main table, load "
        "the highest; of raw: the mean of each round's req/s "
        "over the raw onnxruntime measured just before and after that cell (each round's share in brackets), "
        "each measurement the better of the session's threads spinning (onnxruntime's default) and asleep; "
        f"of floor: req/s over the {HEAVY_FLOOR}'s on the same transport (benchmarks/floor_server.py: "
        f"bare grpcio or uvicorn, session.run on the event loop, {peers_heavy.THREADS} threads); where the "
        "floor is under 90% of raw, no Python server on that transport reaches 90%; "
        f"{HEAVY_SLIS_OFF}: the same artifact served with {' '.join(peers_heavy.SLIS_OFF)}, what the default "
        "SLIs cost this model"
    )
    transports = (GRPC, HTTP_BINARY)
    return goals.heavy_verdicts(
        {t: statistics.mean(of_raw["quantship", t]) for t in transports},
        {t: statistics.mean(of_raw[HEAVY_FLOOR, t]) for t in transports},
        statistics.median(cell.p99_ms for cell in rounds["quantship", GRPC]),
        {name: statistics.median(cell.p99_ms for cell in rounds[name, GRPC]) for name in pythons},
    )


@contextmanager
def _keeping_what_was_measured(
    console: Console, table: Table, model: Model, rounds: dict[tuple[str, int], list[Cell]]
) -> Iterator[None]:
    """A server that fails under load stops the suite with one line, after printing every cell already
    measured: the finished models' table and this model's rounds so far."""
    try:
        yield
    except LoadFailed as failure:
        console.print(table)
        for (server, c), measured in rounds.items():
            console.print(f"{model.name} c={c} {server}: " + ", ".join(_cell(cell) for cell in measured))
        raise SystemExit(f"peers: {failure}") from None


def _ratios(cell: Cell, cells: dict[tuple[str, int], Cell], peers: Iterable[str], c: int) -> str:
    return " / ".join(_ratio(cell, cells[name, c]) for name in peers)


def _ratio(cell: Cell, other: Cell) -> str:
    """cell's req/s over other's; a server with errors (or none answered) has no ratio to show."""
    if cell.errors or other.errors or not other.per_s:
        return "n/a"
    return f"{cell.per_s / other.per_s:.2f}x"


def _figures(cell: Cell) -> goals.Figures:
    return goals.Figures(cell.per_s, cell.p99_ms, cell.errors)


def _cell(cell: Cell) -> str:
    cpu = "" if cell.cpu_us is None else f" {cell.cpu_us:.0f}µs"
    errors = f" [red]{cell.errors} errors[/]" if cell.errors else ""
    return f"{cell.per_s:,.0f} {cell.p50_ms:.1f}/{cell.p99_ms:.1f}{cpu}{errors}"
