"""HTTPS for `dockyard serve`: --tls self-signed with httpx and skopeo, reuse across restarts, and the
refusal to serve plain HTTP on a non-loopback address unless asked to."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    HttpsServer,
    clean_environment,
    dockyard_command,
    fetch_blob,
    fetch_manifest,
    run,
)
from tests.support.images import make_image, write_oci_layout
from tests.support.postgres import free_port

pytestmark = pytest.mark.e2e


def test_self_signed_https_is_trusted_with_the_local_ca_and_only_with_it(
    start_https_server: Callable[..., HttpsServer], tmp_path: Path
) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    tls_dir = server.tls_dir.resolve()

    stderr = server.stderr()
    assert f"listening on https://127.0.0.1:{server.port}" in stderr
    assert "created a local CA" in stderr
    assert f"CA certificate: {tls_dir / 'ca.crt'}" in stderr
    assert f"--cert-dir {tls_dir / 'trust'}" in stderr
    assert f"/etc/docker/certs.d/127.0.0.1:{server.port}/ca.crt" in stderr
    assert f"curl --cacert {tls_dir / 'ca.crt'} https://127.0.0.1:{server.port}/v2/" in stderr
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600, key

    # Trusting the CA: the handshake works; the registry asks for credentials and takes them.
    with httpx.Client(verify=server.trusting_ca(), timeout=10) as anonymous:
        challenge = anonymous.get(f"{server.url}/v2/")
    assert challenge.status_code == 401
    assert f'realm="https://127.0.0.1:{server.port}/oauth2/token"' in challenge.headers["WWW-Authenticate"]
    with server.http(timeout=10) as http:
        assert http.get("/v2/").status_code == 200
    with httpx.Client(verify=server.trusting_ca(), auth=(ADMIN_USERNAME, "wrong"), timeout=10) as wrong:
        assert wrong.get(f"{server.url}/v2/").status_code == 401

    # Without the CA (the usual public roots only) the certificate is rejected.
    with (
        httpx.Client(verify=ssl.create_default_context(), timeout=10) as untrusting,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        untrusting.get(f"{server.url}/v2/")


def test_skopeo_copies_over_https_with_the_ca_in_a_cert_dir(
    start_https_server: Callable[..., HttpsServer], tmp_path: Path
) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    tools = ContainerTools(tmp_path / "tools")
    try:
        image = make_image("tls-skopeo", layers=2)
        layout = tmp_path / "layout"
        write_oci_layout(layout, {"v1": image})
        copy = [
            "--insecure-policy",
            "copy",
            "--dest-creds",
            f"{ADMIN_USERNAME}:{ADMIN_PASSWORD}",
            f"oci:{layout}:v1",
            f"docker://{server.host}/tls/skopeo:v1",
        ]

        refused = tools.skopeo(*copy, check=False)
        assert refused.returncode != 0
        assert "x509" in refused.stderr or "certificate" in refused.stderr, refused.stderr

        trust_dir = server.tls_dir / "trust"
        assert sorted(p.name for p in trust_dir.iterdir()) == ["ca.crt"]
        tools.skopeo(*copy[:2], "--dest-cert-dir", str(trust_dir), *copy[2:])
        # ... and a pull back over HTTPS, trusting the CA the same way.
        pulled = tmp_path / "pulled"
        tools.skopeo(
            "--insecure-policy",
            "copy",
            "--src-cert-dir",
            str(trust_dir),
            "--src-creds",
            f"{ADMIN_USERNAME}:{ADMIN_PASSWORD}",
            f"docker://{server.host}/tls/skopeo:v1",
            f"oci:{pulled}:v1",
        )
        for blob in image.blobs:
            assert (pulled / "blobs" / "sha256" / blob.digest.split(":", 1)[1]).read_bytes() == blob.data
    finally:
        tools.close()

    with server.http(timeout=30) as http:
        assert fetch_manifest(http, "tls/skopeo", "v1") == image.manifest
        for blob in image.blobs:
            assert fetch_blob(http, "tls/skopeo", blob.digest) == blob.data


def test_a_restart_reuses_the_certificates_and_a_new_name_renews_only_the_server_certificate(
    start_https_server: Callable[..., HttpsServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = start_https_server(data_dir=data)
    files = ("ca.crt", "ca.key", "server.crt", "server.key")
    created = {name: (first.tls_dir / name).read_bytes() for name in files}
    assert first.stop() == 0

    second = start_https_server(data_dir=data)
    assert {name: (second.tls_dir / name).read_bytes() for name in files} == created
    assert "using the local CA's server certificate" in second.stderr()
    assert "created a local CA" not in second.stderr()
    assert second.stop() == 0

    third = start_https_server(data_dir=data, extra_args=("--tls-san", "registry.test"))
    renewed = {name: (third.tls_dir / name).read_bytes() for name in files}
    assert renewed["ca.crt"] == created["ca.crt"]
    assert renewed["ca.key"] == created["ca.key"]
    assert renewed["server.crt"] != created["server.crt"]
    assert "did not cover registry.test" in third.stderr()
    # Clients that trusted the CA before keep working, now also under the new name.
    with third.http(timeout=10, headers={"Host": f"registry.test:{third.port}"}) as http:
        response = http.get("/v2/", extensions={"sni_hostname": "registry.test"})
    assert response.status_code == 200


def test_plain_http_on_a_non_loopback_address_is_refused_without_explicit_consent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run(
        dockyard_command("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(data)),
        env=clean_environment(),
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve plain HTTP on 0.0.0.0" in result.stderr
    for option in ("--tls-cert FILE --tls-key FILE", "--tls self-signed", "--insecure-http"):
        assert option in result.stderr, option
    assert "listening on" not in result.stderr
    assert not data.exists()


def test_insecure_http_serves_plain_http_on_a_non_loopback_address(
    start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path / "data", extra_args=["--host", "0.0.0.0", "--insecure-http"])
    assert f"listening on http://0.0.0.0:{server.port}" in server.stderr()
    with server.http(timeout=10) as http:
        assert http.get("/v2/").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "{tmp}/server.crt"], "--tls-cert was given without --tls-key"),
        (["--tls-key", "{tmp}/server.key"], "--tls-key was given without --tls-cert"),
        (["--tls-cert", "{tmp}/missing.crt", "--tls-key", "{tmp}/missing.key"], "missing.crt does not exist"),
        (["--tls", "self-signed", "--tls-san", "not_a_name"], "is neither a DNS name nor an IP address"),
    ],
)
def test_unusable_tls_options_exit_with_code_2_and_a_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    options = [arg.format(tmp=tmp_path) for arg in args]
    command = dockyard_command(
        "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *options
    )
    result = run(command, env=clean_environment(), check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "listening on" not in result.stderr
