"""dockyard/tls.py: the local CA and its server certificate, operator certificates, the plain-HTTP rule."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from dockyard.config import Settings, TlsMode
from dockyard.tls import (
    RENEW_WITHIN,
    ServerTls,
    TlsConfigError,
    check_plain_http,
    client_address,
    configure,
    create_ca,
    ensure_self_signed,
    is_loopback,
    issue_server_certificate,
    server_names,
    trust_instructions,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NAMES = ["localhost", "127.0.0.1", "::1", "testhost"]
FILES = ("ca.crt", "ca.key", "server.crt", "server.key")


@pytest.fixture(autouse=True)
def _no_dockyard_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built here must not pick up DOCKYARD_* variables of the shell running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("DOCKYARD_"):
            monkeypatch.delenv(name)


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def handshake(ca_file: Path, cert: Path, key: Path, server_hostname: str) -> None:
    """A TLS handshake in memory: a client trusting only ``ca_file`` (strict X.509 checks) against
    a server presenting ``cert``. Raises ssl.SSLCertVerificationError when the client rejects it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"handshake did not finish: {done}")


# -- the local CA and its server certificate ---------------------------------------------------


def test_first_start_creates_a_ca_and_a_server_certificate_signed_by_it(tmp_path):
    directory = tmp_path / "tls"
    result = ensure_self_signed(directory, NAMES, now=NOW)

    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == sorted(
        [*FILES, "trust"]
    )
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600, key
    assert [p.name for p in (directory / "trust").iterdir()] == ["ca.crt"]
    assert (directory / "trust" / "ca.crt").read_bytes() == (directory / "ca.crt").read_bytes()
    assert result.mode == TlsMode.self_signed
    assert result.cert == (directory / "server.crt").resolve()
    assert result.key == (directory / "server.key").resolve()
    assert result.ca_cert == (directory / "ca.crt").resolve()
    assert result.trust_dir == (directory / "trust").resolve()
    assert any("created a local CA" in note for note in result.notes)
    assert any("issued a server certificate" in note for note in result.notes)

    ca = load_cert(directory / "ca.crt")
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert ca.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    ca.verify_directly_issued_by(ca)

    server = load_cert(directory / "server.crt")
    assert server.public_key().curve.name == "secp256r1"
    assert isinstance(server.signature_hash_algorithm, hashes.SHA256)
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert server.not_valid_after_utc - NOW == dt.timedelta(days=365)
    assert server.not_valid_before_utc <= NOW
    assert sans(server) == ["localhost", "127.0.0.1", "::1", "testhost"]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert result.expires == server.not_valid_after_utc
    key = serialization.load_pem_private_key((directory / "server.key").read_bytes(), password=None)
    assert key.public_key() == server.public_key()


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", "testhost"])
def test_a_client_trusting_only_the_ca_accepts_the_server_for_every_name(tmp_path, hostname):
    result = ensure_self_signed(tmp_path / "tls", NAMES)
    handshake(result.ca_cert, result.cert, result.key, hostname)


def test_a_client_rejects_names_the_certificate_lacks_and_other_cas(tmp_path):
    result = ensure_self_signed(tmp_path / "tls", NAMES)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(result.ca_cert, result.cert, result.key, "elsewhere.example")
    other = ensure_self_signed(tmp_path / "other", NAMES)
    with pytest.raises(ssl.SSLCertVerificationError, match="issuer"):
        handshake(other.ca_cert, result.cert, result.key, "localhost")


