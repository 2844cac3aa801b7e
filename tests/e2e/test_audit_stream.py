"""The audit stream over real HTTP: server-sent events resumable with Last-Event-ID."""

import asyncio
from pathlib import Path

import pytest

from tests.e2e.conftest import Procs, api

pytestmark = pytest.mark.slow


async def test_the_stream_resumes_after_last_event_id_and_sends_new_events(
    procs: Procs, tmp_path: Path
):
    # Given a server with one domain
    server = procs.serve(tmp_path / "data", None, env={"MAILPANEL_MAILSTACK": "off"})
    await server.wait_healthy()
    async with api(server) as client:
        first = (await client.post("/api/v1/domains", json={"name": "one.example"})).json()["id"]

        async def next_ids(count: int) -> list[int]:
            ids: list[int] = []
            headers = {"Last-Event-ID": str(first)}
            async with client.stream("GET", "/api/v1/events/stream", headers=headers) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                async for line in r.aiter_lines():
                    if line.startswith("id:"):
                        ids.append(int(line.split(":", 1)[1]))
                        if len(ids) == count:
                            return ids
            return ids

        # When a stream resumes after the first event and a second domain is created
        reader = asyncio.create_task(next_ids(1))
        await asyncio.sleep(0.3)
        second = (await client.post("/api/v1/domains", json={"name": "two.example"})).json()
        # Then the stream sends exactly the new event, with its sequence as the id
        assert await asyncio.wait_for(reader, 15) == [second["id"]]
