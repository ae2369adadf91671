"""Operations against a real `dockyard serve`: check-health, /metrics across worker processes, JSON logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.observability import multiprocess
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DockyardServer,
    dockyard_command,
    run,
    wait_for,
)
from tests.support.postgres import free_port

pytestmark = pytest.mark.e2e


def cli_environment(home: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment with a private HOME (no saved logins) and no DOCKYARD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(
        HOME=str(home), DOCKER_CONFIG=str(home / ".docker"), REGISTRY_AUTH_FILE=str(home / "auth.json")
    )
    env.update(XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home))
    env.update(extra)
    return env


def test_check_health_passes_against_a_running_registry(
    dockyard_server: DockyardServer, tmp_path: Path
) -> None:
    env = cli_environment(tmp_path, DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD)
    result = run(dockyard_command("check-health", "--registry", dockyard_server.url, "--yes"), env=env)
    lines = result.stdout.splitlines()
    for check in ("local clients", "DNS", "TCP", "TLS", "registry API", "token", "readiness"):
        assert any(line.startswith(f"✓ {check}: ") for line in lines), result.stdout
    assert "✗" not in result.stdout
    assert "/oauth2/token" in result.stdout
    assert lines[-1] == "The registry is healthy."


def test_check_health_without_credentials_fails_at_the_token(
    dockyard_server: DockyardServer, tmp_path: Path
) -> None:
    result = run(
        dockyard_command("check-health", "--registry", dockyard_server.url),
        env=cli_environment(tmp_path),
        check=False,
    )
    assert result.returncode == 1
    assert f"✗ token: no credentials for {dockyard_server.host}" in result.stdout
    assert f"hint: run `dockyard login {dockyard_server.host}`" in result.stdout
    assert "readiness" not in result.stdout  # the first failure stops the run, as in az
    with_rest = run(
        dockyard_command("check-health", "--registry", dockyard_server.url, "--ignore-errors"),
        env=cli_environment(tmp_path),
        check=False,
    )
    assert with_rest.returncode == 1
    assert "✓ readiness: " in with_rest.stdout


def test_check_health_against_a_dead_port_says_so(tmp_path: Path) -> None:
    port = free_port()
    result = run(
        dockyard_command("check-health", "--registry", f"http://127.0.0.1:{port}"),
        env=cli_environment(tmp_path),
        check=False,
    )
    assert result.returncode == 1
    assert f"✗ TCP: connection to 127.0.0.1:{port} refused" in result.stdout
    assert "is `dockyard serve` running" in result.stdout
    assert "registry API" not in result.stdout
    assert "1 check(s) failed; --ignore-errors runs the remaining checks" in result.stderr


def test_metrics_add_up_across_workers_and_logs_are_json(start_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir, extra_args=["--workers", "2", "--log-format", "json"])
    requests = 40
    for _ in range(requests):  # a connection each, so both workers (SO_REUSEPORT) take some
        with httpx.Client() as fresh:
            assert fresh.get(f"{server.url}/v2/").status_code == 401
    assert server.proc is not None
    [metrics_dir] = multiprocess.memory_root().glob(f"{multiprocess.PREFIX}{server.proc.pid}-*")
    files = {path.name for path in metrics_dir.glob("*.db")}
    assert len({name.rsplit("_", 1)[1] for name in files}) == 2, files  # both workers recorded

    def unauthorised_count() -> float:
        scraped = httpx.get(f"{server.url}/metrics")
        assert scraped.status_code == 200
        counts = [
            sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
            if sample.name == "dockyard_http_requests_total"
            and sample.labels == {"route": "/v2/", "method": "GET", "status": "401"}
        ]
        assert counts[0] <= requests
        return counts[0]

    # Each worker writes its tallies within a second; the one answering the scrape, at once.
    wait_for(lambda: unauthorised_count() == requests, timeout=10, what="both workers' counts", interval=0.2)
    server.stop()
    assert not metrics_dir.exists()  # the server removes its folder
    assert not (data_dir / "metrics").exists()  # never on the data disk (a full disk is SIGBUS)
    records = [json.loads(line) for line in server.stderr().splitlines() if line.strip()]
    access = [r for r in records if r.get("logger") == "dockyard.access"]
    assert sum(r["path"] == "/v2/" and r["status"] == 401 for r in access) == requests
    assert any(r["message"].startswith("Dockyard ") for r in records if r["logger"] == "dockyard")
    assert any(r["logger"] == "_granian" for r in records)


def test_check_health_over_https_verifies_the_certificate(start_https_server, tmp_path: Path) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    credentials = {"DOCKYARD_USERNAME": ADMIN_USERNAME, "DOCKYARD_PASSWORD": ADMIN_PASSWORD}
    command = dockyard_command("check-health", "--registry", server.url)
    untrusted = run(command, env=cli_environment(tmp_path, **credentials), check=False)
    assert untrusted.returncode == 1
    assert "✗ TLS: the certificate of 127.0.0.1 is not trusted" in untrusted.stdout
    assert "SSL_CERT_FILE" in untrusted.stdout
    trusted = run(command, env=cli_environment(tmp_path, SSL_CERT_FILE=str(server.ca_cert), **credentials))
    assert "✓ TLS: TLSv1." in trusted.stdout
    assert f"from https://127.0.0.1:{server.port}/oauth2/token" in trusted.stdout
    assert trusted.stdout.splitlines()[-1] == "The registry is healthy."


def test_check_health_fails_when_v2_answers_without_asking_for_credentials(tmp_path: Path) -> None:
    """A registry (or a proxy) answering GET /v2/ with 200 to a caller without credentials: clients
    then never sign in, so their pushes fail. check-health says so instead of calling it healthy."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Open(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Open)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run(
            dockyard_command("check-health", "--registry", url), env=cli_environment(tmp_path), check=False
        )
    finally:
        server.shutdown()
        thread.join()
    assert result.returncode == 1
    assert "✗ registry API: GET /v2/ answers 200 without credentials" in result.stdout
    assert "The registry is healthy." not in result.stdout
