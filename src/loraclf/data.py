"""Every data source ends as `Examples`; then split, tokenize once, and batch by length.

Sources: a Hugging Face dataset name, a folder in the original AG News layout, CSV/TSV/JSONL/Parquet
files, and pickled `datasets.Dataset` / `pandas.DataFrame` (safepickle's allow-list). Every problem a
user can cause is a `UserError` naming the file, row and column.
"""
from __future__ import annotations

import codecs
import csv
import io
import math
import pickle
import random
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import untrusted
from .errors import UserError

TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl", ".pickle"}
MAX_TEXT_CHARS = 1_000_000  # longer texts are cut here before tokenization (they are truncated anyway)
# csv's default cap is 128 KiB a field; one text may be megabytes (it is cut at MAX_TEXT_CHARS). A field past this
# limit is almost always an unclosed quote that swallowed the rest of the file.
CSV_FIELD_LIMIT = 2**31 - 1
MAX_CLASSES = 10_000  # distinct labels a file may bring without data.label_names
TEXT_COLUMN_FIX = "name the text column (train: --set data.text_column=NAME; predict, evaluate: --text-column NAME)"
LABEL_COLUMN_FIX = "name the label column (train: --set data.label_column=NAME; evaluate: --label-column NAME)"
MAX_JSON_KEYS = 1_000  # distinct keys over all JSON records
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
# What a corrupt or truncated pickle raises while loading (seen by fuzzing real Dataset/DataFrame pickles);
# anything else is a bug and should show as one.
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                 ImportError, OverflowError, MemoryError, struct.error)


@dataclass
class Examples:
    texts: list[str]                  # or (text_a, text_b) pairs (data.text_columns)
    labels: list[int] | None          # class ids 0..K-1, or None for unlabelled data
    label_names: list[str]
    ids: list | None = None           # an `id` column if the source has one
    source: str = ""
    names_from: str = "given"         # "given" (config or run), "source" (classes.txt, a ClassLabel), "labels"
    label_output: str = "ids"         # how the labels were written: "names" (World; -1/0/1 as classes) or "ids"

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index) -> "Examples":
        index = list(index)
        return Examples([self.texts[i] for i in index],
                        None if self.labels is None else [self.labels[i] for i in index],
                        self.label_names, None if self.ids is None else [self.ids[i] for i in index],
                        self.source, self.names_from, self.label_output)


@dataclass
class _Table:
    """Raw columns as read from a source, before labels are resolved. rows[i] names row i for errors."""
    columns: dict[str, list]
    where: str
    row_name: str = "row"
    first_row: int = 0                # number of the first data row as the user sees it in the file
    label_names: list[str] = field(default_factory=list)
    labels_one_based: bool = False


# ----------------------------------------------------------------------------------------- readers

def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__})", "check the file and its permissions") from None


def _read_text(path: Path, encoding: str, allow_empty: bool = False) -> str:
    raw = _read_bytes(path)
    if not raw.strip() and not allow_empty:
        raise UserError(f"{path} is empty", "give a file with at least one data row (CSV/TSV: below a header)")
    try:
        codec = codecs.lookup(encoding).name
    except (LookupError, TypeError, ValueError):
        raise UserError(f"unknown encoding {untrusted.show(encoding)}", "use a Python codec name such as utf-8 or latin-1") from None
    utf8 = codec in ("utf-8", "utf-8-sig")
    if utf8 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{path} is UTF-16 text (it starts with a UTF-16 byte order mark)",
                        "pass --set data.encoding=utf-16, or re-save the file as UTF-8")
    # a NUL byte anywhere means binary data, not UTF-8 text (a NUL *character* written as a JSON escape is text)
    nul = raw.find(b"\x00") if utf8 else -1
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise UserError(f"{path} line {line} contains NUL bytes, so it is not UTF-8 text "
                        "(a compressed, Excel or UTF-16 file?)",
                        "give a plain-text CSV/TSV/JSONL (decompress it, or save as CSV UTF-8), "
                        "or pass --set data.encoding=utf-16 if it is UTF-16")
    enc = "utf-8-sig" if utf8 else encoding  # utf-8-sig: a byte order mark at the start is dropped
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: byte 0x{raw[e.start]:02x} is not valid {encoding}",
                        "re-save the file as UTF-8, or pass --set data.encoding=latin-1 (or its real encoding)") from None
    except (UnicodeError, LookupError):  # a codec that is not for text files (idna, rot13, hex, ...)
        raise UserError(f"{path} cannot be read as {untrusted.show(encoding)} text",
                        "use a text encoding such as utf-8, latin-1 or utf-16") from None