def test_later_starts_reuse_the_ca_and_the_server_certificate(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    before = snapshot(directory)
    again = ensure_self_signed(directory, NAMES, now=NOW + dt.timedelta(days=200))
    assert snapshot(directory) == before
    assert again.notes == ()
    assert again.expires == load_cert(directory / "server.crt").not_valid_after_utc


def test_the_server_certificate_is_renewed_within_30_days_of_expiry_and_the_ca_kept(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    before = snapshot(directory)
    expiry = load_cert(directory / "server.crt").not_valid_after_utc

    just_outside = expiry - RENEW_WITHIN - dt.timedelta(minutes=1)
    ensure_self_signed(directory, NAMES, now=just_outside)
    assert snapshot(directory) == before

    inside = expiry - RENEW_WITHIN + dt.timedelta(minutes=1)
    result = ensure_self_signed(directory, NAMES, now=inside)
    after = snapshot(directory)
    assert after["ca.crt"] == before["ca.crt"]
    assert after["ca.key"] == before["ca.key"]
    assert after["server.crt"] != before["server.crt"]
    assert after["server.key"] != before["server.key"]
    renewed = load_cert(directory / "server.crt")
    renewed.verify_directly_issued_by(load_cert(directory / "ca.crt"))
    assert renewed.not_valid_after_utc == inside.replace(microsecond=0) + dt.timedelta(days=365)
    assert [note for note in result.notes if "expires on" in note], result.notes


def test_the_server_certificate_is_renewed_when_it_misses_a_configured_name(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    before = snapshot(directory)

    fewer = ensure_self_signed(directory, NAMES[:3], now=NOW)  # still covered: kept
    assert snapshot(directory) == before
    assert fewer.notes == ()

    more = [*NAMES, "registry.example.com", "10.1.2.3"]
    result = ensure_self_signed(directory, more, now=NOW)
    after = snapshot(directory)
    assert after["ca.crt"] == before["ca.crt"]
    assert after["server.crt"] != before["server.crt"]
    assert sans(load_cert(directory / "server.crt")) == more
    assert any("did not cover registry.example.com, 10.1.2.3" in note for note in result.notes)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "server.crt").unlink(), "there was none"),
        (lambda d: (d / "server.key").write_text("not a key\n"), "could not be loaded"),
        (
            lambda d: (d / "server.key").write_bytes((d / "ca.key").read_bytes()),
            "server.key did not match server.crt",
        ),
    ],
)
def test_a_missing_or_damaged_server_certificate_is_reissued(tmp_path, damage, reason):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    ca_before = (directory / "ca.crt").read_bytes()
    damage(directory)
    result = ensure_self_signed(directory, NAMES, now=NOW)
    assert (directory / "ca.crt").read_bytes() == ca_before
    assert any(reason in note for note in result.notes), result.notes
    handshake(result.ca_cert, result.cert, result.key, "localhost")


def test_a_server_certificate_from_another_ca_is_reissued(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    other_ca, other_key = create_ca(NOW)
    foreign, foreign_key = issue_server_certificate(other_ca, other_key, NAMES, NOW)
    (directory / "server.crt").write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        foreign_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    result = ensure_self_signed(directory, NAMES, now=NOW)
    assert any("not issued by the current CA" in note for note in result.notes), result.notes
    load_cert(directory / "server.crt").verify_directly_issued_by(load_cert(directory / "ca.crt"))


def test_an_expiring_ca_is_replaced_and_the_server_certificate_reissued_by_the_new_one(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    before = snapshot(directory)
    late = load_cert(directory / "ca.crt").not_valid_after_utc - dt.timedelta(days=10)
    result = ensure_self_signed(directory, NAMES, now=late)
    after = snapshot(directory)
    assert all(after[name] != before[name] for name in FILES)
    assert any("clients must trust the new ca.crt" in note for note in result.notes), result.notes
    new_ca = load_cert(directory / "ca.crt")
    load_cert(directory / "server.crt").verify_directly_issued_by(new_ca)
    assert (directory / "trust" / "ca.crt").read_bytes() == after["ca.crt"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "ca.key").unlink(), "but not"),
        (lambda d: (d / "ca.crt").unlink(), "but not"),
        (lambda d: (d / "ca.crt").write_text("garbage\n"), "cannot load the local CA certificate"),
        (lambda d: (d / "ca.key").write_bytes((d / "server.key").read_bytes()), "is not the key of"),
        (lambda d: (d / "ca.crt").write_bytes((d / "server.crt").read_bytes()), "is not the key of"),
    ],
)
def test_a_broken_ca_is_an_error_and_never_silently_replaced(tmp_path, damage, message):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    damage(directory)
    left = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    with pytest.raises(TlsConfigError, match=message) as caught:
        ensure_self_signed(directory, NAMES, now=NOW)
    assert f"delete {directory}" in str(caught.value)
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == left


def test_a_certificate_that_is_not_a_ca_is_refused_as_the_ca(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    # A self-signed leaf (CA:false) with its own key in place of the CA.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "not a ca")])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=3000))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TlsConfigError, match="is not a CA certificate"):
        ensure_self_signed(directory, NAMES, now=NOW)


def test_private_keys_left_readable_by_others_are_tightened(tmp_path):
    directory = tmp_path / "tls"
    ensure_self_signed(directory, NAMES, now=NOW)
    for key in ("ca.key", "server.key"):
        (directory / key).chmod(0o644)
    ensure_self_signed(directory, NAMES, now=NOW)
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600, key


# -- which names the certificate covers --------------------------------------------------------


def test_server_names_cover_loopback_the_hostname_the_listen_address_and_extra_names():
    assert server_names("192.168.1.20", ["Registry.LAN.", "10.0.0.5", "localhost"], "myhost") == [
        "localhost",
        "127.0.0.1",
        "::1",
        "myhost",
        "192.168.1.20",
        "registry.lan",
        "10.0.0.5",
    ]


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "[::]", ""])
def test_server_names_leave_out_wildcard_listen_addresses(wildcard):
    assert server_names(wildcard, [], "myhost") == ["localhost", "127.0.0.1", "::1", "myhost"]


