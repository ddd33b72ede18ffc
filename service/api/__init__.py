"""One router per resource, mounted under /v1 (health and metrics at the root)."""

from fastapi import APIRouter

from . import admin, datasets, embedding_sets, health, imports, manifests, neighbours, runs, tasks

router = APIRouter()
router.include_router(health.router)
router.include_router(datasets.router)
router.include_router(imports.router)
router.include_router(embedding_sets.router)
router.include_router(runs.router)
router.include_router(manifests.router)
router.include_router(admin.router)
router.include_router(neighbours.router)
router.include_router(tasks.router)
