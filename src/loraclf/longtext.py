"""Inputs beyond one short text: sentence pairs, and documents longer than the model's window.

A row's input is a text, or a pair (text_a, text_b) where `data.text_columns` names two columns. Pairs are the
tokenizer's pair input (token_type_ids where the tokenizer makes them), cut `longest_first`.

`data.long_text` says what happens to a text longer than max_length tokens:
  truncate   (the default) keep its first tokens
  head+tail  keep its first `data.head_tokens` tokens and as many of its last as fit
  chunks     overlapping windows of max_length tokens (`data.chunk_stride` tokens shared by neighbours); each window
             trains as a row with the document's label, and a document's logits are the mean (or max,
             `data.chunk_pool`) of its windows' logits
Whatever the treatment, an encoding counts the rows that were longer, so `train` and `predict` can say so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import data as data_mod
from .errors import UserError

MODES = ("truncate", "head+tail", "chunks")
POOLS = ("mean", "max")


@dataclass(frozen=True)
class Treatment:
    """How rows are encoded: a run's data settings (config or a saved run/export config)."""
    mode: str = "truncate"
    head_tokens: int = 0        # head+tail: tokens kept from the start; 0: a quarter of the window
    stride: int = -1            # chunks: tokens a window shares with the one before; -1: a quarter of the window
    pool: str = "mean"

    @classmethod
    def of(cls, data) -> "Treatment":
        """From a DataConfig or its saved dict (a run's config.json, an export's loraclf.json)."""
        get = data.get if isinstance(data, dict) else (lambda k, d: getattr(data, k, d))
        return cls(get("long_text", "truncate"), int(get("head_tokens", 0)), int(get("chunk_stride", -1)),
                   get("chunk_pool", "mean"))


def text_columns(data) -> list[str]:
    """The input columns of a run: data.text_columns when set, else [data.text_column]."""
    get = data.get if isinstance(data, dict) else (lambda k, d: getattr(data, k, d))
    return list(get("text_columns", []) or []) or [get("text_column", "text")]


def check_config(cfg) -> None:
    """Cross-key rules of the data section (each key's own type and range are checked by config.validate)."""
    d = cfg.data
    cols = d.text_columns
    if len(cols) > 2:
        raise UserError(f"data.text_columns names {len(cols)} columns", "name one text column, or two for sentence pairs")
    if any(not str(c).strip() for c in cols):
        raise UserError("data.text_columns has an empty name", "name each column, e.g. premise,hypothesis")
    if len(cols) == 2 and cols[0] == cols[1]:
        raise UserError(f"data.text_columns names {cols[0]!r} twice", "name two different columns for a pair")
    if len(cols) == 2 and d.long_text != "truncate":
        raise UserError(f"data.long_text = {d.long_text!r} applies to one text column, not to sentence pairs",
                        "use data.long_text=truncate with data.text_columns (pairs are cut longest_first)")
    shortest = min(d.max_length, d.max_length_infer or d.max_length)
    if d.long_text == "head+tail" and d.head_tokens >= shortest:
        raise UserError(f"data.head_tokens {d.head_tokens} leaves no room for the tail in windows of {shortest} tokens",
                        f"give data.head_tokens below {shortest} (0: a quarter of the window)")
    if d.long_text == "chunks" and d.chunk_stride >= shortest:
        raise UserError(f"data.chunk_stride {d.chunk_stride} is not shorter than the {shortest}-token windows",
                        f"give data.chunk_stride below {shortest} (-1: a quarter of the window)")


# ------------------------------------------------------------------------------------------ encoding

@dataclass
class Encoding(data_mod.Encoded):
    """Encoded rows (windows, for chunks) with what was done to the long ones. For chunks, `doc_index[k]` is
    the document of window k and `labels` are the windows' (their document's); scores are pooled back per
    document in input order (`pooled`)."""
    docs: int = 0                       # rows of the input (documents)
    longer: int = 0                     # rows longer than max_length tokens
    max_length: int = 0
    mode: str = "truncate"
    doc_index: list[int] | None = None
    doc_labels: list[int] | None = None
    pool: str = "mean"
    stride: int = 0
    head_tail: tuple[int, int] = (0, 0)  # head+tail: text tokens kept from the start and from the end

    def summary(self) -> dict:
        s = {"rows": self.docs, "longer": self.longer, "max_length": self.max_length, "long_text": self.mode}
        if self.mode == "head+tail":
            s |= {"head_tokens": self.head_tail[0], "tail_tokens": self.head_tail[1]}
        if self.doc_index is not None:
            s |= {"windows": len(self.input_ids), "chunk_stride": self.stride, "chunk_pool": self.pool}
        return s


def _pairs(texts) -> bool:
    return bool(texts) and isinstance(texts[0], (tuple, list))


