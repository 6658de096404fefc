"""chatsvc: a thread-per-client TCP chat service with a fixed set of rooms."""

from __future__ import annotations

__version__ = "0.1.0"
