"""The HTTP API and web page: ``create_app(index_dir)`` builds a FastAPI app; nothing loads at import.

Endpoints: ``POST /search`` (JSON text query, or multipart with an image and/or text), ``GET /items/{id}``,
``GET /items/{id}/image[?thumb=N]``, ``POST /embed`` (OpenAI-style embeddings), ``GET /health``, ``GET /info``,
and the search page at ``/``. Model calls are serialised by a lock (the model is not thread-safe and a
CPU has few cores to share); the index is read-only while serving.
"""

from __future__ import annotations

import io
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

from ..errors import InvalidInputError, XmodalError

STATIC = Path(__file__).with_name("static")
ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"}


def create_app(index_dir: str | Path, *, model: Any = None, reranker: Any = None, max_k: int = 100, max_depth: int = 500,
               max_upload_bytes: int = 10 * 1024 * 1024, max_text_chars: int = 1000, default_depth: int = 50) -> Any:
    """Build the app for an index folder made by ``xmodal index``.

    Args:
        model: a loaded encoder or a name; default: the model recorded in the index.
        reranker: a loaded reranker or a name/folder (``load_reranker``); enables ``rerank=true``.
    """
    state: dict[str, Any] = {}
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..collection import open_collection

        col = open_collection(index_dir)
        rr = reranker
        if isinstance(rr, (str, Path)):
            from ..models.cross import load_reranker

            rr = load_reranker(rr)
        state.update(collection=col, retriever=col.retriever(model=model, reranker=rr, depth=default_depth), reranker=rr)
        yield
        state.clear()

    app = FastAPI(title="xmodal", description="Cross-modal search over an xmodal index.", lifespan=lifespan)

    class HTTPError(Exception):
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(XmodalError)
    async def _xmodal_error(request: Request, exc: XmodalError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {msgs}"}, status_code=422)

    def check_int(name: str, value: Any, lo: int, hi: int) -> int:
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise HTTPError(422, f"{name} must be an integer; got {value!r}.") from None
        if not lo <= v <= hi:
            raise HTTPError(422, f"{name} must be between {lo} and {hi}; got {v}.")
        return v

    def check_text(text: Any) -> str | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise HTTPError(422, "text must be a string.")
        if not text.strip():
            raise HTTPError(422, "the text query is empty.")
        if len(text) > max_text_chars:
            raise HTTPError(413, f"the text query is longer than {max_text_chars} characters.")
        return text

    async def read_image(upload: Any) -> Image.Image:
        if upload.content_type not in ALLOWED_TYPES:
            raise HTTPError(415, f"unsupported image type '{upload.content_type}'; use one of {sorted(ALLOWED_TYPES)}.")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPError(413, f"the image is larger than {max_upload_bytes // (1024 * 1024)} MB.")
        from ..data.images import open_image

        try:
            return open_image(data)
        except InvalidInputError:
            raise HTTPError(400, f"the uploaded file '{upload.filename}' is not a readable image.") from None

    def run_search(text: str | None, image: Image.Image | None, k: int, depth: int | None, rerank: bool) -> dict[str, Any]:
        if text is None and image is None:
            raise HTTPError(422, "give a text query, an image, or both.")
        if rerank and state["reranker"] is None:
            raise HTTPError(400, "reranking is not available: start the server with --rerank MODEL.")
        t0 = time.perf_counter()
        with lock:
            res = state["retriever"].search(text=text, image=image, k=k, depth=depth, rerank=rerank)
        total = time.perf_counter() - t0
        from urllib.parse import quote

        return {
            "stage": res.stage,
            "results": [{"id": i, "score": s, "url": f"/items/{quote(i)}/image", "thumbnail": f"/items/{quote(i)}/image?thumb=160"}
                        for i, s in zip(res.ids, res.scores)],
            "ids": res.ids, "scores": res.scores,
            "timings": {**res.timings, "total": total},
        }

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            image = await read_image(upload) if upload is not None and getattr(upload, "filename", None) else None
            text = form.get("text") or None
            params = form
        else:
            try:
                params = await request.json()
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
        from starlette.concurrency import run_in_threadpool

        # the model runs in a worker thread so the event loop keeps answering (health, images) meanwhile
        return await run_in_threadpool(run_search, text, image, k, depth, rerank)

    def item_path(item_id: str) -> Path:
        col = state["collection"]
        try:
            return col.image_path(item_id)
        except InvalidInputError as e:
            status = 404 if "unknown" in str(e) else 403
            raise HTTPError(status, str(e)) from None

    @app.get("/items/{item_id:path}/image")
    def item_image(item_id: str, thumb: int | None = None) -> Any:
        path = item_path(item_id)
        if not path.exists():
            raise HTTPError(404, f"the file of item '{item_id}' is gone from disk.")
        if thumb is None:
            return FileResponse(path)
        size = check_int("thumb", thumb, 16, 1024)
        from ..data.images import open_image

        img = open_image(path)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/items/{item_id:path}")
    def item(item_id: str) -> dict[str, Any]:
        item_path(item_id)
        return {"id": item_id, "metadata": state["collection"].index.metadata(item_id),
                "url": f"/items/{item_id}/image"}

    async def _locked(fn: Any, items: list) -> Any:
        from starlette.concurrency import run_in_threadpool

        def call() -> Any:
            with lock:
                return fn(items, show_progress=False)

        return await run_in_threadpool(call)

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        encoder = state["retriever"].encoder
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            uploads = form.getlist("image")
            if not uploads:
                raise HTTPError(422, "send one or more 'image' files.")
            images = [await read_image(u) for u in uploads]
            vecs = await _locked(encoder.encode_image, images)
        else:
            try:
                body = await request.json()
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
        return {"model": state["retriever"].encoder.model_id, "items": len(col), "engine": col.engine,
                "dimension": state["retriever"].encoder.embedding_dim, "rerank": state["reranker"] is not None,
                "max_k": max_k, "max_upload_bytes": max_upload_bytes}

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
