"""LPIPS (AlexNet, v0.1) in plain torch, so Image Fidelity needs no torchvision.

The network is laid out like torchvision's ``alexnet().features`` (a torchvision state dict loads
as is) plus LPIPS's five 1×1 "lin" layers (keys ``lin{k}.model.1.weight``, as in the ``lpips``
package's ``weights/v0.1/alex.pth``). Weights are read with ``safetensors`` or
``torch.load(weights_only=True)`` only. Without real weights the score is reported unavailable,
never computed from random ones — except when a test asks for that explicitly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (64, 192, 384, 256, 256)
# Indices into ``features`` after which LPIPS taps the activations (relu1..relu5).
TAPS = (1, 4, 7, 9, 11)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's download name


class WeightsUnavailable(Exception):
    """The real weights for a metric cannot be had; the message says why."""


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS distance between images in [-1, 1]; 0 for identical images."""

    shift: torch.Tensor  # buffers, registered below
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=False),
        )
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.eval().requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distance, shape ``(N,)``, for ``(N, 3, H, W)`` inputs in [-1, 1]."""
        fa = self._taps((a - self.shift) / self.scale)
        fb = self._taps((b - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device)
        for k, (x, y) in enumerate(zip(fa, fb, strict=True)):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            lin = getattr(self, f"lin{k}")
            total = total + lin.model((x - y) ** 2).mean(dim=(1, 2, 3))
        return total


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth`` read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot read {path} as plain tensors: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path} does not hold a state dict")
    return state


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept torchvision (``features.i``), lpips module (``net.sliceN.i``) and lin-only dicts."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
            out[f"features.{parts[2]}.{parts[3]}"] = value
        elif parts[0] == "features" or (parts[0].startswith("lin") and "model" in parts):
            out[key] = value
    return out


def _lpips_package_lin() -> Path | None:
    """``alex.pth`` of an installed ``lpips`` package, found without importing it (it needs
    torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "weights" / "v0.1" / "alex.pth"
        if candidate.is_file():
            return candidate
    return None


def _candidates(weights: Path | None) -> list[Path]:
    files: list[Path] = []
    if weights is not None:
        weights = Path(weights)
        if weights.is_dir():
            files += sorted(weights.glob("*.safetensors")) + sorted(weights.glob("*.pth"))
        elif weights.is_file():
            files.append(weights)
        else:
            raise WeightsUnavailable(f"--lpips-weights {weights} does not exist")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if hub.is_file():
        files.append(hub)
    if (lin := _lpips_package_lin()) is not None:
        files.append(lin)
    return files


def load_lpips(weights: Path | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with real weights from ``weights`` (file or folder) and the usual places.

    The AlexNet trunk can come from a torchvision state dict (also torch hub's cache) and the lin
    layers from the ``lpips`` package's ``alex.pth``; one file holding both works too. Raises
    :class:`WeightsUnavailable` naming what is missing.
    """
    model = LPIPS()
    need = {k for k in model.state_dict() if k not in ("shift", "scale")}
    state: dict[str, torch.Tensor] = {}
    for path in _candidates(weights):
        for key, value in _normalise_keys(read_state(path)).items():
            if key in need and key not in state:
                state[key] = value
    missing = need - set(state)
    if missing:
        parts = []
        if any(k.startswith("features") for k in missing):
            parts.append(
                f"the AlexNet trunk (torchvision's {ALEXNET_FILE}, or a safetensors/.pth with "
                "features.* keys)"
            )
        if any(k.startswith("lin") for k in missing):
            parts.append("LPIPS's linear layers (lpips package's weights/v0.1/alex.pth)")
        raise WeightsUnavailable(
            "LPIPS weights not found: missing " + " and ".join(parts) + "; pass --lpips-weights"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsUnavailable(f"LPIPS weights do not fit AlexNet: {exc}") from exc
    return model.to(device)


def random_lpips(seed: int = 0, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with random weights (non-negative lin layers, like the trained ones): for tests."""
    torch.manual_seed(seed)
    model = LPIPS()
    for k in range(len(CHANNELS)):
        conv = getattr(model, f"lin{k}").model[1]
        conv.weight.data.uniform_(0.0, 0.1)
    return model.to(device)


def to_lpips_input(image: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in [-1, 1] → bilinear 224×224, as the DragBench protocol scores it."""
    return F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
