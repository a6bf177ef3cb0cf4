"""What the benchmark measures with: FLOPs per token, matmul peaks, memory, timing, the machine."""
from __future__ import annotations

import os
import platform
import resource
import socket
import statistics
import sys
import time
from pathlib import Path


def non_embedding_params(model) -> int:
    """N: every parameter except token/position embeddings (nn.Embedding) and the classification head
    (which runs once per sequence, not per token). LoRA matrices count: they run for every token."""
    import torch
    from loraclf.model import HEAD_NAMES
    skip = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, torch.nn.Embedding) or any(p in HEAD_NAMES for p in parts):
            skip.update(id(p) for p in module.parameters(recurse=True))
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def train_flops_per_token(n: int) -> int:
    """2N forward + 2N backward to the inputs of frozen layers (LoRA weight gradients are negligible)."""
    return 4 * n


def infer_flops_per_token(n: int) -> int:
    """2N forward."""
    return 2 * n


def matmul_peak(dtype: str = "fp32", size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Median FLOP/s of a square matmul in this dtype (bf16 on CPU without native units is emulated)."""
    import torch
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(size, size, device=device).to(dt)
    b = torch.randn(size, size, device=device).to(dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    inner = 3 if device == "cpu" else 50
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        rates.append(2 * size ** 3 * inner / (time.perf_counter() - t))
    return statistics.median(rates)


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def current_rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        return float("nan")


def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warmup call."""
    fn()  # warmup
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def machine() -> dict:
    import accelerate
    import peft
    import torch
    import transformers
    from loraclf.precision import cpu_has_native_bf16, cpu_kind
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_kind": cpu_kind(), "native_bf16": cpu_has_native_bf16(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__,
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
