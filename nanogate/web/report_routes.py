"""The admin API's read side for dashboards: usage over time (JSON and SVG charts), filtered
usage pages and their CSV export, and the recent-task gallery with cached thumbnails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nanogate.console import charts, reports
from nanogate.console.money import Money
from nanogate.console.thumbnails import THUMB_TYPE, Thumbnails
from nanogate.core.errors import InvalidArgument, NotFound
from nanogate.tasks.service import TaskService
from nanogate.web.admin_common import AdminAccounts, AdminGateway, find_account

router = APIRouter(prefix="/admin", tags=["Admin: reports"])

WindowQuery = Annotated[
    reports.WindowName,
    Query(description="hour (by the minute), day (by the quarter hour) or month (30 days, daily)"),
]
ByQuery = Annotated[reports.GroupBy, Query(description="One series per model or per upstream")]


@router.get("/stats", summary="Requests, images, credits and errors over time, per model/upstream")
async def stats(
    request: Request, gateway: AdminGateway, window: WindowQuery = "day", by: ByQuery = "model"
) -> dict[str, Any]:
    return await reports.series(request.app.state.engine, window, by)


@router.get(
    "/stats/chart",
    summary="The same figures drawn as an SVG line chart",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
async def stats_chart(
    request: Request,
    gateway: AdminGateway,
    metric: Annotated[charts.Metric, Query()] = "requests",
    window: WindowQuery = "day",
    by: ByQuery = "model",
    width: Annotated[
        int, Query(ge=charts.MIN_WIDTH, le=charts.MAX_WIDTH, description="Pixels to draw for")
    ] = charts.WIDTH,
) -> Response:
    figures = await reports.series(request.app.state.engine, window, by)
    return Response(
        charts.chart(figures, metric, width, Money.of(request.app.state.settings)),
        media_type="image/svg+xml",
        # Opened on its own, the SVG may draw and nothing else.
        headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


async def _usage_filter(
    store: AdminAccounts,
    key: Annotated[str | None, Query(description="Only this key prefix")] = None,
    account: Annotated[str | None, Query(description="Only this account (id or name)")] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    upstream: Annotated[str | None, Query(max_length=64)] = None,
    dialect: Annotated[str | None, Query(description="gemini, openai or tasks")] = None,
    outcome: Annotated[Literal["ok", "error"] | None, Query()] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, with a time zone")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, with a time zone")] = None,
) -> reports.UsageFilter:
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidArgument(f"{name}: give a time zone, e.g. 2026-11-21T00:00:00Z.")
    account_id = (await find_account(store, account)).id if account else None
    return reports.UsageFilter(
        key_prefix=key or None,
        account_id=account_id,
        model=model or None,
        upstream=upstream or None,
        dialect=dialect or None,
        outcome=outcome,
        status=status,
        since=since.astimezone(UTC) if since else None,
        until=until.astimezone(UTC) if until else None,
    )


UsageWhere = Annotated[reports.UsageFilter, Depends(_usage_filter)]


@router.get("/usage", summary="Usage records, newest first, filtered and paged")
async def usage(
    request: Request,
    gateway: AdminGateway,
    where: UsageWhere,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="Page on: records older than this id")
    ] = None,
) -> list[dict[str, Any]]:
    rows = await reports.usage_page(request.app.state.engine, where, limit=limit, before=before)
    if len(rows) == limit:
        # Where the next page starts (the console's "Older" button; scripts may follow it).
        response.headers["x-next-before"] = str(rows[-1]["id"])
    return rows


@router.get(
    "/usage.csv",
    summary="Every usage record matching the same filters, as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def usage_csv(
    request: Request,
    gateway: AdminGateway,
    where: UsageWhere,
) -> StreamingResponse:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        reports.usage_csv(request.app.state.engine, where),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="nanogate-usage-{stamp}.csv"'},
    )


class TaskFile(BaseModel):
    url: str = Field(description="The full image: a signed result URL.")
    thumbnail: str = Field(description="A small WebP of it, made once (admin API).")
    content_type: str


class TaskCard(BaseModel):
    id: str
    model: str
    state: str
    prompt: str = Field(description="The first 300 characters of the prompt.")
    account_id: int
    key_id: int
    files: list[TaskFile]
    cost: int
    error_code: int | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    queued_ms: int | None = Field(description="From creation until a worker took it.")
    run_ms: int | None = Field(description="From the worker's start until it finished.")
    callback_url: str | None
    callback_state: str = Field(description="none, pending, delivered or failed")
    callback_attempts: int


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else int((end - start).total_seconds() * 1000)


@router.get("/tasks", summary="Recent tasks, newest first (the console's gallery)")
async def list_tasks(
    request: Request,
    gateway: AdminGateway,
    store: AdminAccounts,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 48,
    before: Annotated[
        datetime | None, Query(description="Page on: tasks created before this moment")
    ] = None,
    state: Annotated[reports.TaskState | None, Query()] = None,
    account: Annotated[str | None, Query(description="Only this account (id or name)")] = None,
) -> list[TaskCard]:
    if before is not None and before.tzinfo is None:
        raise InvalidArgument("before: give a time zone, e.g. 2026-11-21T00:00:00Z.")
    account_id = (await find_account(store, account)).id if account else None
    service: TaskService = request.app.state.tasks
    found = await reports.recent_tasks(
        request.app.state.engine, limit=limit, before=before, state=state, account_id=account_id
    )
    cards = []
    for task in found:
        urls = service.file_urls([f["name"] for f in task["files"]], task["completed_at"])
        files = [
            TaskFile(
                url=url,
                thumbnail=f"/admin/tasks/{task['id']}/thumbnail?index={index}",
                content_type=f["type"],
            )
            for index, (f, url) in enumerate(zip(task.pop("files"), urls, strict=False))
        ]
        queued = _ms(task["created_at"], task["started_at"])
        ran = _ms(task["started_at"], task["completed_at"])
        cards.append(TaskCard(**task, files=files, queued_ms=queued, run_ms=ran))
    if len(found) == limit:
        response.headers["x-next-before"] = found[-1]["created_at"].isoformat()
    return cards


@router.get(
    "/tasks/{task_id}/thumbnail",
    summary="A small WebP of one of a task's images (made once, then cached)",
    response_class=Response,
    responses={200: {"content": {THUMB_TYPE: {}}}},
)
async def task_thumbnail(
    request: Request,
    task_id: str,
    gateway: AdminGateway,
    index: Annotated[int, Query(ge=0, le=15)] = 0,
) -> Response:
    service: TaskService = request.app.state.tasks
    record = await service.find(task_id)
    if index >= len(record.files):
        raise NotFound(f"Task '{task_id}' has no image {index} (it has {len(record.files)}).")
    thumbs: Thumbnails = request.app.state.thumbnails
    data = await thumbs.get(record.files[index].name)
    if data is None:
        raise NotFound(f"Image {index} of task '{task_id}' is no longer stored.")
    return Response(
        data, media_type=THUMB_TYPE, headers={"cache-control": "private, max-age=86400"}
    )
