"""Caching the frozen lower layers' outputs across epochs (`train.cache_frozen_layers`).

When every trainable parameter sits at or above encoder layer k (adapters on upper layers only, `adapter.layers`),
the embeddings and layers 0..k-1 compute the same thing for a text in every epoch, provided they have no dropout.
So `fit` keeps layer k-1's output for each text from the first training forward that computes it, and every
later forward over a batch whose texts are all kept starts at layer k from those copies. The first epoch costs
what it did; each later one saves the lower layers' forward: with adapters on the top 4 of roberta-base's 12
layers, two thirds of the forward.

The kept values are exactly what the first epoch's forwards computed. Recomputing them in another epoch would
give the same values up to rounding (a text's padding and the texts beside it change the order of some sums).
They are kept in the residual stream's dtype (fp32 under autocast), on the CPU: tokens x hidden x 4 bytes.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from . import fastpath
from .errors import UserError

# the most the kept outputs may take: auto, a quarter of the machine's memory and half of what is available now;
# on, half of what is available. A larger cache is skipped (auto) or refused (on).
AUTO_OF_TOTAL, OF_AVAILABLE = 0.25, 0.5


def _identity_layer(hidden_states, *args, **kwargs):
    return hidden_states


def encoder_parts(model):
    """(embeddings, encoder layers) of a BERT-family classifier (fastpath.bert_family_layers), else None."""
    found = fastpath.bert_family_layers(model)
    embeddings = getattr(found[0], "embeddings", None) if found else None
    return (embeddings, found[1]) if embeddings is not None else None


def lowest_trainable_layer(embeddings, layers) -> int:
    """Index of the lowest encoder layer with a trainable parameter (0 also when the embeddings train;
    len(layers) when only the head does)."""
    if any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


def _dropout_in(modules) -> float:
    return max((m.p for part in modules for m in part.modules() if isinstance(m, torch.nn.Dropout)), default=0.0)


def memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) memory in bytes: /proc/meminfo's MemTotal and MemAvailable (free memory plus what the
    page cache would give back), else sysconf's physical and free pages, else (None, None)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, None


def plan(model, choice: str, n_tokens: int, world: int = 1, log=print) -> int:
    """How many lower layers to cache (0: none) for `train.cache_frozen_layers` = choice. auto caches where it
    changes nothing but rounding: single process, every trainable parameter above layer 0, no dropout in the
    cached layers, and the cache within AUTO_OF_TOTAL of memory and OF_AVAILABLE of what is available. on also
    runs cached layers that have dropout without it, and says why where it cannot cache at all."""
    if choice == "off":
        return 0
    on = choice == "on"

    def skip(why: str, what_to_do: str) -> int:
        if on:
            raise UserError(f"train.cache_frozen_layers=on: {why}", what_to_do)
        return 0
    if world > 1:
        return skip("caching runs in a single process only", "train in one process, or set train.cache_frozen_layers=auto")
    parts = encoder_parts(model)
    if parts is None:
        return skip("this model's layers are not ones loraclf can start a forward in the middle of (BERT-family "
                    "classifiers on transformers 5)", "set train.cache_frozen_layers=auto or off")
    embeddings, layers = parts
    k = lowest_trainable_layer(embeddings, layers)
    if k == 0:
        return skip("the lowest encoder layer (or the embeddings) trains, so no layer's output stays fixed",
                    "put the adapters on upper layers only (e.g. --set adapter.layers=8,9,10,11), or set it to auto")
    p = _dropout_in([embeddings, *layers[:k]])
    if p > 0 and not on:
        log(f"note: frozen layers 0-{k - 1} are recomputed every epoch because they have dropout (p={p:g}); "
            "train.cache_frozen_layers=on caches their outputs and runs them without it")
        return 0
    hidden = fastpath.transformers_model(model).config.hidden_size
    need, (total, available) = n_tokens * hidden * 4, memory_bytes()
    if total is not None:
        limit = OF_AVAILABLE * available if on else min(AUTO_OF_TOTAL * total, OF_AVAILABLE * available)
        if need > limit:
            if on:
                raise UserError(f"train.cache_frozen_layers=on: the outputs of layers 0-{k - 1} for {n_tokens:,} tokens "
                                f"need {need / 2**30:.1f} GiB, more than half of the {available / 2**30:.1f} GiB of "
                                "memory available now", "train on fewer rows (data.max_train_samples), shorter texts "
                                "(data.max_length), or set it to auto or off")
            log(f"note: frozen layers 0-{k - 1} are recomputed every epoch: keeping their outputs for {n_tokens:,} "
                f"tokens would take {need / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB allowed here")
            return 0
    if p > 0:
        log(f"note: frozen layers 0-{k - 1} run without their dropout (p={p:g}): train.cache_frozen_layers=on")
    return k


@contextlib.contextmanager
def _layers_replaced(modules, forward):
    """Each module's forward replaced by `forward` (a plain function, called without the module) inside the
    block; an instance-level forward already set (fastpath.cls_only_last_layer's) is put back after."""
    saved = [(m, vars(m).get("forward")) for m in modules]
    for m in modules:
        m.forward = forward
    try:
        yield
    finally:
        for m, before in saved:
            if before is None:
                del m.forward
            else:
                m.forward = before


class FrozenLayerCache:
    """Layer k-1's output for the rows of one training set, filled by the training forwards themselves."""

    def __init__(self, model, k: int, lengths: np.ndarray):
        self.embeddings, self.layers = encoder_parts(model)
        self.k = k
        # where layer k-1 is fastpath.cls_only_last_layer's last layer, it gives one row a text
        first_only = k == len(self.layers) and "forward" in vars(self.layers[-1])
        self.stored = np.ones_like(lengths) if first_only else np.asarray(lengths).copy()
        self.offsets = np.concatenate([[0], np.cumsum(self.stored)])
        self.kept = np.zeros(len(lengths), dtype=bool)
        self.flat = None  # [tokens, hidden], allocated at the first forward in the dtype the layers give

    @property
    def nbytes(self) -> int:
        return 0 if self.flat is None else self.flat.numel() * self.flat.element_size()

    def forward_for(self, index: list[int], width: int, device):
        """The context for one training forward over the batch `index` (padded to `width`): one that starts at
        layer k when every row is kept (feeding), else one that keeps what layer k-1 gives (keeping)."""
        return self.feeding(index, width, device) if self.kept[index].all() else self.keeping(index)

    @contextlib.contextmanager
    def keeping(self, index: list[int]):
        def keep(module, args, out):
            h = out.detach().cpu()
            if self.flat is None:
                self.flat = torch.empty(int(self.offsets[-1]), h.shape[-1], dtype=h.dtype)
            for j, i in enumerate(index):
                self.flat[self.offsets[i]: self.offsets[i + 1]] = h[j, : self.stored[i]]
            self.kept[index] = True
        hook = self.layers[self.k - 1].register_forward_hook(keep)
        try:
            yield
        finally:
            hook.remove()

    def hidden_states(self, index: list[int], width: int, device) -> torch.Tensor:
        """[rows, width, hidden]: the kept rows, zeros in the padding (masked out of attention)."""
        out = torch.zeros(len(index), width, self.flat.shape[1], dtype=self.flat.dtype)
        for j, i in enumerate(index):
            out[j, : self.stored[i]] = self.flat[self.offsets[i]: self.offsets[i + 1]]
        return out.to(device, non_blocking=True)

    @contextlib.contextmanager
    def feeding(self, index: list[int], width: int, device):
        """Inside the block a forward over the batch `index` starts at layer k: the embeddings return the kept
        states and layers 0..k-1 pass them through."""
        states = self.hidden_states(index, width, device)
        with _layers_replaced([self.embeddings], lambda *a, **kw: states), \
                _layers_replaced(list(self.layers[: self.k]), _identity_layer):
            yield
