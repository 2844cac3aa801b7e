"""Given `mailpanel serve` as a real process, when it is stopped, killed and restarted, then
it cleans up its embedded nats-server and loses no acknowledged write."""

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    Procs,
    Server,
    api,
    list_all,
    nats_servers_under,
    wait_until,
)
from workers.nats_server import EmbeddedNats

pytestmark = pytest.mark.slow

ORPHAN_TIMEOUT_S = 10.0


async def embedded_serve(procs: Procs, data: Path, name: str = "serve") -> Server:
    """serve without MAILPANEL_NATS_URL: it runs its own nats-server under DATA/nats."""
    server = procs.serve(data, None, name=name)
    await server.wait_healthy()
    assert nats_servers_under(data), "serve is healthy but runs no nats-server under its dir"
    return server


async def test_sigterm_stops_serve_with_code_0_and_its_embedded_nats_server_with_it(
    procs: Procs, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = await embedded_serve(procs, data)
    assert await asyncio.to_thread(server.terminate) == 0, server.log_tail()
    assert nats_servers_under(data) == []


async def test_sigkill_of_serve_takes_its_embedded_nats_server_down_too(
    procs: Procs, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = await embedded_serve(procs, data)
    assert await asyncio.to_thread(server.kill) == -signal.SIGKILL
    await asyncio.to_thread(
        wait_until,
        lambda: not nats_servers_under(data),
        ORPHAN_TIMEOUT_S,
        "the orphaned nats-server has exited",
    )


async def test_serve_restarted_after_sigkill_comes_up_with_the_earlier_domains(
    procs: Procs, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await embedded_serve(procs, data, name="serve-1")
    async with api(first) as c:
        created = []
        for name in ("one.example", "two.example", "three.example"):
            response = await c.post("/api/v1/domains", json={"name": name})
            assert response.status_code == 201, response.text
            created.append(response.json())
    await asyncio.to_thread(first.kill)
    await asyncio.to_thread(
        wait_until,
        lambda: not nats_servers_under(data),
        ORPHAN_TIMEOUT_S,
        "the orphaned nats-server has exited",
    )
    second = await embedded_serve(procs, data, name="serve-2")
    async with api(second) as c:
        assert await list_all(c) == created


async def test_every_acknowledged_create_survives_a_sigkill_of_serve_mid_burst(
    nats_server: EmbeddedNats, procs: Procs, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = procs.serve(data, nats_server.url, name="serve-1")
    await first.wait_healthy()
    acked: dict[str, int] = {}
    lost: list[str] = []
    # Capped concurrency: all 100 at once are answered in one burst (the projector applies
    # them in one batch), so the kill would come after the last answer, not mid-flight.
    in_flight = asyncio.Semaphore(16)

    async def create(client: httpx.AsyncClient, name: str) -> None:
        try:
            async with in_flight:
                response = await client.post("/api/v1/domains", json={"name": name})
        except httpx.HTTPError:
            lost.append(name)  # no answer: may or may not have been recorded
            return
        if response.status_code == 201:
            acked[name] = response.json()["id"]
            if len(acked) == 50:
                os.kill(first.pid, signal.SIGKILL)
        else:
            lost.append(name)

    # Given 100 concurrent creates (16 in flight at a time),
    # when serve is SIGKILLed after the 50th acknowledgement,
    async with api(first) as c:
        await asyncio.gather(*(create(c, f"burst{i}.example") for i in range(100)))
    assert await asyncio.to_thread(first.wait) == -signal.SIGKILL
    assert 50 <= len(acked) < 100, "the kill did not cut the burst"
    # then after a restart every acknowledged domain is there once, with the id it was given.
    second = procs.serve(data, nats_server.url, name="serve-2")
    await second.wait_healthy()
    async with api(second) as c:
        listed = await until_listed(c, set(acked))
    by_name: dict[str, list[int]] = {}
    for domain in listed:
        by_name.setdefault(domain["name"], []).append(domain["id"])
    assert {name: by_name.get(name) for name in acked} == {n: [i] for n, i in acked.items()}
    assert set(by_name) <= set(acked) | set(lost)
    assert all(len(ids) == 1 for ids in by_name.values())


async def until_listed(
    client: httpx.AsyncClient, names: set[str], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The domain list once it contains `names` (a restarted process replays in the
    background, and read-your-writes across restarts is not promised)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await list_all(client)
        if names <= {d["name"] for d in listed} or time.monotonic() > deadline:
            return listed
        await asyncio.sleep(0.05)


async def test_the_embedded_nats_server_refuses_clients_without_credentials(
    procs: Procs, tmp_path: Path
) -> None:
    import nats
    import nats.errors

    data = tmp_path / "data"
    await embedded_serve(procs, data)
    url = (data / "nats.url").read_text().strip()
    assert "@" not in url  # no credentials written next to the data
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await asyncio.wait_for(
            nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0), 5
        )
