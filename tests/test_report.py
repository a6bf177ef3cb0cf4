"""`loraclf report` / `loraclf compare`: plots, report.html, report.md, from fake run directories (4 and 20
classes, no training) and from one real tiny run."""
from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from conftest_report import AGNEWS, HOSTILE, LONG_NAMES, fake_run, fake_run_20, make_fake_run, real_run  # noqa: F401

from loraclf import cli, plots, report
from loraclf.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def _figures(run):
    d = report.load(run)
    m = d["splits"]["test"]
    return {"curves": plots.curves(d["records"], 60), "lr": plots.lr_schedule(d["records"], "linear"),
            "splits": plots.splits(d["splits"]), "per_class": plots.per_class(m, "test"),
            "confusion": plots.confusion(m, "test", normalized=False),
            "confusion_normalized": plots.confusion(m, "test", normalized=True)}


def _assert_readable(fig, name):
    assert not plots.overlapping_labels(fig), f"{name}: overlapping tick labels {plots.overlapping_labels(fig)[:3]}"
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    for ax in fig.axes:
        texts = plots.drawn_ticklabels(ax, "x") + plots.drawn_ticklabels(ax, "y")
        for t in texts + [ax.title, ax.xaxis.label, ax.yaxis.label]:
            if t.get_text():
                b = t.get_window_extent(renderer)
                assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= W + 1 and b.y1 <= H + 1, f"{name}: {t.get_text()!r} cut off"
    main = fig.axes[0]
    assert main.get_title() and main.get_xlabel() and main.get_ylabel(), f"{name}: title and axis labels"


@pytest.mark.parametrize("names", [AGNEWS, LONG_NAMES], ids=["4-classes", "20-long-classes"])
def test_plots_are_readable(tmp_path, names):
    run = make_fake_run(tmp_path / "run", names=names, n_test=len(names) * 60)
    for name, fig in _figures(run).items():
        _assert_readable(fig, name)
        if name.startswith(("confusion", "per_class")):
            ticks = [t.get_text() for t in (fig.axes[0].get_yticklabels())]
            assert ticks == plots.class_labels(names)  # class names, not ids
            assert all(not t.isdigit() for t in ticks)
        if name.startswith("confusion"):  # every cell annotated
            assert len([t for t in fig.axes[0].texts]) == len(names) ** 2
        plots.png(fig)


def test_long_names_stay_distinct():
    names = ["A very long class name that only differs at the end: one", "A very long class name that only differs at the end: two"]
    labels = plots.class_labels(names)
    assert len(set(labels)) == 2


def test_report_from_fake_run(fake_run):
    html_path = report.write(fake_run)
    assert html_path == fake_run / "report.html"
    pngs = sorted(p.name for p in (fake_run / "plots").glob("*.png"))
    assert {"curves.png", "lr.png", "splits.png", "per_class_test.png", "confusion_test.png",
            "confusion_normalized_test.png", "per_class_val.png"} <= set(pngs)
    assert all((fake_run / "plots" / p).read_bytes().startswith(PNG) for p in pngs)
    assert not list(fake_run.glob(".*.tmp")) and not list((fake_run / "plots").glob(".*.tmp"))  # atomic writes

    page = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(pngs) and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert 'src="plots/' not in page and "http" not in page.replace("http-equiv", "")  # self-contained
    metrics = json.loads((fake_run / "metrics.json").read_text())
    acc = f"{100 * metrics['test']['accuracy']:.2f}%"
    for needle in (acc, "Parameter budget", "lora:query", "samples/s", "Environment", "2.13.0+cpu",
                   "Resolved config", "&quot;r&quot;: 8" if "&quot;r&quot;" in page else '"r": 8', "Validation vs test"):
        assert needle in page, needle
    md = (fake_run / "report.md").read_text()
    assert acc in md and "![" in md and "(plots/confusion_test.png)" in md and "| split | n | loss |" in md
    assert "## Most confident misclassifications" in md


def _write_predictions(run, rows):
    header = "id,label,pred,confidence,text," + ",".join(f"p_{c}" for c in AGNEWS)
    body = "".join(f'{i},{t},{p},{c},"{x}",0.25,0.25,0.25,0.25\n' for i, t, p, c, x in rows)
    (run / "predictions.csv").write_text(header + "\n" + body)


