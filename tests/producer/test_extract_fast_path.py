"""The extract's CSV fast path (``split_fields``: a plain split when the line holds no
quote, line end or NUL) against its reference, the csv module (``split_fields_reference``):
the same fields for every line, or the same refusal."""

from __future__ import annotations

import csv

from hypothesis import assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.producer.extract import split_fields, split_fields_reference

# What a back-office line is made of, and every character the csv module treats apart.
ALPHABET = st.sampled_from(list("ab19 ;;;\"\"'\r\n\x00\t,-/.é\u00a0\\="))


def _outcome(split: object, text: str) -> object:
    try:
        return split(text)  # type: ignore[operator]
    except csv.Error:
        return "csv.Error"


@hsettings(max_examples=3000, deadline=None)
@given(text=st.text(ALPHABET, max_size=40))
def test_split_fields_equals_the_csv_module(text: str) -> None:
    fast = _outcome(split_fields, text)
    assert fast == _outcome(split_fields_reference, text)
    event("refused" if fast == "csv.Error" else "quoted" if '"' in text else "plain")


@given(fields=st.lists(st.text(st.characters(blacklist_characters='";\r\n\x00'), max_size=12), min_size=1,
                       max_size=9))
def test_lines_without_quotes_split_as_written(fields: list[str]) -> None:
    """Back-office lines (no quote) take the fast path and give back their fields."""
    line = ";".join(fields)
    assume(line)  # an empty line is a blank one: the extract skips it before splitting
    assert split_fields(line) == fields == split_fields_reference(line)