def _is_agnews_row(row: list[str]) -> bool:
    return len(row) == 3 and _DIGITS.fullmatch(row[0].strip()) is not None


def _read_delimited(path: Path, encoding: str, text_col: str) -> _Table:
    text = _read_text(path, encoding)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # process-wide: put back after reading
    try:
        rows = list(reader)
    except csv.Error as e:
        if "field limit" in str(e):
            raise UserError(f"{path} line {reader.line_num}: a field longer than {CSV_FIELD_LIMIT:,} characters "
                            "(an unclosed quote that runs to the end of the file?)",
                            "check the quoting: a field that starts with \" must end with \"") from None
        raise UserError(f"{path} line {reader.line_num}: malformed CSV ({e})",
                        "check the quoting on that line: fields with commas or quotes must be double-quoted") from None
    finally:
        csv.field_size_limit(previous_limit)
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise UserError(f"{path} is empty", "give a file with a header and at least one row")
    header = rows[0]
    if _is_agnews_row(header) and text_col not in header:
        return _agnews_table(rows, path, encoding)
    other = [d for d in DELIMITERS if d != delimiter and d in header[0]]
    if len(header) == 1 and text_col not in header and other:
        raise UserError(f"{path}: the header is one column {header[0]!r}, so the file looks "
                        f"{DELIMITERS[other[0]]}-separated, not {DELIMITERS[delimiter]}-separated",
                        "save it comma-separated as .csv or tab-separated as .tsv (tab-separated files must end in .tsv)")
    if len(rows) == 1:
        raise UserError(f"{path} has a header but no rows", "add data rows below the header")
    if len(set(header)) != len(header):
        raise UserError(f"{path}: the header repeats a column name ({column_list(header)})", "give every column a unique name")
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            hint = "" if delimiter == "\t" or ";" not in header[0] else " (the header contains ';': is it semicolon-separated?)"
            raise UserError(f"{path} line {i}: {len(row)} fields where the header has {len(header)}{hint}",
                            "quote fields that contain the delimiter, or fix that row")
    columns = {name: [r[j] for r in rows[1:]] for j, name in enumerate(header)}
    return _Table(columns, str(path), "line", 2)


def _agnews_table(rows: list[list[str]], path: Path, encoding: str) -> _Table:
    """The original AG News CSV: no header; class 1..K, title, description; `\\` marks line breaks."""
    for i, row in enumerate(rows, start=1):
        if len(row) != 3:
            raise UserError(f"{path} line {i}: {len(row)} fields, the AG News format has 3 (class, title, description)",
                            "fix the quoting on that line")
    texts = [(t.strip() + " " + d.strip()).replace("\\", " ").strip() for _, t, d in rows]
    classes = path.parent / "classes.txt"
    names = [n.strip() for n in _read_text(classes, encoding, allow_empty=True).splitlines() if n.strip()] \
        if classes.is_file() else []
    if len(set(names)) != len(names):
        raise UserError(f"{classes} names a class twice ({column_list(names)})", "list every class once, in id order")
    return _Table({"text": texts, "label": [r[0].strip() for r in rows]}, str(path), "line", 1, names, True)


def _json_kind(v) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(v), "null" if v is None else type(v).__name__)


def _read_jsonl(path: Path, encoding: str) -> _Table:
    """JSONL: one object per line. A .json file: an array of objects, {column: [values]}, or JSONL named .json."""
    text = _read_text(path, encoding)
    if path.suffix.lower() == ".json":
        try:
            return _json_document(path, untrusted.loads(text))
        except untrusted.JSONError as e:
            if not (e.extra_data and text.lstrip().startswith("{")):  # several objects: JSON lines in a .json file
                raise UserError(f"{path}: {e.message}", "give a JSON array of objects or one object per line") from None
    numbered = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            numbered.append((i, untrusted.loads(line)))
        except untrusted.JSONError as e:
            raise UserError(f"{path} line {i}: {e.message.replace(' at line 1 column', ' at column')}",
                            "each line must be one JSON object") from None
    if not numbered:
        raise UserError(f"{path} has no records", "give one JSON object per line")
    t = _records_table(path, numbered, "line")
    t.line_numbers = [i for i, _ in numbered]
    return t


