"""Hostile data files, written here byte by byte, run through the real CLI (train --data / --test-data /
--predict-data, predict, evaluate): labels int() cannot parse or should not accept, invalid Unicode, NUL bytes,
JSON nested 100,000 deep, JSON documents of the wrong shape, Parquet with nested or binary columns, duplicate
columns, zero rows. Each one: exit 2, one line on stderr naming the file, no traceback, and no run directory or
output file left behind. What is accepted by design is at the end (docs/data.md, "Malformed and hostile input")."""
import io
import json

import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, data

OK = '{"label": 0, "text": "fine"}\n'
DEEP = "[" * 100_000 + "]" * 100_000


def _parquet_table(**columns) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _parquet_arrays(names, arrays) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays([pa.array(a) for a in arrays], names=names), buf)
    return buf.getvalue()


def _binary_parquet() -> bytes:
    import pyarrow as pa
    return _parquet_table(text=pa.array([b"caf\xe9"], pa.binary()), label=[0])


def _empty_parquet() -> bytes:
    import pyarrow as pa
    return _parquet_table(text=pa.array([], pa.string()), label=pa.array([], pa.int64()))


def _decimal_label_parquet() -> bytes:
    import decimal
    import pyarrow as pa
    return _parquet_table(text=["a"], label=pa.array([decimal.Decimal("1")], pa.decimal128(3, 0)))


