"""Mutation check of the rollout engine: does the suite notice when the judgement changes?

Usage: python scripts/mutate.py [--list] [--only SUBSTRING] [MODULE ...]   (`make mutation`)

Each mutant is one small edit of one module of quantship/rollout/ (default: engine, analysis,
prometheus): a comparison flipped (`>=` -> `>`, `==` -> `!=`, `is` -> `is not`, ...), `and` <-> `or`,
a `not` dropped, a small integer off by one, a True/False swapped, a keyword argument or an
assignment of a status field dropped, an `if` made always or never true. Not mutated: docstrings,
type annotations, `assert`s and decorators (they narrow types or declare, and decide nothing), and
log lines with the `if`s that only guard them (the decision carries the text). On top of those, the
mutants a review named in issue 12 (`LISTED`), each found by its text: one missing from the
code fails the run, so the list cannot rot silently.

Each mutant runs against a private copy of the repository (PYTHONPATH points at it: nobody else's
test run sees a mutated engine) with the rollout tests (not those needing a real Prometheus),
`-x` and a per-test timeout (a mutant that makes `run_rollout` loop forever is killed by it).
Killed: the tests fail. Survived: they pass. Prints every survivor with its line and the score;
exits 1 when a listed mutant survives.
Equivalent survivors are judged by a person, in tests/unit/rollout/EQUIVALENT_MUTANTS.txt (one
`module:line: description` per line, with why): they are reported apart and do not lower the score.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "quantship" / "rollout"
TESTS = ["tests/unit/rollout", "tests/integration/rollout/test_prometheus_faults.py"]
UNUSED_PLUGINS = ["schemathesis", "hypothesispytest", "anyio", "kmock"]
"""Left out of each mutant's run: the rollout tests do not use them, and they cost seconds a run."""
EQUIVALENT = ROOT / "tests" / "unit" / "rollout" / "EQUIVALENT_MUTANTS.txt"

LISTED: list[tuple[str, str, str, str]] = [
    # (module, description, text, replacement): the review's mutants, issue 12
    ("engine", "another first revision asked before the first was ready: ignored",
     "if spec.revision != status.stable:  # asked for another", "if False:  # asked for another"),
    ("engine", "first revision not ready past its deadline: not reported",
     "if waited > spec.progress_deadline:\n        deadline", "if False:\n        deadline"),
    ("engine", "inconclusive counter kept after a pass",
     "judged = replace(judged, inconclusive=0)", "judged = replace(judged)"),
    ("engine", "inconclusive counter kept after a fail",
     "failures=failures, inconclusive=0, step_started_at=now", "failures=failures, step_started_at=now"),
    ("engine", "a replaced canary keeps its traffic while the next one starts",
     "if decision.retire:\n                await router.route",
     "if False:\n                await router.route"),
    ("engine", "max_errors never gives up", "if errors >= max_errors:", "if False:"),
    ("engine", "a rejected revision is tried again",
     "if spec.revision in (status.stable, status.rejected):", "if spec.revision in (status.stable,):"),
    ("analysis", "no minimum samples on the baseline",
     "if base_total >= min_samples:", "if True:"),
]  # fmt: skip

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}

_CONSTRUCTORS = ("replace", "RolloutStatus", "WindowResult", "GateResult", "Decision")


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    description: str
    source: str
    listed: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line}: {self.description}"


def _docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _edits(tree: ast.Module) -> Iterator[tuple[int, str, ast.AST, ast.AST]]:
    """(line, description, node, replacement) for every automatic mutation of the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for index, op in enumerate(node.ops):
                if type(op) in _FLIP:
                    new = copy.deepcopy(node)
                    new.ops[index] = _FLIP[type(op)]()
                    yield node.lineno, f"{ast.unparse(node)}  ->  {ast.unparse(new)}", node, new
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield node.lineno, f"{ast.unparse(node)}  ->  {ast.unparse(new)}", node, new
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node.lineno, f"{ast.unparse(node)}  ->  {ast.unparse(node.operand)}", node, node.operand
        elif isinstance(node, ast.Constant) and type(node.value) is int and -2 < node.value < 1000:
            yield node.lineno, f"{node.value}  ->  {node.value + 1}", node, ast.Constant(node.value + 1)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node.lineno, f"{node.value}  ->  {not node.value}", node, ast.Constant(not node.value)
        elif isinstance(node, ast.If) and not all(_logging(statement) for statement in node.body):
            for value in (True, False):
                new = copy.deepcopy(node)
                new.test = ast.Constant(value)
                yield node.lineno, f"if {ast.unparse(node.test)}:  ->  if {value}:", node, new
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CONSTRUCTORS:
            for index, keyword in enumerate(node.keywords):
                if keyword.arg is None:
                    continue
                new = copy.deepcopy(node)
                del new.keywords[index]
                yield node.lineno, f"{node.func.id}(..., {keyword.arg}=...) drops {keyword.arg}", node, new
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For, ast.While)):
            body = node.body
            for index, statement in enumerate(body):
                if isinstance(statement, (ast.Expr, ast.Assign, ast.AugAssign)) and not _docstring(statement):
                    if len(body) == 1 or _logging(statement):
                        continue
                    new = copy.deepcopy(node)
                    new.body[index] = ast.Pass()
                    first = ast.unparse(statement).splitlines()[0]
                    yield statement.lineno, f"statement dropped: {first}", node, new


def mutants(module: str) -> Iterator[Mutant]:
    text = (PACKAGE / f"{module}.py").read_text()
    tree = ast.parse(text)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and _docstring(node.body[0])
    }
    asserts = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.Assert) for sub in ast.walk(node)}
    decorators = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for decorator in node.decorator_list
        for sub in ast.walk(decorator)
    }
    log_guards = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and all(_logging(statement) for statement in node.body)
        for sub in ast.walk(node.test)
    }
    skip = docstrings | _annotations(tree) | asserts | decorators | log_guards
    for line, description, old, new in list(_edits(tree)):
        if id(old) in skip:
            continue
        mutated = _clone_with(tree, old, new)
        yield Mutant(module, line, description, ast.unparse(ast.fix_missing_locations(mutated)))


def _logging(statement: ast.stmt) -> bool:
    """`log.info(...)`: dropping a log line changes no decision (the decision carries the text)."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "log"
    )


