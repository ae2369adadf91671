"""The token service: Docker's GET and OAuth2's POST /oauth2/token, and ACR's POST /oauth2/exchange."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.permissions import Principal, grant_scope, parse_scopes
from dockyard.access.policy import ANONYMOUS_CALLER, Caller, Policy
from dockyard.access.services import AccessServices
from dockyard.access.services.identities import TASK
from dockyard.access.tokens import ACCESS_GRANT, REFRESH_GRANT, InvalidToken, IssuedToken
from dockyard.asgi import read_body, run_sync
from dockyard.oci.errors import ErrorCode, RegistryError

MAX_FORM = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _unauthorized(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNAUTHORIZED, message)


def _may_hold_refresh_token(principal: Principal) -> bool:
    """Whether a refresh token may be issued to ``principal``: not to anonymous callers, nor to a build
    run (``system:tasks``), whose credential must end with the run; a token derived from it would not."""
    return not principal.is_anonymous and principal.kind != TASK


class OAuthRoutes:
    """Issues access and refresh tokens."""

    def __init__(self, access: AccessServices, policy: Policy) -> None:
        self.access = access
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/oauth2/token", self.token, methods=["GET", "POST"]),
            Route("/oauth2/exchange", self.exchange, methods=["POST"]),
        ]

    async def _form(self, request: Request) -> dict[str, list[str]]:
        body = await read_body(request, MAX_FORM)
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=False)
        except UnicodeDecodeError:
            raise RegistryError(ErrorCode.INVALID_REQUEST, "the form is not UTF-8") from None

    async def token(self, request: Request) -> Response:
        if self.policy.checks:
            await self.policy.run_checks(request, None, None)
        if request.method == "GET":
            principal = await self._basic_or_anonymous(request)
            scopes = request.query_params.getlist("scope")
            offline = request.query_params.get("offline_token", "").lower() == "true"
            return await self._grant(
                request, principal, scopes, refresh=offline and _may_hold_refresh_token(principal)
            )
        form = await self._form(request)
        grant = (form.get("grant_type") or [""])[0]
        scopes = form.get("scope", [])
        if grant == "refresh_token":
            token = (form.get("refresh_token") or [""])[0]
            principal = await self._refresh_principal(request, token)
            return await self._grant(request, principal, scopes, refresh=False)
        if grant == "password":
            username = (form.get("username") or [""])[0]
            password = (form.get("password") or [""])[0]
            if username or password:
                principal = await self.policy.sign_in(request, username, password)
            else:
                principal = await self._basic_or_anonymous(request)
            offline = (form.get("access_type") or [""])[0] == "offline"
            return await self._grant(
                request, principal, scopes, refresh=offline and _may_hold_refresh_token(principal)
            )
        raise RegistryError(ErrorCode.UNSUPPORTED, f"unsupported grant_type {grant!r}", status=400)

    async def _refresh_principal(self, request: Request, token: str) -> Principal:
        """The identity a refresh token stands for; 429 after too many failures, 401 if invalid."""
        client = self.policy.client_ip(request.scope)
        self.policy.start_attempt(client, "")
        principal = await run_sync(self.access.authenticator.refresh_principal, token)
        if principal is None:
            self.policy.failed(request, "refresh_token", "invalid, expired or revoked refresh token")
            raise _unauthorized("invalid or expired refresh token")
        self.policy.throttle.succeeded("", client)
        return principal

    async def _basic_or_anonymous(self, request: Request) -> Principal:
        """The Basic-authenticated principal, or anonymous when anonymous pull is on; else 401."""
        if request.headers.get("authorization", "").lower().startswith("basic "):
            caller = await self.policy.caller(request)
            assert caller.principal is not None
            return caller.principal
        if self.access.settings.anonymous_pull():
            return ANONYMOUS_CALLER
        raise self.policy.challenge(request, None)

    async def _admit(self, request: Request, principal: Principal) -> None:
        """The checks for a signed-in token request (the registry's token rate): strangers, refused
        with 401 before this, never draw from it."""
        if self.policy.checks:
            await self.policy.run_checks(request, Caller(principal=principal), None)

    async def _grant(
        self, request: Request, principal: Principal, scopes: list[str], *, refresh: bool
    ) -> Response:
        await self._admit(request, principal)
        access: list[dict[str, Any]] = []
        for scope in parse_scopes(scopes):
            actions = grant_scope(principal.permissions, scope)
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        tokens = self.access.tokens
        # Asked for with the identity's own credentials and no scope: it stands for the identity.
        identity = not any(s.strip() for s in scopes) and not principal.is_anonymous
        issued = await run_sync(tokens.issue_access, principal, access, identity=identity)
        body: dict[str, Any] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scope": " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access),
        }
        if refresh:
            body["refresh_token"] = (await self._refresh_token(request, principal)).token
        if not principal.is_anonymous:
            self.access.audit.count(
                "token",
                "success",
                principal=principal.name,
                client_ip=self.policy.client_ip(request.scope),
                sample=body["scope"] or None,
            )
        return JSONResponse(body, headers=NO_STORE)

    async def _refresh_token(self, request: Request, principal: Principal) -> IssuedToken:
        try:
            return await run_sync(self.access.tokens.issue_refresh, principal)
        except InvalidToken as exc:
            self.policy.failed(request, "exchange", str(exc), principal.name)
            raise _unauthorized(str(exc)) from None

    async def exchange(self, request: Request) -> Response:
        """ACR's exchange: an identity token (or a refresh token) for a refresh token.

        ``grant_type=access_token`` takes only an identity token — an access token asked for
        with the identity's own credentials and no scope, the stand-in for ACR's AAD token —
        never one scoped to repositories (that would widen it). ``refresh_token`` and
        ``access_token_refresh_token`` take a refresh token. The new refresh token keeps the
        old one's sign-in time, so a chain of exchanges ends ``refresh_chain_seconds`` after it.
        A build run's credential (and tokens asked for with it) is refused: it must end with the run.
        """
        if self.policy.checks:
            await self.policy.run_checks(request, None, None)
        form = await self._form(request)
        grant = (form.get("grant_type") or [""])[0]
        if grant not in ("access_token", "access_token_refresh_token", "refresh_token"):
            raise RegistryError(ErrorCode.UNSUPPORTED, f"unsupported grant_type {grant!r}", status=400)
        if grant == "access_token":
            presented, kind = (form.get("access_token") or [""])[0], ACCESS_GRANT
        else:
            presented = (form.get("refresh_token") or form.get("access_token") or [""])[0]
            kind = REFRESH_GRANT
        principal = await run_sync(self._exchangeable, presented, kind)
        if principal is None:
            self.policy.failed(request, "exchange", f"{grant}: not an exchangeable token")
            raise _unauthorized(
                "the token cannot be exchanged: only an identity token (asked for with the identity's "
                "own credentials and no scope) or a refresh token, valid and not revoked"
            )
        if not _may_hold_refresh_token(principal):
            self.policy.failed(request, "exchange", f"{grant}: a build run's credential", principal.name)
            raise _unauthorized("a build run's credential cannot be exchanged: it ends with the run")
        await self._admit(request, principal)
        issued = await self._refresh_token(request, principal)
        self.access.audit.count(
            "exchange", "success", principal=principal.name, client_ip=self.policy.client_ip(request.scope)
        )
        return JSONResponse({"refresh_token": issued.token}, headers=NO_STORE)

    def _exchangeable(self, token: str, grant: str) -> Principal | None:
        authenticator = self.access.authenticator
        try:
            if grant == ACCESS_GRANT:
                return authenticator.identity_principal(authenticator.access_caller(token))
            return authenticator.principal_for(self.access.tokens.verify(token, grant))
        except InvalidToken:
            return None
