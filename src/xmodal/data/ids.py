"""Item ids on the wire and on screen.

Ids are file paths relative to a collection root, and file names on POSIX are bytes: a name that is
not valid UTF-8 arrives in Python with lone surrogates (``os.fsdecode``'s surrogateescape), and may
also hold newlines or other control characters. These helpers keep such ids exact in URLs (percent
escapes of the original bytes), and printable on one line in tables.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes


def id_bytes(item_id: str) -> bytes:
    """The id's original bytes (surrogate-escaped characters map back to the undecodable bytes)."""
    return item_id.encode("utf-8", "surrogateescape")


def url_quote_id(item_id: str) -> str:
    """The id as a URL path segment sequence: every byte percent-escaped except ``/`` and unreserved ones."""
    return quote(id_bytes(item_id), safe="/")


def id_from_raw_path(raw: bytes | str) -> str:
    """Invert ``url_quote_id`` on a raw (still percent-escaped) URL path piece."""
    data = unquote_to_bytes(raw if isinstance(raw, str) else raw.decode("latin-1"))
    return data.decode("utf-8", "surrogateescape")


def printable_id(item_id: str) -> str:
    """The id on one line: control characters and undecodable bytes shown as escapes (``\\n``, ``\\xe9``)."""
    if item_id.isprintable():
        return item_id
    out = []
    for ch in item_id:
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a surrogate-escaped byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def is_utf8_text(text: str) -> bool:
    """False for strings holding lone surrogates (e.g. JSON ``"\\ud800"``), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