def _clone_with(tree: ast.Module, old: ast.AST, new: ast.AST) -> ast.AST:
    """The module's tree with `old` replaced by `new` (the original tree stays intact)."""
    memo: dict[int, object] = {id(old): new}
    return copy.deepcopy(tree, memo)


def _annotations(tree: ast.Module) -> set[int]:
    """Ids of every node inside a type annotation: mutating those changes nothing at run time."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        annotation = None
        if isinstance(node, (ast.AnnAssign, ast.arg)):
            annotation = node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotation = node.returns
        if annotation is not None:
            inside.update(id(sub) for sub in ast.walk(annotation))
    return inside


def listed() -> Iterator[Mutant]:
    for module, description, text, replacement in LISTED:
        source = (PACKAGE / f"{module}.py").read_text()
        if source.count(text) != 1:
            raise SystemExit(f"listed mutant not found once in {module}.py: {text!r} ({description})")
        line = source[: source.index(text)].count("\n") + 1
        yield Mutant(module, line, description, source.replace(text, replacement), listed=True)


def run(mutant: Mutant, copy_root: Path, timeout: float, *, show: bool = False) -> bool:
    """True when the tests kill the mutant. `show`: print the tests' output."""
    target = copy_root / "quantship" / "rollout" / f"{mutant.module}.py"
    original = target.read_text()
    target.write_text(mutant.source)
    try:
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "15"]
        command += [
            "-m",
            "not prometheus",
            *(arg for plugin in UNUSED_PLUGINS for arg in ("-p", f"no:{plugin}")),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(copy_root),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            done = subprocess.run(
                [*command, *TESTS], cwd=copy_root, env=env, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return True
        if show:
            print(done.stdout.decode(errors="replace")[-3000:], done.stderr.decode(errors="replace")[-3000:])
        return done.returncode != 0
    finally:
        target.write_text(original)


def private_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="quantship-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "quantship", root / "quantship", ignore=ignore)
    for path in TESTS:  # only these: tests/conftest.py builds models the rollout tests do not need
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, root / path, ignore=ignore)
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, root / path)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    check = subprocess.run(
        [sys.executable, "-c", "import quantship; print(quantship.__file__)"],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    if not check.stdout.startswith(str(root)):
        raise SystemExit(f"the copy is not what gets imported: {check.stdout.strip()}")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=["engine", "analysis", "prometheus"])
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--only", default="", help="run only mutants whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one mutant's tests")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants tested at once (one copy each)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the copies

    everything = [*listed(), *(m for module in args.modules for m in mutants(module))]
    chosen = [m for m in everything if args.only in m.name]
    if args.list:
        for mutant in chosen:
            print(("* " if mutant.listed else "  ") + mutant.name)
        print(f"{len(chosen)} mutants")
        return 0
    equivalent = {
        line.split("  #")[0].strip() for line in EQUIVALENT.read_text().splitlines() if line.strip()
    } if EQUIVALENT.exists() else set()  # fmt: skip
    roots: queue.Queue[Path] = queue.Queue()
    survivors: list[Mutant] = []
    started = time.monotonic()
    done = 0

    def test(mutant: Mutant) -> None:
        nonlocal done
        root = roots.get()
        try:
            killed = run(mutant, root, args.timeout)
        finally:
            roots.put(root)
        with lock:
            done += 1
            print(f"[{done}/{len(chosen)}] {'killed  ' if killed else 'SURVIVED'} {mutant.name}", flush=True)
            if not killed:
                survivors.append(mutant)

    lock = threading.Lock()
    copies = [private_copy() for _ in range(max(1, args.jobs))]
    try:
        for root in copies:
            roots.put(root)
        unmutated = Mutant("engine", 0, "none", (PACKAGE / "engine.py").read_text())
        if run(unmutated, copies[0], args.timeout, show=True):
            raise SystemExit("the tests fail without any mutation: fix them first")
        with concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
            list(pool.map(test, chosen))
    finally:
        for root in copies:
            shutil.rmtree(root, ignore_errors=True)
    order = {mutant.name: index for index, mutant in enumerate(chosen)}
    survivors.sort(key=lambda mutant: order[mutant.name])
    judged = [m for m in survivors if m.name in equivalent]
    live = [m for m in survivors if m.name not in equivalent]
    scored = len(chosen) - len(judged)
    seconds = time.monotonic() - started
    print(
        f"\n{len(chosen)} mutants in {seconds:.0f} s: {len(chosen) - len(survivors)} killed, "
        f"{len(judged)} survivors judged equivalent, {len(live)} survived"
    )
    if scored:
        print(f"mutation score: {(scored - len(live)) / scored:.1%} ({scored - len(live)} of {scored})")
    for mutant in live:
        print(f"  survived: {'(LISTED) ' if mutant.listed else ''}{mutant.name}")
    return 1 if any(m.listed for m in live) else 0


if __name__ == "__main__":
    sys.exit(main())