def test_server_names_handle_ipv6_and_dns_listen_addresses_and_odd_hostnames():
    assert server_names("[fd00::1]", [], "my_host") == ["localhost", "127.0.0.1", "::1", "fd00::1"]
    assert server_names("registry.lan", ["*.apps.lan"], "MyHost") == [
        "localhost",
        "127.0.0.1",
        "::1",
        "myhost",
        "registry.lan",
        "*.apps.lan",
    ]


def test_tls_san_setting_is_parsed_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKYARD_TLS_SAN", "Registry.Example.com, 10.0.0.7 ,[fd00::7]")
    assert Settings(data_dir=tmp_path).tls_san == ["registry.example.com", "10.0.0.7", "fd00::7"]
    monkeypatch.setenv("DOCKYARD_TLS_MODE", "self-signed")
    assert Settings(data_dir=tmp_path).tls_mode == TlsMode.self_signed
    for bad in ("under_score.example", "-leading.example", "a..b", "fe80::1%eth0"):
        with pytest.raises(ValueError, match="tls_san"):
            Settings(data_dir=tmp_path, tls_san=[bad])


# -- the plain-HTTP rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_loopback_addresses(host):
    assert is_loopback(host)
    check_plain_http(host, insecure_http=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "192.168.1.20", "fd00::1", "registry.lan"])
def test_plain_http_elsewhere_is_refused_unless_explicitly_allowed(host):
    assert not is_loopback(host)
    with pytest.raises(TlsConfigError) as caught:
        check_plain_http(host, insecure_http=False)
    message = str(caught.value)
    assert f"refusing to serve plain HTTP on {host}" in message
    for option in ("--tls-cert FILE --tls-key FILE", "--tls self-signed", "--insecure-http"):
        assert option in message
    check_plain_http(host, insecure_http=True)


# -- configure(): the settings as `dockyard serve` sees them -----------------------------------


def test_the_default_is_plain_http_on_loopback(tmp_path):
    assert configure(settings(tmp_path)) is None
    assert not (tmp_path / "data").exists()


def test_configure_refuses_plain_http_on_a_wildcard_address(tmp_path):
    with pytest.raises(TlsConfigError, match="--insecure-http"):
        configure(settings(tmp_path, host="0.0.0.0"))
    assert configure(settings(tmp_path, host="0.0.0.0", insecure_http=True)) is None


def test_configure_self_signed_creates_the_files_under_the_data_folder(tmp_path):
    result = configure(
        settings(tmp_path, host="0.0.0.0", tls_mode="self-signed", tls_san=["registry.lan"]),
        hostname="buildbox",
    )
    assert isinstance(result, ServerTls)
    tls_dir = (tmp_path / "data" / "tls").resolve()
    assert result.cert == tls_dir / "server.crt"
    assert result.ca_cert == tls_dir / "ca.crt"
    assert sans(load_cert(result.cert)) == ["localhost", "127.0.0.1", "::1", "buildbox", "registry.lan"]


