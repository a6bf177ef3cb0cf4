"""Labels as users bring them: numbers that are classes (-1/0/1, 1..5, 3/7/9), names, several files, rare classes;
the metrics over them, and predictions written back as the labels were."""
import csv
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from loraclf import cli, data, metrics, pipeline
from loraclf.errors import UserError

LABELS_WORDS = ["World", "Sports", "Business", "Sci/Tech"]
WORDS = {"3": "election minister war", "7": "football match goal", "9": "stocks market profit",
         "-1": "awful terrible bad", "0": "plain average fine", "1": "great lovely good",
         "neg": "awful terrible bad", "pos": "great lovely good", "neu": "plain average fine"}


def _csv(path, labels, reps=1):
    rows = [f"{y},\"{WORDS.get(str(y), 'some words')} row {i}\"" for i, y in enumerate(list(labels) * reps)]
    path.write_text("label,text\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("labels, names, ids", [
    ([3, 7, 9, 7], ["3", "7", "9"], [0, 1, 2, 1]),           # gaps: three classes, not ten
    ([-1, 0, 1, 1], ["-1", "0", "1"], [0, 1, 2, 2]),         # sentiment -1/0/1
    ([1, 2, 3, 5], ["1", "2", "3", "5"], [0, 1, 2, 3]),       # 1-based ratings
    (["03", "3.0", "+3", "4"], ["3", "4"], [0, 0, 0, 1]),   # one number, written several ways
    (["neg", "pos", "neu"], ["neg", "neu", "pos"], [0, 2, 1]),
])
def test_labels_without_label_names_are_their_own_classes(tmp_path, labels, names, ids):
    ex = data.load(str(_csv(tmp_path / "d.csv", labels)))
    assert (ex.label_names, ex.labels) == (names, ids)


@pytest.mark.parametrize("names, labels, ids", [
    (["-1", "0", "1"], [-1, 0, 1, 1], [0, 1, 2, 2]),
    (["1", "2", "3"], [1, 2, 3], [0, 1, 2]),                # named by numbers: 3 is the class "3", not id 3
    (["bad", "0", "good"], ["bad", 0, "good"], [0, 1, 2]),  # a number among words is the class it names
    (["World", "Sports", "Business", "Sci/Tech"], [0, 3, 1], [0, 3, 1]),  # words: numbers are class ids
])
def test_label_names_decide_what_a_number_is(tmp_path, names, labels, ids):
    assert data.load(str(_csv(tmp_path / "d.csv", labels)), label_names=names).labels == ids


@pytest.mark.parametrize("names, labels, message", [
    (["1", "2", "3"], [1, 4], "line 3 column 'label': unknown label 4. labels must be one of: 1, 2, 3 (where)"),
    (["World", "Sports"], [0, 2], "label 2 is out of range 0..1"),
    (["World", "Sports"], [0, "Sports"], "labels mix class ids and class names (label 'Sports')"),
])
def test_labels_outside_named_classes_are_refused_with_where_the_names_came_from(tmp_path, names, labels, message):
    with pytest.raises(UserError) as e:
        data.load(str(_csv(tmp_path / "d.csv", labels)), label_names=names, names_origin="where")
    assert message in str(e.value)


@pytest.mark.parametrize("files, names, labels", [
    ([[1, 2], [2, 5]], ["1", "2", "5"], [0, 1, 1, 2]),
    ([["neg", "pos"], ["neu", "pos"]], ["neg", "neu", "pos"], [0, 2, 1, 2]),
])
def test_files_that_bring_their_own_classes_share_their_union(tmp_path, files, names, labels):
    paths = [str(_csv(tmp_path / f"d{i}.csv", f)) for i, f in enumerate(files)]
    ex = data.load_many(paths)
    assert (ex.label_names, ex.labels) == (names, labels)


def test_files_of_numbers_and_of_words_do_not_mix(tmp_path):
    paths = [str(_csv(tmp_path / "a.csv", [1, 2])), str(_csv(tmp_path / "b.csv", ["neg", "pos"]))]
    with pytest.raises(UserError, match="has classes 1, 2, .* has neg, pos"):
        data.load_many(paths)


def test_a_file_that_names_its_classes_names_them_for_the_others(agnews_dir):
    """The training pool: an AG News layout file (classes.txt, ids 1..4) and a label,text file of ids 0..3."""
    ex = data.load_many([str(agnews_dir / "train_pool.csv"), str(agnews_dir / "train_pool_text.csv")])
    assert ex.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    text = data.load(str(agnews_dir / "train_pool_text.csv"), label_names=ex.label_names)
    assert ex.labels[-len(text):] == text.labels