def encode(tokenizer, examples: data_mod.Examples, max_length: int, treatment: Treatment = Treatment()) -> Encoding:
    """Tokenize once, without padding, as `treatment` says; texts or (a, b) pairs."""
    texts = list(examples.texts)
    if _pairs(texts) or treatment.mode == "truncate":
        return _truncated(tokenizer, texts, examples.labels, max_length)
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if room < 2:
        raise UserError(f"a window of {max_length} tokens holds no text next to the special tokens",
                        "raise data.max_length")
    full = tokenizer(texts, add_special_tokens=False, truncation=False, padding=False, verbose=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    build = special_tokens(tokenizer)
    longer = sum(len(x) > room for x in full)
    common = dict(docs=len(texts), longer=longer, max_length=max_length, mode=treatment.mode)
    if treatment.mode == "head+tail":
        head = min(treatment.head_tokens or room // 4, room - 1)
        ids = [build(x if len(x) <= room else x[:head] + x[len(x) - (room - head):]) for x in full]
        return Encoding(ids, examples.labels, **common, head_tail=(head, room - head))
    stride = treatment.stride if treatment.stride >= 0 else room // 4
    if stride >= room:
        raise UserError(f"data.chunk_stride {stride} is not shorter than the {room} text tokens of a window",
                        f"give data.chunk_stride below {room}")
    ids, doc_index = [], []
    for i, x in enumerate(full):
        start = 0
        while True:
            ids.append(build(x[start: start + room]))
            doc_index.append(i)
            if start + room >= len(x):
                break
            start += room - stride
    labels = None if examples.labels is None else [examples.labels[i] for i in doc_index]
    return Encoding(ids, labels, **common, doc_index=doc_index, doc_labels=examples.labels, pool=treatment.pool,
                    stride=stride)


def special_tokens(tokenizer):
    """ids -> the ids with the tokenizer's special tokens around them, as it encodes one text ([CLS] ... [SEP],
    <s> ... </s>); read off the encoding of one probe word, as tokenizers differ in how they expose it."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    at = next(i for i in range(len(full) - len(bare) + 1) if full[i: i + len(bare)] == bare)
    prefix, suffix = full[:at], full[at + len(bare):]
    return lambda ids: prefix + list(ids) + suffix


def _truncated(tokenizer, texts, labels, max_length: int) -> Encoding:
    """Texts or pairs cut to max_length (pairs longest_first). Encoded once at max_length + 1, so a row that
    reaches that length is known to be longer; only those rows are encoded again at max_length."""
    pairs = _pairs(texts)
    first = [t[0] for t in texts] if pairs else texts
    second = [t[1] for t in texts] if pairs else None
    types = pairs and "token_type_ids" in tokenizer.model_input_names

    def run(a, b, length):
        out = tokenizer(a, b, truncation="longest_first", max_length=length, padding=False, verbose=False,
                        return_attention_mask=False, return_token_type_ids=types)
        return out["input_ids"], out["token_type_ids"] if types else None
    ids, tt = run(first, second, max_length + 1)
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        cut_ids, cut_tt = run([first[i] for i in long], [second[i] for i in long] if pairs else None, max_length)
        for j, i in enumerate(long):
            ids[i] = cut_ids[j]
            if types:
                tt[i] = cut_tt[j]
    return Encoding(ids, labels, token_type_ids=tt, docs=len(texts), longer=len(long), max_length=max_length)


# ------------------------------------------------------------------------------------------ scores

def pooled(logits: np.ndarray, encoded) -> np.ndarray:
    """Window logits pooled per document (mean or max), in input order; other encodings' logits unchanged."""
    index = getattr(encoded, "doc_index", None)
    if index is None:
        return logits
    index = np.asarray(index)
    out = np.zeros((encoded.docs, logits.shape[1]), dtype=logits.dtype)
    if encoded.pool == "max":
        out.fill(-np.inf)
        np.maximum.at(out, index, logits)
    else:
        np.add.at(out, index, logits)
        out /= np.bincount(index, minlength=encoded.docs)[:, None]
    return out


def row_labels(encoded):
    """The labels scores are compared with: the documents', for chunks."""
    return encoded.doc_labels if getattr(encoded, "doc_index", None) is not None else encoded.labels


def describe(summary: dict, what: str = "rows") -> str:
    """One line: the share of rows longer than max_length, and what was done with them."""
    n, k, length = summary["rows"], summary["longer"], summary["max_length"]
    share = f"{100 * k / max(n, 1):.1f}% of {what} ({k:,} of {n:,}) are longer than {length} tokens"
    if not k:
        return share
    mode = summary.get("long_text", "truncate")
    if mode == "chunks":
        return share + (f": split into overlapping windows ({summary['windows']:,} windows for all {n:,} rows, "
                        f"{summary['chunk_stride']} tokens of overlap), scores {summary['chunk_pool']}-pooled")
    if mode == "head+tail":
        if "head_tokens" in summary and "tail_tokens" in summary:
            return share + f": cut to their first {summary['head_tokens']} and last {summary['tail_tokens']} tokens"
        return share + ": cut to their head and tail"
    return share + ": truncated"
