"""Strict parsers for what a client controls; each refuses with a RequestError (400),
never with another exception (a 500):

    whole_number(text, what, lowest, highest)   ASCII digits only, at most 6 of them
                                                (str.isdigit() takes '²'; int() takes
                                                '1_000', ' 7' and 5,000-digit numbers)
    model_name(text, what)                      a multi-model endpoint's model name
    custom_attributes(text)                     X-Amzn-SageMaker-Custom-Attributes as
                                                (key, value) pairs
    json_document(body)                         UTF-8 JSON nested at most MAX_JSON_DEPTH deep,
                                                of at most MAX_JSON_VALUES values (413)
    shown(text)                                 a client's text, cut short, for an error message

Model names: SageMaker's TargetModel (botocore's InvokeEndpoint model) is 1 to 1024
characters, printable ASCII (\\p{Print}: space to '~') not starting with whitespace; its
front end sends the same set as model_name and the Target-Model header. No control
character (a forged log line), nothing outside ASCII (a lone surrogate cannot be hashed
or logged). A name is never a path: the registry stores it under its hash.
"""

from __future__ import annotations

import json
import re

import numpy as np

from server.errors import RequestError, TooLarge

MAX_DIGITS = 6
MAX_NAME_CHARS = 1024
MAX_CUSTOM_ATTRIBUTES_CHARS = 1024  # InvokeEndpoint's limit for CustomAttributes
MAX_JSON_DEPTH = 32  # our documents nest 3 deep; Python's json recurses once per level
MAX_JSON_VALUES = 4096  # a /models load takes 2, an image of a JSON-lines request 1 or 2
MODEL_NAME = re.compile(rf"[!-~][ -~]{{0,{MAX_NAME_CHARS - 1}}}")
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
# A JSON string, so brackets inside strings are not counted as nesting (unrolled: no backtracking).
# One never closed runs to the end: else the engine would try again from each escaped quote inside it,
# quadratic in the body (a 130 KB body held the GIL past the worker timeout); JSON then refuses it anyway.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# byte -> the change of nesting it makes outside strings
_STEP = np.zeros(256, np.int8)
_STEP[np.frombuffer(b"[{", np.uint8)], _STEP[np.frombuffer(b"]}", np.uint8)] = 1, -1
_DEPTH_CHUNK = 1 << 20


def shown(text: str, limit: int = 40) -> str:
    """repr of the first `limit` characters: a client's text echoed in a 4xx, bounded."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def whole_number(text: str, what: str, lowest: int, highest: int) -> int:
    if not _DIGITS.fullmatch(text) or not lowest <= int(text) <= highest:
        raise RequestError(f"{what}={shown(text)}: expected a whole number from {lowest} to {highest}")
    return int(text)


def model_name(text, what: str = "model name") -> str:
    if not isinstance(text, str) or not MODEL_NAME.fullmatch(text):
        raise RequestError(f"{what}: expected 1 to {MAX_NAME_CHARS} printable ASCII characters, the first not a space")
    return text


def custom_attributes(text: str | None) -> list[tuple[str, str]]:
    """X-Amzn-SageMaker-Custom-Attributes as (key, value) pairs, stripped, in order: pairs are
    separated by ',' or ';', a pair without '=' has the value ''. SageMaker passes the header
    through as an opaque value (clients put a trace id in it, say): what a pair means is the
    caller's business. At most MAX_CUSTOM_ATTRIBUTES_CHARS ASCII characters, as SageMaker sends."""
    text = text or ""
    if len(text) > MAX_CUSTOM_ATTRIBUTES_CHARS or not text.isascii():
        raise RequestError(
            f"custom attributes: expected at most {MAX_CUSTOM_ATTRIBUTES_CHARS} ASCII characters, as SageMaker sends"
        )
    pairs = []
    for pair in re.split(r"[,;]", text):
        if pair.strip():
            key, _, value = pair.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def json_depth(body: bytes) -> int:
    """How deep `body`'s arrays and objects nest, counted without recursion, a megabyte at a time (a whole
    6 MB body as int64 steps and their running sum took 108 MB; this takes the body's copy and 5 MB more),
    in at most about 1 s for a 6 MB body of nothing but quotes."""
    structure = np.frombuffer(_JSON_STRING.sub(b"", body), np.uint8)
    depth = deepest = 0
    for start in range(0, len(structure), _DEPTH_CHUNK):
        levels = np.cumsum(_STEP[structure[start : start + _DEPTH_CHUNK]], dtype=np.int32)
        deepest, depth = max(deepest, depth + int(levels.max())), depth + int(levels[-1])
    return deepest


def json_document(body: bytes, max_values: int = MAX_JSON_VALUES, why: str = ""):
    """The parsed body; 400 for non-UTF-8, malformed JSON, or nesting deeper than MAX_JSON_DEPTH; 413 for
    more than `max_values` values (`why`: what sets the bound). Python's objects for a body of many small
    values take about 25 times its bytes (6 MB of `[],` made 150 MB in each request thread), so they are
    counted first, from the bytes: its `[`, `{` and `,` are never fewer than its arrays, objects and members
    (array items, key-value pairs), and more only by those inside strings, where base64 has none."""
    openings = body.count(b"[") + body.count(b"{")  # no deeper than this: most bodies skip the scan
    if openings > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(f"malformed JSON: nested deeper than {MAX_JSON_DEPTH}")
    if openings + body.count(b",") + 1 > max_values:
        raise TooLarge(f"a JSON body of more than {max_values} arrays, objects and members{why}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("malformed JSON: not UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError):  # a number past Python's 4,300-digit limit, say
        raise RequestError("malformed JSON") from None