def test_macro_f1_averages_the_classes_that_occur():
    """Classes 0..9 of which only three occur (labels 3/7/9 read as ids by an older run): the mean is theirs."""
    labels = np.array([3, 7, 9, 9, 7, 3])
    preds = np.array([3, 7, 9, 7, 7, 3])
    logits = np.eye(10)[preds]
    m = metrics.classification(logits, labels, [str(i) for i in range(10)])
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["per_class"]["0"]["support"] == 0 and len(m["confusion"]) == 10
    preds = np.array([3, 7, 9, 9, 7, 0])  # a prediction of a class no label has counts (as a zero)
    m = metrics.classification(np.eye(10)[preds], labels, [str(i) for i in range(10)])
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))


def test_a_class_with_one_row_stays_in_training():
    ex = data.Examples([f"t{i}" for i in range(5)], [1, 1, 1, 1, 0], ["neg", "pos"])
    for seed in range(5):
        train, val = data.split(ex, 0.2, seed)
        assert sorted(set(train.labels)) == [0, 1] and len(val) == 1


def test_a_random_split_gives_every_class_back_to_training():
    """Fewer validation rows than classes: sklearn cannot stratify, and no class may end up only in validation."""
    ex = data.Examples([f"t{i}" for i in range(12)], [i // 2 for i in range(12)], list("abcdef"))
    for seed in range(10):
        train, val = data.split(ex, 3, seed)
        assert sorted(set(train.labels)) == list(range(6)) and len(train) + len(val) == 12 and len(val) >= 1


def test_the_presets_classes_must_all_have_training_rows(tmp_path, tiny_bert, capsys):
    """AG News names on a two-class file would train a four-class model named World/Sports/... without a word."""
    path = _csv(tmp_path / "d.csv", [0, 1], reps=10)
    code = cli.main(["train", "--preset", "agnews-quick", "--data", str(path), "--out", str(tmp_path / "run"),
                     "--set", f"model.name={tiny_bert}"])
    err = capsys.readouterr().err
    assert code == 2 and "has no rows of class Business, Sci/Tech" in err and "data.label_names=[]" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("frame, ids", [
    (lambda df: df.iloc[4:10], list(range(4, 10))),          # a view: pandas 3 pickles its strings read-only
    (lambda df: df[df.label == 1], [1, 4, 7, 10]),
    (lambda df: df.head(3), None),
    (lambda df: df.iloc[4:10].reset_index(drop=True), None),
])
def test_pickled_dataframes_keep_their_row_labels_as_ids(tmp_path, frame, ids):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": [i % 3 for i in range(12)]})
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(frame(df)))
    ex = data.load(str(path))
    assert ex.ids == ids and ex.texts == list(frame(df).text)


def test_numbers_as_classes_end_to_end(tmp_path, tiny_bert):
    """Labels 3/7/9: a three-class model, macro-F1 as scikit-learn computes it, predictions written as 3/7/9,
    and evaluate on a file with other column names reproduces the run's test figures."""
    from conftest import tiny_config
    train = _csv(tmp_path / "train.csv", [3, 7, 9], reps=12)
    test = _csv(tmp_path / "test.csv", [3, 7, 9], reps=4)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_bert, "data.label_names=[]", "train.epochs=2", "train.precision=fp32",
                      "scoring.precision=fp32")
    result = pipeline.train_run(cfg, [str(train)], out, test_data=[str(test)], log=lambda *a, **k: None)
    assert result["test"]["label_names"] == ["3", "7", "9"]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    true, pred = [r["label"] for r in rows], [r["pred"] for r in rows]
    assert result["test"]["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"))
    with open(out / "submission.csv") as f:
        assert {r["Label"] for r in csv.DictReader(f)} <= {"3", "7", "9"}
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(test.read_text().replace("label,text", "stars,review", 1))
    assert cli.main(["evaluate", str(out), "--data", str(renamed), "--text-column", "review", "--label-column",
                     "stars", "--no-report"]) == 0
    again = pipeline.evaluate_run(out, [str(renamed)], text_column="review", label_column="stars")
    assert (again["accuracy"], again["confusion"]) == (result["test"]["accuracy"], result["test"]["confusion"])


def test_predictions_write_classes_as_the_training_labels_were_written(tmp_path, tiny_bert):
    """Labels given as names ("neg", "pos") come back as names; ids (AG News' 0-3 under class names) as ids;
    --label-ids and --label-names choose either."""
    from conftest import tiny_config
    words = _csv(tmp_path / "words.csv", ["neg", "pos", "neu"], reps=10)
    out = tmp_path / "words"
    pipeline.train_run(tiny_config(tiny_bert, "data.label_names=[]"), [str(words)], out, test_data=[str(words)],
                       log=lambda *a, **k: None)
    with open(out / "submission.csv") as f:
        assert {r["Label"] for r in csv.DictReader(f)} <= {"neg", "neu", "pos"}
    for flag, allowed in (([], {"neg", "neu", "pos"}), (["--label-ids"], {"0", "1", "2"})):
        assert cli.main(["predict", str(out), str(words), "-o", str(tmp_path / "p.csv"), *flag]) == 0
        with open(tmp_path / "p.csv") as f:
            assert {r["Label"] for r in csv.DictReader(f)} <= allowed
    ids = tmp_path / "ids.csv"
    ids.write_text("label,text\n" + "".join(f"{i % 4},{WORDS['3']} {i}\n" for i in range(40)))
    out = tmp_path / "ids"
    pipeline.train_run(tiny_config(tiny_bert), [str(ids)], out, test_data=[str(ids)], log=lambda *a, **k: None)
    with open(out / "submission.csv") as f:
        assert {r["Label"] for r in csv.DictReader(f)} <= {"0", "1", "2", "3"}
    assert cli.main(["predict", str(out), str(ids), "-o", str(tmp_path / "n.csv"), "--label-names"]) == 0
    with open(tmp_path / "n.csv") as f:
        assert {r["Label"] for r in csv.DictReader(f)} <= {"World", "Sports", "Business", "Sci/Tech"}


