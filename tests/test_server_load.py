"""A bounded load test on loopback: 8 clients × 5 tiny edits, all submitted at once, two clients
cancelling one job each. Nothing may be lost or reported twice, and the engine takes turns."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from backend.server.loadtest import run_load
from tests.server_helpers import TOKEN, ThreadServer

pytest.importorskip("websockets")


def test_eight_clients_five_edits_each_nothing_lost_or_doubled_and_fair(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with ThreadServer(tiny_model_dir, tmp_path) as server:
        start = time.perf_counter()
        report = asyncio.run(
            asyncio.wait_for(run_load(server.url, TOKEN, "tiny", clients=8, edits=5), 600)
        )
        seconds = time.perf_counter() - start
        assert not server.server.sessions or all(not s.jobs for s in server.server.sessions)
    print(f"\n{report.table()}start order: {report.start_order}\n({seconds:.1f} s)")
    assert len(report.jobs) == 40
    assert len({(j.client, j.job) for j in report.jobs}) == 40  # 40 distinct server jobs
    assert len({j.job for j in report.jobs}) == 40
    assert all(j.endings == 1 for j in report.jobs)  # each reported exactly once
    cancelled = [j for j in report.jobs if j.outcome == "cancelled"]
    assert [(j.client, j.index) for j in cancelled] == [(6, 4), (7, 4)]
    assert all(j.cancel_asked for j in cancelled)
    assert report.count("done") == 38 and report.count("lost") == report.count("failed") == 0
    # Fair: a batch per client, yet no client ever got more than two jobs ahead of another
    # that was still waiting (first-come-first-served would let client 0 run all five first).
    assert report.max_lead <= 2, report.start_order
