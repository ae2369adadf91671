"""The policy chain, in the order it runs: network rule → authentication → authorisation → handler.

``NetworkRuleMiddleware`` wraps the whole application. ``Policy.guard`` wraps each
route's endpoint with what it needs per method (Harbor's per-route chain): the route
tables in each room's ``routes`` show the requirement next to the path.

The management API (needs with a ``control`` action) is judged by a verified identity
only: Basic credentials of an admin, user or service principal (a password, or the null
GUID and a refresh token), or an identity token (``TokenService.issue_access``) whose
identity, enablement generation and credential still check out. Access tokens scoped to
repositories, repository-scoped tokens and anonymous callers never manage. The one exception is
``self_authenticated``: build triggers, authenticated by a task's trigger secret instead.

Failed sign-ins are throttled per client and per user name (``throttle.py``; credentials that
signed in recently from the same client are not counted) and counted for the audit log in memory: a client
without valid credentials causes no database write.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dockyard.access.network import NetworkRules, address_text, client_address, networks, parse_address
from dockyard.access.permissions import ANONYMOUS, ANONYMOUS_PULL, Need, Principal
from dockyard.access.services.audit import AuditService
from dockyard.access.services.authentication import Authenticator, TokenCaller
from dockyard.access.services.identities import NULL_GUID
from dockyard.access.services.settings import RegistrySettings, RegistrySettingsService
from dockyard.access.throttle import LoginThrottle
from dockyard.access.tokens import InvalidToken
from dockyard.asgi import error_response, run_sync
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.oci.names import is_valid_name

if TYPE_CHECKING:
    from dockyard.observability.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]
NeedFor = Need | Callable[[Request], Need] | None


#: Where a request's client address is kept once worked out (scope key).
CLIENT_IP = "dockyard.client_ip"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a principal (Basic auth or anonymous) or an access token's bearer."""

    principal: Principal | None = None
    token: TokenCaller | None = None

    @property
    def name(self) -> str:
        if self.token is not None:
            return self.token.name
        return self.principal.name if self.principal else ANONYMOUS.name

    @property
    def anonymous(self) -> bool:
        return self.token is None and (self.principal is None or self.principal.is_anonymous)

    def allows(self, need: Need, repository: str | None) -> bool:
        if self.token is not None:
            return need.control is None and need.satisfied_by_token(self.token.access, repository)
        return self.principal is not None and need.satisfied_by(self.principal.permissions, repository)


#: A check run after authorisation (rate limits, quotas): raises a RegistryError to refuse. The token
#: service calls the checks before it signs anyone in, with no caller and no need.
Check = Callable[[Request, Caller | None, Need | None], Awaitable[None]]


