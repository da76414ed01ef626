"""The JSON helpers of app.store.types: encode once, store as is."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.store.models import Call, CallRecord
from app.store.types import EncodedJSON, encode_json, json_serializer

# JSON values as the payloads hold them (orjson refuses integers past 64 bits and
# non-finite floats, which no payload carries).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_encode_json_reads_back_the_same_value(value: Any) -> None:
    text = encode_json(value)
    assert type(text) is EncodedJSON
    assert json.loads(text) == value
    # The serializer of the engines stores it as it is, not as a JSON string of JSON.
    assert json_serializer(text) is text


def test_the_serializer_encodes_what_is_not_encoded_yet() -> None:
    assert json.loads(json_serializer({"a": [1, "ü"]})) == {"a": [1, "ü"]}
    assert json.loads(json_serializer("plain text")) == "plain text"


def test_encode_json_keeps_utf8_and_is_compact() -> None:
    assert encode_json({"to": "sip:ü@example.com", "n": [1, 2]}) == (
        '{"to":"sip:ü@example.com","n":[1,2]}'
    )


def test_call_record_has_the_calls_columns_in_order() -> None:
    fields = [field.name for field in dataclasses.fields(CallRecord)]
    assert fields == [column.key for column in Call.__table__.columns]
