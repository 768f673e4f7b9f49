"""What the engine keeps between edits, in one object with one ``invalidate()``.

Five things make a re-drag cheap: prompt embeddings (text), the VAE latent of the photo
(latent), its DDIM inversion (inversion), the reference rows' attention keys and values
(reference) and the identity LoRA in the UNet (lora). Each entry is stored whole, under the
key of everything it depends on, and only once it is complete — so a cancelled or failed edit
leaves either the old entry or none, never a partial one (``tests/test_engine.py`` checks this
here, through :meth:`EngineCaches.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from backend.attention import ReferenceKV
from backend.params import LoraParams

Key = tuple[Any, ...]
Keyed = Literal["latent", "inversion", "reference"]
MAX_TEXTS = 8


@dataclass(frozen=True)
class LoraInfo:
    """The adapter currently in the UNet, for saving into projects."""

    key: str
    params: LoraParams
    state: dict[str, torch.Tensor]


class EngineCaches:
    """The engine's memory between edits (not thread-safe: the engine thread owns it)."""

    def __init__(self) -> None:
        self.text: dict[str, torch.Tensor] = {}
        self.lora: LoraInfo | None = None
        self._keyed: dict[Keyed, tuple[Key, Any] | None] = {
            "latent": None,
            "inversion": None,
            "reference": None,
        }

    # -- text ----------------------------------------------------------------------------------

    def text_for(self, prompt: str) -> torch.Tensor | None:
        return self.text.get(prompt)

    def put_text(self, prompt: str, embeddings: torch.Tensor) -> None:
        if len(self.text) > MAX_TEXTS:
            self.text.clear()
        self.text[prompt] = embeddings

    # -- keyed entries -------------------------------------------------------------------------

    def get(self, name: Keyed, key: Key) -> Any:
        """The entry ``name`` if it was stored under ``key``, else None."""
        entry = self._keyed[name]
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, name: Keyed, key: Key, value: Any) -> None:
        """Store a complete value (callers put only after the work finished)."""
        self._keyed[name] = (key, value)

    def drop(self, name: Keyed) -> None:
        self._keyed[name] = None

    @property
    def reference(self) -> tuple[Key, ReferenceKV] | None:
        return self._keyed["reference"]

    # -- invalidation ----------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget everything (another model, or memory to give back)."""
        self.text.clear()
        self.lora = None
        for name in self._keyed:
            self._keyed[name] = None

    def invalidate_adapter(self) -> None:
        """Forget the LoRA and what was computed through it (inversion, reference K/V)."""
        self.lora = None
        self._keyed["inversion"] = None
        self._keyed["reference"] = None

    def snapshot(self) -> dict[str, Any]:
        """``{name: (key, value)}`` of every entry held now (values as stored, not copies)."""
        out: dict[str, Any] = {f"text:{p}": ((p,), e) for p, e in self.text.items()}
        if self.lora is not None:
            out["lora"] = ((self.lora.key,), self.lora.state)
        out.update({name: entry for name, entry in self._keyed.items() if entry is not None})
        return out
