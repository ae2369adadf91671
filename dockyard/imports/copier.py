"""Copy one image (or index, with its referrers) from an upstream client into registry repositories.

Order, so that nothing half-written is ever tagged: the plan fetches every manifest first (each
verified against its digest, at most MAX_MANIFESTS); then per target repository its blobs (ones the
repository has are skipped, ones another repository has are linked, the rest streamed from the
upstream into the upload service, never buffered whole) and its manifests, children before their
index and subjects before their referrers, all by digest; tags come last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dockyard.events.services import Origin
from dockyard.oci.digest import is_digest
from dockyard.oci.errors import RegistryError
from dockyard.oci.manifests import Descriptor, ParsedManifest, parse_manifest
from dockyard.oci.mediatypes import MANIFEST_TYPES
from dockyard.registry.services import RegistryServices
from dockyard.registry.services.manifests import TagExists
from dockyard.upstream.interfaces import UpstreamClient, UpstreamRef

#: ACR's limit: an import copies at most 50 manifests (an index and its children, referrers included).
MAX_MANIFESTS = 50
#: Indexes nested deeper than this are refused (an index of indexes of images is depth 2).
MAX_DEPTH = 4
#: Progress is written at most this often (seconds) while bytes flow.
PROGRESS_EVERY = 0.5


class ImportFailed(Exception):
    """The import cannot be done; the message is shown to the user as is."""


@dataclass(frozen=True)
class Node:
    """One manifest to copy, verified against its digest."""

    digest: str
    media_type: str
    payload: bytes
    parsed: ParsedManifest


@dataclass
class Plan:
    """What an import copies: ``nodes`` in push order (the top manifest's children before it)."""

    top: Node
    nodes: list[Node] = field(default_factory=list)

    def blobs(self) -> list[Descriptor]:
        """Every blob the manifests need, once."""
        unique: dict[str, Descriptor] = {}
        for node in self.nodes:
            for descriptor in node.parsed.required_blobs:
                unique.setdefault(descriptor.digest, descriptor)
        return list(unique.values())


class Progress:
    """Counts manifests and bytes done and hands them to ``write`` (throttled)."""

    def __init__(
        self, write: Callable[[int, int], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._clock = clock
        self.manifests = 0
        self.bytes = 0
        self._last = 0.0

    def add(self, *, manifests: int = 0, size: int = 0, flush: bool = False) -> None:
        self.manifests += manifests
        self.bytes += size
        now = self._clock()
        if flush or manifests or now - self._last >= PROGRESS_EVERY:
            self._last = now
            self._write(self.manifests, self.bytes)

    def counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            self.add(size=len(chunk))


class Copier:
    """One import's copy, through the registry's own services (locks, events and checks apply)."""

    def __init__(self, client: UpstreamClient, registry: RegistryServices, origin: Origin) -> None:
        self.client = client
        self.registry = registry
        self.origin = origin

    # -- plan ------------------------------------------------------------------------------

    def plan(self, source: UpstreamRef, *, include_referrers: bool) -> Plan:
        """Fetch and verify every manifest to copy (the upstream is read, nothing is written)."""
        top = self._fetch(source.repository, source.reference)
        plan = Plan(top)
        seen: set[str] = set()

        def visit(node: Node, depth: int) -> None:
            if node.digest in seen:
                return
            seen.add(node.digest)
            if len(seen) > MAX_MANIFESTS:
                raise ImportFailed(
                    f"the source has more than {MAX_MANIFESTS} manifests (children and referrers included); "
                    "an import copies at most that many"
                )
            if node.parsed.children and depth >= MAX_DEPTH:
                raise ImportFailed(f"the source's indexes are nested deeper than {MAX_DEPTH}")
            for child in node.parsed.children:
                if child.digest not in seen:
                    visit(self._fetch(source.repository, child.digest), depth + 1)
            plan.nodes.append(node)
            if include_referrers:
                for referrer in self.client.referrers(source.repository, node.digest):
                    digest = referrer.get("digest")
                    if isinstance(digest, str) and is_digest(digest) and digest not in seen:
                        visit(self._fetch(source.repository, digest), depth)

        visit(top, 0)
        return plan

    def _fetch(self, repository: str, reference: str) -> Node:
        fetched = self.client.get_manifest(repository, reference, MANIFEST_TYPES)
        try:
            parsed = parse_manifest(fetched.payload, fetched.media_type)
        except RegistryError as exc:
            raise ImportFailed(
                f"the upstream's manifest {fetched.digest} is not valid: {exc.message}"
            ) from None
        return Node(fetched.digest, parsed.media_type, fetched.payload, parsed)

    # -- copy ------------------------------------------------------------------------------

    def copy_blobs(self, plan: Plan, source: str, repository: str, progress: Progress) -> None:
        """Make every blob of the plan present in ``repository``."""
        for descriptor in plan.blobs():
            if self.registry.blobs.mount(repository, descriptor.digest, None, lambda _: True) is not None:
                progress.add(size=descriptor.size)  # already there, or linked from another repository
                continue
            with self.client.open_blob(source, descriptor.digest) as stream:
                if stream.size is not None and stream.size != descriptor.size:
                    raise ImportFailed(
                        f"the upstream sent {stream.size} bytes for blob {descriptor.digest}, "
                        f"whose manifest says {descriptor.size}"
                    )
                self.registry.uploads.upload_whole(
                    repository,
                    descriptor.digest,
                    progress.counted(stream.chunks),
                    content_length=descriptor.size,
                )
            progress.add(flush=True)

    def copy_manifests(self, plan: Plan, repository: str, progress: Progress) -> None:
        """Push every manifest by digest, children and subjects first."""
        for node in plan.nodes:
            self.registry.manifests.put(repository, node.digest, node.payload, node.media_type, self.origin)
            progress.add(manifests=1)

    def tag(self, plan: Plan, targets: list[tuple[str, str]], *, force: bool) -> None:
        """Point every target tag at the top manifest (last: a failed import tags nothing). Without
        ``force`` an existing tag fails the import, checked again in the tagging transaction."""
        for repository, tag in targets:
            try:
                self.registry.manifests.put(
                    repository,
                    tag,
                    plan.top.payload,
                    plan.top.media_type,
                    self.origin,
                    new_tag_only=not force,
                )
            except TagExists as exists:
                raise ImportFailed(f"{exists}; use force to overwrite it") from None
