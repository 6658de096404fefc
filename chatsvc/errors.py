"""The few exception types chatsvc raises on purpose."""

from __future__ import annotations


class ChatsvcError(Exception):
    """Base class: an expected failure with a one-line message for the operator."""


class ConfigError(ChatsvcError):
    """A configuration problem, naming the file, the key, what was expected and found."""

    def __init__(self, file: str, key: str, expected: str, found: str) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        self.found = found
        where = file if key == "-" else f"{file}: {key}"
        super().__init__(f"{where}: expected {expected}, found {found}")


class StartupError(ChatsvcError):
    """The server cannot start (port in use, admin socket held by a live server, ...)."""
