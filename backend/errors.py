"""Error types whose messages are shown to users as they are."""

from __future__ import annotations


class DragStudioError(Exception):
    """A failure with a message fit for a user: one line, what went wrong and what to do."""


class InvalidRequest(DragStudioError, ValueError):
    """The request (image, points, mask, parameters) cannot be edited as given."""


class ModelNotFound(DragStudioError):
    """No weights where the user pointed, and nothing to download them with."""


class VaeNotFound(ModelNotFound):
    """The chosen VAE could not be loaded; the model stays loaded with its own VAE."""


class Cancelled(DragStudioError):
    """The user cancelled the job; nothing it started was kept."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
