"""The engine host without Qt, against a scripted fake engine: threads, job ids, cancel, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from backend.errors import DragStudioError, ModelNotFound
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.request import DragRequest, PointPair
from dragstudio.runner import EngineHost, describe_failure


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which is all describe_failure looks at."""


@dataclass
class Result:
    image: np.ndarray
    trace: dict[str, Any]


class FakeEngine:
    """Emits the engine's stages with a delay per step; checks the token at every step."""

    def __init__(
        self,
        step_seconds: float = 0.01,
        fail: BaseException | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.step_seconds = step_seconds
        self.fail = fail
        self.gate = gate
        """When given, each inversion step first waits for it: the test decides when the engine
        moves on, so "returned while the engine was inside a step" is an ordering, not a time."""
        self.steps_run: list[tuple[Stage, int]] = []
        self.threads: set[int] = set()
        self.released = 0
        self.forgot = 0
        self.models: list[str] = []

    def load_model(self, spec: str) -> float:
        self.threads.add(threading.get_ident())
        if spec == "missing/model":
            raise ModelNotFound("no such model")
        self.models.append(spec)
        return 0.0

    def forget_lora(self) -> None:
        self.forgot += 1

    def release_memory(self) -> None:
        self.released += 1

    def edit(self, request: DragRequest, on_event: Any, cancel: Any) -> Result:
        self.threads.add(threading.get_ident())
        for stage, steps in ((Stage.LORA, 2), (Stage.INVERSION, 2), (Stage.DRAG, 3)):
            on_event(StageStarted(stage, steps))
            for i in range(1, steps + 1):
                if self.gate is not None and stage == Stage.INVERSION:
                    assert self.gate.wait(60), "the test never opened the gate"
                cancel.check()
                time.sleep(self.step_seconds)
                self.steps_run.append((stage, i))
                if self.fail is not None and stage == Stage.DRAG:
                    raise self.fail
                handles = ((10.0 + i, 10.0),) if stage == Stage.DRAG else None
                on_event(StepProgress(stage, i, steps, handles=handles))
            on_event(StageFinished(stage, 0.0))
        image = request.image + 1
        return Result(image, {"lora": {"cached": False}})


def request() -> DragRequest:
    image = np.zeros((32, 32, 3), np.uint8)
    return DragRequest(image, (PointPair((4, 4), (8, 8)),), model="fake")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_events_arrive_in_order_on_the_loop_thread_and_the_engine_stays_on_one_thread() -> None:
    fake = FakeEngine()
    host = EngineHost(lambda: fake)
    seen: list[tuple[object, int]] = []

    async def main() -> Any:
        loop_thread = threading.get_ident()
        first = await host.run_edit(
            request(), lambda _j, e: seen.append((e, threading.get_ident()))
        )
        second = await host.run_edit(request())
        return loop_thread, first, second

    loop_thread, first, second = run(main())
    assert first.ok and second.ok and first.job_id != second.job_id
    assert np.all(first.value.image == 1)
    assert {thread for _, thread in seen} == {loop_thread}
    assert len(fake.threads) == 1 and loop_thread not in fake.threads
    assert host.engine_thread in fake.threads
    stages = [e.stage for e, _ in seen if isinstance(e, StageStarted)]
    assert stages == [Stage.LORA, Stage.INVERSION, Stage.DRAG]
    handles = [e.handles for e, _ in seen if isinstance(e, StepProgress) and e.handles]
    assert [h[0][0] for h in handles] == [11.0, 12.0, 13.0]
    host.shutdown()


def test_cancel_returns_at_once_drops_later_events_and_the_next_job_still_runs() -> None:
    gate = threading.Event()
    fake = FakeEngine(gate=gate)
    host = EngineHost(lambda: fake)
    seen: list[object] = []

    async def main() -> Any:
        def listen(_job: int, event: object) -> None:
            seen.append(event)
            if isinstance(event, StageStarted) and event.stage == Stage.INVERSION:
                host.cancel()

        outcome = await host.run_edit(request(), listen)
        # The cancel came back while the engine was still held inside its inversion step: an
        # ordering, not a wall-clock bound that a loaded machine could break.
        assert host.engine_busy and fake.steps_run == [(Stage.LORA, 1), (Stage.LORA, 2)]
        gate.set()
        return outcome, await host.run_edit(request())

    outcome, after = run(main())
    assert outcome.failure is not None and outcome.failure.cancelled
    assert fake.steps_run[2] == (Stage.LORA, 1)  # the held step saw the cancel; then job 2
    assert not any(isinstance(e, StageStarted) and e.stage == Stage.DRAG for e in seen)
    assert after.ok
    host.shutdown()


def test_a_new_job_supersedes_the_running_one_and_its_events_are_ignored() -> None:
    fake = FakeEngine(step_seconds=0.05)
    host = EngineHost(lambda: fake)
    first_events: list[object] = []

    async def main() -> Any:
        first = asyncio.ensure_future(
            host.run_edit(request(), lambda _j, e: first_events.append(e))
        )
        while not first_events:
            await asyncio.sleep(0.01)
        second = await host.run_edit(request())
        return await first, second

    first, second = run(main())
    assert first.failure is not None and first.failure.cancelled
    assert second.ok
    assert not any(isinstance(e, StageFinished) and e.stage == Stage.DRAG for e in first_events)
    host.shutdown()


def test_failures_become_readable_and_memory_is_released() -> None:
    fake = FakeEngine(fail=OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    host = EngineHost(lambda: fake)
    outcome = run(host.run_edit(request()))
    failure = outcome.failure
    assert failure is not None and failure.out_of_memory and not failure.cancelled
    assert "smaller working width" in failure.suggestion and "CPU" in failure.suggestion
    assert "Traceback" in failure.details
    assert fake.released == 1
    host.shutdown()


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (DragStudioError("no point pairs"), "no point pairs"),
        (ValueError("shapes do not match"), "unexpectedly (ValueError"),
        (ModelNotFound("model not found: x"), "model not found"),
    ],
)
def test_describe_failure(exc: BaseException, words: str) -> None:
    failure = describe_failure(exc)
    assert words in failure.message and failure.suggestion
    assert failure.model_missing == isinstance(exc, ModelNotFound)


