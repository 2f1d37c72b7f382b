"""The tick's view of a QuantizedModel without a GET: kopf's watched body, or our own status write
of it until the watch brings that back (else a tick right after a write would act on the status
before it, and step or judge twice)."""

from __future__ import annotations

from typing import Any

from quantship.operator.watched import (
    DEPLOYMENT,
    GONE_KEPT,
    SERVICE,
    WRITE_VISIBLE_S,
    Children,
    Gone,
    Written,
)


def body(version: str, phase: str, uid: str = "u1", **extra: Any) -> dict[str, Any]:
    metadata = {"namespace": "ml", "name": "digits", "uid": uid, "resourceVersion": version}
    return {"metadata": metadata, "spec": {}, "status": {"phase": phase}, **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_our_write_wins_over_an_older_watched_body_until_the_watch_brings_it() -> None:
    written = Written()
    written.wrote(body("7", "Progressing"))

    assert written.latest(body("5", "Pending"))["status"] == {"phase": "Progressing"}
    assert written.latest(body("6", "Pending"))["metadata"]["resourceVersion"] == "7"
    # the watch caught up: from now on what it delivers, including later changes by others
    assert written.latest(body("7", "Progressing"))["metadata"]["resourceVersion"] == "7"
    assert written.latest(body("9", "Progressing", spec_changed=True))["spec_changed"] is True


def test_a_later_version_with_our_status_is_caught_up_even_if_ours_never_came_by() -> None:
    written = Written()
    written.wrote(body("7", "Progressing"))
    # kopf's finalizer patch landed after our write; the watch skipped straight to it
    seen = body("8", "Progressing", metadata_note="finalizer")
    assert written.latest(seen) == seen
    assert written.latest(body("5", "Pending"))["status"] == {"phase": "Pending"}, "forgotten once caught up"


def promoted_by_hand(version: str, phase: str) -> dict[str, Any]:
    """`body` with a person's promote annotation."""
    made = body(version, phase)
    made["metadata"]["annotations"] = {"serving.quantship.io/promote": "now"}
    return made


def test_our_write_of_the_annotations_wins_over_our_status_write_before_it() -> None:
    """A tick used up a one-shot annotation: it wrote the status (7), then removed the annotation
    (8). The body of 7 has our status and the annotation still: behind, not caught up (the next
    tick acted on the annotation again, on the canary the first tick had just started)."""
    written = Written()
    written.wrote(promoted_by_hand("7", "Progressing"))
    written.wrote(body("8", "Progressing"))

    assert written.latest(promoted_by_hand("5", "Promoted"))["metadata"]["resourceVersion"] == "8"
    assert written.latest(promoted_by_hand("7", "Progressing"))["metadata"]["resourceVersion"] == "8"
    # a version after ours (the watch skipped 8): a person's promote, for the canary now in flight
    later = promoted_by_hand("9", "Progressing")
    assert written.latest(later) == later


def test_another_object_of_the_same_name_or_a_write_long_gone_is_not_preferred() -> None:
    clock = Clock()
    written = Written(clock=clock)
    written.wrote(body("7", "Progressing"))
    assert written.latest(body("3", "", uid="u2"))["metadata"]["uid"] == "u2"

    written.wrote(body("7", "Progressing"))
    clock.now += WRITE_VISIBLE_S + 1
    assert written.latest(body("5", "Pending"))["status"] == {"phase": "Pending"}


def test_children_are_read_from_kopfs_index_and_a_deleting_one_counts_as_gone() -> None:
    deployment = {"metadata": {"name": "digits-a"}, "status": {"readyReplicas": 1}}
    deleting = {"metadata": {"name": "digits-b", "deletionTimestamp": "2026-12-02T07:00:00Z"}}
    children = Children(deployments={("ml", "digits-a"): [deployment], ("ml", "digits-b"): [deleting]})

    assert children.deployment("ml", "digits-a") == deployment
    assert children.deployment("ml", "digits-b") is None
    assert children.deployment("ml", "digits-c") is None and children.service("ml", "digits-a") is None


def test_a_child_the_api_proved_gone_is_skipped_and_the_proof_is_bounded() -> None:
    """kopf keeps a ghost after a 410 relist; once the API proved its uid gone, the index's next
    body of that name counts, or none: never the ghost again."""
    ghost = {"metadata": {"name": "digits-a", "uid": "u1"}, "status": {"readyReplicas": 2}}
    live = {"metadata": {"name": "digits-a", "uid": "u2"}}
    gone = Gone()
    children = Children(
        deployments={("ml", "digits-a"): [ghost]}, services={("ml", "digits-a"): [ghost]}, gone=gone
    )
    assert children.uids(DEPLOYMENT, "ml", "digits-a") == {"u1"}

    gone.add(DEPLOYMENT, "ml", "digits-a", {"u1", ""})
    assert children.deployment("ml", "digits-a") is None
    assert children.service("ml", "digits-a") == ghost, "a Service's uid is proved apart"
    assert Children({("ml", "digits-a"): [live, ghost]}, gone=gone).deployment("ml", "digits-a") == live

    for index in range(GONE_KEPT):
        gone.add(SERVICE, "ml", f"other-{index}", {f"x{index}"})
    assert gone.of(DEPLOYMENT, "ml", "digits-a") == frozenset(), "the one proved longest ago goes first"
    gone.forget("ml", lambda name: name.startswith("other-"))
    assert not gone.of(SERVICE, "ml", "other-1")
