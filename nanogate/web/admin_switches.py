"""The admin API for runtime switches: maintenance mode and the features switched off."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from nanogate.access.switches import SwitchBoard
from nanogate.core.config import Feature
from nanogate.web.admin_common import AdminGateway

router = APIRouter(prefix="/admin", tags=["Admin"])

_MAINTENANCE_HELP = (
    "Refuse every call: 455 on the task API, 503 UNAVAILABLE (Gemini) or 503 (OpenAI) "
    "elsewhere. The admin API, health checks and the console stay up."
)
_FEATURES_HELP = "Features switched off: tasks, callbacks, image_urls (505 on the task API)."


class SwitchesOut(BaseModel):
    maintenance: bool = Field(description=_MAINTENANCE_HELP)
    disabled_features: list[Feature] = Field(description=_FEATURES_HELP)


class SwitchesPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    maintenance: StrictBool | None = Field(default=None, description=_MAINTENANCE_HELP)
    disabled_features: list[Feature] | None = Field(
        default=None, description=_FEATURES_HELP + " The whole list: [] turns them all back on."
    )


def _board(request: Request) -> SwitchBoard:
    board: SwitchBoard = request.app.state.switches
    return board


@router.get("/switches", summary="The runtime switches every node follows")
async def get_switches(request: Request, gateway: AdminGateway) -> SwitchesOut:
    return SwitchesOut.model_validate(_board(request).current.as_json())


@router.patch(
    "/switches",
    summary="Change the runtime switches; every node follows within a second",
)
async def patch_switches(
    request: Request, body: SwitchesPatch, gateway: AdminGateway
) -> SwitchesOut:
    state = await _board(request).set(
        maintenance=body.maintenance, disabled_features=body.disabled_features
    )
    return SwitchesOut.model_validate(state.as_json())
