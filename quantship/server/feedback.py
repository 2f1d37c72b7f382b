"""Recent answers kept for label feedback (`POST /v2/models/{name}/feedback`), in bounded memory.

For each answered request of a classifier the service remembers, by request id, the served
model's top-1 per row and, when a reference model is loaded, the request's inputs. The reference's
top-1 comes from the shadow evaluator when the request was sampled; otherwise the service computes
it at feedback time from the kept inputs. Entries are dropped oldest first beyond `capacity`
entries or `max_bytes` of what they hold (ids, answers, the bodies their inputs view), so a label
arriving too late gets 404, never unbounded memory.
The shadow worker thread attaches reference answers, hence the lock.
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass

import numpy as np

from quantship.server.errors import FeedbackConflict, UnknownRequest
from quantship.server.runner_signature import Tensors


@dataclass
class Answer:
    rows: int
    served: np.ndarray
    """The served model's top-1 class per row."""
    inputs: Tensors | None
    """Kept only when a reference can be run on them at feedback time."""
    reference: np.ndarray | None = None
    """The reference's top-1 per row, once known."""
    nbytes: int = 0
    labelled: bool = False


class FeedbackStore:
    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._answers: collections.OrderedDict[str, Answer] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def remember(self, request_id: str, rows: int, served: np.ndarray, inputs: Tensors | None) -> None:
        held = _held_bytes(inputs) if inputs is not None else 0
        nbytes = sys.getsizeof(request_id) + served.nbytes + held
        if nbytes > self.max_bytes:
            return  # one request larger than the whole store: keep the others instead
        with self._lock:
            previous = self._answers.pop(request_id, None)  # a reused id: the latest answer wins
            if previous is not None:
                self._bytes -= previous.nbytes
            self._answers[request_id] = Answer(rows, served, inputs, nbytes=nbytes)
            self._bytes += nbytes
            while len(self._answers) > self.capacity or self._bytes > self.max_bytes:
                _, oldest = self._answers.popitem(last=False)
                self._bytes -= oldest.nbytes

    def attach_reference(self, request_id: str, reference: np.ndarray) -> None:
        with self._lock:
            answer = self._answers.get(request_id)
            if answer is not None and len(reference) == answer.rows:
                answer.reference = reference

    def get(self, request_id: str) -> Answer:
        """The answer still awaiting its label. Raises UnknownRequest or FeedbackConflict."""
        with self._lock:
            answer, kept = self._answers.get(request_id), len(self._answers)
        if answer is None:  # the bytes may keep far fewer than the capacity: an image model's ~100
            raise UnknownRequest(
                f"no recent request with id {request_id!r}: never answered here, or not kept: feedback "
                f"keeps the latest {kept} requests (--feedback-capacity {self.capacity}) within "
                f"--feedback-max-bytes {self.max_bytes}"
            )
        if answer.labelled:
            raise FeedbackConflict(f"request {request_id!r} already got its label")
        return answer

    def mark_labelled(self, request_id: str) -> Answer:
        """Claim the answer for one label; the inputs are no longer needed and are let go."""
        with self._lock:
            answer = self._answers.get(request_id)
            if answer is None:
                raise UnknownRequest(f"request {request_id!r} was forgotten while its label was counted")
            if answer.labelled:
                raise FeedbackConflict(f"request {request_id!r} already got its label")
            answer.labelled = True
            if answer.inputs is not None:
                kept = sys.getsizeof(request_id) + answer.served.nbytes
                self._bytes -= answer.nbytes - kept
                answer.nbytes = kept
                answer.inputs = None
            return answer


def _held_bytes(inputs: Tensors) -> int:
    """Bytes the inputs keep alive: an array viewing a request's body (the binary extension, gRPC's
    raw contents) holds the whole body, counted once however many inputs view it."""
    held: dict[int, int] = {}
    for array in inputs.values():
        owner: object = array
        while isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        if isinstance(owner, memoryview):
            owner = owner.obj
        held[id(owner)] = owner.nbytes if isinstance(owner, np.ndarray) else sys.getsizeof(owner)
    return sum(held.values())
