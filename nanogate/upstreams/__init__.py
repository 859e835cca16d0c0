"""Upstream adapters, one per kind (a module, or a folder for the larger demo), registered by the
`kind` an operator writes in config."""

from __future__ import annotations

from collections.abc import Callable

from nanogate.core.config import UpstreamConfig
from nanogate.upstreams.base import Services, Upstream
from nanogate.upstreams.demo import DemoUpstream
from nanogate.upstreams.gemini import GeminiUpstream
from nanogate.upstreams.openai import OpenAIUpstream
from nanogate.upstreams.task import TaskUpstream

KINDS: dict[str, Callable[[UpstreamConfig, Services], Upstream]] = {
    "demo": lambda config, _: DemoUpstream(config),
    "gemini": lambda config, _: GeminiUpstream(config),
    "task": TaskUpstream,
    "openai": OpenAIUpstream,
}


def build_upstream(config: UpstreamConfig, services: Services) -> Upstream:
    return KINDS[config.kind](config, services)


__all__ = ["KINDS", "Services", "Upstream", "build_upstream"]
