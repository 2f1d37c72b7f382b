"""InferRoute.match: which requests take the bare inference path, with their path parameters, however
many paths came before (the matches of recent paths are remembered, and shared)."""

from __future__ import annotations

from typing import Any

import pytest

from quantship.server.byte_budget import ByteBudget
from quantship.server.infer_route import MATCHED_PATHS, BodyLimits, InferRoute

PATHS = ["/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"]


def _route() -> InferRoute:
    return InferRoute(None, None, BodyLimits(1024, 1.0), PATHS, ByteBudget(1024))  # type: ignore[arg-type]


def _scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path}


def test_paths_match_with_their_parameters_past_the_remembered_ones() -> None:
    route = _route()
    for _ in range(2):  # the second time round, the first paths were forgotten long ago
        for n in range(MATCHED_PATHS * 2):
            found = route.match(_scope(f"/v2/models/m{n}/infer"))
            assert found is not None and dict(found) == {"model_name": f"m{n}"}
        found = route.match(_scope("/v2/models/m/versions/7/infer"))
        assert found is not None and dict(found) == {"model_name": "m", "model_version": "7"}


@pytest.mark.parametrize(
    "scope",
    [_scope("/v2/models/m/infer", "GET"), _scope("/v2/models/m/feedback"), _scope("/v2/models/m/infer/x")],
    ids=["GET", "another route", "a longer path"],
)
def test_other_requests_are_left_to_fastapi(scope: dict[str, Any]) -> None:
    assert _route().match(scope) is None


def test_the_parameters_a_path_shares_cannot_be_changed_by_one_request() -> None:
    route = _route()
    found = route.match(_scope("/v2/models/m/infer"))
    assert found is not None
    with pytest.raises(TypeError):
        found["model_name"] = "other"  # type: ignore[index]
    assert route.match(_scope("/v2/models/m/infer")) == {"model_name": "m"}
