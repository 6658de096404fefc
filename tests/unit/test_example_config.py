"""The shipped example config is the built-in defaults, key for key."""

from __future__ import annotations

from pathlib import Path

from chatsvc import config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "chatsvc.toml"


def test_example_config_equals_builtin_defaults() -> None:
    loaded = config.load(EXAMPLE)
    assert config.to_mapping(loaded) == config.to_mapping(config.Config())


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, values in config.to_mapping(config.Config()).items():
        assert f"[{section}]" in text
        for key in values:
            assert f"\n{key} = " in text, key
