"""The CLI's one-line explanations when a registry cannot be reached."""

from __future__ import annotations

import ssl
import urllib.error

from dockyard.cli.client import unreachable


def test_an_untrusted_certificate_says_where_the_ca_is() -> None:
    failure = urllib.error.URLError(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]"))
    message = unreachable("https://127.0.0.1:5078", failure)
    assert message.startswith("cannot reach https://127.0.0.1:5078: ")
    assert "SSL_CERT_FILE" in message
    assert "tls/ca.crt" in message


def test_plain_http_to_an_https_registry_suggests_https() -> None:
    message = unreachable("http://registry.example", urllib.error.URLError(ConnectionResetError()))
    assert message.endswith("; if the registry serves HTTPS, use https://registry.example")
    assert "SSL_CERT_FILE" not in message


def test_a_refused_connection_has_no_hint() -> None:
    refused = urllib.error.URLError(ConnectionRefusedError(111, "refused"))
    message = unreachable("https://127.0.0.1:1", refused)
    assert message == "cannot reach https://127.0.0.1:1: [Errno 111] refused"
