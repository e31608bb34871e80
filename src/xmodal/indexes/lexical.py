"""``LexicalIndex``: BM25 over the text attached to items (captions, titles, chosen metadata fields).

Backed by tantivy (Rust, in memory). Chosen over bm25s by measurement (``benchmarks/lexical_engines.py``,
20k captions, same run): tantivy adds/removes documents in place (a 1% update took 0.03 s vs 0.75 s for
bm25s, which has no add/delete and rebuilds its matrix) and answers a query ~20x faster (0.04 ms vs 1 ms).

Persistence: the durable form is the item texts themselves, one companion file of the dense index
(``lexical.json``, written in the index's atomic manifest commit via ``indexes.manifest.companion_files``
and covered by its checksums). Opening an index rebuilds the tantivy index from it in memory, so there is
no second on-disk format with its own commit to keep in step. Measured (``benchmarks/lexical_open.py``, docs/hybrid.md):
100k captions open in 10.1 s and a 1%+1% update takes 2.0 s on the shared 2-core machine at load average 18.

Ids are arbitrary Python strings (file names may hold undecodable bytes); tantivy only sees an integer
key per item, so any id works. Query text is reduced to its words before parsing: no query syntax
(``field:value``, ``AND``, quotes) reaches tantivy from a user.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import CorruptIndexError, InvalidInputError

LEXICAL_FILE = "lexical.json"  # companion file name inside an index folder
FORMAT = 1
_WORDS = re.compile(r"[^\W_]+")  # what tantivy's tokenizer keeps: runs of letters/digits
TOKENIZER = "en_stem"  # lower-cased, English stemming ("dogs" finds "dog"); codes like XK4821 stay whole


def _tantivy() -> Any:
    try:
        import tantivy
    except ImportError:  # pragma: no cover - depends on the install
        raise InvalidInputError("lexical (BM25) search needs tantivy: pip install 'xmodal[lexical]' "
                                     "(or pip install tantivy).") from None
    return tantivy


def item_text(fields: Mapping[str, Any], names: Sequence[str]) -> str:
    """The text BM25 sees for one item: the chosen fields' values, in order, joined by newlines
    (lists are joined too; missing or empty fields are skipped)."""
    parts: list[str] = []
    for name in names:
        value = fields.get(name)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        parts += [str(v) for v in values if v is not None and str(v).strip()]
    return "\n".join(parts)


class LexicalIndex:
    """BM25 (tantivy) over one text per item id; ``add``/``remove``/``sync`` follow collection updates.

    Args:
        fields: the item fields the texts were made of (recorded so that updates use the same ones).
        source: where the texts came from (e.g. a captions file), recorded for updates; None if given in code.
    """

    def __init__(self, fields: Sequence[str] = ("text",), source: str | None = None) -> None:
        self.fields = [str(f) for f in fields]
        self.source = source
        self._texts: dict[str, str] = {}
        self._keys: dict[str, int] = {}  # id -> tantivy key
        self._ids: dict[int, str] = {}  # tantivy key -> id
        self._next = 0
        self._lock = threading.RLock()
        t = _tantivy()
        sb = t.SchemaBuilder()
        sb.add_unsigned_field("key", stored=True, indexed=True, fast=True)
        sb.add_text_field("text", stored=False, tokenizer_name=TOKENIZER, index_option="freq")
        self._schema = sb.build()
        self._index = t.Index(self._schema)  # in memory: the texts file is the durable form
        self._writer: Any = None
        self._dirty = False

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._texts

    def ids(self) -> list[str]:
        return list(self._texts)

    def text(self, item_id: str) -> str | None:
        return self._texts.get(item_id)

    def texts(self) -> dict[str, str]:
        return dict(self._texts)

    def _write(self) -> Any:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=15_000_000, num_threads=1)
        return self._writer

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Add items (an id already present is replaced). Empty texts are kept but match nothing."""
        ids, texts = list(ids), list(texts)
        if len(ids) != len(texts):
            raise InvalidInputError(f"got {len(ids)} ids for {len(texts)} texts; give one text per id.")
        bad = next((x for x in (*ids, *texts) if not isinstance(x, str)), None)
        if bad is not None:
            raise InvalidInputError(f"lexical index ids and texts must be strings; got {type(bad).__name__} {bad!r:.60}.")
        t = _tantivy()
        with self._lock:
            self.remove([i for i in ids if i in self._texts])
            w = self._write()
            for item_id, text in zip(ids, texts):
                key = self._next
                self._next += 1
                self._keys[item_id], self._ids[key], self._texts[item_id] = key, item_id, text
                # tantivy takes valid UTF-8 only: undecodable bytes of a text are replaced for indexing
                doc = t.Document()
                doc.add_unsigned("key", key)
                doc.add_text("text", text.encode("utf-8", "replace").decode("utf-8"))
                w.add_document(doc)
            self._dirty = True

    def remove(self, ids: Iterable[str]) -> int:
        """Drop items; returns how many were present."""
        n = 0
        with self._lock:
            for item_id in ids:
                key = self._keys.pop(item_id, None)
                if key is None:
                    continue
                # by query: delete_documents_by_term("key", int) silently matches nothing (tantivy-py 0.27)
                self._write().delete_documents_by_query(_tantivy().Query.term_query(self._schema, "key", key))
                del self._ids[key], self._texts[item_id]
                n += 1
            self._dirty = self._dirty or n > 0
        return n

    def sync(self, texts: Mapping[str, str]) -> tuple[int, int]:
        """Make the index hold exactly ``texts`` ({id: text}); only new, changed and gone items are touched.
        Returns (added or changed, removed)."""
        with self._lock:
            gone = [i for i in self._texts if i not in texts]
            changed = [i for i, s in texts.items() if self._texts.get(i) != s]
            self.remove(gone)
            self.add(changed, [texts[i] for i in changed])
        return len(changed), len(gone)

    def _commit(self) -> None:
        if self._dirty:
            self._write().commit()
            self._index.reload()
            self._dirty = False

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int, filter: Iterable[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """The ``k`` best items for ``query`` by BM25: (scores ``(n,)`` float32, ids), best first, n <= k.

        ``filter``: only these ids may be returned (an allow-list, like the dense indexes' ``filter``).
        Items sharing no word with the query are not returned (fewer than ``k`` results is normal).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer; got {k!r:.40}.")
        words = _WORDS.findall(str(query).lower())
        t = _tantivy()
        with self._lock:
            self._commit()
            if not words or not self._texts:
                return np.zeros(0, np.float32), []
            q = self._index.parse_query(" ".join(words), ["text"])
            if filter is not None:
                keys = [self._keys[i] for i in set(filter) if i in self._keys]
                if not keys:
                    return np.zeros(0, np.float32), []
                allowed = t.Query.const_score_query(t.Query.term_set_query(self._schema, "key", keys), 0.0)
                q = t.Query.boolean_query([(t.Occur.Must, q), (t.Occur.Must, allowed)])
            searcher = self._index.searcher()
            hits = searcher.search(q, int(min(k, len(self._texts)))).hits
            ids = [self._ids[searcher.doc(addr)["key"][0]] for _, addr in hits]
            return np.asarray([s for s, _ in hits], dtype=np.float32), ids

    # ------------------------------------------------------------------ persistence (companion file)
    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "library": "tantivy", "tokenizer": TOKENIZER, "fields": self.fields,
                           "source": self.source, "items": [[i, s] for i, s in self._texts.items()]},
                          ensure_ascii=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str | Path = LEXICAL_FILE) -> "LexicalIndex":
        try:
            d = json.loads(data)
            ok = isinstance(d, dict) and isinstance(d.get("items"), list) and isinstance(d.get("fields"), list)
        except ValueError:
            ok = False
        if not ok:
            raise CorruptIndexError(f"'{where}' is not a lexical index file (damaged?); rebuild the index.")
        if d.get("format", 1) > FORMAT:
            raise CorruptIndexError(f"'{where}' has lexical format {d.get('format')}; upgrade xmodal to read it.")
        lex = cls(fields=d["fields"], source=d.get("source"))
        items = [x for x in d["items"] if isinstance(x, list) and len(x) == 2]
        lex.add([str(i) for i, _ in items], [str(s) for _, s in items])
        return lex

    @classmethod
    def read(cls, folder: str | Path) -> "LexicalIndex | None":
        """The lexical index saved with the index in ``folder``, or None if it has none."""
        from .manifest import read_manifest

        m = read_manifest(folder, verify=False)
        if LEXICAL_FILE not in m.checksums:
            return None
        path = m.path(folder, LEXICAL_FILE)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptIndexError(f"index '{folder}' is missing its file '{LEXICAL_FILE}'. Rebuild the index.") from None
        return cls.from_bytes(data, path)

    def __repr__(self) -> str:
        return f"LexicalIndex({len(self)} items, fields={self.fields})"
