"""The admin API for config reloads: re-read the config file on every node (web/reload.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from nanogate.access.switches import SwitchBoard
from nanogate.core.errors import InvalidArgument
from nanogate.web.admin_common import AdminGateway
from nanogate.web.reload import Reloader, ReloadFailed

router = APIRouter(prefix="/admin", tags=["Admin"])


class ReloadOut(BaseModel):
    upstreams: list[str] = Field(description="The upstreams this node routes to now, in order.")
    models: int = Field(description="How many models the catalog holds now.")
    restart_needed: list[str] = Field(
        description="Settings that changed but apply only at a restart (they stay as they run)."
    )


@router.post(
    "/reload",
    summary="Re-read the config file: upstreams, models and prices change at once, on every node",
    responses={400: {"description": "The config file does not load here; nothing changed."}},
)
async def reload_config(request: Request, gateway: AdminGateway) -> ReloadOut:
    reloader: Reloader = request.app.state.reloader
    board: SwitchBoard = request.app.state.switches
    try:
        done = await reloader.reload()
    except ReloadFailed as exc:
        raise InvalidArgument(
            f"The config did not reload: {exc}. Nothing changed; fix it and reload again."
        ) from None
    # The other nodes read their own files within a second (each logs how it went).
    await board.request_reload()
    return ReloadOut.model_validate(done.as_json())
