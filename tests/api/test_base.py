"""The version check, error shape and routing fallbacks."""

from tests.support.registry import error_codes


def test_version_check_answers_200_with_api_version_header(client):
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.json() == {}


def test_invalid_repository_name_is_name_invalid(client):
    for name in ["UpperCase", "a//b", "-leading", "trailing-", "a..b", "x" * 256]:
        response = client.get(f"/v2/{name}/tags/list")
        assert response.status_code == 400, name
        assert error_codes(response) == ["NAME_INVALID"], name


def test_nested_names_follow_the_spec_grammar(client):
    for name in ["a", "team/app/api", "a.b_c__d---e", "x" * 255]:
        response = client.get(f"/v2/{name}/tags/list")
        assert response.status_code == 404, name
        assert error_codes(response) == ["NAME_UNKNOWN"], name


def test_unknown_endpoint_is_json_404(client):
    response = client.get("/v2/foo/nonsense")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_wrong_method_is_unsupported_405(client):
    response = client.post("/v2/foo/manifests/latest")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]


def test_head_errors_have_no_body(client):
    response = client.head("/v2/foo/manifests/latest")
    assert response.status_code == 404
    assert response.content == b""
