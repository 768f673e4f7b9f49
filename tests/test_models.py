"""Model sources: what ``--model`` accepts, and loading each kind offline on the tiny model.

The single-file tests write the tiny pipeline as one original-LDM ``.safetensors`` (the layout
SD-1.5 fine-tunes such as Counterfeit-V2.5 ship in) and load it back through ``load_pipeline``,
because no real checkpoint can be downloaded here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ldm_checkpoint import pipeline_to_ldm_state_dict, save_ldm_checkpoint

from backend.errors import DragStudioError, ModelNotFound
from backend.models import (
    DEFAULT_SINGLE_FILE_CONFIG,
    load_pipeline,
    pick_device,
    resolve_single_file_config,
    resolve_source,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Run this module's tiny models on one thread, then restore the count.

    On a busy 2-core machine two OpenMP threads spin against the load: a 16×16 pass of the tiny
    UNet took 4 s instead of 25 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- resolve_source ---------------------------------------------------------------------------


def test_resolve_source_folder(tiny_model_dir: Path) -> None:
    source = resolve_source(str(tiny_model_dir))
    assert source.kind == "folder"
    assert source.location == str(tiny_model_dir.resolve())
    assert source.identity == f"folder:{tiny_model_dir.resolve()}"


def test_resolve_source_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no model_index\.json"):
        resolve_source(str(tmp_path))


def test_resolve_source_file(tmp_path: Path) -> None:
    path = tmp_path / "Counterfeit-V2.5.safetensors"
    path.write_bytes(b"")
    source = resolve_source(str(path))
    assert (source.kind, source.location) == ("file", str(path.resolve()))


def test_resolve_source_hub_id() -> None:
    source = resolve_source("  stable-diffusion-v1-5/stable-diffusion-v1-5 ")
    assert (source.kind, source.location) == ("hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("./missing/model.safetensors", "no file or folder at"),
        ("missing.safetensors", "no file or folder at"),
        ("a/b/c", "no file or folder at"),
        ("just-a-name", "neither a local path nor a hub id"),
        ("   ", "no model given"),
    ],
)
def test_resolve_source_refuses_what_is_not_there(spec: str, message: str) -> None:
    with pytest.raises(ModelNotFound, match=message):
        resolve_source(spec)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_resolve_source_refuses_pickled_checkpoints(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelNotFound, match=r"pickled checkpoint.*\.safetensors"):
        resolve_source(str(path))


def test_resolve_source_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelNotFound, match="not a model file"):
        resolve_source(str(path))


# -- pick_device ------------------------------------------------------------------------------


def test_pick_device_cpu() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("CPU") == CPU


def test_pick_device_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DragStudioError, match=r"no CUDA GPU.*--device cpu"):
        pick_device("cuda")
    assert pick_device("auto").type in ("cpu", "mps")


def test_pick_device_unknown() -> None:
    with pytest.raises(DragStudioError, match="unknown device 'gpu0'"):
        pick_device("gpu0")


# -- loading ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_pipe(tiny_model_dir: Path) -> Any:
    pipe, source = load_pipeline(str(tiny_model_dir), CPU)
    assert source.kind == "folder"
    return pipe


@pytest.fixture(scope="module")
def ldm_file(folder_pipe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_ldm_checkpoint(folder_pipe, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face cache at an empty folder, whatever the machine has cached."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_folder_loading_forces_sd15_ddim(folder_pipe: Any) -> None:
    from diffusers import DDIMScheduler

    assert isinstance(folder_pipe.scheduler, DDIMScheduler)
    config = folder_pipe.scheduler.config
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, False, 1)
    assert folder_pipe.safety_checker is None
    for module in (folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert next(module.parameters()).dtype == torch.float32


def test_ldm_checkpoint_layout(folder_pipe: Any) -> None:
    """The file has the original-LDM keys real SD-1.5 checkpoints have, one per weight."""
    state = pipeline_to_ldm_state_dict(folder_pipe)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")
    assert all(key.startswith(prefixes) for key in state)
    n_weights = sum(
        len(m.state_dict()) for m in (folder_pipe.unet, folder_pipe.vae, folder_pipe.text_encoder)
    )
    assert len(state) == n_weights + 1  # + CLIP's position_ids buffer, as in A1111 files
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # UpBlock2D's upsampler
        "model.diffusion_model.output_blocks.5.2.conv.weight",  # after a transformer
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",  # diffusers' v1 marker
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.mid.block_2.conv2.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in state, key
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in state
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # 1×1 conv in LDM
    # diffusers' decoder up_blocks.0 is LDM's up.3 (LDM counts from the highest resolution)
    torch.testing.assert_close(
        state["first_stage_model.decoder.up.3.block.0.conv1.weight"],
        folder_pipe.vae.state_dict()["decoder.up_blocks.0.resnets.0.conv1.weight"],
    )


def _outputs(pipe: Any) -> dict[str, torch.Tensor]:
    """Forward passes of the UNet, VAE and text encoder on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 16, 16, generator=gen)
    context = torch.randn(1, 77, pipe.text_encoder.config.hidden_size, generator=gen)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    ids = pipe.tokenizer(
        "a cat on a sofa", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return {
            "unet": pipe.unet(latent, torch.tensor([500]), encoder_hidden_states=context).sample,
            "vae_encode": pipe.vae.encode(image).latent_dist.mean,
            "vae_decode": pipe.vae.decode(latent).sample,
            "text": pipe.text_encoder(ids)[0],
            "ids": ids,
        }


def test_single_file_round_trip(folder_pipe: Any, ldm_file: Path, tiny_model_dir: Path) -> None:
    pipe, source = load_pipeline(str(ldm_file), CPU, single_file_config=str(tiny_model_dir))
    assert (source.kind, source.location) == ("file", str(ldm_file.resolve()))
    assert pipe.scheduler.config.steps_offset == 1
    expected, got = _outputs(folder_pipe), _outputs(pipe)
    assert torch.equal(got["ids"], expected["ids"])  # the tokenizer came from the config folder
    for name in ("unet", "vae_encode", "vae_decode", "text"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert pipe.vae.config.scaling_factor == folder_pipe.vae.config.scaling_factor


def test_single_file_half_precision(folder_pipe: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    """fp16 files (how most fine-tunes ship) load into float32 on CPU, rounded only once."""
    path = save_ldm_checkpoint(folder_pipe, tmp_path / "fp16.safetensors", dtype=torch.float16)
    pipe, _ = load_pipeline(str(path), CPU, single_file_config=str(tiny_model_dir))
    weight = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    original = folder_pipe.unet.state_dict()[weight]
    loaded = pipe.unet.state_dict()[weight]
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, original.half().float())
    assert not torch.equal(loaded, original)


def test_single_file_default_config_from_hf_cache(
    ldm_file: Path, tiny_model_dir: Path, empty_hf_cache: Path, folder_pipe: Any
) -> None:
    """With no config given, SD-1.5's hub id is used, offline, when its configs are cached."""
    repo = empty_hf_cache / ("models--" + DEFAULT_SINGLE_FILE_CONFIG.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(
        tiny_model_dir, snapshot, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert json.loads((snapshot / "model_index.json").read_text())["_class_name"]

    assert resolve_single_file_config(str(ldm_file), allow_download=False) == str(snapshot)
    pipe, _ = load_pipeline(str(ldm_file), CPU, allow_download=False)
    torch.testing.assert_close(_outputs(pipe)["unet"], _outputs(folder_pipe)["unet"])


def test_single_file_without_config_offline_says_what_to_pass(
    ldm_file: Path, empty_hf_cache: Path
) -> None:
    with pytest.raises(ModelNotFound) as info:
        load_pipeline(str(ldm_file), CPU, allow_download=False)
    message = str(info.value)
    assert "\n" not in message
    assert "tiny.safetensors" in message
    assert DEFAULT_SINGLE_FILE_CONFIG in message
    assert "--model-config" in message
    assert "downloads are off" in message
    assert f"hf download {DEFAULT_SINGLE_FILE_CONFIG}" in message


def test_single_file_bad_config(ldm_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"model config: .*no file or folder"):
        load_pipeline(str(ldm_file), CPU, single_file_config=str(tmp_path / "nope"))
    with pytest.raises(ModelNotFound, match=r"model config: .*no model_index\.json"):
        load_pipeline(str(ldm_file), CPU, single_file_config=str(tmp_path))
    with pytest.raises(ModelNotFound, match="is a file; pass a diffusers folder"):
        load_pipeline(str(ldm_file), CPU, single_file_config=str(ldm_file))


def test_single_file_that_is_not_sd(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A .safetensors that is not an SD checkpoint fails with a message, not a traceback."""
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(path))
    with pytest.raises(ModelNotFound, match=r"could not load the checkpoint.*--model-config"):
        load_pipeline(str(path), CPU, single_file_config=str(tiny_model_dir))


def test_engine_and_cli_pass_the_config(ldm_file: Path, tiny_model_dir: Path) -> None:
    from backend.cli import build_parser
    from backend.engine import Engine

    args = build_parser().parse_args(
        [
            *("edit", "--model", str(ldm_file), "--model-config", str(tiny_model_dir)),
            *("--image", "in.png", "--out", "out.png"),
        ]
    )
    assert args.model_config == str(tiny_model_dir)
    engine = Engine("cpu", allow_download=False, single_file_config=args.model_config)
    engine.load_model(str(ldm_file))
    assert engine.source is not None and engine.source.kind == "file"
    assert list(engine.pipe.unet.config.block_out_channels) == [32, 32, 64, 64]