class Policy:
    """Authenticates requests and checks each route's needs."""

    def __init__(
        self,
        authenticator: Authenticator,
        settings: RegistrySettingsService,
        audit: AuditService,
        *,
        service: str,
        throttle: LoginThrottle,
        trusted_proxies: tuple[str, ...] = (),
        private_networks: tuple[str, ...] = (),
    ) -> None:
        self.authenticator = authenticator
        self.settings = settings
        self.audit = audit
        self.service = service
        self.throttle = throttle
        self.trusted_proxies = networks(trusted_proxies)
        self.private_networks = networks(private_networks)
        #: Registered by rooms when their routes are built (``add_check``); run in order.
        self.checks: list[Check] = []
        #: The app's Prometheus series when metrics are on (set by the app factory before routes).
        self.metrics: Metrics | None = None

    def add_check(self, check: Check) -> None:
        """Run ``check`` on every guarded request after authorisation, and on token requests."""
        self.checks.append(check)

    async def run_checks(self, request: Request, caller: Caller | None, need: Need | None) -> None:
        """The registered checks for this request (a RegistryError from one refuses it)."""
        for check in self.checks:
            await check(request, caller, need)

    # -- who is calling -----------------------------------------------------------------------

    def client_ip(self, scope: Scope) -> str | None:
        """The real client's address (``X-Forwarded-For`` read through trusted proxies), once per request."""
        if CLIENT_IP in scope:
            return scope[CLIENT_IP]
        peer = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        address = client_address(peer[0] if peer else None, forwarded, self.trusted_proxies)
        scope[CLIENT_IP] = ip = address_text(address) if address is not None else None
        return ip

    async def caller(self, request: Request) -> Caller:
        """The caller behind the Authorization header; 401 for credentials that do not check out."""
        cached = request.scope.get("dockyard.caller")
        if isinstance(cached, Caller):
            return cached
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if not header:
            caller = Caller(principal=ANONYMOUS_CALLER if self.settings.anonymous_pull() else None)
        elif scheme == "bearer":
            try:
                caller = Caller(token=self.authenticator.access_caller(value.strip()))
            except InvalidToken as exc:
                self.failed(request, "bearer", str(exc))
                raise self.challenge(request, None, error="invalid_token") from None
        elif scheme == "basic":
            caller = Caller(principal=await self.sign_in(request, *_basic(value)))
        else:
            raise self.challenge(request, None)
        request.scope["dockyard.caller"] = caller
        return caller

    async def sign_in(self, request: Request, username: str, password: str) -> Principal:
        """The principal of a user name and password (or the null GUID and a refresh token).

        429 while this client or user name has failed too often; 401 for wrong credentials.
        """
        client = self.client_ip(request.scope)
        counted_name = "" if username == NULL_GUID else username
        signed_in = self.throttle.signed_in
        admitted: list[bool] = []  # whether these credentials had signed in before, once admitted

        def admit() -> None:  # before the login cache and argon2: a cached login is throttled like any other
            known = bool(counted_name) and signed_in.recalls(client, username, password)
            self.start_attempt(client, counted_name, username, signed_in_before=known)
            admitted.append(known)

        principal = await run_sync(self.authenticator.login, username, password, admit=admit)
        if principal is None:
            if admitted and admitted[0]:
                signed_in.forget(client, username, password)  # renewed or disabled: a guess like any other
            self.failed(request, "basic", "wrong credentials", username)
            raise self.challenge(request, None, error="invalid_token")
        if admitted:
            self.throttle.succeeded(counted_name, client, signed_in_before=admitted[0])
            if counted_name:
                signed_in.remember(client, username, password)
        return principal

    def start_attempt(
        self, client: str | None, counted_name: str, username: str = "", *, signed_in_before: bool = False
    ) -> None:
        """Take this sign-in's place in the throttle, or 429 with Retry-After.

        ``signed_in_before``: these credentials signed in recently from this client: no count at all.
        """
        wait = self.throttle.attempt(counted_name, client, signed_in_before=signed_in_before)
        if wait:
            self.audit.count("login", "throttled", client_ip=client, name=username or None)
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                f"too many failed sign-ins from this client or for this user; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, request: Request, method: str, why: str, username: str | None = None) -> None:
        """Count a failed sign-in for the audit log (written in aggregate, never per request)."""
        self.audit.count(
            "login",
            "failure",
            client_ip=self.client_ip(request.scope),
            name=username,
            sample=f"{method}: {why}",
        )

    # -- what they may do ---------------------------------------------------------------------

    async def authorize(self, request: Request, need: Need | None, repository: str | None) -> Caller:
        """The caller, if allowed ``need`` on ``repository``; else 401 (who are you?) or 403 (not you)."""
        caller = await self.caller(request)
        if need is None:  # authentication only
            # Anonymous pull or not, a caller without credentials is asked for them: clients
            # (containers/image, docker) decide from GET /v2/ alone whether to sign in for a push.
            if caller.anonymous:
                raise self.challenge(request, None)
            return caller
        if need.control is not None:
            return await self._manager(request, caller, need)
        if caller.allows(need, repository):
            return caller
        if caller.anonymous:
            raise self.challenge(request, self._scope(need, repository))
        if caller.token is not None and need.control is None:
            raise self.challenge(request, self._scope(need, repository), error="insufficient_scope")
        raise RegistryError(ErrorCode.DENIED, "requested access to the resource is denied")

    async def _manager(self, request: Request, caller: Caller, need: Need) -> Caller:
        """The verified identity behind a management call, if its roles allow ``need`` now."""
        if caller.anonymous:
            raise self.challenge(request, None)
        principal = caller.principal
        if caller.token is not None:
            if not caller.token.is_identity_token:
                raise RegistryError(
                    ErrorCode.DENIED,
                    "an access token scoped to repositories cannot manage the registry; "
                    "use the identity's own credentials or an identity token",
                )
            principal = await run_sync(self.authenticator.identity_principal, caller.token)
            if principal is None:
                raise self.challenge(request, None, error="invalid_token")
        if principal is not None and need.satisfied_by(principal.permissions, None):
            request.scope["dockyard.manager"] = principal
            return Caller(principal=principal)
        raise RegistryError(ErrorCode.DENIED, "requested access to the resource is denied")

    @staticmethod
    def manager(request: Request) -> Principal:
        """The verified identity a management route was authorised for (after ``guard``)."""
        principal = request.scope.get("dockyard.manager")
        assert isinstance(principal, Principal), "only for routes guarded by a control need"
        return principal

    @staticmethod
    def _scope(need: Need, repository: str | None) -> str | None:
        if need.control is not None:
            return None
        if need.catalog:
            return "registry:catalog:*"
        return f"repository:{repository}:{need.challenge}"

    def realm(self, request: Request) -> str:
        """The token service's URL as clients see it (X-Forwarded-Proto and -Host from trusted proxies)."""
        scheme, host = request.url.scheme, request.url.netloc
        peer = request.scope.get("client")
        address = parse_address(peer[0]) if peer else None
        if address is not None and any(
            address in net for net in self.trusted_proxies if net.version == address.version
        ):
            proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
            forwarded_host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
            if forwarded_host:
                host = forwarded_host
        return f"{scheme}://{host}/oauth2/token"

    def challenge(self, request: Request, scope: str | None, *, error: str | None = None) -> RegistryError:
        """401 with a Docker/ACR token challenge (quoted values, no spaces after commas)."""
        parts = [f'realm="{self.realm(request)}"', f'service="{self.service}"']
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if error is not None:
            parts.append(f'error="{error}"')
        detail = None
        if scope is not None:
            kind, _, rest = scope.partition(":")
            name, _, action = rest.rpartition(":")
            detail = [{"Type": kind, "Name": name, "Action": action}]
        return RegistryError(
            ErrorCode.UNAUTHORIZED,
            "authentication required",
            detail=detail,
            headers={"WWW-Authenticate": "Bearer " + ",".join(parts)},
        )

    def guard(
        self, endpoint: Endpoint, needs: Mapping[str, NeedFor], repository_param: str = "name"
    ) -> Endpoint:
        """Wrap ``endpoint`` so that each method's need is checked first (HEAD uses GET's)."""

        async def guarded(request: Request) -> Response:
            need = needs[request.method] if request.method in needs else needs.get("GET")
            if callable(need) and not isinstance(need, Need):
                need = need(request)
            if _has_nul(request):  # no name has one, and PostgreSQL refuses it in any query
                raise RegistryError(ErrorCode.INVALID_REQUEST, "NUL characters are not allowed in a request")
            repository = request.path_params.get(repository_param)
            if repository is not None and not is_valid_name(repository):
                raise RegistryError(ErrorCode.NAME_INVALID, f"invalid repository name {repository[:300]!r}")
            caller = await self.authorize(request, need, repository)
            if self.checks:
                await self.run_checks(request, caller, need)
            return await endpoint(request)

        guarded.__name__ = getattr(endpoint, "__name__", "guarded")
        return guarded

    def self_authenticated(self, endpoint: Endpoint) -> Endpoint:
        """The one exception to ``guard`` under ``/api/v1``: a route that takes no registry credentials
        and authenticates each request itself (build triggers: a task's trigger secret, checked on the
        raw body before anything is written). The registered checks run as for a sign-in (no caller)."""

        async def open_route(request: Request) -> Response:
            if _has_nul(request):
                raise RegistryError(ErrorCode.INVALID_REQUEST, "NUL characters are not allowed in a request")
            if self.checks:
                await self.run_checks(request, None, None)
            return await endpoint(request)

        open_route.__name__ = getattr(endpoint, "__name__", "open_route")
        return open_route