def _records_table(path: Path, numbered: list, row_name: str) -> _Table:
    keys: dict = {}
    for i, rec in numbered:
        if not isinstance(rec, dict):
            raise UserError(f"{path} {row_name} {i}: a JSON {_json_kind(rec)}, not an object",
                            "each record must be an object like {\"text\": \"...\", \"label\": 0}")
        keys.update(dict.fromkeys(rec))
        if len(keys) > MAX_JSON_KEYS:  # every key becomes a column as long as the file: keys x records cells
            raise UserError(f"{path} {row_name} {i}: the records have more than {MAX_JSON_KEYS:,} different keys",
                            "give records with the same few keys (text, label, id)")
    return _Table({k: [rec.get(k) for _, rec in numbered] for k in keys}, str(path), row_name, numbered[0][0])


def _json_document(path: Path, doc) -> _Table:
    """A whole .json document: an array of records, or one object of equally long column lists."""
    if isinstance(doc, list):
        if not doc:
            raise UserError(f"{path} has no records (an empty JSON array)", "give a JSON array of objects")
        return _records_table(path, list(enumerate(doc, start=1)), "record")
    if not isinstance(doc, dict):
        raise UserError(f"{path}: the file is a JSON {_json_kind(doc)}, not an array of objects",
                        "give a JSON array of objects, or one object per line (JSONL)")
    if not doc:
        raise UserError(f"{path} has no records (an empty JSON object)", "give a JSON array of objects")
    values = list(doc.values())
    if all(isinstance(v, list) for v in values):  # {"text": [...], "label": [...]}
        lengths = {k: len(v) for k, v in doc.items()}
        if len(set(lengths.values())) != 1:
            raise UserError(f"{path}: the column lists have different lengths "
                            f"({', '.join(f'{column_label(k)}: {n}' for k, n in list(lengths.items())[:10])})",
                            "give every column the same number of values")
        return _Table(doc, str(path), "record", 1)
    if all(isinstance(v, dict) for v in values):
        raise UserError(f"{path}: an object of objects (pandas' to_json default), not records",
                        "write it with df.to_json(path, orient='records', lines=True), or give a JSON array of objects")
    t = _records_table(path, [(1, doc)], "line")  # one record on its own
    t.line_numbers = [1]
    return t


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        with pq.ParquetFile(path) as f:
            names = f.schema_arrow.names
            if len(set(names)) != len(names):
                raise UserError(f"{path}: the schema repeats a column name ({column_list(names)})",
                                "give every column a unique name")
            columns = f.read().to_pydict()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({_brief(e)})", "check the file, or give CSV/JSONL") from None
    return _Table(columns, str(path), "row", 0)


def _read_pickle(path: Path, trust: bool) -> _Table:
    from . import safepickle
    raw = path.read_bytes()
    try:
        obj = pickle.loads(raw) if trust else safepickle.loads(raw)
        table = _pickled_table(obj, path)  # an object that does not hold together fails here, as a corrupt file
    except safepickle.Refused as e:
        raise UserError(f"{path}: the pickle wants {e}, which is not a datasets.Dataset or pandas.DataFrame part",
                        "only pickled Datasets/DataFrames are read; if you trust this file, pass --trust-pickle") from None
    except PICKLE_ERRORS as e:  # truncated or garbage bytes
        raise UserError(f"{path} is not a readable pickle, it is truncated or corrupt ({type(e).__name__}: {str(e)[:100]})",
                        "re-create it with pickle.dump(dataset_or_dataframe, f), or give CSV/JSONL/Parquet") from None
    if table is None:
        raise UserError(f"{path} holds a {type(obj).__name__}, not a datasets.Dataset or pandas.DataFrame",
                        "pickle a Dataset or DataFrame with a text column")
    return table


