"""English sentences for the text model's data, taken from the docstrings of Python's standard library.

Nothing is downloaded: the modules below ship with every Python. The walk is deterministic (a fixed
module list, members in sorted order, first occurrence wins), so one Python release always yields
the same sentences; another release may reword a docstring, which the zoo's stamp notices.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Iterator

MODULES = (
    "abc",
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.server",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "math",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
    "zlib",
)

MIN_WORDS = 6
MAX_WORDS = 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-/.!?]*[.!?]$")


def _docstrings(module_name: str) -> Iterator[str]:
    module = importlib.import_module(module_name)
    yield inspect.getdoc(module) or ""
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        member = vars(module)[name]
        if getattr(member, "__module__", module_name) != module_name:
            continue  # re-exported from elsewhere: the owner's turn will come
        if not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        yield inspect.getdoc(member) or ""
        if inspect.isclass(member):
            for attr in sorted(vars(member)):
                if not attr.startswith("_") and inspect.isroutine(vars(member)[attr]):
                    yield inspect.getdoc(vars(member)[attr]) or ""


def _sentences(doc: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", doc):
        if ">>>" in paragraph or paragraph.lstrip().startswith((":", "-", "*", "|")):
            continue  # doctests, field lists, bullet lists, tables
        text = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(text):
            words = sentence.split()
            if MIN_WORDS <= len(words) <= MAX_WORDS and _PROSE.match(sentence):
                yield sentence


def stdlib_sentences(count: int) -> list[str]:
    """The first `count` distinct prose sentences of the MODULES' docstrings, in walk order."""
    seen: dict[str, None] = {}
    for module_name in MODULES:
        for doc in _docstrings(module_name):
            for sentence in _sentences(doc):
                seen.setdefault(sentence, None)
                if len(seen) == count:
                    return list(seen)
    raise RuntimeError(f"the standard library's docstrings hold only {len(seen)} sentences, {count} wanted")


def digest(sentences: list[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()
