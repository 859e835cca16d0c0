"""Upstream adapters, one file per kind, registered by the `kind` an operator writes in config."""

from __future__ import annotations

from collections.abc import Callable

from ..config import UpstreamConfig
from .base import Upstream
from .demo import DemoUpstream
from .gemini import GeminiUpstream

KINDS: dict[str, Callable[[UpstreamConfig], Upstream]] = {
    "demo": DemoUpstream,
    "gemini": GeminiUpstream,
}


def build_upstream(config: UpstreamConfig) -> Upstream:
    return KINDS[config.kind](config)


__all__ = ["KINDS", "Upstream", "build_upstream"]
