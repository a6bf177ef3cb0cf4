"""Hostile request bodies to `loraclf serve` (FastAPI's TestClient, in process): JSON nested 100,000 deep, numbers
too long to convert, repeated keys, wrong types, NaN, lone surrogates, too many or too long texts. Each gets a
one-line JSON error with 413 or 422, never a 500, and the server answers the next good request. Odd but valid
texts (NUL characters, emoji, empty strings, exactly the limit) reach a real tiny model and get predictions."""
import json

import numpy as np
import pytest

from conftest import LABELS
from loraclf import cli, scoring, serve

MAX_TEXTS, MAX_CHARS, MAX_BODY = 8, 200, 1_000_000  # the body limit leaves room for the deep bodies
DEEP = b"[" * 100_000 + b"]" * 100_000

BODIES = {
    "array nested 100,000 deep": (DEEP, 422, "nested too deeply"),
    "object nested 50,000 deep": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 422, "nested too deeply"),
    "deep value beside the texts": (b'{"texts": ["a"], "x": ' + DEEP + b"}", 422, "nested too deeply"),
    "deep value inside the texts": (b'{"texts": ' + DEEP + b"}", 422, "nested too deeply"),
    "5,000-digit number": (b'{"texts": [' + b"9" * 5000 + b"]}", 422, "a number with 5,000 digits"),
    "repeated texts key": (b'{"texts": ["a"], "texts": ["b"]}', 422, "repeats the key 'texts'"),
    "NaN text": (b'{"texts": [NaN]}', 422, '"texts"[0] is a number, not a string'),
    "texts is NaN": (b'{"texts": NaN}', 422, "must be a list of strings, not a number"),
    "texts is Infinity": (b'{"texts": -Infinity}', 422, "must be a list of strings"),
    "texts is a string": (b'{"texts": "one text"}', 422, "must be a list of strings, not a string"),
    "texts is an object": (b'{"texts": {"0": "a"}}', 422, "not an object"),
    "texts is true": (b'{"texts": true}', 422, "not a boolean"),
    "a text that is a list": (b'{"texts": [["a"]]}', 422, '"texts"[0] is a list'),
    "a text that is null": (b'{"texts": ["a", null]}', 422, '"texts"[1] is null'),
    "lone high surrogate": (b'{"texts": ["ok \\ud800"]}', 422, "not valid Unicode"),
    "lone low surrogate": (b'{"texts": ["\\udc00 ok"]}', 422, "not valid Unicode"),
    "reversed surrogate pair": (b'{"texts": ["\\ude00\\ud83d"]}', 422, "not valid Unicode"),
    "not UTF-8": (b'{"texts": ["\xff\xfe"]}', 422, "not valid JSON"),
    "a JSON list body": (b'["a", "b"]', 422, "must be a JSON object"),
    "a JSON number body": (b"42", 422, "must be a JSON object"),
    "empty body": (b"", 422, "not valid JSON"),
    "truncated body": (b'{"texts": ["a"', 422, "not valid JSON"),
    "NUL bytes body": (b"\x00" * 64, 422, "not valid JSON"),
    "no texts": (b'{"texts": []}', 422, "is empty"),
    "too many texts": (json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), 413, f"the limit is {MAX_TEXTS}"),
    "a text over the limit": (json.dumps({"texts": ["a" * (MAX_CHARS + 1)]}).encode(), 413,
                              f"has {MAX_CHARS + 1} characters; the limit is {MAX_CHARS}"),
    "a body over the limit": (b'{"texts": ["' + b"a" * 3_000_000 + b'"]}', 413, "the limit is"),
}


@pytest.fixture(scope="module")
def predictor(tiny_bert):
    """A real tokenizer and tiny classifier (untrained head), scored the way a served run directory is."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=len(LABELS)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    return scoring.Predictor(list(LABELS), {"kind": "test", "model": "tiny", "backend": "torch", "precision": "fp32"}, {},
                             lambda: lambda texts: scoring.logits_for(model, tokenizer, texts, 32, 8, "fp32"))


@pytest.fixture(scope="module")
def client(predictor):
    from fastapi.testclient import TestClient
    app = serve.create_app(predictor, max_texts=MAX_TEXTS, max_chars=MAX_CHARS, max_wait_ms=0, max_body_bytes=MAX_BODY)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client, body: bytes):
    r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    return r.status_code, r.json()


@pytest.mark.parametrize("case", list(BODIES))
def test_hostile_body_gets_a_one_line_json_error(client, case):
    body, status, message = BODIES[case]
    got, r = _post(client, body)
    assert got == status, (got, r)
    assert set(r) == {"error"} and message in r["error"] and "\n" not in r["error"], r
    assert "Traceback" not in r["error"] and "internal error" not in r["error"]
    assert _post(client, b'{"texts": ["still serving"]}')[0] == 200


@pytest.mark.parametrize("case", ["array nested 100,000 deep", "5,000-digit number", "repeated texts key"])
def test_parse_request_refuses_before_any_model_work(case):
    body, status, message = BODIES[case]
    with pytest.raises(serve.RequestError) as e:
        serve.parse_request(body, MAX_TEXTS, MAX_CHARS)
    assert e.value.status == status and message in e.value.message


@pytest.mark.parametrize("texts", [
    ["nul \x00 inside", "\x00"],
    ["", " ", "\t\n"],
    ["\U0001F600 \u00e9l\u00e8ve \u4e2d\u6587 \u0661\u0662", "\ufeffbom first"],
    ["x" * MAX_CHARS] * MAX_TEXTS,
    ["\ud83d\ude00"],  # a surrogate pair written as two escapes is one valid character
])
def test_odd_but_valid_texts_get_predictions(client, predictor, texts):
    body = json.dumps({"texts": texts}).encode()  # ensure_ascii: every non-ASCII character as \\u escapes
    got, r = _post(client, body)
    assert got == 200, r
    want = predictor.logits(json.loads(body)["texts"])
    assert r["labels"] == np.asarray(want).argmax(-1).tolist() and len(r["probabilities"]) == len(texts)


@pytest.mark.parametrize("flag, value, message", [
    ("--max-wait-ms", "nan", "--max-wait-ms must be a number from 0 to 60,000"),
    ("--max-wait-ms", "-1", "--max-wait-ms must be a number from 0 to 60,000"),
    ("--max-wait-ms", "1e300", "--max-wait-ms must be a number from 0 to 60,000"),  # the batcher's timeout overflows
    ("--drain-timeout", "inf", "--drain-timeout must be a number from 0 to 86,400"),
    ("--batch-size", "0", "--batch-size must be between 1 and"),
    ("--max-batch", "99999999999", "--max-batch must be between 1 and"),
    ("--max-body-bytes", "-5", "--max-body-bytes must be between 1 and"),
    ("--threads", "100000", "--threads must be 0 (the library default) to 1024"),
    ("--threads", "-1", "--threads must be 0 (the library default) to 1024"),
])
def test_serve_flags_are_checked(tmp_path, capsys, flag, value, message):
    assert cli.main(["serve", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
