"""Background preparation on the engine host, against a scripted fake engine: a Drag continues
the running preparation, another key supersedes it, cancelling stops it within one step."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.preparation import preparation_key
from backend.request import DragRequest, PointPair
from dragstudio.runner import EngineHost


class FakeEngine:
    """Prepares in steps (checking the token at each) and records what each edit found."""

    def __init__(self, step_seconds: float = 0.02) -> None:
        self.step_seconds = step_seconds
        self.prepared: set[str] = set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def load_model(self, spec: str) -> float:
        self.calls.append(f"load {spec}")
        return 0.0

    def forget_lora(self) -> None:
        self.prepared.clear()

    def release_memory(self) -> None:
        pass

    def _stages(self, request: DragRequest, on_event: Any, cancel: Any) -> None:
        for stage, steps in ((Stage.LORA, 4), (Stage.INVERSION, 2)):
            on_event(StageStarted(stage, steps))
            for i in range(1, steps + 1):
                cancel.check()
                time.sleep(self.step_seconds)
                on_event(StepProgress(stage, i, steps))
            on_event(StageFinished(stage, 0.0))

    def prepare(self, request: DragRequest, on_event: Any, cancel: Any) -> dict:
        self.calls.append("prepare")
        self._stages(request, on_event, cancel)
        self.prepared.add(preparation_key(request) or "")
        return {"prepared": True}

    def edit(self, request: DragRequest, on_event: Any, cancel: Any) -> dict:
        key = preparation_key(request) or ""
        found = key in self.prepared
        self.calls.append("edit (prepared)" if found else "edit")
        on_event(StageStarted(Stage.LOAD, 1))
        on_event(StageFinished(Stage.LOAD, 0.0))
        if found:
            for stage in (Stage.LORA, Stage.INVERSION):
                on_event(StageStarted(stage, 0, "reusing"))
                on_event(StageFinished(stage, 0.0))
        else:
            self._stages(request, on_event, cancel)
            self.prepared.add(key)
        on_event(StageStarted(Stage.DRAG, 1))
        on_event(StepProgress(Stage.DRAG, 1, 1))
        return {"found_prepared": found}


def request(prompt: str = "a photo") -> DragRequest:
    image = np.zeros((32, 32, 3), np.uint8)
    return DragRequest(image, (PointPair((4, 4), (8, 8)),), prompt=prompt, model="fake")


def test_a_drag_during_preparation_continues_it_and_shows_its_progress() -> None:
    engine = FakeEngine()
    host = EngineHost(lambda: engine)
    quiet: list = []
    heard: list = []

    async def scenario() -> tuple[Any, Any]:
        prep = asyncio.ensure_future(host.prepare(replace(request(), pairs=()), quiet.append))
        while not any(isinstance(e, StepProgress) for e in quiet):
            await asyncio.sleep(0.005)  # LoRA has started
        assert host.preparing is not None and not host.busy
        edit = await host.run_edit(request(), lambda _job, e: heard.append(e))
        return await prep, edit

    prepared, edited = asyncio.run(scenario())
    assert prepared.ok and prepared.value == {"prepared": True}
    assert edited.ok and edited.value == {"found_prepared": True}
    assert engine.calls == ["prepare", "edit (prepared)"]  # no restart, no second copy
    # The drag heard the preparation from where it was (the LoRA stage), after a note that
    # the model is loaded, then its own stages: each stage once, in order.
    started = [e.stage for e in heard if isinstance(e, StageStarted)]
    assert started == [Stage.LOAD, Stage.LORA, Stage.INVERSION, Stage.DRAG]
    assert not any(isinstance(e, StageStarted) and e.detail == "reusing" for e in heard)
    inversion = [e.step for e in heard if isinstance(e, StepProgress) and e.stage == "inversion"]
    assert inversion == [1, 2]
    assert host.preparing is None
    host.wait_closed()


class LoadingEngine(FakeEngine):
    """Loads its model inside the preparation, as the real engine does on a fresh start."""

    def prepare(self, request: DragRequest, on_event: Any, cancel: Any) -> dict:
        on_event(StageStarted(Stage.LOAD, 1))
        time.sleep(self.step_seconds)
        on_event(StageFinished(Stage.LOAD, self.step_seconds))
        return super().prepare(request, on_event, cancel)


def test_a_drag_pressed_while_preparing_waits_for_the_model_not_the_lora() -> None:
    """The window loads the model before a Drag; while a preparation loads the same model and
    then trains, that wait ends when the model is in (so the Drag shows the LoRA's progress),
    not after the whole preparation (it said "Loading the model" for minutes)."""
    engine = LoadingEngine(step_seconds=0.1)
    host = EngineHost(lambda: engine)
    heard: list = []

    async def scenario() -> tuple[Any, Any]:
        prep = asyncio.ensure_future(host.prepare(replace(request(), pairs=()), None))
        await asyncio.sleep(0.01)  # preparing: the model is loading
        assert host.preparing is not None and host.loaded_model is None
        loaded = await host.load_model("fake")
        assert loaded.ok and host.loaded_model == "fake"
        assert not prep.done() and host.preparing is not None  # it goes on: not cancelled
        edit = await host.run_edit(request(), lambda _job, e: heard.append(e))
        return await prep, edit

    prepared, edited = asyncio.run(scenario())
    assert prepared.ok and edited.ok and edited.value == {"found_prepared": True}
    assert engine.calls == ["prepare", "edit (prepared)"]  # no separate load, no restart
    lora_steps = [e.step for e in heard if isinstance(e, StepProgress) and e.stage == Stage.LORA]
    assert lora_steps and lora_steps[-1] == 4  # the Drag showed the preparation's LoRA
    host.wait_closed()


def test_the_same_key_joins_and_another_key_supersedes() -> None:
    engine = FakeEngine()
    host = EngineHost(lambda: engine)

    async def scenario() -> list[Any]:
        a1 = asyncio.ensure_future(host.prepare(request("a")))
        a2 = asyncio.ensure_future(host.prepare(request("a")))  # joined, not repeated
        await asyncio.sleep(0.03)
        b = asyncio.ensure_future(host.prepare(request("b")))  # supersedes "a"
        return list(await asyncio.gather(a1, a2, b))

    a1, a2, b = asyncio.run(scenario())
    assert a1.failure is not None and a1.failure.cancelled
    assert a2 is a1 or (a2.failure is not None and a2.failure.cancelled)
    assert b.ok
    assert engine.calls == ["prepare", "prepare"]
    assert engine.prepared == {preparation_key(request("b"))}
    host.wait_closed()


def test_cancel_stops_within_one_step_and_an_unrelated_drag_cancels_it() -> None:
    engine = FakeEngine(step_seconds=0.05)
    host = EngineHost(lambda: engine)
    seen: list = []

    async def cancelled_by_hand() -> Any:
        prep = asyncio.ensure_future(host.prepare(request(), seen.append))
        while not seen or not isinstance(seen[-1], StepProgress):
            await asyncio.sleep(0.005)
        assert host.cancel_preparation()
        return await prep

    out = asyncio.run(cancelled_by_hand())
    assert out.failure is not None and out.failure.cancelled
    steps = [e for e in seen if isinstance(e, StepProgress)]
    assert len(steps) == 1  # events stop at once; the engine stops at its next check
    assert not engine.prepared

    async def superseded_by_a_drag() -> tuple[Any, Any]:
        prep = asyncio.ensure_future(host.prepare(request("photo prompt")))
        await asyncio.sleep(0.06)
        edit = await host.run_edit(request("another prompt"))
        return await prep, edit

    engine.calls.clear()
    prep, edit = asyncio.run(superseded_by_a_drag())
    assert prep.failure is not None and prep.failure.cancelled
    assert edit.ok and edit.value == {"found_prepared": False}
    assert engine.calls == ["prepare", "edit"]
    assert engine.prepared == {preparation_key(request("another prompt"))}
    host.wait_closed()


def test_cancelling_the_drag_leaves_the_preparation_running() -> None:
    engine = FakeEngine()
    host = EngineHost(lambda: engine)

    async def scenario() -> tuple[Any, Any]:
        prep = asyncio.ensure_future(host.prepare(request()))
        await asyncio.sleep(0.03)
        edit = asyncio.ensure_future(host.run_edit(request()))
        await asyncio.sleep(0.01)
        assert host.cancel()
        return await prep, await edit

    prep, edit = asyncio.run(scenario())
    assert edit.failure is not None and edit.failure.cancelled
    assert prep.ok and engine.calls == ["prepare"]
    host.wait_closed()
