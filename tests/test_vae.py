"""A VAE chosen instead of the model's own: it changes the edit, keys every cache it feeds,
swaps without reloading the model, fails clearly, and travels through project, CLI and GUI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend.engine import Engine
from backend.errors import InvalidRequest, VaeNotFound
from backend.events import Stage, StepProgress
from backend.lora_cache import LoraCache
from backend.request import DragParams, DragRequest, LoraParams, PointPair

FAST = DragParams(working_width=128, inference_steps=10, drag_steps=2)
FAST_LORA = LoraParams(steps=1, batch_size=1, resolution=128)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.tiny import save_tiny_vae

    return save_tiny_vae(tmp_path_factory.mktemp("vaes") / "vae-x", seed=1)


def _request(image: np.ndarray, model_dir: Path, **kw) -> DragRequest:
    base = dict(
        image=image,
        pairs=(PointPair((70.0, 128.0), (150.0, 128.0)),),
        prompt="a photo",
        params=FAST,
        lora=FAST_LORA,
        model=str(model_dir),
    )
    base.update(kw)
    return DragRequest(**base)


def _trained(events: list) -> bool:
    return any(isinstance(e, StepProgress) and e.stage == Stage.LORA for e in events)


def _encoded(events: list) -> bool:
    return any(isinstance(e, StepProgress) and e.stage == Stage.INVERSION for e in events)


def test_another_vae_changes_the_edit_and_keys_every_cache(
    tiny_model_dir, tiny_vae_dir, photo, tmp_path
) -> None:
    from backend.tiny import save_tiny_vae

    vae_y = save_tiny_vae(tmp_path / "vae-y", seed=2)
    engine = Engine("cpu", lora_cache=LoraCache(tmp_path / "lora"))
    plain = _request(photo, tiny_model_dir)
    with_x = replace(plain, vae=str(tiny_vae_dir))

    own = engine.edit(plain)
    pipe, own_vae = engine.pipe, engine.pipe.vae
    key_own = engine.lora_key_for(plain)
    events: list = []
    x = engine.edit(with_x, events.append)
    # Only the VAE was swapped: same pipeline, same UNet, another VAE of the same kind.
    assert engine.pipe is pipe and engine.pipe.vae is not own_vae
    assert engine.vae_spec == str(tiny_vae_dir)
    assert not engine.pipe.vae.training and not any(
        p.requires_grad for p in engine.pipe.vae.parameters()
    )
    assert not np.array_equal(own.image, x.image)
    # The LoRA (trained on VAE latents) and the encoded latent were redone for the new VAE.
    assert engine.lora_key_for(with_x) != key_own
    assert _trained(events) and _encoded(events)
    assert x.trace.lora.source == "trained"

    events = []
    y = engine.edit(replace(plain, vae=str(vae_y)), events.append)
    assert _trained(events) and _encoded(events)
    assert not np.array_equal(x.image, y.image)

    # Back to the model's own VAE: its LoRA comes back from the cache, the result is the first.
    events = []
    again = engine.edit(plain, events.append)
    assert engine.pipe is pipe and engine.pipe.vae is own_vae and engine.vae_spec is None
    assert again.trace.lora.cached and not _trained(events)
    assert engine.lora_key_for(plain) == key_own  # no VAE: the key it always had
    assert np.array_equal(again.image, own.image)


def test_a_bad_vae_says_which_and_leaves_the_model_loaded(
    tiny_model_dir, tiny_vae_dir, photo, tmp_path
) -> None:
    engine = Engine("cpu")
    engine.load_model(str(tiny_model_dir), str(tiny_vae_dir))
    pipe = engine.pipe
    empty = tmp_path / "not-a-vae"
    empty.mkdir()
    pickled = tmp_path / "vae.ckpt"
    pickled.write_bytes(b"\x80\x04not really")
    broken = tmp_path / "broken-vae"
    broken.mkdir()
    (broken / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    for spec, words in [
        (str(empty), "no config.json"),
        (str(pickled), "pickled"),
        (str(tmp_path / "missing"), "no folder at"),
        ("not a hub id", "neither a local folder nor a hub id"),
        ("nobody/no-such-vae", "could not load the VAE nobody/no-such-vae"),
        (str(broken), f"could not load the VAE {broken}"),
    ]:
        with pytest.raises(VaeNotFound) as info:
            engine.edit(_request(photo, tiny_model_dir, vae=spec, lora=LoraParams(steps=0)))
        message = str(info.value)
        assert words in message and "\n" not in message, message
        assert engine.pipe is pipe and engine.model_spec == str(tiny_model_dir)
    # After a failed swap the model works with its own VAE.
    assert engine.vae_spec is None and engine.pipe.vae is engine._own_vae
    result = engine.edit(_request(photo, tiny_model_dir, lora=LoraParams(steps=0)))
    assert result.image.shape == photo.shape


def test_the_request_refuses_an_empty_vae(tiny_model_dir, photo) -> None:
    with pytest.raises(InvalidRequest, match="VAE"):
        _request(photo, tiny_model_dir, vae="  ").validate()
    _request(photo, tiny_model_dir, vae=None).validate()


def test_the_project_keeps_the_vae_and_reads_older_files(
    tiny_model_dir, tiny_vae_dir, photo, tmp_path
) -> None:
    import json
    import zipfile

    from backend.project import Project, read_project, save_project

    project = Project(
        original=photo,
        mask=None,
        pairs=(),
        prompt="p",
        params=DragParams(),
        lora_params=LoraParams(),
        model=str(tiny_model_dir),
        vae=str(tiny_vae_dir),
    )
    path = tmp_path / "a.dragstudio"
    save_project(project, path)
    back = read_project(path)
    assert back.vae == str(tiny_vae_dir)
    assert back.to_request().vae == str(tiny_vae_dir)
    # An older file has no "vae" key: the model's own VAE.
    old = tmp_path / "old.dragstudio"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(data)
                del manifest["vae"]
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    assert read_project(old).vae is None


def test_the_cli_vae_flag_reaches_the_engine(tiny_model_dir, tiny_vae_dir, photo, tmp_path):
    from PIL import Image

    from backend.cli import main

    image = tmp_path / "in.png"
    Image.fromarray(photo).save(image)
    common = ["edit", "--model", str(tiny_model_dir), "--image", str(image), "--device", "cpu"]
    common += ["--pair", "70,128,150,128", "--lora-steps", "0", "--drag-steps", "2"]
    common += ["--working-width", "128", "--ddim-steps", "10", "--no-lora-cache", "--quiet"]
    own, with_vae = tmp_path / "own.png", tmp_path / "vae.png"
    assert main([*common, "--out", str(own)]) == 0
    assert main([*common, "--vae", str(tiny_vae_dir), "--out", str(with_vae)]) == 0
    assert not np.array_equal(np.asarray(Image.open(own)), np.asarray(Image.open(with_vae)))
    assert main([*common, "--vae", str(tmp_path / "nowhere"), "--out", str(own)]) != 0


def test_generate_takes_the_vae_and_its_project_keeps_it(tiny_model_dir, tiny_vae_dir, tmp_path):
    from PIL import Image

    from backend.cli import main
    from backend.project import read_project

    common = ["generate", "--model", str(tiny_model_dir), "--prompt", "a cat", "--device", "cpu"]
    common += ["--width", "64", "--height", "64", "--steps", "2", "--quiet"]
    own, with_vae = tmp_path / "own.png", tmp_path / "vae.png"
    project = tmp_path / "g.dragstudio"
    assert main([*common, "--out", str(own)]) == 0
    vae = ["--vae", str(tiny_vae_dir), "--save-project", str(project)]
    assert main([*common, *vae, "--out", str(with_vae)]) == 0
    assert not np.array_equal(np.asarray(Image.open(own)), np.asarray(Image.open(with_vae)))
    assert read_project(project).vae == str(tiny_vae_dir)
