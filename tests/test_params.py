"""Parameters are declared once: validation, CLI flags and GUI specs agree with the declaration."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import pytest

from backend.cli import build_parser, main
from backend.errors import InvalidRequest
from backend.params import (
    PANEL_KEYS,
    UNET_UP_BLOCKS,
    DragParams,
    LoraParams,
    add_param_flags,
    all_specs,
    apply_param_flags,
    panel_specs,
    param_specs,
    params_from_dict,
    params_to_dict,
)
from backend.project import ProjectError, read_project, save_project
from tests.project_helpers import sample_project

NUMERIC = [s for s in all_specs().values() if s.kind in ("int", "float")]
HUGE = 10**400


def _with(spec, value):
    return spec.set(DragParams(), LoraParams(), value)[0 if spec.group == "params" else 1]


def test_every_field_declares_a_knob_with_a_label_and_help() -> None:
    for cls in (DragParams, LoraParams):
        specs = param_specs(cls)
        assert [s.name for s in specs] == [f.name for f in fields(cls)]
        for s in specs:
            assert s.label and len(s.help) > 15, s.key
            assert s.default == getattr(cls(), s.name)
    assert len(all_specs()) == len(fields(DragParams)) + len(fields(LoraParams))  # keys unique


def test_defaults_validate_and_sit_inside_their_ranges() -> None:
    DragParams().validate()
    LoraParams().validate()
    for s in NUMERIC:
        assert s.min <= s.default <= s.max, s.key


@pytest.mark.parametrize("spec", NUMERIC, ids=lambda s: s.key)
def test_the_declared_range_is_exactly_what_validation_accepts(spec) -> None:
    # The GUI's spin boxes and the CLI's help show min/max: both ends pass, one step out fails.
    for edge in (spec.min, spec.max):
        value = round(edge) if spec.kind == "int" else float(edge)
        value -= value % spec.multiple_of if spec.kind == "int" else 0
        params = _with(spec, value)
        if spec.key == "ddim_steps":  # the inversion must still cover one step
            params = replace(params, inversion_strength=1.0)
        params.validate()
    outside = (spec.min - 1, spec.max + 1) if spec.kind == "int" else (
        spec.min - max(1e-9, abs(spec.min) * 1e-6), spec.max * (1 + 1e-6) + 1e-9)  # fmt: skip
    for value in outside:
        with pytest.raises(InvalidRequest, match=spec.label.split(" (")[0]):
            _with(spec, value).validate()


@pytest.mark.parametrize("spec", NUMERIC, ids=lambda s: s.key)
@pytest.mark.parametrize("bad", [HUGE, -HUGE, float("nan"), float("inf"), True, "8", None, [1]])
def test_bad_numbers_are_refused_with_a_message(spec, bad) -> None:
    cls = DragParams if spec.group == "params" else LoraParams
    with pytest.raises(InvalidRequest, match=spec.label.split(" (")[0]) as info:
        params_from_dict(cls, {spec.name: bad})
    assert len(str(info.value)) < 200  # a 400-digit number is not echoed back


def test_whole_numbers_refuse_fractions_and_multiples_are_enforced() -> None:
    with pytest.raises(InvalidRequest, match="whole number"):
        params_from_dict(DragParams, {"drag_steps": 2.5})
    with pytest.raises(InvalidRequest, match="multiple of 8"):
        params_from_dict(DragParams, {"working_width": 500})
    with pytest.raises(InvalidRequest, match="true or false"):
        params_from_dict(DragParams, {"keep_unmasked_pixels": 1})


def test_blocks_are_bounded_by_what_stable_diffusion_unets_have() -> None:
    assert UNET_UP_BLOCKS == 4
    with pytest.raises(InvalidRequest, match="Feature block"):
        params_from_dict(DragParams, {"feature_block": 9})
    with pytest.raises(InvalidRequest, match="Reference-control blocks"):
        params_from_dict(DragParams, {"ref_control_blocks": [15]})
    with pytest.raises(InvalidRequest, match="Reference-control blocks"):
        params_from_dict(DragParams, {"ref_control_blocks": [2, 2]})
    with pytest.raises(InvalidRequest, match="Reference-control blocks"):
        params_from_dict(DragParams, {"ref_control_blocks": [0, 1, 2, 3, 3]})
    ok = params_from_dict(DragParams, {"feature_block": 3, "ref_control_blocks": [0, 3]})
    assert ok.feature_block == 3 and ok.ref_control_blocks == (0, 3)
    assert params_from_dict(DragParams, {"ref_control_blocks": []}).ref_control_blocks == ()


def test_dict_round_trip_converts_ints_in_float_fields() -> None:
    p = params_from_dict(DragParams, {"lam": 1, "latent_lr": 1})
    assert isinstance(p.lam, float) and p.lam == 1.0 and isinstance(p.latent_lr, float)
    data = params_to_dict(DragParams())
    assert data["ref_control_blocks"] == [2, 3]
    assert params_from_dict(DragParams, json.loads(json.dumps(data))) == DragParams()
    assert params_from_dict(LoraParams, params_to_dict(LoraParams())) == LoraParams()


def _manifest_project(tmp_path: Path, change) -> Path:
    path = tmp_path / "p.dragstudio"
    save_project(sample_project(with_lora=False), path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    bad = tmp_path / "bad.dragstudio"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return bad


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["params"].update(feature_block=9), "Feature block"),
        (lambda d: d["params"].update(ref_control_blocks=[15]), "Reference-control"),
        (lambda d: d["params"].update(lam=HUGE), "λ"),
        (lambda d: d["params"].update(drag_steps=HUGE), "Drag steps"),
        (lambda d: d["lora_params"].update(seed=HUGE), "Seed"),
        (lambda d: d["pairs"][0].update(handle=[HUGE, 0]), "pairs"),
    ],
)
def test_project_files_with_out_of_range_numbers_are_refused(tmp_path, change, message) -> None:
    bad = _manifest_project(tmp_path, change)
    with pytest.raises(ProjectError, match=message):
        read_project(bad)


def test_cli_flags_are_generated_from_the_declaration() -> None:
    parser = build_parser()
    edit = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "edit")[
        1
    ]
    options = {o for action in edit._actions for o in action.option_strings}
    for spec in all_specs().values():
        if spec.flag is not None:
            assert f"--{spec.flag}" in options, spec.flag
    help_text = edit.format_help()
    for flag in ("--drag-steps", "--feature-block", "--lora-rank", "--stop-distance"):
        assert flag in help_text
    assert "0 to 10000" in help_text and "0 to 3" in help_text


def test_cli_flags_apply_on_top_of_a_base() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_param_flags(parser)
    args = parser.parse_args(
        ["--drag-steps", "7", "--lora-rank", "4", "--no-keep-pixels", "--lam", "0.5"]
    )
    base = DragParams(r1=2)
    params, lora = apply_param_flags(args, base, LoraParams(seed=3))
    assert params == replace(base, drag_steps=7, keep_unmasked_pixels=False, lam=0.5)
    assert lora == LoraParams(seed=3, rank=4)
    untouched = apply_param_flags(parser.parse_args([]), base, LoraParams(seed=3))
    assert untouched == (base, LoraParams(seed=3))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--feature-block", "9"], "Feature block"),
        (["--drag-steps", "10001"], "Drag steps"),
        (["--lora-steps", "1" + "0" * 400], "LoRA steps"),
        (["--lam", "nan"], "λ"),
    ],
)
def test_cli_out_of_range_flags_exit_2_with_the_range(tmp_path, capsys, flags, message) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    argv = ["edit", "--model", "m", "--image", str(image), "--pair", "1,1,5,5"]
    code = main([*argv, "--out", str(tmp_path / "o.png"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err) < 300, err


def test_panel_specs_name_the_panel_knobs_in_order() -> None:
    specs = panel_specs()
    assert tuple(s.key for s in specs) == PANEL_KEYS
    drag = {s.key: s for s in specs}["drag_steps"]
    assert (drag.min, drag.max, drag.kind, drag.default) == (0, 10_000, "int", 80)
    params, lora = drag.set(DragParams(), LoraParams(), 12.4)
    assert params.drag_steps == 12 and drag.get(params, lora) == 12
    seed = {s.key: s for s in specs}["seed"]
    assert seed.max == 2**31 - 1  # fits a QSpinBox
    lr = {s.key: s for s in specs}["latent_lr"]
    assert lr.decimals >= -math.floor(math.log10(lr.min))  # the minimum is representable
