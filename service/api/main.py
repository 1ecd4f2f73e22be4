"""All routes: the versioned API under /v1, operations endpoints at the root."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import require_api_key
from service.api.routes import admin, feed, health, models, nowcasts, page

api_router = APIRouter(prefix="/v1")
api_router.include_router(nowcasts.router, dependencies=[Depends(require_api_key)])
api_router.include_router(feed.router, dependencies=[Depends(require_api_key)])
api_router.include_router(page.frames_router, dependencies=[Depends(require_api_key)])
api_router.include_router(models.router, dependencies=[Depends(require_api_key)])
api_router.include_router(admin.router)

root_router = APIRouter()
root_router.include_router(health.router)
root_router.include_router(page.router)
