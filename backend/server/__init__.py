"""The engine as a network service: a WebSocket server, its protocol, and a client.

The wire format is documented in ``docs/server.md``. Everything here is torch-free except the
engine workers (:mod:`backend.server.workers`), which import the engine late, on their threads.
"""

from __future__ import annotations