def _pickled_table(obj, path: Path) -> _Table | None:
    import pandas as pd
    if isinstance(obj, pd.DataFrame):
        columns = {str(c): obj[c].tolist() for c in obj.columns}
        index = obj.index
        if ("id" not in columns and "ID" not in columns and not index.equals(pd.RangeIndex(len(obj))) and index.is_unique
                and all(isinstance(v, (str, int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in index)):
            columns["id"] = index.tolist()  # a DataFrame's own row labels (not 0..n-1) are its ids
        return _Table(columns, str(path), "row", 0)
    try:
        import datasets
    except ImportError:
        return None
    if isinstance(obj, datasets.DatasetDict):
        raise UserError(f"{path} holds a DatasetDict with splits {list(obj)}", "pickle one split (a Dataset)")
    if isinstance(obj, datasets.Dataset):
        t = _Table(obj.to_dict(), str(path), "row", 0)
        feature = obj.features.get("label")
        if feature is not None and hasattr(feature, "names"):
            t.label_names = list(feature.names)
        return t
    return None


def _read_hub(name: str, split: str) -> _Table:
    try:
        import datasets
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all end here
        raise UserError(f"could not load Hugging Face dataset {name!r} split {split!r} ({type(e).__name__}: {str(e)[:200]})",
                        "check the name and your network, or give a local file or folder") from None
    t = _Table(ds.to_dict(), f"{name}[{split}]", "row", 0)
    feature = ds.features.get("label")
    if feature is not None and hasattr(feature, "names"):
        t.label_names = list(feature.names)
    return t


def _read(source: str, split: str, encoding: str, text_col: str, trust_pickle: bool) -> _Table:
    path = Path(source)
    if path.is_dir():
        candidate = path / f"{split}.csv"
        if not candidate.is_file():
            have = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise UserError(f"folder {path} has no {split}.csv (it has: {have})",
                            "give a file path, or a folder in the AG News layout (train.csv, test.csv, classes.txt)")
        return _read_delimited(candidate, encoding, text_col)
    suffix = path.suffix.lower()
    if not path.exists():
        looks_like_hub_name = suffix not in TABLE_SUFFIXES and not source.startswith(("/", ".", "~")) and source.count("/") <= 1
        if not looks_like_hub_name:
            raise UserError(f"{source} does not exist", "check the path (relative paths start at the current folder)")
        return _read_hub(source, split)
    if not path.is_file():
        raise UserError(f"{source} is not a file", "give a data file or folder")
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_delimited(path, encoding, text_col)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, encoding)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix in (".pkl", ".pickle"):
        return _read_pickle(path, trust_pickle)
    raise UserError(f"{source}: unknown file type {suffix!r}", "use .csv, .tsv, .jsonl, .parquet or .pkl")


# ------------------------------------------------------------------------------ labels and texts

def row_label(t: _Table, i: int) -> str:
    lines = getattr(t, "line_numbers", None)
    return f"{t.where} {t.row_name} {lines[i] if lines else t.first_row + i}"


def _brief(e: Exception, limit: int = 200) -> str:
    """A library's error message on one line, cut short."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def column_label(name) -> str:
    """A column name as messages show it: on one line, and printable even when it is not valid Unicode."""
    text = " ".join(str(name).split()) if isinstance(name, str) else untrusted.show(name)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 60 else text[:57] + "..."


def column_list(names, limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(column_label(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_missing(v) -> bool:
    """None or NaN: an empty cell as pandas, pyarrow and JSON give it."""
    return v is None or (isinstance(v, float) and v != v)


def is_blank(v) -> bool:
    return _is_missing(v) or (isinstance(v, str) and not v.strip())


def _texts(t: _Table, text_col: str) -> list[str]:
    if text_col not in t.columns:
        raise UserError(f"{t.where} has no column {column_label(text_col)!r} (columns: {column_list(t.columns)})",
                        TEXT_COLUMN_FIX)
    texts = []
    for i, v in enumerate(t.columns[text_col]):
        if is_blank(v):
            raise UserError(f"{row_label(t, i)} column {text_col!r}: empty or missing text",
                            "fill in the text or remove that row")
        if not isinstance(v, str):
            raise UserError(f"{row_label(t, i)} column {text_col!r}: {type(v).__name__} value {untrusted.show(v)}, not text",
                            f"store {text_col!r} as strings, or {TEXT_COLUMN_FIX}")
        v = v[:MAX_TEXT_CHARS]
        problem = untrusted.unicode_problem(v)
        if problem:  # the tokenizer cannot take it, and the outputs could not be written
            raise UserError(f"{row_label(t, i)} column {text_col!r}: the text has {problem}",
                            "fix that text (a JSON \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one)")
        texts.append(v)
    if not texts:
        raise UserError(f"{t.where} has no data rows", "give a file with at least one row")
    return texts


def _pair_texts(t: _Table, columns: list[str]) -> list[tuple[str, str]]:
    missing = [c for c in columns if c not in t.columns]
    if missing:
        raise UserError(f"{t.where} has no column {column_label(missing[0])!r} for the "
                        f"{'first' if missing[0] == columns[0] else 'second'} text of a pair (columns: {column_list(t.columns)})",
                        "name the two text columns (train: --set data.text_columns=FIRST,SECOND; predict, evaluate: "
                        "--text-column FIRST --text-column SECOND)")
    return list(zip(_texts(t, columns[0]), _texts(t, columns[1])))


# A class id as text: ASCII digits, an optional sign, and an optional ".0" (as spreadsheets and pandas write
# whole numbers). int() accepts more ("²" passes isdigit() but int() refuses it; "١", "1_0", " +1 "), so the
# pattern, not int(), decides what is an id.
_CLASS_ID = re.compile(r"([+-]?)0*([0-9]+)(?:\.0*)?")
_DIGITS = re.compile(r"[0-9]+")
_BIG = 10**18  # stands for any id with more digits than that: out of every range


class NotALabel(ValueError):
    """A value that is neither a class id nor a class name."""


def class_id_or_name(v, names: list[str]):
    """An int for a class id, a str for a class name; NotALabel for anything else (booleans, NaN, 1.5, lists...)."""
    if isinstance(v, (bool, np.bool_)):
        raise NotALabel("is a boolean, not a class id or name (store labels as ids 0..K-1 or as names)")
    if isinstance(v, (int, np.integer)):
        return int(v) if abs(int(v)) < _BIG else (_BIG if v > 0 else -_BIG)  # as a string of 19+ digits is
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            raise NotALabel("is not a finite number")
        if not float(v).is_integer():
            raise NotALabel("is not a whole number")
        return int(v) if abs(v) < _BIG else (_BIG if v > 0 else -_BIG)
    if not isinstance(v, str):
        raise NotALabel(f"is a {type(v).__name__}, not a class id or name (labels are ids 0..K-1 or names)")
    text = v.strip()
    m = _CLASS_ID.fullmatch(text)
    if m:  # a whole number; class_map decides whether it is a class id or a class named by that number
        sign, digits = m.groups()
        value = int(digits) if len(digits) <= 18 else _BIG
        return -value if sign == "-" else value
    if text not in names:
        try:
            number = float(text)
        except ValueError:
            pass
        else:  # "1.5", "1e3", "nan", "inf", "1_0": numbers, but not class ids
            if not math.isfinite(number):
                raise NotALabel("is not a finite number")
            if not number.is_integer():
                raise NotALabel("is not a whole number")
            raise NotALabel("is a number but not a class id (write ids with the digits 0-9)")
        problem = untrusted.unicode_problem(text)
        if problem:
            raise NotALabel(f"has {problem}")
    return text


class BadLabel(Exception):
    """class_map's refusal of one label value: what is wrong with it and what to do (the caller names the row)."""

    def __init__(self, value, problem: str, fix: str):
        super().__init__(problem)
        self.value, self.problem, self.fix = value, problem, fix  # problem: "{label}" first marks where the value goes


def number_names(names) -> dict[int, int]:
    """{number: class index} for the class names that are whole numbers (`-1`, `3`, `07`)."""
    out = {}
    for j, n in enumerate(names):
        try:
            v = class_id_or_name(n, [])
        except NotALabel:
            continue
        if isinstance(v, int) and abs(v) != _BIG:
            out[v] = j
    return out


def names_are_numbers(names) -> bool:
    """Every class is named by a whole number: predictions are written as those numbers (the labels' own values)."""
    return bool(names) and len(number_names(names)) == len(names)


def class_map(values, names: list[str], one_based: bool = False, origin: str = "",
              numbers_are_ids: bool = False) -> tuple[dict, list[str]]:
    """The class index of each distinct label value (class_id_or_name's: an int for a whole number, a str for a
    name), and the class names. With `names` of words (World, Sports, ...), whole numbers are class ids 0..K-1
    (1..K where `one_based`, the AG News layout). With names that are numbers, a whole number is the class named
    by it (classes -1, 0, 1 or 1..5), unless `numbers_are_ids` (a run from before classes could be numbers).
    Without names the labels are the classes: their values sorted, numbers by value. `origin` says where given
    names came from, for the fix of an unknown label. Raises BadLabel."""
    numbers = sorted({v for v in values if isinstance(v, int)})
    words = sorted({v for v in values if isinstance(v, str)})
    numbered = {} if numbers_are_ids else number_names(names)
    if numbers and words and not numbered:
        odd = next(v for v in values if isinstance(v, int) != isinstance(values[0], int))
        raise BadLabel(odd, "labels mix class ids and class names (label {label})",
                       "use only ids (0..K-1) or only names in one file")
    if names and numbers and not numbered:
        return _class_ids(numbers, names, 1 if one_based else 0), list(names)
    if names:
        index = {n: j for j, n in enumerate(names)} | numbered
        for v in numbers + words:
            if v not in index:
                raise BadLabel(v, "unknown label {label}", f"labels must be one of: {column_list(names)}"
                               + (f" ({origin})" if origin else ""))
        return {v: index[v] for v in numbers + words}, list(names)
    for v in numbers:
        if abs(v) == _BIG:
            raise BadLabel(v, "label {label} has more than 18 digits: not a class id", "fix the label")
    classes = numbers or words
    if len(classes) > MAX_CLASSES:
        raise BadLabel(classes[MAX_CLASSES], f"label {{label}} makes more than {MAX_CLASSES:,} distinct classes",
                       "check data.label_column: it should name the column of classes")
    return {v: j for j, v in enumerate(classes)}, [str(v) for v in classes]


def _class_ids(numbers: list[int], names: list[str], offset: int) -> dict[int, int]:
    """Whole numbers as positions in `names` (counting from `offset`): {number: class index}, or BadLabel."""
    lo, hi = offset, len(names) - 1 + offset
    for v in numbers:
        if v < lo or v > hi:
            raise BadLabel(v, f"label {{label}} is out of range {lo}..{hi} ({len(names)} classes: {column_list(names)})",
                           "fix the label, or set data.label_names to the full class list")
    return {v: v - offset for v in numbers}


def positions_to_names(values: list, t) -> list:
    """A source that names its classes (a ClassLabel, classes.txt) stores positions in that list: whole numbers
    become the names they point at (so they match a run's or config's classes by name, even classes that are
    numbers, such as yelp_polarity's "1" and "2"). Raises BadLabel for a position outside the list."""
    if not t.label_names:
        return values
    index = _class_ids(sorted({v for v in values if isinstance(v, int)}), t.label_names, 1 if t.labels_one_based else 0)
    return [t.label_names[index[v]] if isinstance(v, int) else v for v in values]


def shown_label(value, raw) -> str:
    """A refused label as an error shows it: a class id as the number it is, anything else as written."""
    return str(value) if isinstance(value, int) and abs(value) != _BIG else untrusted.show(raw)


def labels_are_words(values) -> bool:
    """Whether labels read by class_id_or_name were all class names (not ids or numbers): what predictions are
    then written as by default."""
    return bool(values) and all(isinstance(v, str) for v in values)


def _labels(t: _Table, label_col: str, names: list[str], origin: str = "",
            numbers_are_ids: bool = False) -> tuple[list[int], list[str], bool]:
    """Resolve a label column (ids, numbers or names) against known names (class_map); returns ids, the names and
    whether the labels were written as names (labels_are_words)."""
    if label_col not in t.columns:
        raise UserError(f"{t.where} has no column {column_label(label_col)!r} (columns: {column_list(t.columns)})",
                        LABEL_COLUMN_FIX)
    if len(set(names)) != len(names):
        raise UserError(f"the class names repeat a name ({column_list(names)})", "list every class once, in id order")
    raw = t.columns[label_col]
    values = []
    for i, v in enumerate(raw):
        if is_blank(v):
            raise UserError(f"{row_label(t, i)} column {label_col!r}: missing label", "fill in the label or remove the row")
        try:
            values.append(class_id_or_name(v, names))
        except NotALabel as e:
            raise UserError(f"{row_label(t, i)} column {label_col!r}: label {untrusted.show(v)} {e}",
                            "labels are class ids 0..K-1 or class names; fix that row") from None
    named = values
    try:
        named = positions_to_names(values, t)
        index, names = class_map(named, names, t.labels_one_based, origin, numbers_are_ids)
    except BadLabel as e:
        i = named.index(e.value)
        raise UserError(f"{row_label(t, i)} column {label_col!r}: " + e.problem.replace("{label}", shown_label(e.value, raw[i]), 1),
                        e.fix) from None
    return [index[v] for v in named], names, labels_are_words(values)


def _check_ids(t: _Table, ids: list) -> None:
    seen = set()
    for i, v in enumerate(ids):
        if _is_missing(v):
            raise UserError(f"{row_label(t, i)} column 'id': missing id", "give every row an id, or drop the id column")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, float, np.integer, np.floating)):
            raise UserError(f"{row_label(t, i)} column 'id': a {type(v).__name__}, not an id",
                            "ids must be numbers or strings")
        if isinstance(v, str) and untrusted.unicode_problem(v):
            raise UserError(f"{row_label(t, i)} column 'id': the id has {untrusted.unicode_problem(v)}",
                            "ids must be valid text")
        if isinstance(v, (float, np.floating)) and not math.isfinite(v):
            raise UserError(f"{row_label(t, i)} column 'id': id {v} is not a finite number", "fix that id")
        key = str(v)  # as the submission writes it: "1" and 1 would be two rows with ID 1
        if key in seen:
            raise UserError(f"{row_label(t, i)} column 'id': duplicate id {untrusted.show(v)}", "ids must be unique")
        seen.add(key)


