"""Upstream adapters, one per kind (a module, or a folder for the larger demo), registered by the
`kind` an operator writes in config."""

from __future__ import annotations

from collections.abc import Callable

from ..config import UpstreamConfig
from .base import Services, Upstream
from .demo import DemoUpstream
from .gemini import GeminiUpstream
from .openai import OpenAIUpstream
from .task import TaskUpstream

KINDS: dict[str, Callable[[UpstreamConfig, Services], Upstream]] = {
    "demo": lambda config, _: DemoUpstream(config),
    "gemini": lambda config, _: GeminiUpstream(config),
    "task": TaskUpstream,
    "openai": OpenAIUpstream,
}


def build_upstream(config: UpstreamConfig, services: Services) -> Upstream:
    return KINDS[config.kind](config, services)


__all__ = ["KINDS", "Services", "Upstream", "build_upstream"]
