"""Parse and validate manifests: one parser per manifest media type.

``parse_manifest`` turns the exact bytes a client pushed into a ``ParsedManifest``:
what the manifest references (blobs that must exist, child manifests that must
exist, its subject) and what the referrers API reports about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import ErrorCode, RegistryError

#: Registries SHOULD accept at least 4 MiB; Dockyard refuses anything larger.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: A descriptor's size is an int64.
MAX_SIZE = 2**63 - 1

MEDIA_TYPE_GRAMMAR = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z"
)
GENERIC_CONTENT_TYPES = {"", "application/json", "application/octet-stream", "text/plain"}


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor, reduced to what the registry acts on."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    @property
    def is_external(self) -> bool:
        """A foreign/non-distributable layer hosted elsewhere need not exist here."""
        external_types = mt.DOCKER_FOREIGN_LAYERS + mt.OCI_LAYER_NONDISTRIBUTABLE
        return bool(self.urls) and self.media_type in external_types


@dataclass(frozen=True)
class ParsedManifest:
    """What the registry needs to know about a manifest it stores byte-exact."""

    media_type: str
    artifact_type: str | None
    config: Descriptor | None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    required_blobs: tuple[Descriptor, ...] = field(default=())

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)


def _string(document: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = document.get(key)
    if value is None:
        if required:
            raise _invalid(f"{where}: {key} is required")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{where}: {key} must be a string")
    return value


def _artifact_type(document: dict[str, Any], where: str) -> str | None:
    """An ``artifactType``: a media type (RFC 6838, so at most 255 characters), as the spec has it."""
    value = _string(document, "artifactType", where)
    if value and not MEDIA_TYPE_GRAMMAR.match(value):
        raise _invalid(f"{where}: invalid artifactType {value[:100]!r}")
    return value


def _annotations(document: dict[str, Any], where: str) -> dict[str, str] | None:
    value = document.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where}: annotations must map strings to strings")
    return value


def parse_descriptor(value: Any, where: str) -> Descriptor:
    """Validate one descriptor object."""
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be an object")
    media_type = _string(value, "mediaType", where, required=True)
    assert media_type is not None
    if not MEDIA_TYPE_GRAMMAR.match(media_type):
        raise _invalid(f"{where}: invalid mediaType {media_type[:100]!r}")
    digest = _string(value, "digest", where, required=True)
    assert digest is not None
    try:
        parse_digest(digest)
    except RegistryError as exc:
        raise _invalid(f"{where}: {exc.message}") from None
    size = value.get("size")
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        raise _invalid(f"{where}: size must be a non-negative int64")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}: urls must be a list of strings")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}: platform must be an object")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=tuple(urls),
        platform=platform,
        artifact_type=_artifact_type(value, where),
        annotations=_annotations(value, where),
    )


def _subject(document: dict[str, Any]) -> Descriptor | None:
    if document.get("subject") is None:
        return None
    return parse_descriptor(document["subject"], "subject")


def _parse_image_manifest(document: dict[str, Any], media_type: str) -> ParsedManifest:
    config = parse_descriptor(document.get("config"), "config")
    raw_layers = document.get("layers", [])
    if not isinstance(raw_layers, list):
        raise _invalid("layers must be a list")
    layers = tuple(parse_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(raw_layers))
    artifact_type = _artifact_type(document, "manifest")
    return ParsedManifest(
        media_type=media_type,
        artifact_type=artifact_type or config.media_type,
        config=config,
        layers=layers,
        subject=_subject(document),
        annotations=_annotations(document, "manifest"),
        required_blobs=(config, *(layer for layer in layers if not layer.is_external)),
    )


def _parse_index(document: dict[str, Any], media_type: str) -> ParsedManifest:
    raw_children = document.get("manifests")
    if not isinstance(raw_children, list):
        raise _invalid("manifests must be a list")
    children = tuple(parse_descriptor(child, f"manifests[{i}]") for i, child in enumerate(raw_children))
    return ParsedManifest(
        media_type=media_type,
        artifact_type=_artifact_type(document, "index"),
        config=None,
        children=children,
        subject=_subject(document),
        annotations=_annotations(document, "index"),
    )


PARSERS: dict[str, Callable[[dict[str, Any], str], ParsedManifest]] = {
    mt.OCI_MANIFEST: _parse_image_manifest,
    mt.DOCKER_MANIFEST: _parse_image_manifest,
    mt.OCI_INDEX: _parse_index,
    mt.DOCKER_MANIFEST_LIST: _parse_index,
}


def _media_type_of(document: dict[str, Any], content_type: str) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if declared:
        if content_type not in GENERIC_CONTENT_TYPES and content_type != declared:
            raise _invalid(
                f"Content-Type {content_type!r} does not match the manifest's mediaType {declared!r}"
            )
        return declared
    if content_type not in GENERIC_CONTENT_TYPES:
        return content_type
    if "manifests" in document:
        return mt.OCI_INDEX
    if "config" in document:
        return mt.OCI_MANIFEST
    raise _invalid("cannot tell the manifest's media type: set mediaType or Content-Type")


def parse_manifest(payload: bytes, content_type: str = "") -> ParsedManifest:
    """Validate ``payload`` as a manifest and return what it references.

    ``content_type`` is the request's Content-Type with parameters removed.
    Raises MANIFEST_INVALID (or SIZE_INVALID/413 for oversized payloads).
    """
    if len(payload) > MAX_MANIFEST_SIZE:
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"manifest is larger than the {MAX_MANIFEST_SIZE} byte limit",
            status=413,
        )
    content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type in mt.DOCKER_SCHEMA1:
        raise _invalid("Docker image manifest schema 1 is not supported; push schema 2 or OCI")
    try:
        document = json.loads(payload)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer over Python's digit limit
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    schema_version = document.get("schemaVersion")
    if type(schema_version) is not int or schema_version != 2:
        if type(schema_version) is int and schema_version == 1:
            raise _invalid("Docker image manifest schema 1 is not supported; push schema 2 or OCI")
        raise _invalid("schemaVersion must be 2")
    media_type = _media_type_of(document, content_type)
    parser = PARSERS.get(media_type)
    if parser is None:
        raise _invalid(f"unsupported manifest media type {media_type[:100]!r}")
    return parser(document, media_type)