def test_a_classlabel_stores_positions_even_when_its_names_are_numbers(tmp_path):
    """yelp_polarity's ClassLabel names its classes "1" and "2" and stores 0 and 1."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["1", "2"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 1, 0]}, features=features)
    path = tmp_path / "yelp.pkl"
    path.write_bytes(pickle.dumps(ds))
    ex = data.load(str(path))
    assert (ex.label_names, ex.labels) == (["1", "2"], [1, 1, 0])
    again = data.load(str(path), label_names=["1", "2"])  # a run trained on it: matched by name
    assert again.labels == [1, 1, 0]


def test_an_ag_news_file_without_classes_txt_has_numbers_for_classes(tmp_path):
    folder = tmp_path / "ag"
    folder.mkdir()
    (folder / "train.csv").write_text("".join(f'"{1 + i % 4}","title {i}","text {i}"\n' for i in range(8)))
    ex = data.load(str(folder / "train.csv"))
    assert ex.label_names == ["1", "2", "3", "4"] and ex.labels == [i % 4 for i in range(8)]
    assert data.load(str(folder / "train.csv"), label_names=ex.label_names).labels == ex.labels


def test_runs_from_before_numbers_could_be_classes_read_numbers_as_ids(tmp_path):
    """A run whose config.json has no predict.labels record named its classes "0".."9" for labels 3/7/9."""
    path = _csv(tmp_path / "d.csv", [3, 7, 9])
    names = [str(i) for i in range(10)]
    assert data.load(str(path), label_names=names, numbers_are_ids=True).labels == [3, 7, 9]
    assert data.load(str(path), label_names=["1", "3", "7", "9"]).labels == [1, 2, 3]
    assert pipeline.numbers_are_ids({"resolved": {"device": "cpu"}})
    assert not pipeline.numbers_are_ids({"resolved": {pipeline.LABEL_OUTPUT: "ids"}})


def test_label_ids_also_for_classes_that_are_numbers(tmp_path, tiny_bert):
    from conftest import tiny_config
    train = _csv(tmp_path / "train.csv", [3, 7, 9], reps=8)
    out = tmp_path / "run"
    pipeline.train_run(tiny_config(tiny_bert, "data.label_names=[]"), [str(train)], out, log=lambda *a, **k: None)
    for flag, allowed in (([], {"3", "7", "9"}), (["--label-ids"], {"0", "1", "2"})):
        assert cli.main(["predict", str(out), str(train), "-o", str(tmp_path / "p.csv"), *flag]) == 0
        with open(tmp_path / "p.csv") as f:
            assert {r["Label"] for r in csv.DictReader(f)} <= allowed


def test_label_forms_round_trip(tmp_path):
    """Classes mixing words and numbers come back as names; a ClassLabel's positions as ids; 19-digit JSON
    integers are refused as CSV's are; two class names that are one number are refused."""
    from loraclf import config
    mixed = _csv(tmp_path / "mixed.csv", ["World", "3", "Sports", "10"])
    assert data.load(str(mixed), label_names=["World", "3", "Sports", "10"]).label_output == "names"
    assert data.load(str(_csv(tmp_path / "ids.csv", [0, 3, 1])), label_names=LABELS_WORDS).label_output == "ids"
    big = tmp_path / "big.jsonl"
    big.write_text('{"text": "a", "label": 10000000000000000000}\n{"text": "b", "label": 5}\n')
    with pytest.raises(UserError, match="has more than 18 digits"):
        data.load(str(big))
    with pytest.raises(UserError, match="names one number twice"):
        config.load(None, None, ['data.label_names=["07", "7", "x"]'])


def test_a_classlabel_with_number_names_writes_ids_as_it_stored(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["1", "2"])})
    path = tmp_path / "yelp.pkl"
    path.write_bytes(pickle.dumps(datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features)))
    assert data.load(str(path)).label_output == "ids"


def test_an_unreadable_record_reads_numbers_as_the_old_version_did():
    for resolved in ({}, {"predict.labels": None}, {"predict.labels": ["names"]}, {"predict.labels": "NAMES"}):
        assert pipeline.numbers_are_ids({"resolved": resolved})
