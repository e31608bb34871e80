"""Declared request and response bodies of the HTTP API (pydantic), one class per endpoint.

Why the server validates by hand (``parse``) instead of letting FastAPI bind bodies: ``/search`` takes JSON or
multipart with the same fields, limits (``max_k``, text length) are per-app settings given as validation
context, and each failure keeps its own status code (a too-long text is 413, a lone surrogate 400) and one
clear ``{"error": ...}`` line. ``openapi_body`` documents the same models in ``/docs``.

To add a request field (e.g. a filter), add it to the request class here; the endpoint passes the validated
model on, and multipart forms are validated through the same class (form values arrive as text).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ..data.ids import is_utf8_text
from ..errors import InvalidInputError

DEFAULTS = {"max_k": 100, "max_depth": 500, "max_text_chars": 1000}
MAX_OFFSET = 10_000  # paging deeper than this is a crawl, not a search
TRUE_WORDS = ("1", "true", "yes", "on")


class RequestError(Exception):
    """A request the server refuses: HTTP status + one clear message (rendered as ``{"error": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def fail(status: int, message: str) -> PydanticCustomError:
    """A validation error carrying its HTTP status (422 unless the failure is a size or encoding problem)."""
    return PydanticCustomError(f"xmodal_{status}", message)


def _ctx(info: ValidationInfo, name: str) -> Any:
    return (info.context or {}).get(name, DEFAULTS[name])


def whole_number(name: str, value: Any) -> int:
    """JSON 1.7 or true must not become 1; form fields arrive as text and must be whole numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
        raise fail(422, f"{name} must be an integer (a whole number); got {value!r:.40}.")
    return int(value)


def in_range(name: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise fail(422, f"{name} must be between {lo} and {hi}; got {value}.")
    return value


def query_text(value: Any, max_chars: int, what: str = "the text query") -> str:
    if not isinstance(value, str):
        raise fail(422, "text must be a string.")
    if not is_utf8_text(value):
        raise fail(400, "the text is not valid Unicode (it holds a lone surrogate such as \\ud800).")
    if not value.strip():
        raise fail(422, f"{what} is empty.")
    if len(value) > max_chars:
        raise fail(413, f"{what} is longer than {max_chars} characters.")
    return value


def flag(value: Any) -> bool:
    """JSON booleans and the form words 1/true/yes/on (anything else is false, as the page sends 'false')."""
    return str(value).lower() in TRUE_WORDS


class _Request(BaseModel):
    # unknown fields are ignored (clients may send more than this server knows)
    model_config = ConfigDict(extra="ignore")


class SearchRequest(_Request):
    """``POST /search`` (and ``/indexes/{name}/search``): a text query; an image comes as a multipart file."""

    text: str | None = Field(None, description="Text query (at most max_text_chars characters, see /info).",
                             json_schema_extra={"maxLength": DEFAULTS["max_text_chars"]})
    k: int = Field(10, description="How many results (1..max_k, see /info).",
                   json_schema_extra={"minimum": 1, "maximum": DEFAULTS["max_k"]})
    depth: int | None = Field(None, description="Candidates retrieved for reranking (1..max_depth).",
                              json_schema_extra={"minimum": 1, "maximum": DEFAULTS["max_depth"]})
    rerank: bool = Field(False, description="Rerank the candidates with the cross-encoder (server started with --rerank).")
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        "dense", description="dense (vectors), lexical (BM25 over the items' texts: needs text and an index built "
                             "with texts, see /info 'lexical') or hybrid (both, fused).")
    fusion: Literal["rrf", "weighted"] = Field("rrf", description="hybrid: reciprocal-rank or weighted-score fusion.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="hybrid: the dense share of the fused score (0..1).")
    where: str | None = Field(None, description='Metadata filter, e.g. camera = "X100" and year >= 2020 (docs/filters.md).',
                              json_schema_extra={"maxLength": 10_000})
    offset: int = Field(0, description="Skip this many results first (paging: offset=k is the second page).",
                        json_schema_extra={"minimum": 0, "maximum": MAX_OFFSET})
    min_score: float | None = Field(None, description="Drop results scoring below this.")
    dedup: float | None = Field(None, description="Drop near-duplicates: cosine similarity >= this (0..1] to a better result.")

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, v: Any) -> str | None:
        if v in (None, ""):
            return None
        if not isinstance(v, str):
            raise fail(422, "where must be a filter expression (a string).")
        from ..indexes.filters import parse_filter

        try:
            parse_filter(v)
        except InvalidInputError as e:
            raise fail(422, str(e)) from None
        return v

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, v: Any) -> int:
        return 0 if v in (None, "") else in_range("offset", whole_number("offset", v), 0, MAX_OFFSET)

    @field_validator("min_score", "dedup", mode="before")
    @classmethod
    def _number(cls, v: Any, info: ValidationInfo) -> float | None:
        if v in (None, ""):
            return None
        try:
            x = float(v) if not isinstance(v, bool) else float("nan")
        except (TypeError, ValueError):
            x = float("nan")
        if x != x or x in (float("inf"), float("-inf")):
            raise fail(422, f"{info.field_name} must be a number; got {v!r:.40}.")
        if info.field_name == "dedup" and not 0 < x <= 1:
            raise fail(422, f"dedup must be in (0, 1]; got {x}.")
        return x

    @field_validator("mode", "fusion", "alpha", mode="before")
    @classmethod
    def _blank_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        # a form's empty field means the default
        return {"mode": "dense", "fusion": "rrf", "alpha": 0.5}[info.field_name] if v == "" else v

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else query_text(v, _ctx(info, "max_text_chars"))

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any, info: ValidationInfo) -> int:
        return in_range("k", whole_number("k", v), 1, _ctx(info, "max_k"))

    @field_validator("depth", mode="before")
    @classmethod
    def _depth(cls, v: Any, info: ValidationInfo) -> int | None:
        if v in (None, ""):
            return None
        return in_range("depth", whole_number("depth", v), 1, _ctx(info, "max_depth"))

    @field_validator("rerank", mode="before")
    @classmethod
    def _rerank(cls, v: Any) -> bool:
        return flag(v)


class SearchForm(SearchRequest):
    """``POST /search`` as ``multipart/form-data``: the fields of the JSON body as form fields, plus an image."""

    image: bytes | None = Field(None, description="Query image (JPEG, PNG, WebP, GIF, BMP).",
                                json_schema_extra={"format": "binary", "type": "string"})


class ImageInput(BaseModel):
    """xmodal extension of the OpenAI embeddings input: an image, as base64 or a ``data:image/...;base64,`` URL."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(..., description="Base64 of the image file (optionally as a data: URL).")


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings`` (OpenAI-compatible; ``/embed`` is an alias): texts, or images (extension)."""

    input: str | list[str | ImageInput] = Field(
        ..., description="A text, or a list of texts and/or {\"image\": base64} objects (xmodal extension).")
    model: str | None = Field(None, description="Must name the served model (see /info); omitted: the served model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, description="Must equal the model's dimension if given (no truncation).")
    user: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any, info: ValidationInfo) -> Any:
        items = [v] if isinstance(v, (str, dict)) else v
        limit = _ctx(info, "max_k")
        if not isinstance(items, list) or not items or len(items) > limit:
            raise fail(422, f"'input' must be a text or a list of 1..{limit} texts (token ids are not accepted).")
        for t in items:
            if isinstance(t, str):
                query_text(t, _ctx(info, "max_text_chars"), what="an input text")
            elif not isinstance(t, dict):
                raise fail(422, "each input must be a text or an {\"image\": base64} object "
                                "(token ids are not accepted).")
        return items


class EmbedForm(BaseModel):
    """``POST /embed`` as ``multipart/form-data``: one or more image files, embedded in order."""

    image: list[bytes] = Field(..., description="Image files (JPEG, PNG, WebP, GIF, BMP), at most max_images.",
                               json_schema_extra={"items": {"type": "string", "format": "binary"}})


RESERVED_METADATA = ("path", "signature")


def _metadata(v: Any) -> dict[str, Any]:
    if v in (None, ""):
        return {}
    if isinstance(v, str):  # a form field: JSON text
        try:
            v = json.loads(v)
        except ValueError:
            raise fail(422, "metadata must be a JSON object, e.g. {\"caption\": \"a dog\"}.") from None
    if not isinstance(v, dict):
        raise fail(422, "metadata must be a JSON object, e.g. {\"caption\": \"a dog\"}.")
    taken = [k for k in RESERVED_METADATA if k in v]
    if taken:
        raise fail(422, f"metadata may not set {taken}: the server records them.")
    if len(json.dumps(v)) > 16 * 1024:
        raise fail(413, "metadata is larger than 16 KB.")
    return v


class AddItemRequest(_Request):
    """``POST /items`` as JSON: index an image file that is already under the collection root."""

    path: str = Field(..., description="Image path relative to the collection root (becomes the item id).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Stored with the item (JSON object).")

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise fail(422, "path must be a non-empty relative path under the collection root.")
        if not is_utf8_text(v) or "\x00" in v:
            raise fail(400, "path is not valid text.")
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _meta(cls, v: Any) -> dict[str, Any]:
        return _metadata(v)


class AddItemForm(BaseModel):
    """``POST /items`` as ``multipart/form-data``: upload an image; it is stored under the collection root."""

    image: bytes = Field(..., description="The image file.", json_schema_extra={"format": "binary", "type": "string"})
    path: str | None = Field(None, description="Where to store it, relative to the root (default uploads/FILENAME); "
                                               "an existing file is not overwritten (409).")
    metadata: str | None = Field(None, description="JSON object stored with the item.")


class AddedItem(BaseModel):
    id: str
    url: str
    items: int = Field(..., description="Items in the index now.")


class DeletedItem(BaseModel):
    id: str
    deleted: bool
    file_deleted: bool
    items: int


class Hit(BaseModel):
    id: str
    score: float
    url: str | None = Field(None, description="The full image: GET this URL (None for a text collection).")
    thumbnail: str | None = None
    text: str | None = Field(None, description="The item's text (text collections made by `xmodal index-texts`).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="The item's metadata.")


class SearchResponse(BaseModel):
    stage: Literal["retrieve", "rerank"] | str
    results: list[Hit]
    ids: list[str]
    scores: list[float]
    timings: dict[str, float] = Field(..., description="Seconds per stage (encode, retrieve, rerank) and total.")


class ItemResponse(BaseModel):
    id: str
    metadata: dict[str, Any]
    url: str | None = Field(None, description="The image (None for a text collection's items).")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(..., description="Numbers, or base64 float32 with encoding_format=base64.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: Usage


class HealthResponse(BaseModel):
    status: Literal["ok", "starting"]


class InfoResponse(BaseModel):
    model: str
    items: int
    engine: str
    dimension: int
    rerank: bool
    max_k: int
    max_upload_bytes: int
    max_images: int
    search: dict[str, Any] | None
    kind: str = Field("images", description="images, or texts (a text collection: hits carry 'text').")
    lexical: bool = Field(False, description="The index has texts for mode=lexical|hybrid.")
    indexes: list[str] = Field(default_factory=list, description="Names served under /indexes/{name}/...")


class ErrorResponse(BaseModel):
    error: str = Field(..., description="One line saying what was wrong and what to do.")


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 415, 422)}


def parse(model: type[BaseModel], data: Any, **context: Any) -> Any:
    """Validate ``data`` with ``model``; a failure becomes one ``RequestError`` (status of its first problem)."""
    if not isinstance(data, dict):
        raise RequestError(400, "the JSON body must be an object.")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise RequestError(*describe(e.errors())) from None


def describe(errors: list[dict[str, Any]], skip: int = 0) -> tuple[int, str]:
    """(status, message) for pydantic errors: our own keep their status and text, others name the field."""
    status, parts = 422, []
    for i, err in enumerate(errors):
        kind = str(err.get("type", ""))
        if kind.startswith("xmodal_"):
            if i == 0:
                status = int(kind.removeprefix("xmodal_"))
            parts.append(err["msg"])
        else:
            where = ".".join(str(x) for x in err.get("loc", ())[skip:])
            parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return status, "; ".join(dict.fromkeys(parts))


def openapi_body(json_model: type[BaseModel] | None, form_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` documenting a body validated by hand (refs resolved by ``add_components``)."""
    content: dict[str, Any] = {}
    if json_model is not None:
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}}
    if form_model is not None:
        content["multipart/form-data"] = {"schema": {"$ref": f"#/components/schemas/{form_model.__name__}"}}
    return {"requestBody": {"required": True, "content": content}}


BODY_MODELS: list[type[BaseModel]] = [SearchRequest, SearchForm, EmbeddingRequest, EmbedForm, AddItemRequest, AddItemForm]


def add_components(schema: dict[str, Any], models: list[type[BaseModel]] | None = None) -> dict[str, Any]:
    """Put the request models (and what they refer to) into ``components.schemas`` of an OpenAPI document."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for m in models or BODY_MODELS:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in s.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps[m.__name__] = s
    return schema
