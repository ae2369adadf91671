"""SegmentRouter: the same route is found as with Starlette's router, by trying fewer routes."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match, Route
from starlette.testclient import TestClient
from starlette.types import Scope

from dockyard.app import SegmentRouter


def _answer(text: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(f"{text} {dict(request.path_params)}")

    return endpoint


ROUTES = [
    Route("/v2/", _answer("base")),
    Route("/v2/{name:path}/manifests/{reference}", _answer("manifest"), methods=["GET", "PUT"]),
    Route("/api/v1/things/{id}", _answer("thing")),
    Route("/{anything:path}/special", _answer("wildcard")),
    Route("/v2/{name:path}/tags/list", _answer("tags")),
]


def _client() -> TestClient:
    app = Starlette()
    app.router = SegmentRouter(ROUTES)
    return TestClient(app)


def test_routes_match_as_with_starlette() -> None:
    client = _client()
    assert client.get("/v2/").text == "base {}"
    assert client.get("/v2/a/b/manifests/latest").text == "manifest {'name': 'a/b', 'reference': 'latest'}"
    assert client.get("/api/v1/things/7").text == "thing {'id': '7'}"
    assert client.get("/v2/x/tags/list").text == "tags {'name': 'x'}"


def test_a_route_with_a_parameter_first_is_tried_for_every_path() -> None:
    client = _client()
    assert client.get("/v2/x/special").text == "wildcard {'anything': 'v2/x'}"
    assert client.get("/other/special").text == "wildcard {'anything': 'other'}"


def test_unmatched_paths_and_methods_answer_as_starlette_does() -> None:
    client = _client()
    assert client.delete("/v2/a/manifests/latest").status_code == 405
    assert client.get("/v2/a/nothing").status_code == 404
    assert client.get("/nowhere").status_code == 404
    redirected = client.get("/v2", follow_redirects=False)
    assert redirected.status_code == 307
    assert redirected.headers["location"].endswith("/v2/")


class CountingRoute(Route):
    tried = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        CountingRoute.tried += 1
        return super().matches(scope)


def test_routes_under_another_first_segment_are_not_tried() -> None:
    app = Starlette()
    app.router = SegmentRouter([CountingRoute("/api/v1/things", _answer("api")), *ROUTES])
    client = TestClient(app)
    CountingRoute.tried = 0
    assert client.get("/v2/a/manifests/latest").status_code == 200
    assert CountingRoute.tried == 0
    assert client.get("/api/v1/things").text == "api {}"
    assert CountingRoute.tried == 1