def load(source: str, *, text_column: str = "text", label_column: str = "label", label_names=(),
         split: str = "train", labelled: bool = True, encoding: str = "utf-8", trust_pickle: bool = False,
         text_columns=(), task: str = "single_label", label_delimiter: str = "|", names_origin: str = "",
         numbers_are_ids: bool = False) -> Examples:
    """Read one source into Examples. `label_names` (from the config or a trained run; `names_origin` says which,
    for errors) fixes the class order; without it, names come from the source (classes.txt, ClassLabel) or from
    the labels (class_map). Two `text_columns` make each row a (text_a, text_b) pair. With task="multi_label"
    labels are multi-hot rows (multilabel.label_sets)."""
    from . import multilabel
    columns = list(text_columns) or [text_column]
    t = _read(str(source), split, encoding, columns[0], trust_pickle)
    texts = _pair_texts(t, columns) if len(columns) == 2 else _texts(t, columns[0])
    names = list(label_names) or t.label_names
    names_from = "given" if label_names else "source" if t.label_names else "labels"
    origin = names_origin if label_names else f"the classes {t.where} names" if t.label_names else ""
    ids = t.columns.get("id") or t.columns.get("ID")
    if ids is not None:
        ids = list(ids)
        _check_ids(t, ids)
    labels, words = None, False
    if labelled or label_column in t.columns:  # unlabelled inputs may still carry labels (e.g. test.csv)
        if task == "multi_label":
            labels, names, words = multilabel.label_sets(t, label_column, names, label_delimiter, origin, numbers_are_ids)
        else:
            multilabel.refuse_label_sets(t, label_column, names, label_delimiter)
            labels, names, words = _labels(t, label_column, names, origin, numbers_are_ids)
    else:
        names_from = "given" if label_names else "source"
    # numbers were read as the classes they name unless they were positions (a ClassLabel, classes.txt) or ids
    named_numbers = not t.label_names and not numbers_are_ids and bool(number_names(names))
    return Examples(texts, labels, list(names), ids, str(source), names_from,
                    "names" if words or named_numbers else "ids")


