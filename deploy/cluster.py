"""Several Sluice replicas on loopback ports behind nginx on one port; all stopped together.

    make cluster N=2 PORT=8080 ARGS="--model smollm2-135m-instruct"
    .venv/bin/python deploy/cluster.py --replicas 2 --port 8080 -- --model smollm2-135m-instruct

Replicas listen on 127.0.0.1 at ``--port + 1 ... --port + N`` (or ``--replica-ports``);
nginx (Debian's package) listens on ``--host:--port`` with ``deploy/nginx.conf.in``
rendered into the run directory. SIGINT or SIGTERM stops nginx, then sends SIGTERM to
every replica (each drains its running requests for its ``--shutdown-grace``), and waits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.in"
START_TIMEOUT_S = 90.0


def render(listen: str, replica_ports: list[int], run_dir: Path) -> str:
    """The nginx configuration for ``replica_ports`` behind ``listen`` (``host:port``)."""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;"
                        for p in replica_ports)
    metrics = "\n".join(
        f"        location = /replicas/{i}/metrics {{\n"
        f"            proxy_pass http://127.0.0.1:{p}/metrics;\n"
        f"        }}" for i, p in enumerate(replica_ports))
    text = TEMPLATE.read_text(encoding="utf-8")
    for key, value in (("{run}", str(run_dir)), ("{listen}", listen), ("{servers}", servers),
                       ("{metrics}", metrics)):
        text = text.replace(key, value)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise SystemExit("nginx is not installed: apt-get install nginx (make test does)")
    return found


class Cluster:
    """N replicas and nginx, as child processes; a context manager that stops them all."""

    def __init__(self, replica_ports: list[int], listen_port: int, sluice_args: list[str], *,
                 host: str = "127.0.0.1", run_dir: Path | None = None) -> None:
        self.replica_ports = replica_ports
        self.listen_port = listen_port
        self.host = host
        self.sluice_args = sluice_args
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="sluice-cluster-"))
        self.replicas: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self._logs: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.listen_port}"

    def replica_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.replica_ports[i]}"

    def log_path(self, i: int) -> Path:
        return self.run_dir / f"replica-{i}.log"

    def start_replica(self, i: int) -> None:
        log = self.log_path(i).open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1",
             "--port", str(self.replica_ports[i]), *self.sluice_args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if i < len(self.replicas):
            self.replicas[i] = proc
        else:
            self.replicas.append(proc)

    def wait_healthy(self, i: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.replicas[i].poll() is not None:
                raise RuntimeError(f"replica {i} exited: {self.log_path(i).read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.replica_url(i) + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"replica {i} did not become healthy in {START_TIMEOUT_S:.0f} s")

    def start(self) -> None:
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render(f"{self.host}:{self.listen_port}", self.replica_ports,
                               self.run_dir), encoding="utf-8")
        for i in range(len(self.replica_ports)):
            self.start_replica(i)
        for i in range(len(self.replica_ports)):
            self.wait_healthy(i)
        nginx = nginx_binary()
        check = subprocess.run([nginx, "-t", "-q", "-p", str(self.run_dir), "-c", str(conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration: {check.stderr}")
        out = (self.run_dir / "nginx.out").open("ab")
        self._logs.append(out)
        self.nginx = subprocess.Popen([nginx, "-p", str(self.run_dir), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.run_dir / 'error.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/nginx_status", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self, timeout_s: float = 30.0) -> list[int | None]:
        """Stop nginx, then every replica (SIGTERM: they drain); their exit statuses."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: open streams finish
            try:
                self.nginx.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        for proc in self.replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in self.replicas:
            try:
                codes.append(proc.wait(timeout_s))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        for log in self._logs:
            log.close()
        self._logs.clear()
        return codes

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sluice replicas behind nginx")
    parser.add_argument("--replicas", "-n", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1", help="nginx's address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port (8080)")
    parser.add_argument("--replica-ports", help="comma-separated ports (--port + 1 ...)")
    parser.add_argument("--run-dir", type=Path, help="nginx's config, logs and temp files")
    parser.add_argument("sluice_args", nargs=argparse.REMAINDER,
                        help="after --: flags for every replica")
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= 64:
        parser.error("--replicas must be 1..64")
    ports = ([int(p) for p in args.replica_ports.split(",")] if args.replica_ports
             else [args.port + 1 + i for i in range(args.replicas)])
    rest = [a for a in args.sluice_args if a != "--"]
    cluster = Cluster(ports, args.port, rest, host=args.host, run_dir=args.run_dir)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    reported: set[int] = set()
    with cluster:
        print(f"sluice cluster: nginx on {cluster.url} -> replicas on "
              f"{', '.join(str(p) for p in ports)}; logs in {cluster.run_dir}", flush=True)
        while not stop:
            time.sleep(0.2)
            for i, proc in enumerate(cluster.replicas):
                if proc.poll() is not None and i not in reported:
                    reported.add(i)
                    print(f"sluice cluster: replica {i} exited ({proc.returncode}); "
                          "nginx sends its requests to the others", flush=True)
            if cluster.nginx is not None and cluster.nginx.poll() is not None:
                print("sluice cluster: nginx exited", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