# name: (suffix, content (str is written as UTF-8 with surrogates kept, bytes as they are) or a callable, message)
CORPUS = {
    # labels int() cannot parse, or should not accept
    "superscript label": (".csv", "label,text\n0,a\n\u00b2,b\n", "(label '\u00b2')"),
    "double minus label": (".csv", "label,text\n0,a\n--1,b\n", "(label '--1')"),
    "plus-minus label": (".csv", "label,text\n0,a\n+-3,b\n", "(label '+-3')"),
    "5,000-digit label (CSV)": (".csv", "label,text\n0,a\n" + "9" * 5000 + ",b\n", "is out of range 0..3"),
    "5,000-digit label (JSONL)": (".jsonl", OK + '{"label": ' + "9" * 5000 + ', "text": "b"}\n',
                                  "line 2: a number with 5,000 digits"),
    "5,000-digit label in a JSON array": (".json", '[{"label": -' + "1" * 5000 + ', "text": "b"}]',
                                          "a number with 5,000 digits"),
    "exponent label": (".csv", "label,text\n0,a\n1e3,b\n", "label '1e3' is a number but not a class id"),
    "non-ASCII digit label": (".csv", "label,text\n0,a\n\u0661,b\n", "is a number but not a class id"),
    "nan label": (".csv", "label,text\n0,a\nnan,b\n", "label 'nan' is not a finite number"),
    "Infinity label (JSONL)": (".jsonl", OK + '{"label": Infinity, "text": "b"}\n', "label inf is not a finite number"),
    "fractional label (JSONL)": (".jsonl", OK + '{"label": 2.5, "text": "b"}\n', "label 2.5 is not a whole number"),
    "1e308 label (JSONL)": (".jsonl", OK + '{"label": 1e308, "text": "b"}\n', "is out of range 0..3"),
    "boolean labels": (".jsonl", '{"label": true, "text": "a"}\n{"label": false, "text": "b"}\n', "is a boolean"),
    "boolean among ids": (".jsonl", OK + '{"label": true, "text": "b"}\n', "line 2 column 'label': label True is a boolean"),
    "negative id (JSONL)": (".jsonl", OK + '{"label": -2, "text": "b"}\n', "label -2 is out of range 0..3"),
    "id beyond the label set": (".csv", "label,text\n0,a\n4,b\n", "label 4 is out of range 0..3 (4 classes"),
    "ids mixed with names": (".jsonl", OK + '{"label": "Sports", "text": "b"}\n', "labels mix class ids and class names"),
    "list label": (".jsonl", '{"label": [0], "text": "a"}\n', "label [0] is a set of labels"),
    "object label": (".jsonl", '{"label": {"id": 0}, "text": "a"}\n', "is a dict, not a class id"),
    "decimal label (Parquet)": (".parquet", _decimal_label_parquet, "is a Decimal, not a class id"),
    # texts
    "lone surrogate text (JSONL)": (".jsonl", '{"label": 0, "text": "bad \\ud800 text"}\n', "lone surrogate"),
    "lone low surrogate text (JSON array)": (".json", '[{"label": 0, "text": "\\udc00"}]', "record 1 column 'text'"),
    "lone surrogate label": (".jsonl", '{"label": "\\ud83d", "text": "a"}\n', "lone surrogate"),
    "lone surrogate id": (".jsonl", '{"id": "x\\ud800", "label": 0, "text": "a"}\n', "column 'id': the id has a lone surrogate"),
    "invalid UTF-8 (JSONL)": (".jsonl", OK.encode() + b'{"label": 1, "text": "\xc3\x28"}\n', "line 2: byte 0xc3 is not valid utf-8"),
    "NUL byte past the first 64 KiB": (".csv", "label,text\n" + "0,padding\n" * 10_000 + "1,a\x00b\n",
                                       "line 10002 contains NUL bytes"),
    "null text": (".jsonl", OK + '{"label": 1, "text": null}\n', "line 2 column 'text': empty or missing text"),
    "empty text": (".jsonl", OK + '{"label": 1, "text": ""}\n', "line 2 column 'text': empty or missing text"),
    "text that is an object": (".jsonl", '{"label": 0, "text": {"a": "b"}}\n', "dict value {'a': 'b'}, not text"),
    # JSON shapes and depth
    "JSON nested 100,000 deep": (".json", DEEP, "JSON nested too deeply"),
    "JSONL line nested 100,000 deep": (".jsonl", OK + DEEP + "\n", "line 2: JSON nested too deeply"),
    "deep value inside a record": (".jsonl", '{"label": 0, "text": "a", "x": ' + DEEP + "}\n", "JSON nested too deeply"),
    "JSON file that is a number": (".json", "42", "the file is a JSON number, not an array of objects"),
    "JSON file that is a string": (".json", '"text"', "the file is a JSON string"),
    "JSON file that is null": (".json", "null", "the file is a JSON null"),
    "JSON object of objects": (".json", '{"text": {"0": "a"}, "label": {"0": 0}}', "an object of objects"),
    "JSON columns of different lengths": (".json", '{"text": ["a", "b"], "label": [0]}', "different lengths"),
    "empty JSON object": (".json", "{}", "has no records"),
    "empty JSON array": (".json", "[]", "has no records"),
    "JSONL line that is a number": (".jsonl", OK + "7\n", "line 2: a JSON number, not an object"),
    "JSONL line that is a list": (".jsonl", OK + '["a", 0]\n', "line 2: a JSON list, not an object"),
    "JSONL object repeating a key": (".jsonl", '{"label": 0, "text": "a", "text": "b"}\n', "repeats the key 'text'"),
    "JSONL records with 1,001 different keys": (".jsonl", "".join(f'{{"label": 0, "text": "a", "k{i}": 1}}\n'
                                                                  for i in range(1000)), "more than 1,000 different keys"),
    "JSONL without a text key": (".jsonl", '{"label": 0, "body": "a"}\n', "has no column 'text' (columns: label, body)"),
    "UTF-16 JSONL": (".jsonl", OK.encode("utf-16"), "is UTF-16 text"),
    "whitespace-only JSONL": (".jsonl", "\n  \n\t\n", "is empty"),
    # Parquet
    "Parquet list text": (".parquet", lambda: _parquet_table(text=[["a"]], label=[0]), "list value ['a'], not text"),
    "Parquet struct text": (".parquet", lambda: _parquet_table(text=[{"a": "x"}], label=[0]), "dict value"),
    "Parquet binary text": (".parquet", _binary_parquet, "bytes value"),
    "Parquet list label": (".parquet", lambda: _parquet_table(text=["a"], label=[[0]]), "is a set of labels"),
    "Parquet boolean label": (".parquet", lambda: _parquet_table(text=["a"], label=[True]), "is a boolean"),
    "Parquet repeated column": (".parquet", lambda: _parquet_arrays(["text", "text", "label"], [["a"], ["b"], [0]]),
                                "the schema repeats a column name (text, text, label)"),
    "Parquet with zero rows": (".parquet", _empty_parquet, "has no data rows"),
    "Parquet list id": (".parquet", lambda: _parquet_table(text=["a"], label=[0], id=[[1]]), "column 'id': a list"),
    # CSV
    "CSV header only": (".csv", "label,text\n", "has a header but no rows"),
    "CSV with a repeated column": (".csv", "text,label,label\na,0,1\n", "the header repeats a column name"),
}