def load_many(sources, **kw) -> Examples:
    """Several sources concatenated (e.g. the two files of the shared training pool). Files whose classes come
    from their labels share one class list: a file that names its classes (classes.txt) gives it to the others,
    else the union of their labels (ordered as class_map orders one file's)."""
    parts = [load(s, **kw) for s in sources]
    named = [p for p in parts if p.names_from != "labels"]
    derived = [p for p in parts if p.names_from == "labels" and p.labels is not None]
    if named:
        names = named[0].label_names
        for p in named:
            if p.label_names != names:
                raise UserError(f"{p.source} has classes {column_list(p.label_names)}, {named[0].source} has "
                                f"{column_list(names)}", "give files with the same classes, or set data.label_names")
        again = kw | {"label_names": names, "names_origin": f"the classes {named[0].source} names"}
        parts = [load(p.source, **again) if p in derived else p for p in parts]
    elif len(derived) > 1:
        _share_classes(derived)
    names = next((p.label_names for p in parts if p.labels is not None), parts[0].label_names)
    ids = None if any(p.ids is None for p in parts) else [i for p in parts for i in p.ids]
    labels = None if any(p.labels is None for p in parts) else [y for p in parts for y in p.labels]
    return Examples([x for p in parts for x in p.texts], labels, list(names), ids, " + ".join(p.source for p in parts),
                    parts[0].names_from,
                    "names" if all(p.label_output == "names" for p in parts if p.labels is not None) else "ids")


