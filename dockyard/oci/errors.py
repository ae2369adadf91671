"""The OCI distribution-spec error codes and the exception that carries them."""

from __future__ import annotations

import enum
import json
from typing import Any


class ErrorCode(enum.Enum):
    """Each spec error code with the HTTP status Dockyard answers it with by default."""

    BLOB_UNKNOWN = ("blob unknown to registry", 404)
    BLOB_UPLOAD_INVALID = ("blob upload invalid", 400)
    BLOB_UPLOAD_UNKNOWN = ("blob upload unknown to registry", 404)
    DIGEST_INVALID = ("provided digest did not match uploaded content", 400)
    MANIFEST_BLOB_UNKNOWN = ("manifest references a manifest or blob unknown to registry", 400)
    MANIFEST_INVALID = ("manifest invalid", 400)
    MANIFEST_UNKNOWN = ("manifest unknown to registry", 404)
    NAME_INVALID = ("invalid repository name", 400)
    NAME_UNKNOWN = ("repository name not known to registry", 404)
    SIZE_INVALID = ("provided length did not match content length", 400)
    UNAUTHORIZED = ("authentication required", 401)
    DENIED = ("requested access to the resource is denied", 403)
    UNSUPPORTED = ("the operation is unsupported", 405)
    TOOMANYREQUESTS = ("too many requests", 429)
    #: Not a spec code: what Distribution answers (and clients treat) a server fault with.
    UNKNOWN = ("unknown error", 500)

    # The management API's codes (not in the distribution spec; same JSON shape).
    INVALID_REQUEST = ("the request is invalid", 400)
    NOT_FOUND = ("no such resource", 404)
    ALREADY_EXISTS = ("the resource already exists", 409)
    LIMIT_EXCEEDED = ("a limit of this registry would be exceeded", 409)

    @property
    def default_message(self) -> str:
        return self.value[0]

    @property
    def default_status(self) -> int:
        return self.value[1]


class RegistryError(Exception):
    """A failure the client caused or must react to, reported with a spec error code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.status = status or code.default_status
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{code.name}: {self.message}")

    def body(self) -> bytes:
        """The spec's JSON error body."""
        error: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()
