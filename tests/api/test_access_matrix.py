"""Every role and scope map against every kind of endpoint: a matrix, not a sample.

The expected table is written out by hand from ACR's role definitions (acr.md §2d, §2e);
it is not derived from the code under test. An endpoint counts as allowed when the
answer is neither 401 nor 403.
"""

import pytest

from tests.support.auth import ADMIN, basic
from tests.support.images import make_artifact, make_image, sha256
from tests.support.registry import push_blob, push_image

# (label, method, path template) — {repo} is the identity's own repository, {digest}/{blob}/{sub} its content.
ENDPOINTS = [
    ("pull manifest", "GET", "/v2/{repo}/manifests/v1"),
    ("head manifest", "HEAD", "/v2/{repo}/manifests/v1"),
    ("pull blob", "GET", "/v2/{repo}/blobs/{blob}"),
    ("referrers", "GET", "/v2/{repo}/referrers/{digest}"),
    ("tags list", "GET", "/v2/{repo}/tags/list"),
    ("acr repository", "GET", "/acr/v1/{repo}"),
    ("acr tags", "GET", "/acr/v1/{repo}/_tags"),
    ("acr manifests", "GET", "/acr/v1/{repo}/_manifests"),
    ("catalog", "GET", "/v2/_catalog"),
    ("acr catalog", "GET", "/acr/v1/_catalog"),
    ("start upload", "POST", "/v2/{repo}/blobs/uploads/"),
    ("push manifest", "PUT", "/v2/{repo}/manifests/v2"),
    ("registry settings", "GET", "/api/v1/registry"),
    ("list tokens", "GET", "/api/v1/tokens"),
    ("create scope map", "POST", "/api/v1/scope-maps"),
    ("assign role", "POST", "/api/v1/role-assignments"),
    # destructive ones last, in this order
    ("untag", "DELETE", "/v2/{repo}/manifests/v1"),
    ("delete referrer", "DELETE", "/v2/{repo}/manifests/{sub}"),
    ("delete blob", "DELETE", "/v2/{repo}/blobs/{loose}"),
    ("delete repository", "DELETE", "/acr/v1/{repo}"),
]
READ = {"pull manifest", "head manifest", "pull blob", "referrers", "tags list"}
METADATA = {"tags list", "acr repository", "acr tags", "acr manifests"}
CATALOG = {"catalog", "acr catalog"}
PUSH = {"start upload", "push manifest"}
DELETE = {"delete referrer", "delete blob", "delete repository", "untag"}
UNTAG = {"untag"}
MANAGE_READ = {"registry settings", "list tokens"}
MANAGE_WRITE = {"create scope map"}
ROLES_WRITE = {"assign role"}
ALL_DATA = READ | METADATA | PUSH | DELETE

EXPECTED = {
    "role AcrPull": READ | METADATA | CATALOG,
    "role AcrPush": READ | METADATA | CATALOG | PUSH | UNTAG,
    "role AcrDelete": METADATA | CATALOG | DELETE,
    "role AcrImageSigner": READ | METADATA | CATALOG | PUSH,
    "role Reader": READ | METADATA | CATALOG | MANAGE_READ,
    "role Contributor": ALL_DATA | CATALOG | MANAGE_READ | MANAGE_WRITE,
    "role Owner": ALL_DATA | CATALOG | MANAGE_READ | MANAGE_WRITE | ROLES_WRITE,
    "repo-scoped AcrPush": READ | METADATA | PUSH | UNTAG,
    "prefix-scoped AcrPull": READ | METADATA,
    "other-repo AcrPush": set(),
    "token _repositories_pull": READ | METADATA,
    "token _repositories_push": READ | METADATA | PUSH,
    "token _repositories_admin": ALL_DATA,
    "token content/read only": READ,
    "token metadata/read only": METADATA,
    "token content/delete only": DELETE,
    "token metadata/write only": UNTAG,
    "admin": ALL_DATA | CATALOG | MANAGE_READ | MANAGE_WRITE | ROLES_WRITE,
    "no credentials": set(),
}


def _identity(client, label: str, repo: str) -> dict[str, str]:
    """Create the identity a row of the matrix is about; return its Authorization header."""
    if label == "admin":
        return ADMIN
    if label == "no credentials":
        return {}
    name = "id-" + "".join(c if c.isalnum() else "-" for c in label)
    if label.startswith("token "):
        spec = label.removeprefix("token ")
        scope_map = spec
        if not spec.startswith("_"):
            scope_map = "map-" + name
            action = spec.removesuffix(" only")
            response = client.post(
                "/api/v1/scope-maps", json={"name": scope_map, "actions": {repo: [action]}}
            )
            assert response.status_code == 201, response.text
        created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": scope_map})
        assert created.status_code == 201, created.text
        return basic(name, created.json()["credentials"][0]["value"])
    created = client.post("/api/v1/users", json={"name": name})
    assert created.status_code == 201, created.text
    secret = created.json()["credentials"][0]["value"]
    kind, _, role = label.partition(" ")
    scope = {
        "role": "registry",
        "repo-scoped": f"repository:{repo}",
        "prefix-scoped": f"repository:{repo.rsplit('/', 1)[0]}/*",
        "other-repo": "repository:somewhere/else",
    }[kind]
    assigned = client.post("/api/v1/role-assignments", json={"assignee": name, "role": role, "scope": scope})
    assert assigned.status_code == 201, assigned.text
    return basic(name, secret)


@pytest.mark.parametrize("label", list(EXPECTED))
def test_permission_matrix(client, anonymous, label):
    repo = "matrix/" + "".join(c if c.isalnum() else "-" for c in label.lower())
    image = make_image("matrix")
    push_image(client, repo, image, "v1")
    referrer = make_artifact("application/vnd.example.sig", b"sig", subject=image.descriptor())
    push_image(client, repo, referrer)
    loose = push_blob(client, repo, b"a blob no manifest uses")
    headers = _identity(client, label, repo)
    values = {
        "repo": repo,
        "digest": image.digest,
        "blob": image.layers[0].digest,
        "sub": referrer.digest,
        "loose": loose,
    }
    allowed = set()
    for name, method, template in ENDPOINTS:
        kwargs = {}
        if name == "push manifest":
            kwargs = {"content": image.manifest, "headers": {**headers, "Content-Type": image.media_type}}
        elif name == "create scope map":
            kwargs = {
                "json": {"name": f"made-by-{abs(hash(label))}", "actions": {"x": ["content/read"]}},
                "headers": headers,
            }
        elif name == "assign role":
            kwargs = {"json": {"assignee": "nobody", "role": "AcrPull"}, "headers": headers}
        else:
            kwargs = {"headers": headers}
        response = anonymous.request(method, template.format(**values), **kwargs)
        assert response.status_code != 500, (name, response.text)
        if response.status_code not in (401, 403):
            allowed.add(name)
    assert allowed == EXPECTED[label]


def test_unknown_repository_is_not_revealed_to_the_unauthorised(client, anonymous):
    created = client.post("/api/v1/users", json={"name": "nosy"}).json()
    headers = basic("nosy", created["credentials"][0]["value"])
    for path in ("/v2/secret/project/tags/list", f"/v2/secret/project/manifests/{sha256(b'x')}"):
        assert anonymous.get(path, headers=headers).status_code == 403