def _share_classes(parts: list[Examples]) -> None:
    """Give files that took their classes from their labels the union of those classes, relabelling their rows."""
    numeric = [names_are_numbers(p.label_names) for p in parts]
    if any(numeric) and not all(numeric):
        a, b = parts[numeric.index(True)], parts[numeric.index(False)]
        raise UserError(f"{a.source} has classes {column_list(a.label_names)}, {b.source} has "
                        f"{column_list(b.label_names)}", "give files with the same classes, or set data.label_names")
    key = (lambda n: int(n)) if all(numeric) else (lambda n: n)
    names = sorted({n for p in parts for n in p.label_names}, key=key)
    index = {n: j for j, n in enumerate(names)}
    for p in parts:
        new = [index[n] for n in p.label_names]
        if isinstance(p.labels[0], list):  # multi-hot rows
            p.labels = [_moved(row, new, len(names)) for row in p.labels]
        else:
            p.labels = [new[y] for y in p.labels]
        p.label_names = names


def _moved(row: list[int], new: list[int], k: int) -> list[int]:
    out = [0] * k
    for j, bit in enumerate(row):
        if bit:
            out[new[j]] = 1
    return out


def split(examples: Examples, val_size: float, seed: int) -> tuple[Examples, Examples | None]:
    """Stratified, seeded split; val_size < 1 is a fraction, >= 1 a row count, 0 no validation."""
    if not val_size:
        return examples, None
    n = len(examples)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if not 1 <= n_val < n:
        raise UserError(f"a validation split of {val_size} leaves no training or no validation rows out of {n}",
                        "use a smaller data.val_size, or more data")
    from sklearn.model_selection import train_test_split
    index = np.arange(n)
    classes = examples.labels is not None and not isinstance(examples.labels[0], list)  # one class a row
    single = np.zeros(n, dtype=bool)  # rows of a class with one row: they stay in training, where a class is learnt
    if classes:
        ids, counts = np.unique(examples.labels, return_counts=True)
        single = np.isin(examples.labels, ids[counts == 1])
    rest = index[~single]
    n_val = min(n_val, len(rest) - 1)
    if n_val < 1:
        raise UserError(f"a validation split of {val_size} leaves no training or no validation rows out of {n} "
                        "(a class with a single row keeps it for training)", "use a smaller data.val_size, or more data")
    stratify = None if examples.labels is None else [examples.labels[i] for i in rest]
    try:
        tr, va = train_test_split(rest, test_size=n_val, random_state=seed, stratify=stratify)
    except ValueError:  # fewer validation rows than classes, or label sets that cannot be stratified
        tr, va = train_test_split(rest, test_size=n_val, random_state=seed)
    if classes:
        learnt, back = {examples.labels[i] for i in tr}, set()
        for i in va:  # one row of each class the split left out of training goes back to it (a large val_size)
            if examples.labels[i] not in learnt:
                learnt.add(examples.labels[i])
                back.add(i)
        tr, va = [*tr, *back], [i for i in va if i not in back]  # each class moved had 2+ rows in va
    return examples.subset(sorted([*tr, *index[single]])), examples.subset(sorted(va))


