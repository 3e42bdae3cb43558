"""What an operator sets: TLS, a path prefix, the CORS preflight's lists, /v1/health."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ROOT, ServerProcess, running_server


@pytest.fixture(scope="module")
def certificate() -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the system's openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = ROOT / "test-artifacts" / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def server(certificate: tuple[Path, Path]) -> Iterator[ServerProcess]:
    key, cert = certificate
    with running_server("--ssl-key-file", str(key), "--ssl-cert-file", str(cert),
                        "--api-prefix", "/llama", "--cors-origins", "*",
                        "--cors-methods", "GET, POST", "--cors-headers",
                        "Authorization, Content-Type, X-Trace") as srv:
        yield srv


def test_https_under_the_prefix(server: ServerProcess, certificate: tuple[Path, Path]) -> None:
    assert server.base_url.startswith("https://")
    assert server.base_url.endswith("/llama")
    _key, cert = certificate
    trusted = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=server.base_url, verify=trusted, timeout=60) as client:
        out = client.post("/completion", json={"prompt": "Hello", "n_predict": 3}).json()
        assert out["tokens_predicted"] == 3
        assert client.get("/v1/models").json()["data"]
        assert client.get("/v1/health").json() == {"status": "ok"}
    # plain HTTP on the TLS port is not served
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.base_url.replace("https://", "http://") + "/health", timeout=5)


def test_paths_outside_the_prefix_are_404(server: ServerProcess) -> None:
    root = server.base_url.removesuffix("/llama")
    resp = httpx.get(root + "/health", verify=False, timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == 404
    assert httpx.get(root + "/llamafoo/health", verify=False, timeout=10).status_code == 404


def test_the_page_works_under_the_prefix(server: ServerProcess) -> None:
    page = httpx.get(server.base_url + "/", verify=False, timeout=10)
    assert page.status_code == 200
    assert '"/llama/web/app.js"' in page.text
    script = httpx.get(server.base_url + "/web/app.js", verify=False, timeout=10)
    assert script.status_code == 200
    assert "import.meta.url" in script.text  # the page finds the API from its own URL


def test_the_preflight_answers_with_the_configured_lists(server: ServerProcess) -> None:
    resp = httpx.options(server.base_url + "/v1/chat/completions", verify=False, timeout=10,
                         headers={"Origin": "https://app.example",
                                  "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "X-Trace"})
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert resp.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Trace"


def test_a_queued_stream_is_pinged_at_the_configured_interval() -> None:
    with running_server("--parallel", "1", "--sse-ping-interval", "0.2") as srv, \
            httpx.Client(base_url=srv.base_url, timeout=60) as client:
        # The blocker must hold the only slot for well over a second on any machine (60 tokens
        # took under 0.5 s on CI's), so it asks for a few hundred.
        blocker = threading.Thread(target=lambda: client.post("/completion", json={
            "prompt": "x", "n_predict": 400, "ignore_eos": True}))
        blocker.start()
        time.sleep(0.3)
        pings = 0
        started = time.perf_counter()
        with client.stream("POST", "/completion", json={"prompt": "y", "n_predict": 2,
                                                        "stream": True}) as resp:
            for line in resp.iter_lines():
                if line == ": ping":
                    pings += 1
                if line.startswith("data: "):
                    break
        waited = time.perf_counter() - started
        blocker.join()
    assert waited > 0.6, waited  # it did wait in the queue
    assert pings >= int(waited / 0.2) - 1, (pings, waited)
