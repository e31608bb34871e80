"""The filter language: what parses, what it means, and that bad or hostile input fails at the right column."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xmodal.errors import InvalidInputError
from xmodal.indexes.filters import And, Compare, Exists, FilterSyntaxError, In, Not, Or, matches, parse_filter, to_milvus
from xmodal.indexes.metadata_store import MetadataStore


def test_valid_expressions_parse_to_the_expected_tree():
    assert parse_filter('color = "red"') == Compare("color", "=", "red")
    assert parse_filter("year >= 2020 AND year < 2021.5") == And((Compare("year", ">=", 2020), Compare("year", "<", 2021.5)))
    assert parse_filter("a == 1 or not b != 'x'") == Or((Compare("a", "=", 1), Not(Compare("b", "!=", "x"))))
    assert parse_filter('tags in ["cat", 3, true]') == In("tags", ("cat", 3, True))
    assert parse_filter('tags not in ("cat")') == Not(In("tags", ("cat",)))
    assert parse_filter("exists(exif.date)") == Exists("exif.date")
    assert parse_filter("`file name` = 'a \\' b'") == Compare("file name", "=", "a ' b")
    assert parse_filter("(a = 1 or b = 2) and c = 3") == And((Or((Compare("a", "=", 1), Compare("b", "=", 2))), Compare("c", "=", 3)))
    assert parse_filter("x > -1.5e3") == Compare("x", ">", -1500.0)


@pytest.mark.parametrize("text, column, token", [
    ('color = ', 9, "the end"),
    ('color red', 7, "'red'"),
    ('color = red', 9, "'red'"),
    ('color = "red" and', 18, "the end"),
    ('(color = "x"', 13, "the end"),
    ('a in [1,', 9, "the end"),
    ('"x" = color', 1, "'\"x\"'"),
    ('color = 1 or or b = 2', 14, "'or'"),
    ('a = 1 b = 2', 7, "'b'"),
    ('a = "unterminated', 5, "'\"'"),
])
def test_invalid_expressions_name_the_bad_token_and_its_column(text, column, token):
    with pytest.raises(FilterSyntaxError) as e:
        parse_filter(text)
    assert e.value.pos == column - 1
    message = str(e.value)
    assert "\n" not in message and f"column {column}" in message and token in message
    assert message.endswith("[" + text[:column - 1] + ">>" + text[column - 1:] + "]")  # marks the bad token


@pytest.mark.parametrize("attack", [
    "__import__('os').system('rm -rf /')",
    'color = "x"; DROP TABLE items',
    "color = \"x\" or 1=1 --",
    'id in ["a"]) or (id != ""',
    "open('/etc/passwd').read()",
    "color = ${HOME}",
    "color = `whoami`",
    "lambda: 0",
])
def test_injection_attempts_are_syntax_errors(attack):
    with pytest.raises(FilterSyntaxError):
        parse_filter(attack)


def test_values_cannot_break_out_of_a_milvus_string():
    expr = to_milvus('c = "a\\" or id != \\"x"')
    assert expr.count('"a\\" or id != \\"x"') == 2  # the quote stays escaped inside one literal


def test_size_and_depth_limits_are_clear_errors():
    with pytest.raises(InvalidInputError, match="characters long"):
        parse_filter("a = 1 or " * 2000 + "a = 1")
    with pytest.raises(FilterSyntaxError, match="nested more than"):
        parse_filter("(" * 200 + "a = 1" + ")" * 200)
    with pytest.raises(InvalidInputError):
        parse_filter(42)
    with pytest.raises(FilterSyntaxError):
        parse_filter("   ")


def test_meaning_on_missing_fields_types_and_lists():
    m = {"color": "red", "year": 2020, "tags": ["cat", "dog"], "exif": {"date": "2021-06-01T10:00:00"}, "flag": False}
    assert matches('color = "red"', m) and not matches('color = "blue"', m)
    assert matches("year = 2020.0", m) and not matches('year = "2020"', m)  # text never equals a number
    assert matches('tags = "cat"', m) and matches('tags in ["x", "dog"]', m) and not matches('tags != "cat"', m)
    assert not matches('tags > "a"', m)  # ranges compare single values
    assert matches('exif.date >= "2021-06-01"', m) and matches("exists(exif)", m)
    assert not matches('missing = 1', m) and not matches('missing != 1', m) and matches('not missing = 1', m)
    assert matches("flag = false", m) and not matches("flag < true", m)


def _random_records(n, seed=0):
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        m = {}
        if rng.random() < .8:
            m["color"] = rng.choice(["red", "blue", "green", 3])
        if rng.random() < .8:
            m["year"] = rng.choice([2019, 2020, 2021.5, "2020", None])
        if rng.random() < .5:
            m["tags"] = rng.sample(["cat", "dog", "x", 5], rng.randint(0, 3))
        if rng.random() < .5:
            m["exif"] = {"date": rng.choice(["2021-01-01", "2022-05-06T10:00:00"])}
        if rng.random() < .3:
            m["flag"] = rng.random() < .5
        recs.append(m)
    return recs


EXPRESSIONS = ['color = "red"', 'color != "red"', 'not color = "red"', "year >= 2020", 'year > "2019"', 'tags = "cat"',
               'tags in ["dog", 5]', 'tags not in ["dog"]', "exists(exif)", 'exif.date >= "2022"', "flag = true",
               "flag != false", '(color = "red" or year < 2020.5) and not exists(tags)', 'color in ("red", 3)',
               "`year` <= 2021", "flag > true", 'tags > "a"', "exists(nothing)", "not exists(year)"]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_columnar_store_equals_reference_evaluation(expr, tmp_path):
    recs = _random_records(400)
    store = MetadataStore.from_records(recs)
    want = np.array([matches(expr, r) for r in recs])
    assert (store.mask(expr, len(recs)) == want).all()
    store.save(tmp_path / "m.parquet")
    assert (MetadataStore.load(tmp_path / "m.parquet").mask(expr, len(recs)) == want).all()


def test_store_replace_and_compact():
    store = MetadataStore.from_records([{"a": 1}, {"a": 2}, {"a": 3}])
    store.replace([{"a": 5}], [1])
    assert store.mask("a = 5", 3).tolist() == [False, True, False]
    assert store.mask("a = 2", 3).tolist() == [False, False, False]
    kept = store.compacted(np.array([True, False, True]))
    assert kept.mask("exists(a)", 3).tolist() == [True, False, True]


def test_store_takes_ids_of_non_utf8_file_names():
    """Regression: a path with surrogate escapes (a non-UTF-8 file name) made the Arrow text column fail."""
    store = MetadataStore.from_records([{"path": "caf\udce9.jpg"}, {"path": "plain.jpg"}])
    assert store.mask('path = "plain.jpg"', 2).tolist() == [False, True]
    assert store.mask("exists(path)", 2).tolist() == [True, True]