def test_misclassifications(fake_run):
    hostile = HOSTILE.replace('"', '""')
    rows = [(i, "Business", "Sci/Tech", 0.5 + i / 100, f"business text {i}") for i in range(6)]
    rows += [(10, "Business", "Sci/Tech", 0.99, hostile), (11, "World", "Sports", 0.9, "world text"),
             (12, "Sports", "Sports", 0.99, "right"), (13, "World", "Sports", 0.4, "world text 2")]
    _write_predictions(fake_run, rows)
    errors = report.misclassified(fake_run / "predictions.csv", per_pair=3)
    assert [(e["true"], e["pred"], e["count"]) for e in errors] == [("Business", "Sci/Tech", 7), ("World", "Sports", 2)]
    assert [x["id"] for x in errors[0]["examples"]] == ["10", "5", "4"]  # most confident first
    report.write(fake_run)
    page = (fake_run / "report.html").read_text()
    assert "Business → Sci/Tech (7 errors)" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page
    md = (fake_run / "report.md").read_text()
    assert "<script>" not in md and "&lt;b&gt;bold&lt;/b&gt; \\| pipe" in md


def test_degrades_gracefully(tmp_path):
    run = make_fake_run(tmp_path / "run", test=False)
    report.write(run)
    page = (run / "report.html").read_text()
    assert "misclassifications" not in page and "confusion_test" not in str(list((run / "plots").iterdir()))
    # a run in progress: config, labels (written with it before training) + a few metrics.jsonl lines only
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(run / "config.json", live)
    shutil.copy(run / "labels.json", live)
    (live / "metrics.jsonl").write_text('{"step": 10, "epoch": 0.1, "train_loss": 1.3, "lr": 0.001}\n{"step": 2')
    report.write(live)
    assert sorted(p.name for p in (live / "plots").iterdir()) == ["curves.png", "lr.png"]
    assert "Resolved config" in (live / "report.md").read_text()


def test_eval_files_are_included(fake_run):
    m = json.loads((fake_run / "metrics.json").read_text())["test"] | {"data": ["extra.csv"], "accuracy": 0.7123}
    (fake_run / "eval-extra.json").write_text(json.dumps(m))
    report.write(fake_run)
    assert (fake_run / "plots" / "confusion_eval-extra.png").is_file()
    assert "71.23%" in (fake_run / "report.html").read_text()


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report.write(tmp_path / "nope")
    with pytest.raises(UserError, match="not a run directory"):
        report.write(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no labels.json"):
        report.write(tmp_path)
    (tmp_path / "labels.json").write_text('["a", "b"]')
    with pytest.raises(UserError, match="no metrics yet"):
        report.write(tmp_path)
    with pytest.raises(UserError, match="cannot sort"):
        report.compare([tmp_path], "bogus")


def _cli(argv):
    args = cli.parser().parse_args(argv)
    return args.func(args)


def test_compare(tmp_path, capsys):
    runs = [make_fake_run(tmp_path / f"run-{s}", seed=s, n_test=200) for s in range(3)]
    accs = {r.name: json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in runs}
    md, page = report.compare(runs, "test_accuracy")
    order = [line.split("|")[2].strip() for line in md.splitlines() if re.match(r"\| \d", line)]
    assert order == sorted(accs, key=accs.get, reverse=True)
    for col in ("method", "trainable", "test accuracy", "macro-F1", "train time (s)", "samples/s"):
        assert col in md and col in page
    assert "lora r=8 alpha=16.0 on query,value" in md

    assert _cli(["compare", *map(str, runs), "--sort", "val_macro_f1", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "sorted by val macro-F1" in out and (tmp_path / "cmp" / "compare.md").is_file()
    assert "<table" in (tmp_path / "cmp" / "compare.html").read_text()
    with pytest.raises(SystemExit):
        _cli(["compare", str(runs[0]), "--sort", "bogus"])
    with pytest.raises(UserError, match="does not exist"):
        _cli(["compare", str(tmp_path / "missing")])


def test_report_command(fake_run, capsys):
    assert _cli(["report", str(fake_run)]) == 0
    assert "report.html" in capsys.readouterr().out and (fake_run / "report.md").is_file()


def test_report_from_real_run(real_run):
    # `loraclf train` already wrote the report at the end of the run (cli._maybe_report)
    metrics = json.loads((real_run / "metrics.json").read_text())
    report.write(real_run)
    page = (real_run / "report.html").read_text()
    assert f"{100 * metrics['test']['accuracy']:.2f}%" in page
    assert (real_run / "plots" / "confusion_test.png").is_file() and (real_run / "plots" / "curves.png").is_file()
    assert metrics["environment"]["torch"] in page
    labels = json.loads((real_run / "labels.json").read_text())
    assert all(c in page for c in labels)