def test_missing_model_and_retrain_reach_the_engine_thread() -> None:
    fake = FakeEngine()
    host = EngineHost(lambda: fake)

    async def main() -> Any:
        missing = await host.load_model("missing/model")
        loaded = await host.load_model("fake")
        edited = await host.run_edit(request(), retrain_lora=True)
        return missing, loaded, edited

    missing, loaded, edited = run(main())
    assert missing.failure is not None and missing.failure.model_missing
    assert host.loaded_model == "fake" and loaded.ok
    assert edited.ok and fake.forgot == 1
    host.shutdown()


def test_creating_the_host_does_not_create_the_engine() -> None:
    made: list[int] = []
    host = EngineHost(lambda: made.append(1) or FakeEngine())  # type: ignore[func-returns-value]
    assert made == [] and host.engine_thread is None
    run(host.call(lambda: 42))
    assert made == []  # plain calls need no engine
    host.shutdown()


def test_wait_closed_lets_a_cancelled_job_finish_before_the_loop_goes() -> None:
    fake = FakeEngine(step_seconds=0.3)
    host = EngineHost(lambda: fake)

    async def main() -> tuple[Any, float]:
        def listen(_job: int, event: object) -> None:
            if isinstance(event, StageStarted) and event.stage == Stage.INVERSION:
                host.cancel()

        outcome = await host.run_edit(request(), listen)
        assert host.engine_busy  # still inside its step, as at app exit
        host.wait_closed()
        return outcome

    outcome = run(main())
    assert outcome.failure is not None and outcome.failure.cancelled
    assert not host.engine_busy  # the engine thread is done: nothing can post later
    # It waited for the step in progress, not the whole edit: counted, not timed.
    assert fake.steps_run[:2] == [(Stage.LORA, 1), (Stage.LORA, 2)]
    assert set(fake.steps_run[2:]) <= {(Stage.INVERSION, 1)}


@pytest.mark.parametrize(
    "message",
    [
        "CUDA was requested but no CUDA GPU is available; use --device cpu",
        "could not load the checkpoint x.safetensors: bad. Is it a Stable Diffusion 1.x "
        "checkpoint? Pass --model-config with the diffusers folder of its base model",
        "could not load 'a/b': gone. Download it, or pass a local diffusers folder or "
        ".safetensors file with --model",
    ],
)
def test_engine_messages_name_no_command_line_flags_in_the_window(message: str) -> None:
    from backend.errors import DragStudioError
    from backend.models import ModelNotFound

    for exc in (DragStudioError(message), ModelNotFound(message)):
        shown = describe_failure(exc).message
        assert "--" not in shown and ("settings file" in shown or "model picker" in shown)


def test_the_memory_setting_reaches_the_engine_before_each_edit() -> None:
    class PlanEngine(FakeEngine):
        def __init__(self) -> None:
            super().__init__()
            self.settings: list[str] = []

        def use_memory_setting(self, setting: str) -> None:
            self.settings.append(setting)

    fake = PlanEngine()
    host = EngineHost(lambda: fake)
    assert run(host.run_edit(request())).ok
    assert fake.settings == []  # None: the engine keeps its own
    host.memory = "8gb"
    assert run(host.run_edit(request())).ok
    assert fake.settings == ["8gb"]
