"""What background preparation depends on: a key over the inputs of LoRA and inversion.

The identity LoRA and the DDIM inversion depend on the photo, the prompt, the model (and VAE,
which encodes what both learn from) and the LoRA/inversion settings, never on the points or the
mask; GoodDrag inverts with its own DDIM arithmetic (``backend/ddim_float32.py``), so its key
also names the method. The reference rows' attention keys/values (paper mode) depend on the same
inputs and the reference-control blocks. Two requests with the same key share one preparation;
a new key supersedes a running one. Torch-free: the GUI computes it on its thread to decide
whether a preparation is still current.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from backend.methods import PAPER
from backend.request import DragRequest, params_to_dict

RECORDING_REFERENCE = "recording the reference rows for denoising"
"""The detail of the inversion stage's second part in a preparation: the reference rows'
attention keys/values are recorded so the Drag denoises only the edited row."""


def _pixels(h: hashlib._Hash, image: np.ndarray) -> None:
    h.update(f"{image.shape}|{image.dtype}|".encode())
    h.update(np.ascontiguousarray(image).data.cast("B"))  # no 2nd copy of a big photo


def preparation_key(request: DragRequest) -> str | None:
    """The key of ``request``'s preparation, or None when it has nothing to prepare.

    Generated images carry their own latents (no LoRA, no inversion), so they need none."""
    if request.generation is not None:
        return None
    p = request.params
    h = hashlib.sha256()
    _pixels(h, request.image)
    if request.lora_image is not None:
        _pixels(h, request.lora_image)
    inputs = {
        "model": request.model,
        "vae": request.vae,
        "prompt": request.prompt,
        "lora": params_to_dict(request.lora),
        "inference_steps": p.inference_steps,
        "inversion_strength": p.inversion_strength,
        "working_width": p.working_width,
        "ref_control_blocks": list(p.ref_control_blocks),
    }
    if request.method != PAPER:
        inputs["method"] = request.method  # GoodDrag inverts with its own arithmetic
    h.update(json.dumps(inputs, sort_keys=True).encode())
    return h.hexdigest()
