"""Build test images offline: tar layers with fixed mtimes, configs, manifests, OCI layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def tar_layer(files: dict[str, bytes]) -> bytes:
    """A gzip'd tar of ``files`` with fixed metadata: the same input gives the same digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class Image:
    """An image manifest with its config and layers, ready to push."""

    config: Blob
    layers: list[Blob]
    manifest: bytes
    media_type: str = OCI_MANIFEST
    blobs: list[Blob] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest), **extra}


def make_image(
    seed: str = "hello",
    *,
    architecture: str = "amd64",
    os_name: str = "linux",
    docker: bool = False,
    layers: int = 1,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    layer_size: int = 0,
) -> Image:
    """A small image whose bytes depend only on the arguments."""
    layer_blobs = []
    for index in range(layers):
        files = {f"etc/{seed}-{index}.txt": f"{seed} layer {index}\n".encode()}
        if layer_size:
            files["data.bin"] = hashlib.shake_256(f"{seed}{index}".encode()).digest(layer_size)
        layer_blobs.append(Blob(DOCKER_LAYER if docker else OCI_LAYER, tar_layer(files)))
    config_doc = {
        "architecture": architecture,
        "os": os_name,
        "config": {"Cmd": ["/bin/sh"], "Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(gzip.decompress(b.data)) for b in layer_blobs]},
        "history": [{"created_by": f"test {seed}"}],
    }
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, canonical(config_doc))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layer_blobs],
    }
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = annotations
    return Image(
        config=config,
        layers=layer_blobs,
        manifest=canonical(manifest),
        media_type=manifest["mediaType"],
        blobs=[config, *layer_blobs],
    )


def make_artifact(
    artifact_type: str,
    payload: bytes,
    *,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    layer_type: str = "application/octet-stream",
) -> Image:
    """An OCI 1.1 artifact: empty config, ``artifactType``, one layer."""
    config = Blob(OCI_EMPTY, b"{}")
    layer = Blob(layer_type, payload)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = annotations
    return Image(config=config, layers=[layer], manifest=canonical(manifest), blobs=[config, layer])


def make_index(images: list[Image], *, docker: bool = False) -> bytes:
    """An index (or Docker manifest list) of ``images`` with their platforms."""
    manifests = []
    for image in images:
        platform = json.loads(image.config.data)
        manifests.append(
            image.descriptor(platform={"architecture": platform["architecture"], "os": platform["os"]})
        )
    return canonical(
        {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX, "manifests": manifests}
    )


def write_oci_layout(
    path: Path, images: dict[str, Image], indexes: dict[str, tuple[bytes, list[Image]]] | None = None
) -> None:
    """Write an OCI image layout at ``path`` with ``images`` (and indexes) under their ref names."""
    blobs_dir = path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> None:
        (blobs_dir / sha256(data).split(":", 1)[1]).write_bytes(data)

    entries = []
    for name, image in images.items():
        for blob in image.blobs:
            put(blob.data)
        put(image.manifest)
        entries.append(image.descriptor(annotations={"org.opencontainers.image.ref.name": name}))
    for name, (index, members) in (indexes or {}).items():
        for image in members:
            for blob in image.blobs:
                put(blob.data)
            put(image.manifest)
        put(index)
        entries.append(
            {
                "mediaType": OCI_INDEX,
                "digest": sha256(index),
                "size": len(index),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        )
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": entries}))
