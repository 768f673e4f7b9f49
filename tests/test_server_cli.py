"""`dragstudio-cli generate|bench|edit --project` through a server: the same commands, run
remotely; a project's bundled LoRA is uploaded so a fresh server does not retrain it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.project import read_project
from tests.server_helpers import TOKEN, ThreadServer

pytest.importorskip("websockets")


def test_generate_and_bench_run_on_the_server(
    tiny_model_dir: Path, tmp_path: Path, dev_data: Path
) -> None:
    with ThreadServer(tiny_model_dir, tmp_path) as server:
        remote = ["--server", server.url, "--token", TOKEN, "--model", "tiny", "--quiet"]
        out, project = tmp_path / "gen.png", tmp_path / "gen.dragstudio"
        assert main(["generate", "--prompt", "a ball", "--width", "64", "--height", "64",
                     "--steps", "3", "--out", str(out), "--save-project", str(project),
                     *remote]) == 0  # fmt: skip
        assert np.asarray(Image.open(out)).shape == (64, 64, 3)
        generation = read_project(project).generation
        assert generation is not None and generation.trajectory.shape == (4, 4, 8, 8)
        results = tmp_path / "bench"
        assert main(["bench", "--data", str(dev_data), "--out", str(results), "--limit", "1",
                     "--no-metrics", "--lora-steps", "0", "--drag-steps", "1", "--ddim-steps",
                     "4", "--working-width", "64", *remote]) == 0  # fmt: skip
        edited = list(results.rglob("dragged_image.png"))
        assert len(edited) == 1
        trace = json.loads((edited[0].parent / "trace.json").read_text())
        assert trace["model"] == "tiny"  # the allow-list name, not the server's path
        assert main(["generate", "--prompt", "x", "--out", str(out), "--server", server.url,
                     "--token", TOKEN, "--model", "not-offered", "--quiet"]) != 0  # fmt: skip


def test_a_projects_bundled_lora_is_uploaded_and_a_fresh_server_does_not_retrain(
    tiny_model_dir: Path, tmp_path: Path, photo: np.ndarray
) -> None:
    Image.fromarray(photo).save(tmp_path / "photo.png")
    edit = ["edit", "--lora-steps", "2", "--lora-resolution", "64", "--drag-steps", "2",
            "--ddim-steps", "4", "--working-width", "64", "--quiet"]  # fmt: skip
    project = tmp_path / "s.dragstudio"
    with ThreadServer(tiny_model_dir, tmp_path / "first") as server:
        remote = ["--server", server.url, "--token", TOKEN]
        assert main([*edit, *remote, "--model", "tiny", "--image", str(tmp_path / "photo.png"),
                     "--pair", "100,120,120,120", "--out", str(tmp_path / "a.png"),
                     "--save-project", str(project)]) == 0  # fmt: skip
    bundled = read_project(project).lora
    assert bundled is not None and bundled.model == "tiny"  # fetched from the server's cache
    with ThreadServer(tiny_model_dir, tmp_path / "second") as fresh:  # an empty LoRA cache
        trace = tmp_path / "t.json"
        remote = ["--server", fresh.url, "--token", TOKEN]
        assert main([*edit, *remote, "--project", str(project), "--pair", "60,80,70,80",
                     "--out", str(tmp_path / "b.png"), "--trace", str(trace)]) == 0  # fmt: skip
        lora = json.loads(trace.read_text())["lora"]
        assert lora["cached"] is True and lora["source"] == "disk", lora
