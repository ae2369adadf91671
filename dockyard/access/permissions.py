"""What each role and scope map allows, how Docker token scopes map onto it, and what routes need.

Pure code: no database, no HTTP. Data actions are ACR's
(``content/read|write|delete``, ``metadata/read|write``); control-plane actions cover
the management API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dockyard.oci.names import is_valid_name

CONTENT_READ = "content/read"
CONTENT_WRITE = "content/write"
CONTENT_DELETE = "content/delete"
METADATA_READ = "metadata/read"
METADATA_WRITE = "metadata/write"
DATA_ACTIONS = frozenset({CONTENT_READ, CONTENT_WRITE, CONTENT_DELETE, METADATA_READ, METADATA_WRITE})

REGISTRY_READ = "registry/read"  # see settings, identities, tokens, scope maps, audit
REGISTRY_WRITE = "registry/write"  # change them
ROLES_WRITE = "roles/write"  # assign roles
CONTROL_ACTIONS = frozenset({REGISTRY_READ, REGISTRY_WRITE, ROLES_WRITE})

REGISTRY_SCOPE = "registry"


@dataclass(frozen=True)
class Role:
    data: frozenset[str]
    control: frozenset[str] = frozenset()


ROLES: dict[str, Role] = {
    "AcrPull": Role(frozenset({CONTENT_READ, METADATA_READ})),
    "AcrPush": Role(frozenset({CONTENT_READ, CONTENT_WRITE, METADATA_READ, METADATA_WRITE})),
    "AcrDelete": Role(frozenset({CONTENT_DELETE, METADATA_READ, METADATA_WRITE})),
    "AcrImageSigner": Role(frozenset({CONTENT_READ, CONTENT_WRITE, METADATA_READ})),
    "Reader": Role(frozenset({CONTENT_READ, METADATA_READ}), frozenset({REGISTRY_READ})),
    "Contributor": Role(DATA_ACTIONS, frozenset({REGISTRY_READ, REGISTRY_WRITE})),
    "Owner": Role(DATA_ACTIONS, CONTROL_ACTIONS),
}

#: Built-in scope maps every registry has, as ACR names them.
SYSTEM_SCOPE_MAPS: dict[str, frozenset[str]] = {
    "_repositories_admin": DATA_ACTIONS,
    "_repositories_pull": frozenset({CONTENT_READ, METADATA_READ}),
    "_repositories_push": frozenset({CONTENT_READ, CONTENT_WRITE, METADATA_READ}),
}

#: Docker token-scope actions and the data actions each stands for.
DOCKER_ACTIONS: dict[str, frozenset[str]] = {
    "pull": frozenset({CONTENT_READ}),
    "push": frozenset({CONTENT_WRITE}),
    "delete": frozenset({CONTENT_DELETE}),
    "metadata_read": frozenset({METADATA_READ}),
    "metadata_write": frozenset({METADATA_WRITE}),
}


def valid_pattern(pattern: str) -> bool:
    """A repository name, a ``prefix/*`` wildcard (one ``*``, at the end) or ``*`` for every repository."""
    if pattern == "*":
        return True
    if pattern.endswith("/*"):
        return "*" not in pattern[:-2] and is_valid_name(pattern[:-2])
    return is_valid_name(pattern)


def matches(pattern: str, repository: str) -> bool:
    """Whether a repository pattern covers ``repository`` (also repositories that do not exist yet)."""
    if pattern == "*":
        return True
    if pattern.endswith("/*"):
        return repository.startswith(pattern[:-1])
    return pattern == repository


def role_scope_pattern(scope: str) -> str:
    """The repository pattern of a role assignment scope (``registry`` → ``*``)."""
    if scope == REGISTRY_SCOPE:
        return "*"
    return scope.removeprefix("repository:")


def valid_role_scope(scope: str) -> bool:
    return scope == REGISTRY_SCOPE or (scope.startswith("repository:") and valid_pattern(scope[11:]))


@dataclass(frozen=True)
class Grant:
    """Data actions on the repositories a pattern covers."""

    pattern: str
    actions: frozenset[str]


@dataclass(frozen=True)
class Permissions:
    """Everything one principal may do; rules are additive."""

    grants: tuple[Grant, ...] = ()
    control: frozenset[str] = frozenset()
    #: Registry-wide read: may list the catalog (never for repository-scoped tokens).
    catalog: bool = False

    def actions_on(self, repository: str) -> frozenset[str]:
        allowed: set[str] = set()
        for grant in self.grants:
            if matches(grant.pattern, repository):
                allowed |= grant.actions
        return frozenset(allowed)

    def allows(self, repository: str, action: str) -> bool:
        return action in self.actions_on(repository)

    @property
    def is_empty(self) -> bool:
        return not self.grants and not self.control and not self.catalog


EVERYTHING = Permissions(grants=(Grant("*", DATA_ACTIONS),), control=CONTROL_ACTIONS, catalog=True)
ANONYMOUS_PULL = Permissions(grants=(Grant("*", frozenset({CONTENT_READ, METADATA_READ})),))


def permissions_from_roles(assignments: list[tuple[str, str]]) -> Permissions:
    """Permissions of (role, scope) assignments."""
    grants = []
    control: set[str] = set()
    catalog = False
    for role_name, scope in assignments:
        role = ROLES.get(role_name)
        if role is None or not valid_role_scope(scope):
            continue
        grants.append(Grant(role_scope_pattern(scope), role.data))
        if scope == REGISTRY_SCOPE:
            control |= role.control
            catalog = catalog or METADATA_READ in role.data
    return Permissions(tuple(grants), frozenset(control), catalog)


def permissions_from_scope_map(rules: list[tuple[str, str]]) -> Permissions:
    """Permissions of a token's scope map: (repository pattern, action) rules, no control plane."""
    by_pattern: dict[str, set[str]] = {}
    for pattern, action in rules:
        if action in DATA_ACTIONS and valid_pattern(pattern):
            by_pattern.setdefault(pattern, set()).add(action)
    return Permissions(tuple(Grant(p, frozenset(a)) for p, a in sorted(by_pattern.items())))


@dataclass(frozen=True)
class ScopeRequest:
    """One requested scope: ``repository:team/app:pull,push`` or ``registry:catalog:*``."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: list[str]) -> list[ScopeRequest]:
    """Parse space- or repeat-separated scope strings; malformed entries are dropped (grant nothing)."""
    requests = []
    for value in values:
        for item in value.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name and actions:
                requests.append(ScopeRequest(kind, name, tuple(a for a in actions.split(",") if a)))
    return requests


def grant_scope(permissions: Permissions, request: ScopeRequest) -> list[str]:
    """The Docker actions of ``request`` that ``permissions`` allow (possibly none)."""
    if request.type == "registry":
        return ["*"] if request.name == "catalog" and permissions.catalog and "*" in request.actions else []
    if request.type != "repository" or not is_valid_name(request.name):
        return []
    allowed = permissions.actions_on(request.name)
    granted = []
    for action in request.actions:
        if action == "*":
            if allowed >= DATA_ACTIONS:
                granted.append("*")
        elif action in DOCKER_ACTIONS and DOCKER_ACTIONS[action] <= allowed:
            granted.append(action)
    return granted


@dataclass(frozen=True)
class Need:
    """What a route requires: any one of ``data`` actions (or of ``docker`` token actions)."""

    data: frozenset[str]
    docker: frozenset[str]
    #: The actions to name in a 401 challenge's scope.
    challenge: str
    catalog: bool = False
    control: str | None = None

    def satisfied_by_token(
        self, access: dict[tuple[str, str], frozenset[str]], repository: str | None
    ) -> bool:
        """Whether an access token's ``access`` claims (by (type, name)) cover this need."""
        if self.catalog:
            return bool(access.get(("registry", "catalog"), frozenset()) & {"*"})
        granted = access.get(("repository", repository or ""), frozenset())
        return "*" in granted or bool(granted & self.docker)

    def satisfied_by(self, permissions: Permissions, repository: str | None) -> bool:
        if self.control is not None:
            return self.control in permissions.control
        if self.catalog:
            return permissions.catalog
        return bool(permissions.actions_on(repository or "") & self.data)


PULL = Need(frozenset({CONTENT_READ}), frozenset({"pull"}), "pull")
LIST_TAGS = Need(frozenset({CONTENT_READ, METADATA_READ}), frozenset({"pull", "metadata_read"}), "pull")
READ_METADATA = Need(frozenset({METADATA_READ}), frozenset({"metadata_read"}), "metadata_read")
PUSH = Need(frozenset({CONTENT_WRITE}), frozenset({"push"}), "pull,push")
DELETE = Need(frozenset({CONTENT_DELETE}), frozenset({"delete"}), "delete")
UNTAG = Need(frozenset({CONTENT_DELETE, METADATA_WRITE}), frozenset({"delete", "metadata_write"}), "delete")
WRITE_METADATA = Need(frozenset({METADATA_WRITE}), frozenset({"metadata_write"}), "metadata_write")
CATALOG = Need(frozenset(), frozenset({"*"}), "*", catalog=True)
MANAGE_READ = Need(frozenset(), frozenset(), "", control=REGISTRY_READ)
MANAGE_WRITE = Need(frozenset(), frozenset(), "", control=REGISTRY_WRITE)
MANAGE_ROLES = Need(frozenset(), frozenset(), "", control=ROLES_WRITE)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    name: str
    kind: str  # admin | user | service_principal | token | anonymous
    permissions: Permissions = field(default_factory=Permissions)
    #: The identity's row and enablement generation, and the stamps (``name@created``) of its valid
    #: credentials. Refresh tokens carry all three plus the stamp they came from, so recreating the
    #: identity, disabling it, or renewing that credential revokes them.
    identity_id: int | None = None
    token_version: int = 0
    credential_stamps: frozenset[str] = frozenset()
    #: The stamp of the credential this caller signed in with, when known.
    credential: str | None = None
    #: When that credential was last checked (Unix time): a refresh token carries it on, so a chain of
    #: refresh tokens ends ``refresh_chain_seconds`` after the last real sign-in.
    auth_time: int | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Principal("anonymous", "anonymous")
