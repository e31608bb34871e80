"""The HTTP API and web page: ``create_app(index_dir)`` builds a FastAPI app; nothing loads at import.

Endpoints (request/response schemas at ``/docs``): ``POST /search`` (JSON text query, or multipart with an
image and/or text), ``GET /items/{id}``, ``GET /items/{id}/image[?thumb=N]``, ``POST /v1/embeddings``
(OpenAI-compatible; ``/embed`` is an alias that also takes multipart images), ``GET /health``, ``GET /info``,
and the search page at ``/``. Several indexes can be served at once: each under ``/indexes/{name}/...``
(same routes); the plain routes use the first one.

Model calls run on one worker thread per index that merges concurrent requests into one forward pass
(``batching.ModelWorker``: ``max_batch`` requests, waiting at most ``max_wait_ms``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.ids import id_from_raw_path, url_quote_id
from ..errors import InvalidInputError, XmodalError
from . import schemas as S
from .batching import BatchedEncoder, BatchedScorer, ModelWorker
from .limits import BodyTooLarge, RequestGuard, ServerLimits
from .schemas import RequestError

STATIC = Path(__file__).with_name("static")
ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"}
INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_NAME = "default"
# Absolute paths in error messages (a client must not learn the server's file layout).
_ABS_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(=]))/[^\s'\"]*/([^\s'\"/]*)")


class SafeJSONResponse(JSONResponse):
    """JSON with ASCII escapes: ids from non-UTF-8 file names hold lone surrogates, which ``\\udcXX``
    escapes carry exactly (a UTF-8 encoding of them would fail with a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _AnyPath(PathConvertor):
    regex = "(?s:.*)"  # ids may hold newlines (file names can); starlette's ``path`` stops at them


register_url_convertor("anypath", _AnyPath())


def _item_id(request: Request, suffix: bytes = b"") -> str:
    """The item id from the raw URL path: the decoded path has lost undecodable bytes (as U+FFFD)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw.split(b"?", 1)[0]
    if raw.startswith(b"/indexes/"):  # /indexes/{name}/items/{id}: skip the name (it may read "items")
        raw = raw[raw.index(b"/", len(b"/indexes/")):]
    raw = raw[raw.index(b"/items/") + len(b"/items/"):]
    return id_from_raw_path(raw[:-len(suffix)] if suffix and raw.endswith(suffix) else raw)


def index_folders(index_dir: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    """{name: folder}: one folder is served as 'default'; a mapping names each (the first is the default)."""
    if isinstance(index_dir, Mapping):
        folders = {str(k): Path(v) for k, v in index_dir.items()}
        if not folders:
            raise InvalidInputError("give at least one index folder to serve.")
    else:
        folders = {DEFAULT_NAME: Path(index_dir)}
    for name in folders:
        if not INDEX_NAME.match(name):
            raise InvalidInputError(f"index name '{name}' is not usable in a URL: use letters, digits, '_', '-', '.'.")
    return folders


@dataclass
class Served:
    """One index being served: its collection, retriever and the worker that runs its models."""

    name: str
    collection: Any
    retriever: Any
    worker: ModelWorker
    live: Any = None  # live.LiveIndex: adds and deletes while serving

    @property
    def encoder(self) -> Any:
        return self.retriever.encoder

    @property
    def reranker(self) -> Any:
        return self.retriever.reranker

    @property
    def model_id(self) -> str:
        return self.encoder.model_id


def create_app(index_dir: str | Path | Mapping[str, str | Path], *, model: Any = None, reranker: Any = None,
               max_k: int = 100, max_depth: int = 500, max_upload_bytes: int | None = None, max_text_chars: int = 1000,
               default_depth: int = 50, limits: ServerLimits | None = None, allowed_hosts: Any = None,
               device: Any = None, dtype: Any = None, max_batch: int = 32, max_wait_ms: float = 2.0,
               api_keys: Sequence[str] | None = None, cors_origins: Sequence[str] | None = None,
               compact_every: int = 1000) -> Any:
    """Build the app for index folder(s) made by ``xmodal index``.

    Args:
        index_dir: one index folder (served as 'default'), or {name: folder} for several (the first is the
            one the plain routes use; each is also under ``/indexes/{name}/``).
        model: a loaded encoder or a name; default: the model recorded in each index.
        reranker: a loaded reranker or a name/folder (``load_reranker``); enables ``rerank=true``.
        limits: per-request bounds (body sizes, images per request, decoded pixels, allowed hosts,
            header timeout); ``max_upload_bytes`` and ``allowed_hosts`` override single fields.
        device, dtype: where and in which precision the encoder and reranker run (models given by name are
            loaded there; loaded models are moved); None keeps the defaults / the model's own placement.
        max_batch, max_wait_ms: dynamic batching: at most ``max_batch`` concurrent requests share one model
            call, the first waiting at most ``max_wait_ms`` for others; ``max_batch=1`` turns it off.
        api_keys: when given, every endpoint but /health, the page, its static files and the API docs needs
            one of these keys (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; see ``server.auth``).
        cors_origins: web origins whose pages may call the API (CORS headers; ``*`` for any).
        compact_every: live changes (POST/DELETE /items) logged before the index is saved again (see ``live``).
    """
    if device is not None or dtype is not None:  # bad values fail here, before the server starts
        from ..runtime import resolve_device, resolve_dtype

        resolve_dtype(dtype, resolve_device(device))
    folders_by_name = index_folders(index_dir)
    if max_batch < 1 or max_wait_ms < 0:
        raise InvalidInputError(f"max_batch must be >= 1 and max_wait_ms >= 0; got {max_batch} and {max_wait_ms}.")
    served: dict[str, Served] = {}
    limits = limits or ServerLimits()
    if max_upload_bytes is not None:
        limits.max_upload_bytes = max_upload_bytes
    if allowed_hosts is not None:
        limits.allowed_hosts = tuple(allowed_hosts)
    max_upload_bytes = limits.max_upload_bytes
    context = {"max_k": max_k, "max_depth": max_depth, "max_text_chars": max_text_chars}
    folders: list[tuple[str, str]] = []
    for folder in folders_by_name.values():
        folders += [(str(folder.resolve()), "<index>"), (str(folder), "<index>")]

    def public(message: str) -> str:
        """An error message without absolute paths: the image root and index folder become relative."""
        for folder, label in folders:
            if folder not in ("", ".", "/"):
                message = message.replace(folder + "/", "").replace(folder, label)
        return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", message)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..collection import open_collection

        rr = reranker
        if isinstance(rr, (str, Path)):
            from ..models.cross import load_reranker

            rr = load_reranker(rr, device=device, dtype=dtype)
        from .live import LiveIndex

        encoders: dict[str, Any] = {}  # indexes of one model share it (and its worker)
        workers: dict[str, ModelWorker] = {}
        lives: list[LiveIndex] = []
        try:
            for name, folder in folders_by_name.items():
                col = open_collection(folder)
                live = LiveIndex(col, compact_every=compact_every)  # the index, locked, changeable while serving
                lives.append(live)
                live.recover()  # changes a killed server logged but did not save
                key = str(model if isinstance(model, (str, type(None))) else id(model)) + "|" + str(col.model_name)
                enc = encoders.get(key)
                retriever = col.retriever(model=enc.wrapped if enc is not None else model, reranker=rr,
                                          depth=default_depth, device=device, dtype=dtype)
                if key not in workers:
                    workers[key] = ModelWorker(max_batch, max_wait_ms, name=f"xmodal-model-{name}",
                                               on_batch=metrics.on_batch(name))
                    encoders[key] = BatchedEncoder(retriever.encoder, workers[key])
                retriever.encoder = encoders[key]
                if retriever.reranker is not None:
                    retriever.reranker = BatchedScorer(retriever.reranker, workers[key])
                served[name] = Served(name, col, retriever, workers[key], live)
                metrics.watch(name, lambda w=workers[key]: w.depth, col.__len__)
                if col.root is not None:  # a text collection has no image root
                    folders[:0] = [(str(col.root.resolve()), "<root>"), (str(col.root), "<root>")]
            yield
        finally:
            served.clear()
            for w in workers.values():
                w.close()
            for live in lives:  # save what was changed, empty the logs
                live.close()

    app = FastAPI(title="xmodal", description="Cross-modal search over xmodal indexes. Errors are "
                  "{\"error\": message} with a 4xx status.", lifespan=lifespan, default_response_class=SafeJSONResponse)
    from .metrics import Metrics, ObservabilityMiddleware

    metrics = Metrics()
    app.state.limits = limits
    app.state.served = served
    app.state.metrics = metrics
    if api_keys:
        from .auth import APIKeyGuard, check_keys

        app.add_middleware(APIKeyGuard, keys=check_keys(api_keys))
    if cors_origins:
        limits.cors_origins = tuple(cors_origins)
    app.add_middleware(RequestGuard, limits=limits)
    if cors_origins:  # outside the key check: preflights carry no key, and 401s must be readable by the page
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], max_age=600)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, fastapi_app=app)  # outermost: sees every answer

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
            app.openapi_schema = S.add_components(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def error(status: int, message: str, request: Request | None = None) -> JSONResponse:
        message = public(message)
        if request is not None and request.url.path.startswith("/v1/"):  # the OpenAI error shape its clients read
            kind = "invalid_request_error" if status != 401 else "authentication_error"
            return SafeJSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)
        return SafeJSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message, request)

    @app.exception_handler(XmodalError)
    async def _xmodal_error(request: Request, exc: XmodalError) -> JSONResponse:
        return error(400, str(exc), request)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error(413, str(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(*S.describe(list(exc.errors()), skip=1), request)

    def index(name: str | None) -> Served:
        if not served:
            raise RequestError(503, "the server is starting; try again in a moment.")
        if name is None:
            return next(iter(served.values()))
        if name not in served:
            raise RequestError(404, f"no index named '{name}' is served here; served: {sorted(served)}.")
        return served[name]

    async def read_upload(upload: Any) -> bytes:
        if upload.content_type not in ALLOWED_TYPES:
            raise RequestError(415, f"unsupported image type '{upload.content_type}'; use one of {sorted(ALLOWED_TYPES)}.")
        data = await upload.read(max_upload_bytes + 1)
        return check_size(data)

    def check_size(data: bytes) -> bytes:
        if len(data) > max_upload_bytes:
            raise RequestError(413, f"the image is larger than {max_upload_bytes // (1024 * 1024)} MB.")
        return data

    def decode(data: bytes, filename: Any) -> Image.Image:
        """Runs in a worker thread: a slow or huge image must not stall the event loop (other searches)."""
        from ..data.images import ImageTooLargeError, open_image

        try:
            return open_image(data, max_pixels=limits.max_image_pixels, min_side=limits.image_min_side)
        except ImageTooLargeError as e:
            raise RequestError(413, f"the uploaded file '{filename}' is too large: {str(e).split(' is ', 1)[-1]}") from None
        except InvalidInputError:
            raise RequestError(400, f"the uploaded file '{filename}' is not a readable image.") from None

    async def read_image(upload: Any) -> Image.Image:
        data = await read_upload(upload)
        return await run_in_threadpool(decode, data, upload.filename)

    async def read_form(request: Request, max_files: int) -> Any:
        try:
            return await request.form(max_files=max_files, max_fields=16, max_part_size=64 * 1024)
        except StarletteHTTPException as e:
            raise RequestError(413 if "Too many" in str(e.detail) else 400, str(e.detail)) from None

    async def read_json(request: Request, hint: str) -> Any:
        try:
            return await request.json()
        except BodyTooLarge:
            raise
        except Exception:
            raise RequestError(400, hint) from None

    def run_search(srv: Served, req: S.SearchRequest, image: Image.Image | None) -> dict[str, Any]:
        if req.text is None and image is None:
            raise RequestError(422, "give a text query, an image, or both.")
        if req.rerank and srv.reranker is None:
            raise RequestError(400, "reranking is not available: start the server with --rerank MODEL.")
        t0 = time.perf_counter()
        res = srv.retriever.search(text=req.text, image=image, k=req.k, depth=req.depth, rerank=req.rerank,
                                   mode=req.mode, fusion=req.fusion, alpha=req.alpha, where=req.where,
                                   offset=req.offset, min_score=req.min_score, dedup=req.dedup)
        total = time.perf_counter() - t0
        prefix = "" if srv is index(None) else f"/indexes/{srv.name}"
        texts = srv.collection.kind == "texts"  # a text collection's hits carry their text, not an image URL

        def hit(i: str, s: float, meta: dict[str, Any]) -> dict[str, Any]:
            shown = {k: v for k, v in meta.items() if k != "signature"}
            if texts:
                return {"id": i, "score": s, "url": None, "thumbnail": None, "text": shown.get("text"), "metadata": shown}
            return {"id": i, "score": s, "url": f"{prefix}/items/{url_quote_id(i)}/image",
                    "thumbnail": f"{prefix}/items/{url_quote_id(i)}/image?thumb=160", "metadata": shown}

        metas = res.metadata or [{} for _ in res.ids]
        return {
            "stage": res.stage,
            "results": [hit(i, s, m) for i, s, m in zip(res.ids, res.scores, metas)],
            "ids": res.ids, "scores": res.scores,
            "timings": {**res.timings, "total": total},
        }

    async def search(request: Request, name: str | None = None) -> dict[str, Any]:
        srv = index(name)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await read_form(request, max_files=1)
            upload = form.get("image")
            image = await read_image(upload) if upload is not None and getattr(upload, "filename", None) else None
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            if not fields.get("text"):
                fields.pop("text", None)  # the page sends an empty text with an image
            req = S.parse(S.SearchRequest, fields, **context)
        else:
            body = await read_json(request, "send JSON ({\"text\": ...}) or multipart form data with an image.")
            req, image = S.parse(S.SearchRequest, body, **context), None
        # the search runs in a worker thread so the event loop keeps answering (health, images) meanwhile
        return await run_in_threadpool(run_search, srv, req, image)

    search_doc = dict(response_model=None, responses={200: {"model": S.SearchResponse}, **S.ERRORS},
                      openapi_extra=S.openapi_body(S.SearchRequest, S.SearchForm))
    async def search_default(request: Request) -> dict[str, Any]:
        return await search(request)

    app.post("/search", summary="Search with a text and/or an image", **search_doc)(search_default)
    app.post("/indexes/{name}/search", summary="Search one of the served indexes", **search_doc)(search)

    def item_path(srv: Served, item_id: str) -> Path:
        try:
            return srv.collection.image_path(item_id)
        except InvalidInputError as e:
            status = 404 if "unknown" in str(e) else 403
            raise RequestError(status, str(e)) from None

    def item_image(request: Request, thumb: int | None = None, name: str | None = None) -> Any:
        srv = index(name)
        item_id = _item_id(request, suffix=b"/image")
        path = item_path(srv, item_id)
        if not path.exists():
            raise RequestError(404, f"the file of item '{item_id}' is gone from disk.")
        if thumb is None:
            return FileResponse(path)
        if not 16 <= thumb <= 1024:
            raise RequestError(422, f"thumb must be between 16 and 1024; got {thumb}.")
        size = thumb
        from ..data.images import open_image

        img = open_image(path, max_pixels=limits.max_image_pixels, min_side=size)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    image_doc = dict(response_class=Response, responses={200: {"content": {"image/*": {}}}, **S.ERRORS})
    def item_image_default(request: Request, thumb: int | None = None) -> Any:
        return item_image(request, thumb)

    app.get("/items/{item_id:anypath}/image", summary="An item's image (or a JPEG thumbnail)",
            **image_doc)(item_image_default)
    app.get("/indexes/{name}/items/{item_id:anypath}/image", summary="An item's image in a named index",
            **image_doc)(item_image)

    def item(request: Request, name: str | None = None) -> dict[str, Any]:
        srv = index(name)
        item_id = _item_id(request)
        prefix = "" if name is None else f"/indexes/{name}"
        if srv.collection.kind == "texts":  # no image file: the text is in the metadata
            if item_id not in srv.collection.index:
                raise RequestError(404, f"unknown item id '{item_id}'.")
            return {"id": item_id, "metadata": srv.collection.index.metadata(item_id), "url": None}
        item_path(srv, item_id)
        return {"id": item_id, "metadata": srv.collection.index.metadata(item_id),
                "url": f"{prefix}/items/{url_quote_id(item_id)}/image"}

    item_doc = dict(responses={200: {"model": S.ItemResponse}, **S.ERRORS})
    def item_default(request: Request) -> dict[str, Any]:
        return item(request)

    app.get("/items/{item_id:anypath}", summary="An item's metadata", **item_doc)(item_default)
    app.get("/indexes/{name}/items/{item_id:anypath}", summary="An item's metadata in a named index", **item_doc)(item)

    # ------------------------------------------------------------------ live updates
    def under_root(srv: Served, rel: str) -> tuple[str, Path]:
        """(item id, file) for a path relative to the collection root; refuses anything that leaves it."""
        from ..data.images import IMAGE_SUFFIXES

        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")) or p.name.startswith("."):
            raise RequestError(403, f"'{rel}' is not a relative path inside the collection root.")
        root = srv.collection.root.resolve()
        target = (root / p).resolve()
        if root not in target.parents:
            raise RequestError(403, f"'{rel}' points outside the collection root; refused.")
        if target.suffix.lower() not in IMAGE_SUFFIXES:
            raise RequestError(415, f"'{rel}' is not an image file name (use one of {list(IMAGE_SUFFIXES)}).")
        return target.relative_to(root).as_posix(), target

    def encode_file(srv: Served, path: Path, label: str) -> Any:
        from ..data.images import ImageTooLargeError, open_image

        try:
            img = open_image(path, max_pixels=limits.max_image_pixels, min_side=limits.image_min_side)
        except ImageTooLargeError as e:
            raise RequestError(413, f"'{label}' is too large: {str(e).split(' is ', 1)[-1]}") from None
        except InvalidInputError:
            raise RequestError(400, f"'{label}' is not a readable image.") from None
        return srv.encoder.encode_image([img])[0]

    def store_upload(target: Path, data: bytes, rel: str) -> None:
        from ..io import atomic_write

        if target.exists():
            raise RequestError(409, f"'{rel}' already exists under the collection root; choose another path.")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)  # durable before the item is logged

    async def add_item(request: Request, name: str | None = None) -> Any:
        srv = index(name)
        if srv.collection.kind == "texts" or srv.collection.root is None:
            raise RequestError(400, "adding items over HTTP works for image collections; re-run `xmodal index-texts` "
                                    "to add texts.")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await read_form(request, max_files=1)
            upload = form.get("image")
            if upload is None or not getattr(upload, "filename", None):
                raise RequestError(422, "send the image as the 'image' file, or JSON {\"path\": ...} for a file "
                                        "already under the collection root.")
            data = await read_upload(upload)
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            fields.setdefault("path", "uploads/" + Path(str(upload.filename).replace("\\", "/")).name)
            req = S.parse(S.AddItemRequest, fields)
            item_id, target = under_root(srv, req.path)
            if target.exists():
                raise RequestError(409, f"'{req.path}' already exists under the collection root; choose another path.")
            await run_in_threadpool(decode, data, upload.filename)  # a readable image, before it is stored
            await run_in_threadpool(store_upload, target, data, req.path)
        else:
            body = await read_json(request, "send JSON {\"path\": ..., \"metadata\": {...}} or a multipart image.")
            req = S.parse(S.AddItemRequest, body)
            item_id, target = under_root(srv, req.path)
            if not target.is_file():
                raise RequestError(404, f"there is no file '{req.path}' under the collection root.")
        vec = await run_in_threadpool(encode_file, srv, target, req.path)
        st = target.stat()  # as `xmodal index` records it: a later run sees the file unchanged
        meta = {**req.metadata, "path": item_id, "signature": [int(st.st_size), int(st.st_mtime_ns)]}
        await run_in_threadpool(srv.live.add, item_id, vec, meta)
        prefix = "" if name is None else f"/indexes/{name}"
        return SafeJSONResponse({"id": item_id, "url": f"{prefix}/items/{url_quote_id(item_id)}/image",
                                 "items": len(srv.collection)}, status_code=201)

    async def delete_item(request: Request, delete_file: bool = False, name: str | None = None) -> Any:
        srv = index(name)
        item_id = _item_id(request)
        if srv.collection.kind == "texts":
            if item_id not in srv.collection.index:
                raise RequestError(404, f"unknown item id '{item_id}'.")
            path = None
        else:
            path = item_path(srv, item_id)  # 404 for unknown ids
        await run_in_threadpool(srv.live.delete, item_id)
        removed = False
        if delete_file and path is not None and path.is_file():
            path.unlink()
            removed = True
        return {"id": item_id, "deleted": True, "file_deleted": removed, "items": len(srv.collection)}

    async def add_item_default(request: Request) -> Any:
        return await add_item(request)

    async def delete_item_default(request: Request, delete_file: bool = False) -> Any:
        return await delete_item(request, delete_file)

    add_doc = dict(status_code=201, responses={201: {"model": S.AddedItem}, **S.ERRORS},
                   openapi_extra=S.openapi_body(S.AddItemRequest, S.AddItemForm))
    app.post("/items", summary="Add an item (upload, or a file under the root); searchable at once", **add_doc)(
        add_item_default)
    app.post("/indexes/{name}/items", summary="Add an item to a named index", **add_doc)(add_item)
    del_doc = dict(responses={200: {"model": S.DeletedItem}, **S.ERRORS},
                   description="Removes the item from the index at once (persisted). The file stays under the root "
                               "unless delete_file=true (a later `xmodal index` run would add it again).")
    app.delete("/items/{item_id:anypath}", summary="Delete an item", **del_doc)(delete_item_default)
    app.delete("/indexes/{name}/items/{item_id:anypath}", summary="Delete an item of a named index",
               **del_doc)(delete_item)

    def encoder_for(model_name: str | None) -> Served:
        if model_name is None:
            return index(None)
        for srv in served.values():
            if srv.model_id == model_name:
                return srv
        raise RequestError(404, f"model '{model_name}' is not served here; use one of "
                                f"{sorted({s.model_id for s in served.values()})} (see /info).")

    def b64_image(value: str, n: int) -> bytes:
        if value.startswith("data:"):
            head, _, value = value.partition(",")
            if ";base64" not in head or not head[5:].startswith("image/"):
                raise RequestError(415, f"input {n}: use a data:image/...;base64, URL or plain base64.")
        try:
            return check_size(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"input {n}: the image is not valid base64.") from None

    async def embed_images(srv: Served, images: list[tuple[bytes, str]]) -> Any:
        if len(images) > limits.max_images:
            raise RequestError(413, f"at most {limits.max_images} images per request; got {len(images)}.")
        decoded, held = [], 0
        for data, label in images:  # one at a time, downscaled right after decoding: bounded decoded bytes
            img = await run_in_threadpool(decode, data, label)
            held += img.width * img.height * 3
            if held > limits.max_decoded_bytes:
                raise RequestError(413, f"the images of this request decode to more than "
                                        f"{limits.max_decoded_bytes // (1024 * 1024)} MB; send fewer or smaller images.")
            decoded.append(img)
        return await run_in_threadpool(srv.encoder.encode_image, decoded)

    def embedding_response(srv: Served, vecs: list[Any], fmt: str, tokens: int) -> dict[str, Any]:
        import numpy as np

        def out(v: Any) -> Any:
            v = np.asarray(v, dtype="<f4")
            return base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist()

        return {"object": "list", "model": srv.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": out(v)} for i, v in enumerate(vecs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def embeddings(request: Request) -> dict[str, Any]:
        body = await read_json(request, "send JSON {\"input\": text or [texts], \"model\": ...}.")
        req = S.parse(S.EmbeddingRequest, body, **context)
        srv = encoder_for(req.model)
        if req.dimensions is not None and req.dimensions != srv.encoder.embedding_dim:
            raise RequestError(422, f"dimensions: this model gives {srv.encoder.embedding_dim}-dimensional "
                                    f"embeddings; it cannot give {req.dimensions}.")
        items = [req.input] if isinstance(req.input, str) else list(req.input)
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        images = [(i, t) for i, t in enumerate(items) if not isinstance(t, str)]
        vecs: list[Any] = [None] * len(items)
        if texts:
            for (i, _), v in zip(texts, await run_in_threadpool(srv.encoder.encode_text, [t for _, t in texts])):
                vecs[i] = v
        if images:
            enc = await embed_images(srv, [(b64_image(t.image, i), f"input {i}") for i, t in images])
            for (i, _), v in zip(images, enc):
                vecs[i] = v
        tokens = sum(len(t.split()) for _, t in texts)  # words, not model tokens: the count is informational
        return embedding_response(srv, vecs, req.encoding_format, tokens)

    async def embed(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await embeddings(request)
        srv = index(None)
        form = await read_form(request, max_files=limits.max_images + 1)
        uploads = form.getlist("image")
        if not uploads:
            raise RequestError(422, "send one or more 'image' files.")
        if len(uploads) > limits.max_images:
            raise RequestError(413, f"at most {limits.max_images} images per request; got {len(uploads)}.")
        images = [(await read_upload(u), u.filename) for u in uploads]
        return embedding_response(srv, list(await embed_images(srv, images)), "float", 0)

    emb_doc = dict(responses={200: {"model": S.EmbeddingResponse}, **S.ERRORS})
    app.post("/v1/embeddings", summary="Embeddings (OpenAI-compatible; images via {\"image\": base64} inputs)",
             openapi_extra=S.openapi_body(S.EmbeddingRequest), **emb_doc)(embeddings)
    app.post("/embed", summary="Alias of /v1/embeddings that also takes multipart 'image' files",
             openapi_extra=S.openapi_body(S.EmbeddingRequest, S.EmbedForm), **emb_doc)(embed)

    @app.get("/health", responses={200: {"model": S.HealthResponse}})
    def health() -> dict[str, str]:
        return {"status": "ok" if served else "starting"}

    def info(name: str | None = None) -> dict[str, Any]:
        srv = index(name)
        col = srv.collection
        describe = getattr(col.index, "describe_search", None)  # ANN settings + measured recall, when known
        return {"model": srv.model_id, "items": len(col), "engine": col.engine,
                "dimension": srv.encoder.embedding_dim, "rerank": srv.reranker is not None,
                "max_k": max_k, "max_upload_bytes": max_upload_bytes, "max_images": limits.max_images,
                "search": describe() if describe else None, "indexes": list(served), "kind": col.kind,
                "lexical": col.lexical is not None}

    info_doc = dict(responses={200: {"model": S.InfoResponse}, **S.ERRORS})
    def info_default() -> dict[str, Any]:
        return info()

    app.get("/info", summary="The served model and index", **info_doc)(info_default)
    app.get("/indexes/{name}/info", summary="One served index", **info_doc)(info)

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
