"""The HTTP API and web page: ``create_app(index_dir)`` builds a FastAPI app; nothing loads at import.

Endpoints: ``POST /search`` (JSON text query, or multipart with an image and/or text), ``GET /items/{id}``,
``GET /items/{id}/image[?thumb=N]``, ``POST /embed`` (OpenAI-style embeddings), ``GET /health``, ``GET /info``,
and the search page at ``/``. Model calls are serialised by a lock (the model is not thread-safe and a
CPU has few cores to share); the index is read-only while serving.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.ids import id_from_raw_path, is_utf8_text, url_quote_id
from ..errors import InvalidInputError, XmodalError
from .limits import BodyTooLarge, RequestGuard, ServerLimits

STATIC = Path(__file__).with_name("static")
ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"}
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
    raw = raw[raw.index(b"/items/") + len(b"/items/"):]
    return id_from_raw_path(raw[:-len(suffix)] if suffix and raw.endswith(suffix) else raw)


def create_app(index_dir: str | Path, *, model: Any = None, reranker: Any = None, max_k: int = 100, max_depth: int = 500,
               max_upload_bytes: int | None = None, max_text_chars: int = 1000, default_depth: int = 50,
               limits: ServerLimits | None = None, allowed_hosts: Any = None, device: Any = None,
               dtype: Any = None) -> Any:
    """Build the app for an index folder made by ``xmodal index``.

    Args:
        model: a loaded encoder or a name; default: the model recorded in the index.
        reranker: a loaded reranker or a name/folder (``load_reranker``); enables ``rerank=true``.
        limits: per-request bounds (body sizes, images per request, decoded pixels, allowed hosts,
            header timeout); ``max_upload_bytes`` and ``allowed_hosts`` override single fields.
        device, dtype: where and in which precision the encoder and reranker run (models given by name are
            loaded there; loaded models are moved); None keeps the defaults / the model's own placement.
    """
    if device is not None or dtype is not None:  # bad values fail here, before the server starts
        from ..runtime import resolve_device, resolve_dtype

        resolve_dtype(dtype, resolve_device(device))
    state: dict[str, Any] = {}
    lock = threading.Lock()
    limits = limits or ServerLimits()
    if max_upload_bytes is not None:
        limits.max_upload_bytes = max_upload_bytes
    if allowed_hosts is not None:
        limits.allowed_hosts = tuple(allowed_hosts)
    max_upload_bytes = limits.max_upload_bytes
    folders: list[tuple[str, str]] = [(str(Path(index_dir).resolve()), "<index>"), (str(Path(index_dir)), "<index>")]

    def public(message: str) -> str:
        """An error message without absolute paths: the image root and index folder become relative."""
        for folder, label in folders:
            if folder not in ("", ".", "/"):
                message = message.replace(folder + "/", "").replace(folder, label)
        return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", message)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..collection import open_collection

        col = open_collection(index_dir)
        rr = reranker
        if isinstance(rr, (str, Path)):
            from ..models.cross import load_reranker

            rr = load_reranker(rr, device=device, dtype=dtype)
        retriever = col.retriever(model=model, reranker=rr, depth=default_depth, device=device, dtype=dtype)
        state.update(collection=col, retriever=retriever, reranker=retriever.reranker)
        folders[:0] = [(str(col.root.resolve()), "<root>"), (str(col.root), "<root>")]
        yield
        state.clear()

    app = FastAPI(title="xmodal", description="Cross-modal search over an xmodal index.", lifespan=lifespan,
                  default_response_class=SafeJSONResponse)
    app.state.limits = limits
    app.add_middleware(RequestGuard, limits=limits)

    class HTTPError(Exception):
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

    def error(status: int, message: str) -> JSONResponse:
        return SafeJSONResponse({"error": public(message)}, status_code=status)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(XmodalError)
    async def _xmodal_error(request: Request, exc: XmodalError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error(422, f"invalid request: {msgs}")

    def check_int(name: str, value: Any, lo: int, hi: int) -> int:
        # JSON 1.7 or true must not become 1; form fields arrive as text and must be whole numbers
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
            raise HTTPError(422, f"{name} must be an integer (a whole number); got {value!r:.40}.")
        v = int(value)
        if not lo <= v <= hi:
            raise HTTPError(422, f"{name} must be between {lo} and {hi}; got {v}.")
        return v

    def check_text(text: Any) -> str | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise HTTPError(422, "text must be a string.")
        if not is_utf8_text(text):
            raise HTTPError(400, "the text is not valid Unicode (it holds a lone surrogate such as \\ud800).")
        if not text.strip():
            raise HTTPError(422, "the text query is empty.")
        if len(text) > max_text_chars:
            raise HTTPError(413, f"the text query is longer than {max_text_chars} characters.")
        return text

    async def read_upload(upload: Any) -> bytes:
        if upload.content_type not in ALLOWED_TYPES:
            raise HTTPError(415, f"unsupported image type '{upload.content_type}'; use one of {sorted(ALLOWED_TYPES)}.")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPError(413, f"the image is larger than {max_upload_bytes // (1024 * 1024)} MB.")
        return data

    def decode(data: bytes, filename: Any) -> Image.Image:
        """Runs in a worker thread: a slow or huge image must not stall the event loop (other searches)."""
        from ..data.images import ImageTooLargeError, open_image

        try:
            return open_image(data, max_pixels=limits.max_image_pixels, min_side=limits.image_min_side)
        except ImageTooLargeError as e:
            raise HTTPError(413, f"the uploaded file '{filename}' is too large: {str(e).split(' is ', 1)[-1]}") from None
        except InvalidInputError:
            raise HTTPError(400, f"the uploaded file '{filename}' is not a readable image.") from None

    async def read_image(upload: Any) -> Image.Image:
        data = await read_upload(upload)
        return await run_in_threadpool(decode, data, upload.filename)

    async def read_form(request: Request, max_files: int) -> Any:
        try:
            return await request.form(max_files=max_files, max_fields=16, max_part_size=64 * 1024)
        except StarletteHTTPException as e:
            raise HTTPError(413 if "Too many" in str(e.detail) else 400, str(e.detail)) from None

    def run_search(text: str | None, image: Image.Image | None, k: int, depth: int | None, rerank: bool) -> dict[str, Any]:
        if text is None and image is None:
            raise HTTPError(422, "give a text query, an image, or both.")
        if rerank and state["reranker"] is None:
            raise HTTPError(400, "reranking is not available: start the server with --rerank MODEL.")
        t0 = time.perf_counter()
        with lock:
            res = state["retriever"].search(text=text, image=image, k=k, depth=depth, rerank=rerank)
        total = time.perf_counter() - t0
        return {
            "stage": res.stage,
            "results": [{"id": i, "score": s, "url": f"/items/{url_quote_id(i)}/image",
                         "thumbnail": f"/items/{url_quote_id(i)}/image?thumb=160"} for i, s in zip(res.ids, res.scores)],
            "ids": res.ids, "scores": res.scores,
            "timings": {**res.timings, "total": total},
        }

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await read_form(request, max_files=1)
            upload = form.get("image")
            image = await read_image(upload) if upload is not None and getattr(upload, "filename", None) else None
            text = form.get("text") or None
            params = form
        else:
            try:
                params = await request.json()
            except BodyTooLarge:
                raise
            except Exception:
                raise HTTPError(400, "send JSON ({\"text\": ...}) or multipart form data with an image.") from None
            if not isinstance(params, dict):
                raise HTTPError(400, "the JSON body must be an object.")
            text, image = params.get("text"), None
        text = check_text(text)
        k = check_int("k", params.get("k", 10), 1, max_k)
        depth = params.get("depth")
        depth = check_int("depth", depth, 1, max_depth) if depth not in (None, "") else None
        rerank = str(params.get("rerank", "false")).lower() in ("1", "true", "yes", "on")
        # the model runs in a worker thread so the event loop keeps answering (health, images) meanwhile
        return await run_in_threadpool(run_search, text, image, k, depth, rerank)

    def item_path(item_id: str) -> Path:
        col = state["collection"]
        try:
            return col.image_path(item_id)
        except InvalidInputError as e:
            status = 404 if "unknown" in str(e) else 403
            raise HTTPError(status, str(e)) from None

    @app.get("/items/{item_id:anypath}/image")
    def item_image(request: Request, thumb: int | None = None) -> Any:
        item_id = _item_id(request, suffix=b"/image")
        path = item_path(item_id)
        if not path.exists():
            raise HTTPError(404, f"the file of item '{item_id}' is gone from disk.")
        if thumb is None:
            return FileResponse(path)
        size = check_int("thumb", thumb, 16, 1024)
        from ..data.images import open_image

        img = open_image(path, max_pixels=limits.max_image_pixels, min_side=size)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/items/{item_id:anypath}")
    def item(request: Request) -> dict[str, Any]:
        item_id = _item_id(request)
        item_path(item_id)
        return {"id": item_id, "metadata": state["collection"].index.metadata(item_id),
                "url": f"/items/{url_quote_id(item_id)}/image"}

    async def _locked(fn: Any, items: list) -> Any:
        def call() -> Any:
            with lock:
                return fn(items, show_progress=False)

        return await run_in_threadpool(call)

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        encoder = state["retriever"].encoder
        if ctype.startswith("multipart/form-data"):
            form = await read_form(request, max_files=limits.max_images + 1)
            uploads = form.getlist("image")
            if not uploads:
                raise HTTPError(422, "send one or more 'image' files.")
            if len(uploads) > limits.max_images:
                raise HTTPError(413, f"at most {limits.max_images} images per request; got {len(uploads)}.")
            images, held = [], 0
            for u in uploads:  # one at a time, downscaled right after decoding: bounded decoded bytes
                img = await read_image(u)
                held += img.width * img.height * 3
                if held > limits.max_decoded_bytes:
                    raise HTTPError(413, f"the images of this request decode to more than "
                                         f"{limits.max_decoded_bytes // (1024 * 1024)} MB; send fewer or smaller images.")
                images.append(img)
            vecs = await _locked(encoder.encode_image, images)
        else:
            try:
                body = await request.json()
            except BodyTooLarge:
                raise
            except Exception:
                raise HTTPError(400, "send JSON {\"input\": [texts]} or multipart images.") from None
            inputs = body.get("input") if isinstance(body, dict) else None
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs or len(inputs) > max_k:
                raise HTTPError(422, f"'input' must be a text or a list of 1..{max_k} texts.")
            for t in inputs:
                check_text(t)
            vecs = await _locked(encoder.encode_text, inputs)
        return {"object": "list", "model": encoder.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok" if "collection" in state else "starting"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        col = state["collection"]
        describe = getattr(col.index, "describe_search", None)  # ANN settings + measured recall, when known
        return {"model": state["retriever"].encoder.model_id, "items": len(col), "engine": col.engine,
                "dimension": state["retriever"].encoder.embedding_dim, "rerank": state["reranker"] is not None,
                "max_k": max_k, "max_upload_bytes": max_upload_bytes, "max_images": limits.max_images,
                "search": describe() if describe else None}

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