def test_an_unwritable_tls_folder_is_an_error(tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    with pytest.raises(TlsConfigError, match="cannot keep the local CA"):
        configure(Settings(data_dir=tmp_path / "file" / "data", tls_mode="self-signed"))


def write_pair(directory: Path, *, chain: bool = False) -> tuple[Path, Path, Path]:
    """An operator's certificate (optionally followed by its CA) and key; and the CA certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = create_ca(NOW)
    cert, key = issue_server_certificate(ca, ca_key, NAMES, NOW)
    cert_path, key_path, ca_path = directory / "tls.crt", directory / "tls.key", directory / "ca.pem"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if chain:
        pem += ca.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, ca_path


@pytest.mark.parametrize("chain", [False, True])
def test_configure_accepts_an_operators_certificate_and_key(tmp_path, chain):
    cert, key, ca = write_pair(tmp_path / "pki", chain=chain)
    result = configure(settings(tmp_path, host="0.0.0.0", tls_cert=cert, tls_key=key))
    assert result is not None
    assert result.mode == TlsMode.files
    assert (result.cert, result.key) == (cert.resolve(), key.resolve())
    assert result.ca_cert is None
    assert result.notes == ()
    handshake(ca, result.cert, result.key, "127.0.0.1")
    explicit = configure(settings(tmp_path, tls_mode="files", tls_cert=cert, tls_key=key))
    assert explicit is not None
    assert explicit.cert == cert.resolve()


def test_an_operators_certificate_close_to_expiry_starts_with_a_warning(tmp_path):
    cert, key, _ = write_pair(tmp_path / "pki")
    late = NOW + dt.timedelta(days=350)
    result = configure(settings(tmp_path, tls_cert=cert, tls_key=key), now=late)
    assert result is not None
    assert any(note.startswith("WARNING") and "expires on" in note for note in result.notes)


def test_only_one_of_cert_and_key_is_an_error(tmp_path):
    cert, key, _ = write_pair(tmp_path / "pki")
    with pytest.raises(TlsConfigError, match="--tls-cert was given without --tls-key"):
        configure(settings(tmp_path, tls_cert=cert))
    with pytest.raises(TlsConfigError, match="--tls-key was given without --tls-cert"):
        configure(settings(tmp_path, tls_key=key))
    with pytest.raises(TlsConfigError, match="without"):
        configure(settings(tmp_path, tls_mode="files", tls_cert=cert))


def test_missing_unreadable_and_wrong_files_are_errors(tmp_path):
    cert, key, _ = write_pair(tmp_path / "pki")
    other_cert, other_key, _ = write_pair(tmp_path / "other")
    cases = [
        ((tmp_path / "missing.crt", key), "does not exist"),
        ((cert, tmp_path / "missing.key"), "does not exist"),
        ((tmp_path, key), "is a folder"),
        ((key, key), "is not a PEM certificate"),
        ((cert, cert), "is not a PEM private key"),
        ((cert, other_key), "does not belong to the certificate"),
        ((other_cert, key), "does not belong to the certificate"),
    ]
    for (cert_path, key_path), message in cases:
        with pytest.raises(TlsConfigError, match=message):
            configure(settings(tmp_path, tls_cert=cert_path, tls_key=key_path))


def test_an_encrypted_key_is_an_error(tmp_path):
    cert, key, _ = write_pair(tmp_path / "pki")
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match="is encrypted"):
        configure(settings(tmp_path, tls_cert=cert, tls_key=key))


def test_conflicting_tls_settings_are_errors(tmp_path):
    cert, key, _ = write_pair(tmp_path / "pki")
    for mode in ("self-signed", "off"):
        with pytest.raises(TlsConfigError, match="conflicts with --tls-cert/--tls-key"):
            configure(settings(tmp_path, tls_mode=mode, tls_cert=cert, tls_key=key))
    with pytest.raises(TlsConfigError, match="--tls-san"):
        configure(settings(tmp_path, tls_cert=cert, tls_key=key, tls_san=["registry.lan"]))
    with pytest.raises(TlsConfigError, match="--tls-san"):
        configure(settings(tmp_path, tls_san=["registry.lan"]))
    assert not (tmp_path / "data").exists()


# -- telling the operator how to trust the CA --------------------------------------------------


def test_trust_instructions_name_the_files_and_every_client(tmp_path):
    result = ensure_self_signed(tmp_path / "tls", NAMES)
    text = trust_instructions(result, "127.0.0.1:5000")
    ca = str(result.ca_cert)
    for expected in (
        f"CA certificate: {ca}",
        f"--cert-dir {result.trust_dir}",
        "--dest-cert-dir",
        f"sudo cp {ca} /etc/containers/certs.d/127.0.0.1:5000/ca.crt",
        f"sudo cp {ca} /etc/docker/certs.d/127.0.0.1:5000/ca.crt",
        f"curl --cacert {ca} https://127.0.0.1:5000/v2/",
        f"REQUESTS_CA_BUNDLE={ca}",
        f'connection_verify="{ca}"',
        f"SSL_CERT_FILE={ca}",
    ):
        assert expected in text, expected


def test_client_address_uses_the_hostname_for_wildcards_and_brackets_ipv6():
    assert client_address("127.0.0.1", 5000, "myhost") == "127.0.0.1:5000"
    assert client_address("0.0.0.0", 5000, "myhost") == "myhost:5000"
    assert client_address("::", 443, "myhost") == "myhost:443"
    assert client_address("::1", 5000, "myhost") == "[::1]:5000"
    assert client_address("registry.lan", 5000, "myhost") == "registry.lan:5000"