def _write(tmp_path, case, name="hostile"):
    suffix, content, message = CORPUS[case]
    content = content() if callable(content) else content
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path, message


def _one_clean_line(err: str) -> None:
    assert err.startswith("loraclf: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def _train(tmp_path, *args, tiny_bert):
    return cli.main(["train", *args, "--out", str(tmp_path / "run"), "--set", f"model.name={tiny_bert}",
                     "--set", f"data.label_names={json.dumps(LABELS)}", "--no-report"])


@pytest.fixture
def good_csv(tmp_path):
    path = tmp_path / "good.csv"
    path.write_text("label,text\n" + "".join(f"{i % 4},row {i}\n" for i in range(20)))
    return path


def test_the_corpus_covers_the_families():
    assert len(CORPUS) >= 50


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_training_data(tmp_path, capsys, case, tiny_bert):
    path, message = _write(tmp_path, case)
    code = _train(tmp_path, "--data", str(path), tiny_bert=tiny_bert)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and str(path) in err, err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--test-data", "--predict-data"])
@pytest.mark.parametrize("case", ["lone surrogate text (JSONL)", "JSON nested 100,000 deep", "Parquet with zero rows",
                                  "superscript label", "5,000-digit label (JSONL)"])
def test_hostile_test_and_predict_data_stop_train_before_the_run_directory(tmp_path, capsys, case, flag, good_csv,
                                                                          tiny_bert):
    path, message = _write(tmp_path, case)
    code = _train(tmp_path, "--data", str(good_csv), flag, str(path), tiny_bert=tiny_bert)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, message", [
    (list(range(10_001)), "label 10000 makes more than 10,000 distinct classes"),
    ([0, "9" * 19], "has more than 18 digits: not a class id"),
])
def test_numeric_labels_without_label_names_stay_a_sane_class_count(tmp_path, capsys, tiny_bert, labels, message):
    """Without data.label_names numbers are the classes themselves (999999999 is one class, not a billion): a
    file with more distinct numbers than a classifier could have, or a number too long to be a class, is refused."""
    path = tmp_path / "big-id.csv"
    path.write_text("label,text\n" + "".join(f"{y},t{i}\n" for i, y in enumerate(labels)))
    code = cli.main(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--set", f"model.name={tiny_bert}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


def test_a_csv_field_beyond_the_field_size_limit(tmp_path, capsys, monkeypatch, tiny_bert):
    import csv
    monkeypatch.setattr(data, "CSV_FIELD_LIMIT", 1000)  # the real limit is 2**31 - 1 characters
    before = csv.field_size_limit()
    path = tmp_path / "unclosed.csv"
    path.write_text('label,text\n0,"an unclosed quote\n' + "1,more text\n" * 200)
    code = _train(tmp_path, "--data", str(path), tiny_bert=tiny_bert)
    err = capsys.readouterr().err
    assert code == 2 and "a field longer than 1,000 characters (an unclosed quote" in err, err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists() and csv.field_size_limit() == before


@pytest.mark.parametrize("rows, classes, message", [
    ('"\u00b2","t","d"\n', "World\nSports\n", "has no column 'text'"),  # '²' is not a class id: not the AG News layout
    ('"' + "9" * 5000 + '","t","d"\n', "World\nSports\n", "out of range 1..2"),
    ('"0","t","d"\n', "World\nSports\n", "label 0 is out of range 1..2"),
    ('"1","t","d"\n', b"W\xe9rld\nSports\n", "classes.txt line 1: byte 0xe9 is not valid utf-8"),
    ('"1","t","d"\n', "World\nWorld\n", "classes.txt names a class twice"),
])
def test_hostile_ag_news_folder(tmp_path, capsys, rows, classes, message, tiny_bert):
    folder = tmp_path / "ag"
    folder.mkdir()
    (folder / "train.csv").write_text(rows + '"1","title","description"\n')
    (folder / "classes.txt").write_bytes(classes if isinstance(classes, bytes) else classes.encode())
    code = cli.main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--set", f"model.name={tiny_bert}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


def test_unreadable_file(tmp_path, capsys, monkeypatch, tiny_bert):
    import pathlib
    path = tmp_path / "locked.csv"
    path.write_text("label,text\n0,a\n")

    def refuse(self):  # chmod 0 does not stop root, so the refusal is simulated
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    code = _train(tmp_path, "--data", str(path), tiny_bert=tiny_bert)
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read {path}" in err, err
    _one_clean_line(err)


@pytest.mark.parametrize("encoding", ["hex", "rot13", "no-such-codec"])
def test_an_encoding_that_is_not_for_text_files(tmp_path, capsys, encoding, tiny_bert):
    path = tmp_path / "x.csv"
    path.write_text("label,text\n0,a\n1,b\n")
    code = _train(tmp_path, "--data", str(path), "--set", f"data.encoding={encoding}", tiny_bert=tiny_bert)
    err = capsys.readouterr().err
    assert code == 2 and ("cannot be read as" in err or "unknown encoding" in err), err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- predict and evaluate on a trained run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-data"), tiny_bert)


PREDICT_CASES = ["lone surrogate text (JSONL)", "JSON nested 100,000 deep", "Parquet with zero rows", "null text",
                 "JSON file that is a number", "Parquet binary text", "NUL byte past the first 64 KiB",
                 "superscript label", "lone surrogate id", "Parquet repeated column"]


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_hostile_predict_input(tmp_path, capsys, tiny_run, case):
    path, message = _write(tmp_path, case)
    out = tmp_path / "submission.csv"
    code = cli.main(["predict", str(tiny_run), str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("case", ["5,000-digit label (CSV)", "boolean labels", "JSONL line nested 100,000 deep",
                                  "lone surrogate label"])
def test_hostile_evaluate_input(tmp_path, capsys, tiny_run, case):
    path, message = _write(tmp_path, case)
    before = sorted(p.name for p in tiny_run.iterdir())
    code = cli.main(["evaluate", str(tiny_run), "--data", str(path), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


# ---------------------------------------------------------------- accepted by design

@pytest.mark.parametrize("suffix, content, texts, labels", [
    (".jsonl", '\ufeff{"label": 1, "text": "bom"}\n', ["bom"], [1]),
    (".json", '\ufeff[{"label": 1, "text": "bom"}]', ["bom"], [1]),
    (".tsv", "\ufefflabel\ttext\n2\tbom\n", ["bom"], [2]),
    (".json", '{"text": ["a", "b"], "label": [0, "Sports"]}', None, None),  # column lists: mixed labels still refused
    (".json", '{"text": ["a", "b"], "label": [3, 1]}', ["a", "b"], [3, 1]),
    (".json", '{"label": 2, "text": "one record"}', ["one record"], [2]),
    (".json", '{"label": 0, "text": "a"}\n{"label": 1, "text": "b"}\n', ["a", "b"], [0, 1]),  # JSONL named .json
    (".jsonl", '{"label": 0, "text": "nul \\u0000 inside"}\n', ["nul \x00 inside"], [0]),
    (".jsonl", '{"label": 0, "text": "a"}\n{"label": "1", "text": "b"}\n', ["a", "b"], [0, 1]),  # 0 and "1": both ids
    (".csv", "label,text\n3.0,a\n+1,b\n 2 ,c\n-0,d\n", ["a", "b", "c", "d"], [3, 1, 2, 0]),
    (".jsonl", '{"label": 3.0, "text": "\\ud83d\\ude00 pair"}\n', ["\U0001F600 pair"], [3]),
])
def test_accepted_by_design(tmp_path, suffix, content, texts, labels):
    path = tmp_path / f"ok{suffix}"
    path.write_text(content)
    if texts is None:
        with pytest.raises(data.UserError, match="labels mix class ids and class names"):
            data.load(str(path), label_names=LABELS)
        return
    ex = data.load(str(path), label_names=LABELS)
    assert ex.texts == texts and ex.labels == labels


def test_the_class_names_that_look_like_numbers_stay_names(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("label,text\n1.5,a\nnan,b\n")
    ex = data.load(str(path), label_names=["nan", "1.5"])
    assert ex.labels == [1, 0]
