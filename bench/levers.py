"""`bench.py --levers`: each speed lever's effect measured in isolation (docs/performance.md, "Levers tried").

In-process on roberta-base (random weights) and real AG News texts; each lever on and off, alternated, on fit's
step and on predict's scoring. Process-wide levers (glibc's malloc thresholds) run in fresh processes.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ceiling import ceiling_lever
from contenders import LABELS, bench_config, report_a_tensors, run_loraclf_train
from measure import timed
from rows import sample_rows
from worker import ENTRY, subprocess_env


def levers(opts, log=None, malloc_probe: str | None = None) -> list[dict]:
    """Each lever's effect, in-process on roberta-base (random weights) and real texts: one training step
    on a length-grouped batch of 16 (loraclf's step: collate, forward, loss, backward, clip, AdamW) and
    inference over a fixed set of rows. Medians of `repeats` after one warmup. Process-wide levers (malloc)
    run in fresh processes (`malloc_probe` "glibc" / "tuned": that process's rows only)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer
    from loraclf import data as data_mod
    from loraclf import fastpath
    from loraclf import model as model_mod
    from loraclf import precision as precision_mod
    from loraclf import scoring
    log = log or (lambda *a, **k: print(*a, file=sys.stderr, flush=True))
    reps = opts.repeats or 3
    if opts.threads:
        torch.set_num_threads(opts.threads)
    agnews_dir, model_dir = Path(opts.agnews_dir).resolve(), Path(opts.roberta_dir).resolve()
    ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = sample_rows(len(ex), opts.infer_rows or 128, seed=2)
    sub = ex.subset(rows)
    enc = data_mod.encode(tok, sub, 256)
    order = np.argsort(enc.lengths)
    mid = len(order) // 2
    train_index = [int(i) for i in order[mid - 8: mid + 8]]  # a typical (median-length) batch of 16
    results = []

    def record(lever, variant, seconds, unit_count, unit):
        results.append({"lever": lever, "variant": variant, "seconds": seconds, f"{unit}_per_s": unit_count / seconds})
        _log_lever_row(log, results[-1])
        return results[-1]

    def train_step_fn(model, cfg, precision="fp32", cheap_dropout=False, cast_once=False, attn=None, index=None,
                      share=False, cls_only=False, multiple=data_mod.PAD_MULTIPLE):
        """fit's step; each fast-path lever off unless asked for (fp32, torch's dropout, loaded attention)."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, foreach=True)
        dev = torch.device("cpu")
        model.train()
        frozen_dtype = precision_mod.autocast_dtype(precision) if cast_once else None

        def step():
            batch = data_mod.collate(enc, index or train_index, tok.pad_token_id, multiple)
            with fastpath.frozen_weights_as(model, frozen_dtype), fastpath.cpu_dropout(cheap_dropout, share), \
                    fastpath.cls_only_last_layer(model, cls_only), fastpath.attention(model, attn):
                with precision_mod.autocast(dev, precision):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"])
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def build(extra=()):
        cfg = bench_config(str(model_dir), "loraclf", list(extra) + list(opts.set or []))
        return model_mod.build(cfg, LABELS), cfg

    def infer_fn(model, batch_size, precision="fp32", max_tokens=0, encoded=None, full_cast=False, cls_only=False,
                 multiple=data_mod.PAD_MULTIPLE):
        """Scoring as predict does; no token cap unless asked (the scoring-batches rows measure the cap), the
        whole model cast (scoring.bf16_full_cast) and the first-token last layer (cls_only) only where asked."""
        def go():
            with torch.inference_mode():
                scoring.predict_logits(model, encoded or enc, batch_size, tok.pad_token_id, torch.device("cpu"),
                                       precision, max_tokens=max_tokens, full_cast=full_cast, cls_only=cls_only,
                                       pad_to_multiple=multiple)
        return go

    bs = 16
    fast = precision_mod.resolve("auto", "cpu")  # train.precision's and scoring.precision's auto
    long_index = [int(i) for i in order[-bs:]]  # the longest texts: attention's share grows with length
    many_ex = ex.subset(sample_rows(len(ex), 4 * len(enc), seed=3))
    many = data_mod.encode(tok, many_ex, 256)  # scoring's rows
    if malloc_probe:  # under glibc's own thresholds or fastpath.tune_malloc's: fit's step with its whole fast
        # path, or (a "-scoring" probe) predict's scoring in a process that has done nothing else
        if malloc_probe.startswith("tuned") and not fastpath.tune_malloc():
            return results
        model, cfg = build()
        if malloc_probe.endswith("-scoring"):
            merged = model.merge_and_unload().eval()
            go = infer_fn(merged, 64, fast, scoring.cpu_scoring_tokens(), many, full_cast=True, cls_only=True)
            record(f"glibc malloc thresholds ({fast} inference, merged)", malloc_probe.removesuffix("-scoring"),
                   timed(go, max(1, reps - 1)), len(many), "rows")
            return results
        for label, index in (("median", None), ("longest", long_index)):
            step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                 index=index)
            record(f"glibc malloc thresholds ({fast} fast train, {label})", malloc_probe, timed(step, reps), bs, "samples")
        return results
    only = getattr(opts, "lever", "all")
    if only == "malloc":
        return _malloc_probes(opts, log)
    model, cfg = build()
    if only in ("all", "pad-multiple"):
        # batch widths rounded up to 8 (data.PAD_MULTIPLE) or not, on fit's whole fast step over every
        # length-grouped batch of the rows (widths vary, so rounding adds 0-7 tokens a row)
        # and on predict's scoring; alternated, twice
        groups = data_mod.length_grouped_batches(enc.lengths, bs, 0)

        def all_batches(multiple):
            steps = [train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                   index=ix, cls_only=True, multiple=multiple) for ix in groups]
            return lambda: [s() for s in steps]
        for _ in range(2):
            for multiple in (8, 1):
                record(f"padding multiple ({fast} fast train, {len(groups)} batches)", f"widths to a multiple of {multiple}",
                       timed(all_batches(multiple), reps), bs * len(groups), "samples")
        merged = build()[0].merge_and_unload().eval()
        for _ in range(2):
            for multiple in (8, 1):
                go = infer_fn(merged, 64, fast, 2048, many, full_cast=True, cls_only=True, multiple=multiple)
                record(f"padding multiple ({fast} inference, merged)", f"widths to a multiple of {multiple}",
                       timed(go, max(1, reps - 1)), len(many), "rows")
        if only == "pad-multiple":
            return results
    if only in ("all", "ceiling"):
        groups = data_mod.length_grouped_batches(enc.lengths, bs, 0)
        steps = [train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                               index=ix, cls_only=True) for ix in groups]
        tokens = int(sum(enc.lengths[i] for ix in groups for i in ix))
        scorer = lambda m: infer_fn(m, 64, fast, scoring.cpu_scoring_tokens(), many, full_cast=True,  # noqa: E731
                                    cls_only=True)
        trainer_cfg = bench_config(str(model_dir), "trainer", list(opts.set or []))
        ceiling_lever(model, steps, tokens, many, scorer, (tok, many_ex.texts, trainer_cfg), fast, opts.peak_size or 2048,
                      record, log, reps)
        if only == "ceiling":
            return results
    if only == "scoring":
        return results + scoring_levers(model, infer_fn, many, fast, record, opts, log)
    if only in ("all", "tokenize"):
        tokenize_lever(tok, ex, record, reps)
        if only == "tokenize":
            return results
    if only in ("all", "frozen-cache"):
        frozen_cache_lever(build, many, tok.pad_token_id, record, model.config.num_hidden_layers)
        if only == "frozen-cache":
            return results
    # the last layer for the first token only (scoring.cls_only_last_layer), on fit's whole fast step and on
    # predict's scoring (merged, 2,048-token batches, whole model cast in bf16); alternated, twice
    for label, index in (("median", None), ("longest", long_index)):
        for _ in range(2):
            for variant, on in (("every row", False), ("first token only", True)):
                step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                     index=index, cls_only=on)
                record(f"last layer ({fast} fast train, {label})", variant, timed(step, reps), bs, "samples")
    merged = model.merge_and_unload()
    merged.eval()
    for _ in range(2):
        for variant, on in (("every row", False), ("first token only", True)):
            go = infer_fn(merged, 64, fast, 2048, many, full_cast=True, cls_only=on)
            record(f"last layer ({fast} inference, merged)", variant, timed(go, max(1, reps - 1)), len(many), "rows")
    if only == "last-layer":
        return results
    del merged
    # attention implementation, plain fp32 and with the fast path (cheap dropout, weights cast once)
    for attn in ("eager", "sdpa"):
        model, cfg = build([f"model.attn_implementation={attn}"])
        record("attention (train step)", attn, timed(train_step_fn(model, cfg), reps), bs, "samples")
        record("attention (inference)", attn, timed(infer_fn(model, 64), max(1, reps - 1)), len(enc), "rows")
        record(f"attention ({fast} inference)", attn, timed(infer_fn(model, 64, fast), max(1, reps - 1)), len(enc), "rows")
        variants = [(attn, None)] + ([(fastpath.TRAIN_ATTENTION, fastpath.TRAIN_ATTENTION)] if attn == "sdpa" else [])
        for name, switch in variants:  # fit's CPU choice last: sdpa loaded, training forwards switched
            for label, index in (("median", None), ("longest", long_index)):
                step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=switch, index=index)
                record(f"attention ({fast} fast train, {label})", name, timed(step, reps), bs, "samples")
    # torch.compile (inductor, dynamic shapes) on the plain step: compile time, then the steady state
    model, cfg = build(["model.attn_implementation=eager"])
    try:
        compiled = torch.compile(model, dynamic=True)
        for label, index in (("median", None), ("longest", long_index)):
            step = train_step_fn(compiled, cfg, fast, index=index)
            tick = time.perf_counter()
            step()
            record(f"torch.compile ({fast} train, {label})", "first step (compiling)", time.perf_counter() - tick, bs,
                   "samples")
            record(f"torch.compile ({fast} train, {label})", "compiled", timed(step, reps), bs, "samples")
    except Exception as e:  # no C++ compiler, or an inductor limitation: record it, go on
        log(f"  torch.compile: unavailable ({type(e).__name__}: {str(e)[:200]})")
    # precision
    model, cfg = build()
    for prec in ("fp32", "bf16"):
        record("precision (train step)", prec, timed(train_step_fn(model, cfg, prec), reps), bs, "samples")
    record("precision (inference)", "bf16", timed(infer_fn(model, 64, "bf16"), max(1, reps - 1)), len(enc), "rows")
    # the training fast path's levers, one at a time on top of the previous, at the auto precision, eager
    model, cfg = build(["model.attn_implementation=eager"])
    for label, index in (("median", None), ("longest", long_index)):
        for variant, kw in (("torch dropout, autocast casts", {}), ("cheap dropout", {"cheap_dropout": True}),
                            ("+ frozen weights cast once", {"cheap_dropout": True, "cast_once": True})):
            record(f"fast path ({fast} train, {label})", variant, timed(train_step_fn(model, cfg, fast, **kw, index=index), reps),
                   bs, "samples")
        step_kw = {"cheap_dropout": True, "cast_once": True, "attn": fastpath.TRAIN_ATTENTION, "index": index}
        for _ in range(2):  # one LoRA dropout mask per module (peft) or one per input (cpu.share_dropout_masks)
            for variant, share in (("one per LoRA module", False), ("shared by q, k, v", True)):
                record(f"LoRA dropout masks ({fast} fast train, {label})", variant,
                       timed(train_step_fn(model, cfg, fast, **step_kw, share=share), reps), bs, "samples")
    # dropout's apply step alone (mask drawn beforehand), forward and backward, on one median-batch activation
    dtype = precision_mod.autocast_dtype(fast) or torch.float32
    x, g = torch.randn(bs, 56, 768, dtype=dtype), torch.randn(bs, 56, 768, dtype=dtype)
    keep, scale = fastpath.dropout_mask(x.shape, 0.1)
    drop = ~keep

    def masked_fill():  # the dropout fastpath replaced
        x.mul(scale).masked_fill_(drop, 0), g.mul(scale).masked_fill_(drop, 0)

    def multiply():     # fastpath.dropout
        fastpath.apply_mask(x, keep, scale), fastpath.apply_mask(g, keep, scale)
    for name, fn in (("masked_fill_ (before)", masked_fill), ("multiply by the 0/1 mask", multiply)):
        record(f"dropout apply ({fast}, fwd+bwd, [16,56,768])", name, timed(fn, 50), 1, "calls")
    # optimizer implementation: the step alone on the 925k trainable parameters
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        try:
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            record("AdamW step alone", name, timed(opt.step, 10), 1, "steps")
        except (RuntimeError, TypeError) as e:
            log(f"  AdamW {name}: unavailable ({e})")
    model.zero_grad(set_to_none=True)
    # merged LoRA weights for inference, and the eval batch size
    record("merged LoRA (inference)", "unmerged (peft)", timed(infer_fn(model, 64), max(1, reps - 1)), len(enc), "rows")
    merged = model.merge_and_unload()
    merged.eval()
    record("merged LoRA (inference)", "merged", timed(infer_fn(merged, 64), max(1, reps - 1)), len(enc), "rows")
    for b in (16, 32, 64, 128):
        record("eval batch size (merged)", str(b), timed(infer_fn(merged, b), max(1, reps - 1)), len(enc), "rows")
    # bf16 inference: autocast casts every linear weight on every batch; casting them once gives the same logits
    record("bf16 inference weights", "autocast casts per batch", timed(infer_fn(merged, 64, "bf16"), reps), len(enc), "rows")
    for mod in merged.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.to(torch.bfloat16)
    record("bf16 inference weights", "linears cast once", timed(infer_fn(merged, 64, "bf16"), reps), len(enc), "rows")
    merged.float()
    # everything bf16, LayerNorm and residual adds included (scoring.bf16_full_cast): faster, not autocast's numbers;
    # on more rows (`many`), with the token cap: predict's batches
    if fast == "bf16":
        for _ in range(2):  # alternating, twice
            for variant, full in (("linears cast once", False), ("whole model bf16", True)):
                record("bf16 inference, 2,048-token batches", variant,
                       timed(infer_fn(merged, 64, "bf16", 2048, many, full), max(1, reps - 1)), len(many), "rows")
        # torch.compile with inductor's weight freezing (prepacked oneDNN weights), whole model bf16, dynamic shapes
        import torch._inductor.config as inductor_config
        frozen_before = inductor_config.freezing
        try:
            inductor_config.freezing = True
            with fastpath.frozen_weights_as(merged, torch.bfloat16, whole_model=True):
                compiled = torch.compile(merged, dynamic=True)
                go = infer_fn(compiled, 64, "bf16", 2048, many, True)
                tick = time.perf_counter()
                go()
                record("torch.compile (bf16 inference, freezing)", "first pass (compiling)", time.perf_counter() - tick,
                       len(many), "rows")
                record("torch.compile (bf16 inference, freezing)", "compiled", timed(go, max(1, reps - 1)), len(many),
                       "rows")
        except Exception as e:  # noqa: BLE001 (no C++ compiler, an inductor limitation: record it, go on)
            log(f"  torch.compile (inference): unavailable ({type(e).__name__}: {str(e)[:200]})")
        finally:
            inductor_config.freezing = frozen_before
            torch._dynamo.reset()
    # scoring batches: rows only vs a cap on padded tokens (scoring.max_tokens), on more rows than the
    # other inference rows so that a cap changes the batches' make-up and not only their number; in bf16 the whole
    # model cast, as predict scores
    for prec in dict.fromkeys((fast, "fp32")):  # the cap applies to fp32 scoring too (CPUs without native bf16)
        for cap in (0, 1024, 2048, 4096):
            record(f"scoring batches ({prec} inference, merged)", f"64 rows, <= {cap} tokens" if cap else "64 rows",
                   timed(infer_fn(merged, 64, prec, cap, many, full_cast=True), max(1, reps - 1)), len(many), "rows")
    # padding: length-sorted batches vs pad to 256 (the report-A way) for the same rows
    def padded(m=merged):
        ids, mask, _ = report_a_tensors(tok, sub.texts, sub.labels, 256)
        with torch.inference_mode():
            for i in range(0, len(ids), 64):
                m(input_ids=ids[i:i + 64], attention_mask=mask[i:i + 64])
    record("padding (inference)", "pad to 256", timed(padded, 1), len(enc), "rows")
    del merged, model
    # threads
    model, cfg = build()
    n_threads = torch.get_num_threads()
    for t in sorted({1, n_threads}):
        torch.set_num_threads(t)
        record("threads (train step)", str(t), timed(train_step_fn(model, cfg), reps), bs, "samples")
    torch.set_num_threads(n_threads)
    # dropout inside the encoder (the pretrained config's 0.1 vs off: model.encoder_dropout=0)
    for drop in ("-1", "0"):
        model, cfg = build([f"model.encoder_dropout={drop}"])
        record("encoder dropout (train step)", "pretrained 0.1" if drop == "-1" else "off",
               timed(train_step_fn(model, cfg), reps), bs, "samples")
    # adapters only in the upper layers: autograd then stops below the lowest adapted layer
    n_layers = model.config.num_hidden_layers
    top = list(range(n_layers - max(1, n_layers // 3), n_layers))  # roberta-base: layers 8-11
    for layers in ("", ",".join(map(str, top))):
        model, cfg = build([f"adapter.layers=[{layers}]"] if layers else [])
        record("adapted layers (train step)", f"all {n_layers}" if not layers else f"top {len(top)} only",
               timed(train_step_fn(model, cfg), reps), bs, "samples")
    return results + _malloc_probes(opts, log)


def tokenize_lever(tok, examples, record, reps: int) -> None:
    """Pre-tokenized data: `fit` tokenizes each run's texts once (data.encode), not per epoch. What an on-disk cache
    of the token ids would save a run: tokenizing every text against reading the ids back from one .npz
    (flat ids and offsets, split back into the per-text lists data.Encoded holds)."""
    from loraclf import data as data_mod
    encode = lambda: data_mod.encode(tok, examples, 256)  # noqa: E731
    ids = encode().input_ids
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.npz"
        np.savez(path, flat=np.fromiter((t for row in ids for t in row), np.int32),
                 offsets=np.cumsum([0] + [len(row) for row in ids]))

        def read():
            z = np.load(path)
            flat, offsets = z["flat"], z["offsets"]
            return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
        assert read() == ids
        lever = f"pre-tokenized data ({len(examples):,} texts, max length 256)"
        record(lever, "tokenize (fast tokenizer)", timed(encode, reps), len(examples), "rows")
        record(lever, "read token ids from disk", timed(read, reps), len(examples), "rows")


def frozen_cache_lever(build, encoded, pad_id: int, record, n_layers: int) -> None:
    """train.cache_frozen_layers: `fit` itself (its whole fast path) with preset A's LoRA on the top third of the layers
    (roberta-base: 8-11) and no encoder dropout, for 1 and 3 epochs over `encoded`, off against auto; alternated,
    twice, the order swapped. Time is fit's own step timing (the first epoch's keeping included); a fresh model
    each run."""
    bs = 16
    n = len(encoded) // bs * bs
    k = n_layers - max(1, n_layers // 3)
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in (1, 3):
            for order in (("off", "auto"), ("auto", "off")):
                for choice in order:
                    model, cfg = build([f"adapter.layers={','.join(map(str, range(k, n_layers)))}", "model.encoder_dropout=0",
                                        f"train.epochs={epochs}", f"train.cache_frozen_layers={choice}"])
                    res = run_loraclf_train(model, cfg, encoded, pad_id, 0, n // bs, Path(tmp) / f"{choice}-{epochs}")
                    record(f"frozen layers 0-{k - 1} kept across epochs ({res['precision']} fit, top {n_layers - k} layers "
                           f"adapted, {epochs} epoch{'s' if epochs > 1 else ''} of {n} texts)",
                           f"cache_frozen_layers={choice}", res["seconds"], res["samples"], "samples")


def scoring_levers(model, infer_fn, many, fast, record, opts, log) -> list[dict]:
    """Every scoring lever on this CPU kind, as predict scores (merged model, `many` rows): the precision, the
    first-token last layer, the token cap (in fp32 and, where bf16 is native, in bf16 too, since the precision row
    decides which one scoring's auto takes), the whole-model bf16 cast (where bf16 is native), the batch size, each
    against the resolved default (`fast`: auto) with the others at their defaults; all alternated, twice; then
    glibc's malloc thresholds in fresh processes. Run it once per CPU kind (ONEDNN_MAX_CPU_ISA holds an AMX CPU to a lower
    kind's kernels) and compare each lever's rows within the run."""
    from loraclf import precision as precision_mod
    from loraclf import scoring
    kind = precision_mod.cpu_kind()
    native = precision_mod.cpu_has_native_bf16()
    cap = scoring.scoring_tokens(-1, "cpu")
    merged = model.merge_and_unload().eval()

    def row(lever, variant, prec=fast, tokens=cap, full=True, cls_only=True, batch=64):
        go = infer_fn(merged, batch, prec, tokens, many, full_cast=full, cls_only=cls_only)
        record(f"{lever} ({kind}, {prec} scoring)", variant, timed(go, 1), len(many), "rows")
    for _ in range(2):
        for prec in ("fp32", "bf16"):
            row("precision", prec, prec=prec)
        for variant, on in (("every row", False), ("first token only", True)):
            row("last layer", variant, cls_only=on)
        for prec in dict.fromkeys((fast, "fp32") + (("bf16",) if native else ())):
            for tokens in (0, 1024, 2048, 4096, 8192):
                row("token cap", f"64 rows, <= {tokens} tokens" if tokens else "64 rows", prec=prec, tokens=tokens)
        if native:
            for variant, full in (("linears cast once", False), ("whole model bf16", True)):
                row("bf16 cast", variant, prec="bf16", full=full)
        for batch in (32, 64, 128):
            row("batch rows", str(batch), batch=batch)
    return _malloc_probes(opts, log, ("-scoring",))


def _malloc_probes(opts, log, whats=("", "-scoring")) -> list[dict]:
    """malloc thresholds are process-wide and permanent: one fresh process per variant, alternating, twice;
    for fit's step, then for predict's scoring."""
    return [r for what in whats for variant in ("glibc", "tuned", "glibc", "tuned")
            for r in _malloc_probe(opts, variant + what, log)]


def _malloc_probe(opts, variant: str, log) -> list[dict]:
    args = ["--levers", "--malloc-probe", variant, "--json", "--agnews-dir", str(opts.agnews_dir),
            "--roberta-dir", str(opts.roberta_dir), "--threads", str(opts.threads or 0)]
    args += (["--repeats", str(opts.repeats)] if opts.repeats else []) + \
        (["--infer-rows", str(opts.infer_rows)] if opts.infer_rows else [])
    for kv in opts.set or []:
        args += ["--set", kv]
    proc = subprocess.run([sys.executable, str(ENTRY), *args], capture_output=True, text=True,
                          env=subprocess_env())
    if proc.returncode != 0 or "[" not in proc.stdout:
        raise RuntimeError(f"malloc probe ({variant}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout[proc.stdout.index("["):])
    for r in rows:
        _log_lever_row(log, r)
    return rows


def _log_lever_row(log, r: dict) -> None:
    unit = next(k for k in r if k.endswith("_per_s"))
    log(f"  {r['lever']:<28} {r['variant']:<26} {r['seconds']:7.3f}s  {r[unit]:8.2f} {unit[:-6]}/s")
