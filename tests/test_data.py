import pickle

import numpy as np
import pytest

from conftest import LABELS
from loraclf import data
from loraclf.errors import UserError


def test_agnews_original_format(tmp_path):
    (tmp_path / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    (tmp_path / "train.csv").write_text('"3","Title one","Line one\\second line"\n"1","T2","D2"\n')
    ex = data.load(tmp_path, split="train")  # a folder in the AG News layout
    assert ex.texts == ["Title one Line one second line", "T2 D2"]
    assert ex.labels == [2, 0] and ex.label_names == LABELS


def test_shared_pool_files_load_and_agree(agnews_dir):
    ex = data.load_many([agnews_dir / "train_pool.csv", agnews_dir / "train_pool_text.csv"], label_names=LABELS)
    assert len(ex) == 12_995 and ex.label_names == LABELS
    test = data.load(agnews_dir / "test.csv", label_names=LABELS)
    assert len(test) == 7_600 and np.bincount(test.labels).tolist() == [1900] * 4


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "df.pkl", "ds.pkl"])
def test_formats_with_names_or_ids(tmp_path, fmt):
    import pandas as pd
    df = pd.DataFrame({"id": [10, 11, 12], "body": ["a b", "c d", "e f"], "y": ["Sports", "World", "Sports"]})
    path = tmp_path / f"x.{fmt.split('.')[-1]}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "df.pkl":
        df.to_pickle(path)
    else:
        import datasets
        path.write_bytes(pickle.dumps(datasets.Dataset.from_pandas(df)))
    ex = data.load(path, text_column="body", label_column="y", label_names=LABELS)
    assert ex.texts == ["a b", "c d", "e f"] and ex.labels == [1, 0, 1] and [str(i) for i in ex.ids] == ["10", "11", "12"]


def test_unlabelled_pickle_course_format(tmp_path):
    import datasets
    path = tmp_path / "test_unlabelled.pkl"
    path.write_bytes(pickle.dumps(datasets.Dataset.from_dict({"text": ["x y", "z"]})))
    ex = data.load(path, labelled=False)
    assert ex.texts == ["x y", "z"] and ex.labels is None and ex.ids is None


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="--trust-pickle"):
        data.load(path, labelled=False)
    assert not marker.exists()


def test_split_is_stratified_seeded_and_sized():
    ex = data.Examples([f"t{i}" for i in range(100)], [i % 4 for i in range(100)], LABELS)
    tr, va = data.split(ex, 0.2, seed=1)
    tr2, va2 = data.split(ex, 0.2, seed=1)
    assert len(va) == 20 and va.texts == va2.texts and np.bincount(va.labels).tolist() == [5] * 4
    assert set(tr.texts) | set(va.texts) == set(ex.texts) and not set(tr.texts) & set(va.texts)
    assert len(data.split(ex, 16, seed=1)[1]) == 16


def test_length_grouped_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    batches = data.length_grouped_batches(lengths, 16, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert lengths[batches[0]].max() == lengths.max()  # longest first: memory errors show at once
    pad_grouped = sum(lengths[b].max() * len(b) for b in batches)
    pad_random = sum(lengths[b].max() * len(b) for b in data.random_batches(1000, 16, 3))
    assert pad_grouped < 0.7 * pad_random
    assert data.length_grouped_batches(lengths, 16, seed=3) == batches


@pytest.mark.parametrize("multiple", [1, 8])
def test_scoring_batches_cap_rows_and_padded_tokens(multiple):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 300, size=500)
    lengths[7] = 3000                                         # longer than the cap: a batch of its own
    assert data.scoring_batches(lengths, 64) == data.scoring_batches(lengths, 64, 0, data.PAD_MULTIPLE)
    for max_tokens in (0, 256, 2048):
        batches = data.scoring_batches(lengths, 64, max_tokens, multiple)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert batches[0][0] == 7 and all(len(b) <= 64 for b in batches)
        widths = [-(-int(lengths[b].max()) // multiple) * multiple for b in batches]
        assert widths == sorted(widths, reverse=True)        # longest first
        if max_tokens:
            assert batches[0] == [7]
            assert all(w * len(b) <= max_tokens or len(b) == 1 for w, b in zip(widths, batches))
            # as full as the caps allow (all but the last batch)
            assert all(len(b) == max(1, min(64, max_tokens // w)) for w, b in zip(widths[:-1], batches[:-1]))
    assert len(data.scoring_batches(lengths, 64, 2048)) > len(data.scoring_batches(lengths, 64))


def test_collate_pads_to_batch_longest():
    enc = data.Encoded([[5, 6, 7], [8]], [1, 2])
    b = data.collate(enc, [0, 1], pad_id=0, pad_to_multiple=1)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and b["labels"].tolist() == [1, 2]
    assert data.collate(enc, [0, 1], pad_id=0)["input_ids"].shape == (2, 8)            # PAD_MULTIPLE