# ---------------------------------------------------------------------------- tokens and batches

@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int] | None
    token_type_ids: list[list[int]] | None = None  # sentence pairs, where the tokenizer marks the segments

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, examples: Examples, max_length: int) -> Encoded:
    """Tokenize once, without padding: padding happens per batch, to the batch's longest row."""
    ids = tokenizer(examples.texts, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return Encoded(ids, examples.labels)


def length_grouped_batches(lengths, batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Training batches of similar length: shuffle, sort within groups of `group` batches, shuffle the
    batches; the longest batch goes first so a memory error shows at once. (Eval: scoring_batches.)"""
    n = len(lengths)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    chunk = batch_size * group
    batches = []
    for start in range(0, n, chunk):
        part = sorted(order[start: start + chunk], key=lambda i: -lengths[i])
        batches += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


# Batch widths are rounded up to a multiple of 8: tensor-core-friendly on GPUs, and on CPU it keeps the number of
# distinct activation sizes small. Without it (`python bench/bench.py --levers --lever pad-multiple`) short CPU
# measurements were level or slightly faster, but a longer training run was slower with a much higher peak RSS:
# glibc's heap fragments over the many distinct sizes (docs/performance.md).
PAD_MULTIPLE = 8


def scoring_batches(lengths, max_rows: int, max_tokens: int = 0, multiple: int = PAD_MULTIPLE) -> list[list[int]]:
    """Eval batches, longest first: at most `max_rows` rows and, when max_tokens > 0, at most `max_tokens`
    padded tokens (widths rounded up to `multiple` as collate pads them; a single longer row is a batch of its own)."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable").tolist()
    batches, start = [], 0
    while start < len(order):
        width = -(-int(lengths[order[start]]) // multiple) * multiple  # the batch's first row is its longest
        rows = max(1, min(max_rows, max_tokens // max(width, 1))) if max_tokens > 0 else max_rows
        batches.append(order[start: start + rows])
        start += rows
    return batches


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def collate(encoded: Encoded, index: list[int], pad_id: int, pad_to_multiple: int = PAD_MULTIPLE) -> dict:
    """Pad one batch to its longest row, rounded up to a multiple of PAD_MULTIPLE."""
    import torch
    rows = [encoded.input_ids[i] for i in index]
    width = max(len(r) for r in rows)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if encoded.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(index):
            types[j, : len(rows[j])] = torch.tensor(encoded.token_type_ids[i], dtype=torch.long)
        batch["token_type_ids"] = types
    if encoded.labels is not None:
        batch["labels"] = torch.tensor([encoded.labels[i] for i in index], dtype=torch.long)
    return batch
