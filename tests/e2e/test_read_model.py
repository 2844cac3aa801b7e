"""Given a log written through the real API or straight to the stream, when the read model is
rebuilt or its projector is killed mid-batch, then it ends up identical to a fresh replay."""

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Procs,
    api,
    dump_db,
    list_all,
    publish_domains,
    read_checkpoint,
)
from workers.nats_server import EmbeddedNats

pytestmark = pytest.mark.slow


async def test_rebuild_gives_the_read_model_the_api_built_incrementally(
    nats_server: EmbeddedNats, procs: Procs, tmp_path: Path
) -> None:
    # Given creates, patches and deletes made through a running API...
    data = tmp_path / "data"
    server = procs.serve(data, nats_server.url)
    await server.wait_healthy()
    async with api(server) as c:

        async def ok(method: str, path: str, body: object = None, status: int = 200) -> dict:
            response = await c.request(method, path, json=body)
            assert response.status_code == status, f"{method} {path}: {response.text}"
            result: dict = response.json()
            return result

        doomed = await ok("POST", "/api/v1/domains", {"name": "doomed.example"}, 201)
        kept = await ok("POST", "/api/v1/domains", {"name": "kept.example"}, 201)
        await ok("POST", "/api/v1/domains", {"name": "other.example", "outgoing_ip": "auto"}, 201)
        await ok("PATCH", f"/api/v1/domains/{kept['id']}", {"active": False})
        await ok("PATCH", f"/api/v1/domains/{kept['id']}", {"outgoing_ip": "192.0.2.10"})
        mailboxes = [
            await ok(
                "POST",
                "/api/v1/mailboxes",
                {"domain_id": d["id"], "username": user, "password": "secret-pw-1", "quota": 10},
                201,
            )
            for d, user in ((doomed, "a"), (doomed, "b"), (kept, "c"), (kept, "d"))
        ]
        await ok("PATCH", f"/api/v1/mailboxes/{mailboxes[2]['id']}", {"quota": 2048})
        await ok("PATCH", f"/api/v1/mailboxes/{mailboxes[2]['id']}/password", {"password": "x" * 8})
        await ok("DELETE", f"/api/v1/mailboxes/{mailboxes[3]['id']}")
        aliases = [
            await ok("POST", "/api/v1/aliases", {"source": src, "destination": "x@y.example"}, 201)
            for src in (
                "info@doomed.example",
                "@doomed.example",
                "info@kept.example",
                "hi@kept.example",
            )
        ]
        await ok("PATCH", f"/api/v1/aliases/{aliases[2]['id']}", {"destination": "a@b.example"})
        await ok("DELETE", f"/api/v1/aliases/{aliases[3]['id']}")
        await ok("DELETE", f"/api/v1/domains/{doomed['id']}")
        # (the domain delete cascaded to its mailboxes and aliases)
        assert [m["username"] for m in await list_all(c, "mailboxes")] == ["c"]
        assert [a["source"] for a in await list_all(c, "aliases")] == ["info@kept.example"]
    assert await asyncio.to_thread(server.terminate) == 0, server.log_tail()
    incremental = dump_db(data / "read.db")
    assert len(incremental["events"]) == 19  # every write above is one event
    # When the read model is rebuilt from the log with the server stopped,
    await asyncio.to_thread(procs.rebuild, data, nats_server.url)
    # then it is row for row the one the API built.
    assert dump_db(data / "read.db") == incremental


async def test_a_projector_killed_mid_batch_resumes_without_losing_or_repeating_events(
    nats_server: EmbeddedNats, procs: Procs, tmp_path: Path
) -> None:
    total = await publish_domains(nats_server.url, 20_000)
    data = tmp_path / "data"
    db_path = data / "read.db"
    # Given a projector part way through the log,
    projector = procs.project(data, nats_server.url, name="project-1")
    deadline = time.monotonic() + 60
    while not 0 < (checkpoint := read_checkpoint(db_path)) < total:
        assert checkpoint < total, "projected everything before it could be killed"
        assert projector.alive(), projector.log_tail()
        assert time.monotonic() < deadline, "the projector made no progress"
        await asyncio.sleep(0.005)
    # when it is SIGKILLed and started again,
    assert await asyncio.to_thread(projector.kill) == -signal.SIGKILL
    assert 0 < read_checkpoint(db_path) < total
    again = procs.project(data, nats_server.url, name="project-2")
    deadline = time.monotonic() + 60
    while read_checkpoint(db_path) < total:
        assert again.alive(), again.log_tail()
        assert time.monotonic() < deadline, f"stuck at {read_checkpoint(db_path)} of {total}"
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(again.terminate) == 0, again.log_tail()
    # then its read model equals a fresh replay of the same log, one domain per event.
    other = tmp_path / "other"
    await asyncio.to_thread(procs.rebuild, other, nats_server.url)
    resumed = dump_db(db_path)
    assert resumed == dump_db(other / "read.db")
    assert len(resumed["domains"]) == total
    assert resumed["checkpoint"] == [("projector", total)]
