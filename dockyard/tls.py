"""HTTPS for `dockyard serve`: which certificate to serve, a local CA for `--tls self-signed`, and the
rule that plain HTTP is served on a non-loopback address only when asked for explicitly.

Everything here runs once in the CLI process before the server starts (workers only get the two file
paths). The functions take what they need as arguments, so the tests call them without a server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockyard.config import TlsMode

if TYPE_CHECKING:
    from dockyard.config import Settings

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
#: A certificate expiring within this long is replaced at start.
RENEW_WITHIN = dt.timedelta(days=30)
#: notBefore is set this far in the past, so clients with a slightly slow clock accept a new certificate.
BACKDATE = dt.timedelta(minutes=5)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
#: A folder holding only a copy of ca.crt: `--cert-dir` for podman/skopeo/buildah (which reject a folder
#: with *.key files that have no matching *.cert, as the tls folder has).
TRUST_DIR = "trust"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_PEM_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsConfigError(Exception):
    """TLS settings that cannot work; the message says what to do instead."""


@dataclass(frozen=True)
class ServerTls:
    """The certificate and key `dockyard serve` presents, and what happened to get them."""

    mode: TlsMode
    cert: Path
    key: Path
    #: The local CA (self-signed mode only): its certificate and the folder holding only that file.
    ca_cert: Path | None = None
    trust_dir: Path | None = None
    expires: dt.datetime | None = None
    #: Things worth saying at start: a CA or certificate created, renewed (and why), a warning.
    notes: tuple[str, ...] = ()


# -- addresses ---------------------------------------------------------------------------------


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip().strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also written [::1] or as ::ffff:127.x.y.z)."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    address = _ip(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def is_wildcard(host: str) -> bool:
    """True for addresses that mean "every interface": 0.0.0.0, :: and the empty string."""
    if not host.strip():
        return True
    address = _ip(host)
    return address is not None and address.is_unspecified


def url_host(host: str) -> str:
    """The host as a URL or `host:port` writes it (IPv6 in brackets)."""
    address = _ip(host)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]"
    return host.strip()


def _normalise_name(name: str) -> str | None:
    """A DNS name (lower case) or an IP address in canonical form; None if it is neither."""
    address = _ip(name)
    if address is not None:
        return None if getattr(address, "scope_id", None) else str(address)
    name = name.strip().lower().rstrip(".")
    return name if len(name) <= 253 and _DNS_NAME.fullmatch(name) else None


def server_names(host: str, extra: Iterable[str], hostname: str) -> list[str]:
    """The names a self-signed server certificate covers, in order, without duplicates.

    localhost, 127.0.0.1 and ::1; the machine's hostname; the listen address unless it is a wildcard;
    then the configured extra names. A hostname that is not a valid DNS name is left out.
    """
    candidates = ["localhost", "127.0.0.1", "::1", hostname]
    if not is_wildcard(host):
        candidates.append(host)
    candidates.extend(extra)
    names: list[str] = []
    for candidate in candidates:
        name = _normalise_name(candidate)
        if name is not None and name not in names:
            names.append(name)
    return names


# -- the plain-HTTP rule -----------------------------------------------------------------------


def plain_http_refusal(host: str) -> str:
    """Why `dockyard serve` will not serve plain HTTP on ``host``, and the three ways forward."""
    return (
        f"refusing to serve plain HTTP on {host}: it is not a loopback address, so passwords, tokens "
        "and images would cross the network unencrypted. Choose one:\n"
        "  --tls-cert FILE --tls-key FILE   HTTPS with your certificate and key (PEM) "
        "[DOCKYARD_TLS_CERT, DOCKYARD_TLS_KEY]\n"
        "  --tls self-signed                HTTPS with a certificate from a local CA that Dockyard "
        "creates under DATA_DIR/tls [DOCKYARD_TLS_MODE=self-signed]\n"
        "  --insecure-http                  plain HTTP anyway, e.g. behind a TLS-terminating proxy "
        "[DOCKYARD_INSECURE_HTTP=true]\n"
        "See docs/tls.md."
    )


def check_plain_http(host: str, *, insecure_http: bool) -> None:
    """Raise TlsConfigError unless plain HTTP on ``host`` is harmless (loopback) or explicitly chosen."""
    if not is_loopback(host) and not insecure_http:
        raise TlsConfigError(plain_http_refusal(host))


# -- choosing the mode -------------------------------------------------------------------------


def effective_mode(settings: Settings) -> TlsMode:
    """tls_mode, or when unset: files if tls_cert/tls_key are given, else off. Conflicts are errors."""
    has_files = settings.tls_cert is not None or settings.tls_key is not None
    mode = settings.tls_mode
    if mode is None:
        mode = TlsMode.files if has_files else TlsMode.off
    if has_files and mode != TlsMode.files:
        raise TlsConfigError(
            f"--tls {mode.value} (tls_mode) conflicts with --tls-cert/--tls-key (tls_cert, tls_key): "
            "give either the certificate files or another mode, not both"
        )
    if settings.tls_san and mode != TlsMode.self_signed:
        raise TlsConfigError(
            "--tls-san (tls_san) names go into the self-signed certificate; it needs --tls self-signed "
            "(with --tls-cert/--tls-key, put the names into your own certificate)"
        )
    return mode


def configure(
    settings: Settings, *, hostname: str | None = None, now: dt.datetime | None = None
) -> ServerTls | None:
    """What `dockyard serve` should present: None for plain HTTP (if allowed), else the certificate.

    Raises TlsConfigError with a message for the operator when the settings cannot work.
    """
    mode = effective_mode(settings)
    if mode == TlsMode.off:
        check_plain_http(settings.host, insecure_http=settings.insecure_http)
        return None
    if mode == TlsMode.files:
        return check_files(settings.tls_cert, settings.tls_key, now=now)
    if hostname is None:
        import socket

        hostname = socket.gethostname()
    names = server_names(settings.host, settings.tls_san, hostname)
    directory = settings.data_dir / "tls"
    try:
        return ensure_self_signed(directory, names, now=now)
    except OSError as exc:
        raise TlsConfigError(f"cannot keep the local CA and certificate in {directory}: {exc}") from None


# -- certificate files given by the operator --------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _public_bytes(key: object) -> bytes:
    return key.public_key().public_bytes(*_PEM_SPKI)  # type: ignore[attr-defined]


def _load_key(data: bytes, path: Path, what: str) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsConfigError(
            f"{what} {path} is encrypted; Dockyard needs it unencrypted (protect it with file permissions, "
            f"e.g. `openssl pkey -in {path} -out plain.key` and chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsConfigError(f"{what} {path} is not a PEM private key: {exc}") from None


def check_files(cert: Path | None, key: Path | None, *, now: dt.datetime | None = None) -> ServerTls:
    """Check an operator's certificate and key: both given, readable, PEM, and belonging together."""
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise TlsConfigError(
            f"{given} was given without {missing}: HTTPS with your own certificate needs both "
            "--tls-cert FILE and --tls-key FILE (tls_cert, tls_key); or use --tls self-signed"
        )
    cert_data = _read(cert, "TLS certificate (--tls-cert)")
    key_data = _read(key, "TLS key (--tls-key)")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TlsConfigError(f"TLS certificate (--tls-cert) {cert} is not a PEM certificate") from None
    private_key = _load_key(key_data, key, "TLS key (--tls-key)")
    leaf = chain[0]
    if leaf.public_key().public_bytes(*_PEM_SPKI) != _public_bytes(private_key):
        raise TlsConfigError(
            f"TLS key {key} does not belong to the certificate {cert} (the first certificate in the file "
            "must be the server's own)"
        )
    try:  # what the server itself will do with them
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"the TLS certificate {cert} and key {key} cannot be used: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    notes = []
    if leaf.not_valid_after_utc <= now:
        notes.append(f"WARNING: the certificate {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    elif leaf.not_valid_after_utc - RENEW_WITHIN <= now:
        notes.append(f"WARNING: the certificate {cert} expires on {leaf.not_valid_after_utc:%Y-%m-%d}")
    return ServerTls(
        mode=TlsMode.files,
        cert=cert.resolve(),
        key=key.resolve(),
        expires=leaf.not_valid_after_utc,
        notes=tuple(notes),
    )


# -- the local CA and its server certificate ---------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise processes that start with the same data folder at the same moment."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with ``data``, created with ``mode`` (keys are never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _tighten(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def create_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new local CA: EC P-256, ten years, CA:true (no intermediates), keyCertSign + cRLSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dockyard"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Dockyard local CA {now:%Y-%m-%d %H:%M:%S}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    address = _ip(name)
    return x509.IPAddress(address) if address is not None else x509.DNSName(name)


def issue_server_certificate(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` signed by the CA: EC P-256, a year (never beyond the CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dockyard"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Dockyard registry"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def uncovered_names(cert: x509.Certificate, names: Iterable[str]) -> list[str]:
    """The names (DNS or IP) that ``cert``'s subjectAltName does not list."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(names)
    dns = {value.lower().rstrip(".") for value in san.get_values_for_type(x509.DNSName)}
    ips = set(san.get_values_for_type(x509.IPAddress))
    missing = []
    for name in names:
        address = _ip(name)
        if (address not in ips) if address is not None else (name.lower() not in dns):
            missing.append(name)
    return missing


def _load_ca(directory: Path, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    """The CA in ``directory``, made if there is none or it is (about to be) expired; and what happened."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    start_over = (
        f"restore it, or delete {directory} to start over with a new CA (clients must then trust the "
        "new ca.crt)"
    )
    if not cert_path.exists() and not key_path.exists():
        cert, key = create_ca(now)
        note = f"created a local CA valid until {cert.not_valid_after_utc:%Y-%m-%d}"
    elif not (cert_path.exists() and key_path.exists()):
        present, absent = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise TlsConfigError(f"found {present} but not {absent}: {start_over}")
    else:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise TlsConfigError(
                f"cannot load the local CA certificate {cert_path} ({exc}): {start_over}"
            ) from None
        try:
            key = _load_key(key_path.read_bytes(), key_path, "the local CA key")
        except OSError as exc:
            raise TlsConfigError(f"cannot read the local CA key {key_path} ({exc}): {start_over}") from None
        except TlsConfigError as exc:
            raise TlsConfigError(f"{exc}: {start_over}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _public_bytes(
            key
        ) != cert.public_key().public_bytes(*_PEM_SPKI):
            raise TlsConfigError(f"{key_path} is not the key of {cert_path}: {start_over}")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise TlsConfigError(f"{cert_path} is not a CA certificate: {start_over}")
        _tighten(key_path)
        if cert.not_valid_after_utc - RENEW_WITHIN > now:
            return cert, key, ""
        expired = f"{cert.not_valid_after_utc:%Y-%m-%d}"
        cert, key = create_ca(now)
        note = (
            f"the local CA expires on {expired}: created a new one valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; clients must trust the new ca.crt"
        )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return cert, key, note


def _load_server_pair(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate
) -> tuple[x509.Certificate | None, str]:
    """The server certificate if its files load, belong together and the CA issued it; else why not."""
    if not cert_path.exists() or not key_path.exists():
        return None, "there was none"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return None, f"the old one could not be loaded: {exc}"
    if _public_bytes(key) != cert.public_key().public_bytes(*_PEM_SPKI):
        return None, f"{key_path.name} did not match {cert_path.name}"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None, "the old one was not issued by the current CA"
    return cert, ""


def renewal_reason(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, names: Sequence[str], now: dt.datetime
) -> str | None:
    """Why the server certificate must be (re)issued, or None when it is fine as it is."""
    cert, problem = _load_server_pair(cert_path, key_path, ca_cert)
    if cert is None:
        return problem
    missing = uncovered_names(cert, names)
    if cert.not_valid_before_utc > now:
        problem = f"the old one was not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    elif cert.not_valid_after_utc - RENEW_WITHIN <= now:
        problem = f"the old one expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    elif missing:
        problem = "the old one did not cover " + ", ".join(missing)
    return problem or None


def ensure_self_signed(directory: Path, names: Sequence[str], *, now: dt.datetime | None = None) -> ServerTls:
    """Make sure ``directory`` holds a local CA and a current server certificate for ``names``.

    Creates both on first use; later reuses them, reissuing the server certificate (never the CA,
    unless the CA itself expires) when it expires within RENEW_WITHIN or misses one of ``names``.
    """
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    trust_dir = directory / TRUST_DIR
    notes = []
    with _locked(directory):
        ca_cert, ca_key, note = _load_ca(directory, now)
        if note:
            notes.append(note)
        reason = renewal_reason(cert_path, key_path, ca_cert, names, now)
        if reason is None:
            _tighten(key_path)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        else:
            cert, key = issue_server_certificate(ca_cert, ca_key, names, now)
            _write(key_path, _key_pem(key), 0o600)
            _write(cert_path, _cert_pem(cert), 0o644)
            notes.append(
                f"issued a server certificate valid until {cert.not_valid_after_utc:%Y-%m-%d} ({reason})"
            )
        trust_dir.mkdir(exist_ok=True)
        trusted = trust_dir / CA_CERT
        ca_pem = _cert_pem(ca_cert)
        if not trusted.exists() or trusted.read_bytes() != ca_pem:
            _write(trusted, ca_pem, 0o644)
    return ServerTls(
        mode=TlsMode.self_signed,
        cert=cert_path.resolve(),
        key=key_path.resolve(),
        ca_cert=(directory / CA_CERT).resolve(),
        trust_dir=trust_dir.resolve(),
        expires=cert.not_valid_after_utc,
        notes=tuple(notes),
    )


# -- what to tell the operator -----------------------------------------------------------------


def client_address(host: str, port: int, hostname: str) -> str:
    """host:port as clients would write it (the machine's name when listening on every interface)."""
    return f"{url_host(hostname if is_wildcard(host) else host)}:{port}"


def trust_instructions(tls: ServerTls, address: str) -> str:
    """How to make podman, skopeo, buildah, docker, curl and Python clients trust the local CA."""
    ca = tls.ca_cert
    lines = [
        "HTTPS with a certificate from Dockyard's local CA. Clients must trust the CA:",
        f"  CA certificate: {ca}",
        f"  podman, skopeo, buildah: --cert-dir {tls.trust_dir}  (a folder with only ca.crt; skopeo copy:",
        "      --src-cert-dir/--dest-cert-dir), or for every user of this machine:",
        f"      sudo mkdir -p /etc/containers/certs.d/{address} && "
        f"sudo cp {ca} /etc/containers/certs.d/{address}/ca.crt",
        f"  docker: sudo mkdir -p /etc/docker/certs.d/{address} && "
        f"sudo cp {ca} /etc/docker/certs.d/{address}/ca.crt",
        "      (certs.d has one folder per host:port clients use; e.g. also localhost:PORT)",
        f"  curl: curl --cacert {ca} https://{address}/v2/",
        f"  Python requests: REQUESTS_CA_BUNDLE={ca}  (replaces the default CA bundle)",
        f'  azure-containerregistry: ContainerRegistryClient(..., connection_verify="{ca}")',
        f"  dockyard CLI, httpx: SSL_CERT_FILE={ca}",
    ]
    return "\n".join(lines)


def describe(tls: ServerTls) -> str:
    """One line per event (created, renewed, warnings), or what is being reused."""
    if tls.notes:
        return "\n".join(f"  tls: {note}" for note in tls.notes)
    expires = f" (valid until {tls.expires:%Y-%m-%d})" if tls.expires else ""
    what = "the local CA's server certificate" if tls.mode == TlsMode.self_signed else "certificate"
    return f"  tls: using {what} {tls.cert}{expires}"
