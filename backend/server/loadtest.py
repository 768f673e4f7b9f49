"""A bounded load test: N clients × M edits against a running server, every job accounted for.

Each client connects, uploads its photo once, submits all its edits at once (the worst case for
fairness: a batch per client) and waits for every job; some cancel one of theirs right away.
The report says whether any job was lost or reported twice, how evenly the engine took turns,
and the throughput and latency. ``python -m backend.server.loadtest --help``; the test suite runs
it on loopback with the tiny model, and docs/benchmarks.md has a table from it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.request import DragParams, DragRequest, LoraParams, PointPair
from backend.server.client import JobFailed, RemoteJob, ServerClient
from backend.server.codec import request_to_json, upload_parts


@dataclass
class JobRecord:
    client: int
    index: int
    job: int = 0
    submitted: float = 0.0
    started: float | None = None
    """When its first event arrived (the engine took it)."""
    ended: float = 0.0
    outcome: str = "lost"  # done, cancelled, failed, lost
    cancel_asked: bool = False
    endings: int = 0


@dataclass
class LoadReport:
    clients: int
    edits: int
    seconds: float
    jobs: list[JobRecord] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(j.outcome == outcome for j in self.jobs)

    @property
    def start_order(self) -> list[int]:
        started = sorted(
            (j for j in self.jobs if j.started is not None), key=lambda j: j.started or 0.0
        )
        return [j.client for j in started]

    @property
    def max_lead(self) -> int:
        """Fairness: over every prefix of the start order, how far the most-served client was
        ahead of the least-served one that still had jobs waiting (1 is perfect turns)."""
        left = {c: sum(1 for j in self.jobs if j.client == c and j.started is not None)
                for c in range(self.clients)}  # fmt: skip
        served = dict.fromkeys(range(self.clients), 0)
        lead = 0
        for c in self.start_order:
            served[c] += 1
            waiting = [served[k] for k in served if served[k] < left[k]]
            if waiting:
                lead = max(lead, max(served.values()) - min(waiting))
        return lead

    def latencies(self) -> list[float]:
        return sorted(j.ended - j.submitted for j in self.jobs if j.outcome == "done")

    def waits(self) -> list[float]:
        return sorted(j.started - j.submitted for j in self.jobs
                      if j.outcome == "done" and j.started is not None)  # fmt: skip

    def table(self) -> str:
        lat, wait = self.latencies(), self.waits()

        def pct(xs: list[float], p: float) -> float:
            return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))] if xs else float("nan")

        done = self.count("done")
        rows = [
            ("clients × edits", f"{self.clients} × {self.edits}"),
            ("done / cancelled as asked / failed / lost",
             f"{done} / {self.count('cancelled')} / {self.count('failed')} / {self.count('lost')}"),
            ("reported twice", str(sum(j.endings > 1 for j in self.jobs))),
            ("wall time", f"{self.seconds:.1f} s"),
            ("throughput", f"{done / self.seconds:.2f} edits/s"),
            ("latency p50 / p95 / max", f"{pct(lat, .5):.1f} / {pct(lat, .95):.1f} / "
                                        f"{pct(lat, 1):.1f} s"),
            ("queue wait p50 / max", f"{pct(wait, .5):.1f} / {pct(wait, 1):.1f} s"),
            ("fairness (max lead, 1 = strict turns)", str(self.max_lead)),
        ]  # fmt: skip
        return "| measure | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def load_request(client: int, index: int, model: str, size: int = 64) -> DragRequest:
    """A tiny edit: no LoRA, few DDIM steps, one drag step (the point is the plumbing)."""
    rng = np.random.default_rng(client)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    x = 16.0 + index
    return DragRequest(
        image=image,
        pairs=(PointPair((x, 20.0), (x + 8.0, 24.0)),),
        params=DragParams(inference_steps=4, drag_steps=1, working_width=size),
        lora=LoraParams(steps=0),
        model=model,
    )


async def _client(
    n: int,
    url: str,
    token: str,
    model: str,
    edits: int,
    cancel: bool,
    ready: asyncio.Barrier,
    records: list[JobRecord],
) -> None:
    client = ServerClient(url, token)
    await client.connect()
    requests = [load_request(n, i, model) for i in range(edits)]
    parts = upload_parts(requests[0])
    blobs = {role: await client.upload(kind, data) for role, (kind, data) in parts.items()}
    mine = [JobRecord(n, i) for i in range(edits)]
    records.extend(mine)
    await ready.wait()  # everyone submits at once
    jobs: list[RemoteJob] = []
    for record, request in zip(mine, requests, strict=True):
        record.submitted = time.perf_counter()
        job = await client.submit({"type": "edit", "request": request_to_json(request, blobs)})
        record.job = job.id
        jobs.append(job)
    if cancel:
        mine[-1].cancel_asked = True
        await client.cancel(jobs[-1].id)

    async def follow(record: JobRecord, job: RemoteJob) -> None:
        def on_event(_event: Any) -> None:
            if record.started is None:
                record.started = time.perf_counter()

        try:
            await job.wait(on_event, client.limits.max_pixels)
            record.outcome = "done"
        except JobFailed as exc:
            record.outcome = "cancelled" if exc.kind == "cancelled" else "failed"
        record.ended = time.perf_counter()
        record.endings += 1

    await asyncio.gather(*(follow(r, j) for r, j in zip(mine, jobs, strict=True)))
    await client.close()


async def run_load(
    url: str, token: str, model: str, clients: int = 8, edits: int = 5, cancelling: int = 2
) -> LoadReport:
    """``cancelling`` clients (the last ones) cancel their last job right after submitting."""
    records: list[JobRecord] = []
    ready = asyncio.Barrier(clients)
    start = time.perf_counter()
    await asyncio.gather(*(
        _client(n, url, token, model, edits, n >= clients - cancelling, ready, records)
        for n in range(clients)
    ))  # fmt: skip
    report = LoadReport(clients, edits, time.perf_counter() - start, records)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.server.loadtest", description=__doc__)
    p.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:8765")
    p.add_argument("--token", default=os.environ.get("DRAGSTUDIO_SERVER_TOKEN"))
    p.add_argument("--model", required=True, help="a model name the server allows")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--edits", type=int, default=5)
    p.add_argument("--cancelling", type=int, default=2)
    args = p.parse_args(argv)
    report = asyncio.run(run_load(args.url, args.token, args.model, args.clients, args.edits,
                                  args.cancelling))  # fmt: skip
    print(report.table(), end="")
    print(f"start order (client per job): {report.start_order}", file=sys.stderr)
    return 0 if report.count("lost") == 0 and report.count("failed") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