ANONYMOUS_CALLER = Principal(ANONYMOUS.name, ANONYMOUS.kind, ANONYMOUS_PULL)


def _has_nul(request: Request) -> bool:
    """A NUL in the (decoded) path or in the query string, raw or percent-encoded."""
    query = request.scope["query_string"]
    return "\x00" in request.scope["path"] or b"\x00" in query or b"%00" in query


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    username, _, password = decoded.partition(":")
    return username, password


class NetworkRuleMiddleware:
    """Refuses clients the registry's network rules do not allow, before anything else runs."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy
        self._rules: tuple[RegistrySettings, NetworkRules] | None = None

    def _current_rules(self) -> NetworkRules | None:
        """The rules in force, or None when every client is allowed (the common case, checked cheaply)."""
        current = self.policy.settings.get()
        if current.public_network_access and current.default_action == "Allow":
            return None
        if self._rules is None or self._rules[0] is not current:
            rules = NetworkRules(
                current.public_network_access,
                current.default_action,
                networks(current.ip_rules),
                self.policy.private_networks,
            )
            self._rules = (current, rules)
        return self._rules[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            rules = self._current_rules()
            if rules is not None:
                peer = self.policy.client_ip(scope)
                if not rules.allows(parse_address(peer) if peer else None):
                    refused = RegistryError(
                        ErrorCode.DENIED, f"client with IP '{peer}' is not allowed access"
                    )
                    await error_response(refused, head=scope["method"] == "HEAD")(scope, receive, send)
                    return
        await self.app(scope, receive, send)
