"""The server's pieces without a network: framing, the strict codec, uploads, the fair queue,
the token file."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from backend.errors import DragStudioError, InvalidRequest
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.request import DragRequest, PointPair
from backend.server import protocol
from backend.server.auth import bearer, load_or_create_token, token_matches
from backend.server.blobs import BlobStore
from backend.server.codec import (
    event_from_json,
    event_to_json,
    png_bytes,
    request_from_json,
    request_to_json,
    sha256,
    upload_parts,
)
from backend.server.protocol import Limits, ProtocolError, pack, unpack
from backend.server.queue import FairQueue


def test_frames_round_trip_and_malformed_frames_are_refused() -> None:
    assert unpack(pack({"type": "ping", "id": 1})) == ({"type": "ping", "id": 1}, None)
    header, payload = unpack(pack({"type": "upload", "id": 2}, b"\x00bytes"))
    assert header["type"] == "upload" and payload == b"\x00bytes"
    for bad in ("not json", "[1, 2]", '{"id": 1}', '{"type": NaN}', b"\x00\x00", b"\xff" * 8,
                b"\x00\x00\x00\x02\xff\xfe"):  # fmt: skip
        with pytest.raises(ProtocolError):
            unpack(bad)


def test_events_round_trip_with_previews_and_bad_events_are_refused() -> None:
    preview = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    events = [
        StageStarted(Stage.LORA, 80, "fine-tuning LoRA"),
        StepProgress(
            Stage.DRAG, 3, 80, loss=0.25, handles=((1.5, 2.0), (3.0, 4.25)), preview=preview
        ),
        StepProgress(Stage.INVERSION, 1, 35),
        StageFinished(Stage.DENOISE, 1.5),
    ]
    for event in events:
        header, payload = event_to_json(event)
        back = event_from_json(header, payload, max_pixels=10**6)
        assert back == event  # frozen dataclasses: every field but the preview compares
        if isinstance(event, StepProgress) and event.preview is not None:
            assert isinstance(back, StepProgress) and np.array_equal(back.preview, preview)
    good, _ = event_to_json(events[2])
    for change in ({"stage": "paint"}, {"step": -1}, {"loss": "x"}, {"extra": 1},
                   {"kind": "finished"}, {"handles": [[1.0]]}, {"preview": True}):  # fmt: skip
        with pytest.raises(ProtocolError):
            event_from_json({**good, **change}, None, max_pixels=10**6)


def _lookup(blobs: dict[str, np.ndarray]):
    def lookup(kind: str, digest: str) -> np.ndarray:
        if digest not in blobs:
            raise ProtocolError(protocol.MISSING_BLOB, "missing")
        return blobs[digest]

    return lookup


def test_requests_round_trip_through_uploads_and_are_validated(photo: np.ndarray) -> None:
    mask = np.zeros(photo.shape[:2], bool)
    mask[10:100, 20:90] = True
    request = DragRequest(photo, (PointPair((10.0, 20.5), (30.0, 40.0)),), mask, "a cat")
    store = BlobStore(Limits())
    names = {}
    for role, (kind, data) in upload_parts(request).items():
        store.add(kind, sha256(data), data)
        names[role] = sha256(data)
    data = request_to_json(request, names)
    back = request_from_json(data, store.get)
    assert np.array_equal(back.image, photo) and np.array_equal(back.mask, mask)
    assert back.pairs == request.pairs and back.params == request.params
    assert back.lora == request.lora and back.prompt == "a cat"
    assert back.vae is None and "vae" not in data
    with_vae = request_from_json({**data, "vae": "stabilityai/sd-vae-ft-mse"}, store.get)
    assert with_vae.vae == "stabilityai/sd-vae-ft-mse"
    with pytest.raises(ProtocolError, match="unknown field"):
        request_from_json({**data, "path": "/etc/passwd"}, store.get)
    with pytest.raises(ProtocolError, match="unknown field"):
        request_from_json({**data, "params": {**data["params"], "evil": 1}}, store.get)
    with pytest.raises(InvalidRequest, match=r"(?i)drag steps"):
        request_from_json({**data, "params": {**data["params"], "drag_steps": -3}}, store.get)
    with pytest.raises(InvalidRequest, match="outside"):
        request_from_json({**data, "pairs": [[1e6, 0, 0, 0]]}, store.get)
    with pytest.raises(ProtocolError, match=r"finite|number"):
        request_from_json({**data, "pairs": [["1", 0, 0, 0]]}, store.get)
    with pytest.raises(ProtocolError) as missing:
        request_from_json({**data, "image": "0" * 64}, store.get)
    assert missing.value.code == protocol.MISSING_BLOB


def test_uploads_are_bounded_and_checked_like_local_files(photo: np.ndarray) -> None:
    png = png_bytes(photo)
    store = BlobStore(Limits(max_image_bytes=len(png) + 10, max_pixels=300 * 300, max_blobs=2))
    store.add("image", sha256(png), png)
    assert np.array_equal(store.get("image", sha256(png)), photo)
    big = png_bytes(np.zeros((400, 400, 3), np.uint8))
    with pytest.raises(ProtocolError, match="pixels") as e:
        store.add("image", sha256(big), big)
    assert e.value.code == protocol.INVALID
    huge = png + b"\0" * 100
    with pytest.raises(ProtocolError) as e:
        store.add("image", sha256(huge), huge)
    assert e.value.code == protocol.TOO_LARGE
    with pytest.raises(ProtocolError, match="sha256"):
        store.add("image", "0" * 64, png)
    for junk in (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\0" * 20, png[: len(png) // 2]):
        with pytest.raises(ProtocolError) as e:
            store.add("image", sha256(junk), junk)
        assert e.value.code == protocol.INVALID
    grey = png_bytes(photo[..., 0].copy())  # an 8-bit grey PNG is no RGB image
    with pytest.raises(ProtocolError, match="RGB"):
        store.add("image", sha256(grey), grey)
    with pytest.raises(ProtocolError, match=r"DragStudio LoRA|safetensors"):
        store.add("lora", sha256(png), png)
    with pytest.raises(ProtocolError, match="kind"):
        store.add("script", sha256(png), png)
    # The count bound drops the least recently used upload.
    others = [png_bytes(photo[: 20 + i]) for i in range(2)]
    for data in others:
        store.add("image", sha256(data), data)
    assert len(store) == 2 and sha256(png) not in store


def test_upload_rate_is_limited(photo: np.ndarray) -> None:
    small = png_bytes(photo[:16, :16])
    store = BlobStore(Limits(uploads_per_minute=3))
    for _ in range(3):
        store.add("image", sha256(small), small)
    with pytest.raises(ProtocolError) as e:
        store.add("image", sha256(small), small)
    assert e.value.code == protocol.RATE_LIMITED


@dataclass(eq=False)
class _Job:
    owner: str
    n: int


def test_the_queue_takes_sessions_in_turn_and_cancels_queued_jobs() -> None:
    q: FairQueue[_Job] = FairQueue()
    batch = [_Job("a", n) for n in range(5)]
    for job in batch:
        q.put(job)
    single = _Job("b", 0)
    q.put(single)
    q.put(_Job("c", 0))
    assert q.position(single) == 1 and q.position(batch[4]) == 6
    assert q.remove(batch[2]) and not q.remove(batch[2])
    order = []
    while len(q):
        job = q.get(timeout=1)
        assert job is not None
        order.append((job.owner, job.n))
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("a", 3), ("a", 4)]
    assert q.get(timeout=0.01) is None
    q.put(_Job("a", 9))
    assert [j.n for j in q.close()] == [9] and q.get() is None


def test_the_token_is_made_once_owner_only_and_compared_safely(tmp_path: Path) -> None:
    path = tmp_path / "server" / "token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_token(path)
    assert again == token and not created_again
    os.chmod(path, 0o644)
    with pytest.raises(DragStudioError, match="readable by other users"):
        load_or_create_token(path)
    assert token_matches(token, token) and not token_matches(token, token[:-1] + "x")
    assert bearer(f"Bearer {token}") == token and bearer(token) == "" and bearer(None) == ""


def test_limits_travel_as_json() -> None:
    limits = replace(Limits(), max_pixels=123)
    assert Limits.from_json(limits.to_json()) == limits
    with pytest.raises(ProtocolError):
        Limits.from_json({"max_pixels": -1})


def test_the_server_configuration_comes_from_a_file_and_flags(tmp_path: Path, capsys) -> None:
    import json

    from backend.server.app import build_parser, config_from_args

    config_file = tmp_path / "server.json"
    config_file.write_text(json.dumps({
        "models": {"sd15": "/models/sd15"}, "port": 9000, "devices": "cuda:0,cuda:1",
        "max_pixels": 1000, "token_file": str(tmp_path / "tok"),
    }))  # fmt: skip
    args = build_parser().parse_args(["--config", str(config_file), "--port", "9100"])
    config, created = config_from_args(args)
    assert created and config.port == 9100 and config.host == "127.0.0.1"
    assert config.models == {"sd15": "/models/sd15"}
    assert config.devices == ("cuda:0", "cuda:1") and config.limits.max_pixels == 1000
    assert config.token in capsys.readouterr().out  # printed once, at creation
    again, created = config_from_args(args)
    assert not created and again.token == config.token
    assert config.token not in capsys.readouterr().out
    bare = build_parser().parse_args(["--token-file", str(tmp_path / "tok")])
    with pytest.raises(DragStudioError, match="no models allowed"):
        config_from_args(bare)
    flags = build_parser().parse_args(
        ["--allow-model", "a=/x", "--allow-model", "hub/id", "--token-file", str(tmp_path / "tok")]
    )
    assert config_from_args(flags)[0].models == {"a": "/x", "hub/id": "hub/id"}
