"""A corpus of hostile and broken inputs (beyond tests/test_errors.py): each one is refused with one line on
stderr that names the file (and row or column) and the fix, exit code 2, no traceback and nothing written;
or, where it is not an error, handled by design (docs/data.md)."""
import io
import json
import pickle

import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, data


def _pickle(obj) -> bytes:
    return pickle.dumps(obj)


def _dataframe_pickle(**columns) -> bytes:
    import pandas as pd
    return pickle.dumps(pd.DataFrame(columns))


def _parquet(**columns) -> bytes:
    import pandas as pd
    buf = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buf)
    return buf.getvalue()


# name: (suffix, content or a callable making it, the message's key part)
CORPUS = {
    "semicolon-separated .csv": (".csv", "label;text\n0;hello\n", "looks semicolon-separated"),
    "tab-separated data named .csv": (".csv", "label\ttext\n0\thello\n", "looks tab-separated"),
    "latin-1 bytes": (".csv", b"label,text\n0,na\xefve caf\xe9\n", "pass --set data.encoding=latin-1"),
    "utf-16 with BOM": (".csv", "label,text\n0,hello\n".encode("utf-16"), "is UTF-16 text"),
    "binary (gzip) bytes": (".csv", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03label", "contains NUL bytes"),
    "whitespace-only text": (".csv", 'label,text\n0,ok\n1,"\t \n "\n', "line 3 column 'text': empty or missing text"),
    "NaN text (JSONL)": (".jsonl", '{"label": 0, "text": "a"}\n{"label": 1, "text": NaN}\n', "line 2 column 'text': empty"),
    "number as text": (".jsonl", '{"label": 0, "text": 12345}\n', "int value 12345, not text"),
    "fractional label": (".csv", "label,text\n0,a\n1.5,b\n", "label '1.5' is not a whole number"),
    "negative label": (".csv", "label,text\n0,a\n-1,b\n", "label -1 is out of range 0..3"),
    "missing label": (".csv", "label,text\n0,a\n,b\n", "line 3 column 'label': missing label"),
    "label name in wrong case": (".csv", "label,text\nWorld,a\nsports,b\n", "unknown label 'sports'"),
    "jsonl line is an array": (".jsonl", '{"label": 0, "text": "a"}\n[1, "b"]\n', "line 2: a JSON list, not an object"),
    "jsonl truncated line": (".jsonl", '{"label": 0, "text": "a"}\n{"label": 1, "te', "line 2: not valid JSON"),
    "parquet with the wrong schema": (".parquet", lambda: _parquet(title=["a"], y=[0]), "has no column 'text' (columns: title, y)"),
    "corrupt parquet": (".parquet", b"PAR1 this is not parquet PAR1", "is not a readable Parquet file"),
    "pickle of a dict": (".pkl", lambda: _pickle({"text": ["a"], "label": [0]}), "holds a dict, not a datasets.Dataset"),
    "pickle of a list": (".pkl", lambda: _pickle(["a", "b"]), "holds a list, not a datasets.Dataset"),
    "DataFrame pickle without text": (".pkl", lambda: _dataframe_pickle(body=["a"], label=[0]), "has no column 'text'"),
    "truncated DataFrame pickle": (".pkl", lambda: _dataframe_pickle(text=["a"] * 50, label=[0] * 50)[:-40],
                                   "is not a readable pickle, it is truncated or corrupt"),
    "garbage pickle": (".pkl", b"\x80\x05not a pickle at all", "is not a readable pickle"),
    "pickle calling a function": (".pkl", lambda: b"cbuiltins\neval\n(S'1+1'\ntR.", "the pickle wants builtins.eval"),
    "tsv with a wrong field count": (".tsv", "label\ttext\n0\ta\n1\tb\tc\n", "line 3: 3 fields where the header has 2"),
    "duplicate column names": (".csv", "label,text,text\n0,a,b\n", "the header repeats a column name"),
    "unsupported extension": (".xlsx", b"PK\x03\x04", "unknown file type '.xlsx'"),
    "JSON array of strings": (".json", '["a", "b"]', "not an object"),
}


def _materialise(tmp_path, case) -> "tuple":
    suffix, content, message = CORPUS[case]
    content = content() if callable(content) else content
    path = tmp_path / f"hostile{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path, message


def _one_clean_line(err: str) -> None:
    assert err.startswith("loraclf: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_the_corpus_is_large_enough():
    import test_errors
    assert len(CORPUS) + len(test_errors.CASES) >= 30


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_training_input_exits_2_and_writes_nothing(tmp_path, capsys, case, tiny_bert):
    path, message = _materialise(tmp_path, case)
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--out", str(out), "--set", f"model.name={tiny_bert}",
                     "--set", f"data.label_names={json.dumps(LABELS)}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and str(path) in err, err
    _one_clean_line(err)
    assert not out.exists()


def test_a_directory_where_a_file_belongs(tmp_path, capsys, tiny_bert):
    (tmp_path / "folder.csv").mkdir()
    code = cli.main(["train", "--data", str(tmp_path / "folder.csv"), "--out", str(tmp_path / "run"),
                     "--set", f"model.name={tiny_bert}"])
    err = capsys.readouterr().err
    assert code == 2 and ("is not a file" in err or "has no train.csv" in err), err
    _one_clean_line(err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- handled by design (docs/data.md)

def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefflabel,text\n0,hello\n1,world\n".encode("utf-8"))
    ex = data.load(str(path), label_names=LABELS)
    assert ex.texts == ["hello", "world"] and ex.labels == [0, 1]


def test_a_10_mb_text_is_cut_then_truncated_at_tokenization(tmp_path, tiny_bert):
    from transformers import AutoTokenizer
    path = tmp_path / "huge.csv"
    path.write_text("label,text\n0," + "word " * 2_000_000 + "\n1,short\n")  # one 10 MB field
    ex = data.load(str(path), label_names=LABELS)
    assert len(ex.texts[0]) == data.MAX_TEXT_CHARS and ex.texts[1] == "short"
    enc = data.encode(AutoTokenizer.from_pretrained(str(tiny_bert)), ex.subset([0]), 32)
    assert enc.lengths.tolist() == [32]


def test_latin_1_file_loads_with_its_encoding(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"label,text\n0,na\xefve caf\xe9\n")
    ex = data.load(str(path), label_names=LABELS, encoding="latin-1")
    assert ex.texts == ["naïve café"]


# ---------------------------------------------------------------- predict gets the same treatment

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("hostile"), tiny_bert)


@pytest.mark.parametrize("case", ["DataFrame pickle without text", "truncated DataFrame pickle", "latin-1 bytes",
                                  "pickle calling a function"])
def test_hostile_predict_input_exits_2_and_writes_nothing(tmp_path, capsys, tiny_run, case):
    path, message = _materialise(tmp_path, case)
    out = tmp_path / "submission.csv"
    code = cli.main(["predict", str(tiny_run), str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    _one_clean_line(err)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


# ---------------------------------------------------------------- the run directory, before any training

def test_unwritable_run_directory_is_refused_before_training(tmp_path, capsys, small_csv, tiny_bert):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = cli.main(["train", "--data", str(small_csv), "--out", str(blocker / "run"), "--set", f"model.name={tiny_bert}",
                     "--set", "data.max_length=32"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to run directory" in err, err
    _one_clean_line(err)


def test_full_disk_is_refused_before_training(tmp_path, capsys, small_csv, tiny_bert, monkeypatch):
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(small_csv), "--out", str(out), "--set", f"model.name={tiny_bert}",
                     "--set", "data.max_length=32"])
    err = capsys.readouterr().err
    assert code == 2 and "only 1 MiB free on the disk" in err, err
    _one_clean_line(err)
    assert not out.exists()
