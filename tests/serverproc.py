"""A real Sluice server in a child process, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


def models_dir(name: str, *files: str) -> Path:
    """``test-artifacts/<name>`` holding the embedded model under each of ``files``
    (hard links where the file system allows, copies otherwise)."""
    from app.engine.model import default_model_path

    folder = ROOT / "test-artifacts" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = folder / file
        if not target.exists():
            try:
                target.hardlink_to(default_model_path())
            except OSError:
                shutil.copyfile(default_model_path(), target)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 module: str = "app") -> None:
        self.port = free_port()
        # the server's own root: https with --ssl-cert-file, under --api-prefix when given
        tls = "--ssl-cert-file" in args
        prefix = args[args.index("--api-prefix") + 1] if "--api-prefix" in args else ""
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}{prefix}"
        self.verify = not tls  # the tests' certificates are self-signed
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = ROOT / "test-artifacts" / f"server-{self.port}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1.0,
                             verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {START_TIMEOUT_S}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None,
                   module: str = "app") -> Iterator[ServerProcess]:
    """``module`` is what ``python -m`` runs: the server, or a test's wrapper of it
    (``tests.faultserver``)."""
    server = ServerProcess(list(args), env, module)
    try:
        server.wait_ready()
        yield server
    finally:
        rc = server.terminate()
    assert rc == 0, f"server exited with {rc}: {server.log()}"
