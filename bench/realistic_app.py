"""A FastAPI app of realistic size for the memory and cold-start measures: 12 resources, each
with pydantic models (create / update / read, nested and enum fields) and five CRUD routes with
dependencies, behind a middleware, with a lifespan. Served data lives in module-level dicts.
(No `from __future__ import annotations`: FastAPI reads the local models from the annotations.)

The dependencies are plain functions, as in FastAPI's tutorial, so FastAPI runs each in its thread
pool."""

import datetime as dt
import enum
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from fastapi.middleware.gzip import GZipMiddleware
from pydantic import BaseModel, Field, create_model

RESOURCES = [
    *("users", "accounts", "orders", "products", "invoices", "payments"),
    *("shipments", "reviews", "carts", "coupons", "warehouses", "suppliers"),
]


class Status(str, enum.Enum):
    active = "active"
    archived = "archived"
    pending = "pending"


class Address(BaseModel):
    street: str
    city: str
    postcode: str = Field(pattern=r"^[0-9A-Z -]{3,10}$")
    country: str = Field(min_length=2, max_length=2)


class Page(BaseModel):
    offset: int
    limit: int
    total: int


def pagination(
    offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> tuple[int, int]:
    return offset, limit


def caller(x_api_key: Annotated[str | None, Header()] = None) -> str:
    return x_api_key or "anonymous"


def resource_router(name: str) -> APIRouter:
    fields = {
        "name": (str, Field(min_length=1, max_length=200)),
        "description": (str | None, None),
        "status": (Status, Status.active),
        "tags": (list[str], []),
        "address": (Address | None, None),
        "quantity": (int, Field(0, ge=0)),
        "price": (float, Field(0.0, ge=0)),
        "metadata": (dict[str, str], {}),
    }
    title = name.capitalize()
    create = create_model(f"{title}Create", **fields)
    update = create_model(
        f"{title}Update", **{key: (kind | None, None) for key, (kind, _) in fields.items()}
    )
    read = create_model(
        f"{title}Read", __base__=create, id=(int, ...), created=(dt.datetime, ...), owner=(str, ...)
    )
    listing = create_model(f"{title}List", items=(list[read], ...), page=(Page, ...))
    store: dict[int, dict] = {}
    router = APIRouter(prefix=f"/{name}", tags=[name])

    def get_or_404(item_id: int) -> dict:
        if item_id not in store:
            raise HTTPException(404, f"{name[:-1]} {item_id} not found")
        return store[item_id]

    @router.get("", response_model=listing)
    async def list_items(page: Annotated[tuple[int, int], Depends(pagination)]):
        offset, limit = page
        items = list(store.values())[offset : offset + limit]
        return {"items": items, "page": {"offset": offset, "limit": limit, "total": len(store)}}

    @router.post("", response_model=read, status_code=201)
    async def create_item(body: create, who: Annotated[str, Depends(caller)]):  # type: ignore[valid-type]
        item = {**body.model_dump(), "id": len(store) + 1, "created": dt.datetime.now(dt.UTC)}
        store[item["id"]] = item | {"owner": who}
        return store[item["id"]]

    @router.get("/{item_id}", response_model=read)
    async def read_item(item: Annotated[dict, Depends(get_or_404)]):
        return item

    @router.patch("/{item_id}", response_model=read)
    async def update_item(body: update, item: Annotated[dict, Depends(get_or_404)]):  # type: ignore[valid-type]
        item.update(body.model_dump(exclude_unset=True))
        return item

    @router.delete("/{item_id}", status_code=204)
    async def delete_item(item: Annotated[dict, Depends(get_or_404)]):
        store.pop(item["id"])

    return router


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield {"started": dt.datetime.now(dt.UTC)}


app = FastAPI(title="realistic", lifespan=lifespan)
app.add_middleware(GZipMiddleware, minimum_size=1000)
for resource in RESOURCES:
    app.include_router(resource_router(resource))


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
