"""Two replicas behind real nginx on loopback (``deploy/cluster.py``): distribution, session
affinity seen in ``tokens_cached``, SSE through the proxy, a client leaving, drain on SIGTERM,
failover after SIGKILL, and each replica's metrics through the proxy."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deploy.cluster import Cluster
from tests.serverproc import free_port

ARGS = ["--parallel", "2", "--ctx-size", "4096", "--metrics", "--shutdown-grace", "2"]
TIMEOUT = httpx.Timeout(60.0)
STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman who "
         "told the children stories about the islands beyond the horizon, where the birds "
         "were made of glass and the rivers ran uphill every morning. ")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster([free_port(), free_port()], free_port(), ARGS) as c:
        yield c


def upstream_index(cluster: Cluster, resp: httpx.Response) -> int:
    port = int(resp.headers["x-sluice-upstream"].split(",")[-1].strip().rsplit(":", 1)[1])
    return cluster.replica_ports.index(port)


def complete(cluster: Cluster, body: dict[str, Any], **headers: str) -> httpx.Response:
    resp = httpx.post(cluster.url + "/completion", json={"temperature": 0, **body},
                      headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp


def idle(url: str) -> bool:
    return not any(s["is_processing"] for s in httpx.get(url + "/slots", timeout=TIMEOUT).json())


def wait_for(predicate: Any, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - start


def restart(cluster: Cluster, i: int) -> None:
    """Start replica ``i`` again and wait until nginx sends it requests: nginx keeps a failed
    replica out for ``fail_timeout`` (3 s) even once it is back."""
    if cluster.replicas[i].poll() is None:
        return
    cluster.start_replica(i)
    cluster.wait_healthy(i)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        resp = httpx.post(cluster.url + "/completion", json={"prompt": "Hi", "n_predict": 1},
                          timeout=TIMEOUT)
        if resp.status_code == 200 and upstream_index(cluster, resp) == i:
            return
        time.sleep(0.3)
    raise AssertionError(f"nginx did not route to replica {i} again")


def test_requests_without_a_session_are_spread(cluster: Cluster) -> None:
    used = [upstream_index(cluster, complete(cluster, {"prompt": "Hi", "n_predict": 2}))
            for _ in range(4)]
    assert set(used) == {0, 1}


def test_a_session_stays_on_the_replica_holding_its_cache(cluster: Cluster) -> None:
    results = {}
    for affinity, story in ((False, STORY), (True, "In a city of bridges, " + STORY)):
        headers = {"X-Session-Id": "conversation-42"} if affinity else {}
        first = complete(cluster, {"prompt": story, "n_predict": 8}, **headers)
        follow = story + first.json()["content"] + " And then"
        second = complete(cluster, {"prompt": follow, "n_predict": 4}, **headers)
        results[affinity] = (upstream_index(cluster, first), upstream_index(cluster, second),
                             second.json()["tokens_cached"], first.json()["tokens_evaluated"])
    same, other = results[True], results[False]
    assert same[0] == same[1]  # the session's second turn found its replica
    assert same[2] >= same[3] - 1  # ... and its whole first prompt cached there
    assert other[0] != other[1]  # without a key: the other replica (least connections)
    assert other[2] <= 1  # ... which evaluates the whole prompt again (all but the BOS)


def test_sse_streams_through_the_proxy_as_tokens_are_made(cluster: Cluster) -> None:
    times: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", cluster.url + "/completion", timeout=TIMEOUT, json={
            "prompt": STORY, "n_predict": 48, "stream": True, "ignore_eos": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        # nginx obeys the replica's X-Accel-Buffering: no and does not pass it on
        assert "x-accel-buffering" not in resp.headers
        for line in resp.iter_lines():
            if line.startswith("data: "):
                times.append(time.monotonic() - start)
    assert len(times) >= 48
    # unbuffered: the first token arrives long before the last (not all at the end)
    assert times[0] < times[-1] / 2, (times[0], times[-1])


def _leave_after(url: str, n: int, headers: dict[str, str] | None = None) -> None:
    with httpx.stream("POST", url + "/completion", headers=headers or {}, timeout=TIMEOUT,
                      json={"prompt": STORY, "n_predict": 3000, "stream": True,
                            "ignore_eos": True}) as resp:
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= n:
                    break  # the client leaves


def test_a_client_that_leaves_through_the_proxy_frees_its_slot(cluster: Cluster) -> None:
    target = cluster.replica_url(0)
    _leave_after(target, 3)
    direct_s = wait_for(lambda: idle(target), 10)  # from the client's close to a free slot
    proxied: list[float] = []
    for _ in range(2):
        _leave_after(cluster.url, 3)
        proxied.append(wait_for(lambda: idle(cluster.replica_url(0))
                                and idle(cluster.replica_url(1)), 10))
    # through nginx the replica sees the disconnect as fast as directly (well within a second)
    assert max(proxied) < 1.0, (proxied, direct_s)
    assert direct_s < 1.0


def test_sigterm_drains_a_replica_while_the_other_serves(cluster: Cluster) -> None:
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", cluster.url + "/completion", timeout=TIMEOUT, json={
            "prompt": STORY, "n_predict": 3000, "stream": True, "ignore_eos": True}) as resp:
        victim = upstream_index(cluster, resp)
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break
        cluster.replicas[victim].send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        # new requests meanwhile go to the other replica
        for _ in range(3):
            r = complete(cluster, {"prompt": "Hi", "n_predict": 2})
            assert upstream_index(cluster, r) != victim
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    try:
        ended_s = time.monotonic() - stopped
        assert events[-1]["stop"] is True  # the running stream ended with its final object ...
        assert events[-1].get("shutdown") is True  # ... marked, within the grace period
        assert ended_s < 2.0 + 3.0
        assert cluster.replicas[victim].wait(10) == 0
    finally:
        restart(cluster, victim)
    assert idle(cluster.replica_url(victim))


def _stream_until_killed(cluster: Cluster, victim: list[int]) -> None:
    with httpx.stream("POST", cluster.url + "/completion", timeout=TIMEOUT, json={
            "prompt": STORY, "n_predict": 3000, "stream": True, "ignore_eos": True}) as resp:
        victim.append(upstream_index(cluster, resp))
        for n, _line in enumerate(resp.iter_lines()):
            if n == 4:
                cluster.replicas[victim[0]].send_signal(signal.SIGKILL)


def test_sigkill_mid_stream_is_a_clean_error_and_the_others_serve(cluster: Cluster) -> None:
    started = time.monotonic()
    victim: list[int] = []
    try:
        with pytest.raises(httpx.RemoteProtocolError):  # the stream breaks; it does not hang
            _stream_until_killed(cluster, victim)
        assert time.monotonic() - started < 30
        for _ in range(4):  # every next request succeeds, on the survivor
            r = complete(cluster, {"prompt": "Hi", "n_predict": 2})
            assert upstream_index(cluster, r) != victim[0]
    finally:
        if victim:
            restart(cluster, victim[0])


def test_each_replicas_metrics_are_reachable_through_the_proxy(cluster: Cluster) -> None:
    for i in range(2):
        direct = httpx.get(cluster.replica_url(i) + "/metrics", timeout=TIMEOUT).text
        proxied = httpx.get(cluster.url + f"/replicas/{i}/metrics", timeout=TIMEOUT)
        assert proxied.status_code == 200
        assert "llamacpp:tokens_predicted_total" in proxied.text
        assert proxied.text.count("\n") == direct.count("\n")
    status = httpx.get(cluster.url + "/nginx_status", timeout=TIMEOUT).text
    assert "Active connections" in status
