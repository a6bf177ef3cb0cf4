"""`loraclf serve`: request parsing and limits, micro-batching, a broken request never kills the server, a
load test (16 clients, 2,000 requests, loopback only, bounded in time), and SIGTERM draining in-flight requests."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, export, scoring, serve

LOAD_CLIENTS, LOAD_REQUESTS, LOAD_TIMEOUT_S = 16, 2000, 180
LOAD_THREADS = os.environ.get("LORACLF_SERVE_THREADS", "1")  # one intra-op thread: fastest for the tiny model


# ------------------------------------------------------------------------------------------ helpers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m loraclf.cli serve PATH` in a subprocess on a free loopback port."""

    def __init__(self, path, *extra, tmp: Path):
        self.port = _free_port()
        self.log_path = tmp / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "loraclf.cli", "serve", str(path), "--host", "127.0.0.1",
                                      "--port", str(self.port), *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not up after 120 s:\n{self.output()}"
            time.sleep(0.2)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def request(self, method: str, path: str, body: bytes | None = None, headers=None, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, json.loads(data) if data else None
        finally:
            if conn is None:
                c.close()

    def get(self, path):
        return self.request("GET", path)

    def predict(self, texts, conn=None):
        return self.request("POST", "/predict", json.dumps({"texts": texts}).encode(),
                            {"Content-Type": "application/json"}, conn)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    # head=full: the sharpened export below rebuilds the head on the frozen pretrained pooler's output
    return train_tiny_run(tmp_path_factory.mktemp("serve"), tiny_bert, "model.head=full")


@pytest.fixture(scope="module")
def run_server(tiny_run, tmp_path_factory):
    s = Server(tiny_run, "--max-texts", "8", "--max-chars", "200", tmp=tmp_path_factory.mktemp("srv"))
    yield s
    assert s.stop() == 0, s.output()


def _expected(run_dir, texts):
    model, tok, cfg, _ = scoring.load_for_inference(run_dir)
    return scoring.softmax(scoring.logits_for(model, tok, texts, cfg.data.max_length))


# ------------------------------------------------------------------------------------------ unit

def test_parse_request_limits_and_types():
    assert serve.parse_request(b'{"texts": ["a", ""], "extra": 1}', 4, 10) == ["a", ""]
    cases = [(b"{nope", 422, "not valid JSON"), (b"", 422, "not valid JSON"), (b"[]", 422, "JSON object"),
             (b'{"text": ["a"]}', 422, "JSON object"), (b'{"texts": "a"}', 422, "list of strings"),
             (b'{"texts": []}', 422, "empty"), (b'{"texts": ["a", 3]}', 422, '"texts"[1] is a number'),
             (b'{"texts": ["a", null]}', 422, "null"), (b'{"texts": ["a","b","c","d","e"]}', 413, "limit is 4"),
             (b'{"texts": ["0123456789x"]}', 413, "11 characters"), (b'{"texts": ["\\ud800"]}', 422, "Unicode"),
             (b"\xff\xfe", 422, "not valid JSON")]
    for body, status, msg in cases:
        with pytest.raises(serve.RequestError) as e:
            serve.parse_request(body, 4, 10)
        assert e.value.status == status and msg in e.value.message, (body, e.value.message)


def test_batcher_merges_requests_and_isolates_failures():
    calls = []
    gate = threading.Event()

    def fn(texts):
        gate.wait(5)
        calls.append(list(texts))
        if any(t == "boom" for t in texts):
            raise ValueError("bad text")
        return np.array([[len(t), 0.0] for t in texts])

    b = serve.Batcher(fn, max_batch=100, max_wait_ms=50)
    futs = [b.submit(["x" * i, "y"]) for i in range(6)] + [b.submit(["boom"])] + [b.submit(["zz"])]
    gate.set()
    for i, f in enumerate(futs[:6]):
        assert f.result(10)[:, 0].tolist() == [i, 1]
    with pytest.raises(ValueError):
        futs[6].result(10)
    assert futs[7].result(10)[:, 0].tolist() == [2]
    assert len(calls[0]) == 14  # one forward pass for every request that was waiting
    assert b.stats["errors"] == 1 and b.stats["requests"] == 7
    b.close()


# ------------------------------------------------------------------------------------------ server

def test_health_info_and_predict(run_server, tiny_run):
    assert run_server.get("/health") == (200, {"status": "ok"})
    status, info = run_server.get("/info")
    assert status == 200 and info["labels"] == LABELS and info["kind"] == "run"
    assert info["budget"]["trainable"] == json.loads((tiny_run / "budget.json").read_text())["trainable"]
    assert info["model"] and info["limits"] == {"max_texts": 8, "max_chars": 200, "max_body_bytes": info["limits"]["max_body_bytes"]}
    texts = ["football match goal", "stocks market profit", "software chip", "élection ☃ 中文"]
    status, r = run_server.predict(texts)
    assert status == 200 and set(r) == {"labels", "names", "probabilities"}
    want = _expected(tiny_run, texts)
    np.testing.assert_allclose(np.array(r["probabilities"]), want, atol=1e-5)
    assert r["labels"] == want.argmax(-1).tolist() and r["names"] == [LABELS[i] for i in r["labels"]]


def test_limits_and_broken_requests_get_json_errors(run_server):
    bad = [(b'{"texts": ["a"] ', 422), (b'{"texts": [1]}', 422), (b'{"texts": {"a": 1}}', 422), (b"null", 422),
           (json.dumps({"texts": ["a"] * 9}).encode(), 413), (json.dumps({"texts": ["a" * 201]}).encode(), 413),
           (b"x" * 2_000_000, 413), (b"\x00\xff" * 10, 422)]
    for body, status in bad:
        got, r = run_server.request("POST", "/predict", body, {"Content-Type": "application/json"})
        assert got == status and isinstance(r, dict) and r["error"], (body[:40], got, r)
    assert run_server.get("/nope")[0] == 404 and run_server.get("/nope")[1]["error"]
    assert run_server.get("/predict")[0] == 405
    # a client that lies about the body size, or hangs up mid-request, does not hurt the server
    with socket.create_connection(("127.0.0.1", run_server.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"texts\": [")
    with socket.create_connection(("127.0.0.1", run_server.port), timeout=10) as s:
        s.sendall(b"GARBAGE / NOT-HTTP\r\n\r\n")
        s.recv(1000)
    assert run_server.predict(["still alive"])[0] == 200
    assert run_server.proc.poll() is None


def _load_requests() -> list[list[str]]:
    """Distinct inputs for the load test: 1 to 3 texts per request, every text different."""
    rng = np.random.default_rng(0)
    vocab = ("market stocks football goal election minister chip software rain storm court judge film music oil "
             "price bank rate cup team vote war space rocket phone data city police school health").split()
    return [[f"{' '.join(rng.choice(vocab, rng.integers(2, 12)))} #{i}.{j}" for j in range(int(rng.integers(1, 4)))]
            for i in range(LOAD_REQUESTS)]


@pytest.fixture(scope="module")
def sharp_export(tiny_run, tmp_path_factory):
    """A merged export with a new head that spreads the (random, near-identical) pooled outputs of the tiny model
    over all classes, so different inputs get clearly different answers and labels: a mix-up between clients'
    requests cannot go unnoticed."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    out = export.export_merged(tiny_run, tmp_path_factory.mktemp("sharp") / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    texts = [t for r in _load_requests()[:300] for t in r]
    enc = AutoTokenizer.from_pretrained(str(out))(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        torch.manual_seed(0)
        w = torch.randn(len(LABELS), pooled.shape[1])
        centred = (pooled - pooled.mean(0)) @ w.T
        scale = 3 / centred.std(0)
        model.classifier.weight.copy_(w * scale[:, None])
        model.classifier.bias.copy_(-(pooled.mean(0) @ w.T) * scale)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _expected_from_export(path, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    # fp32 on both sides: on a CPU with native bf16, precision=auto means bf16, whose rounding differs with
    # each batch's padding by more than the tolerance below
    return scoring.softmax(scoring.logits_for(model, AutoTokenizer.from_pretrained(str(path)), texts, 32,
                                              precision="fp32"))


def test_load_16_clients_2000_requests(sharp_export, tmp_path):
    reqs = _load_requests()
    flat = [t for r in reqs for t in r]
    want = _expected_from_export(sharp_export, flat)
    assert len(set(want.argmax(-1).tolist())) == len(LABELS)  # the answers differ between inputs: a response
    assert np.median(np.abs(want - np.roll(want, 1, 0)).max(1)) > 0.05  # for another input would not pass as its own
    offsets = np.cumsum([0] + [len(r) for r in reqs])

    server = Server(sharp_export, "--threads", LOAD_THREADS, "--precision", "fp32", tmp=tmp_path)
    results, errors, latencies = {}, [], []
    lock = threading.Lock()
    next_index = iter(range(LOAD_REQUESTS))
    deadline = time.monotonic() + LOAD_TIMEOUT_S

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # keep-alive connection
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t = time.perf_counter()
            try:
                status, r = server.predict(reqs[i], conn)
            except (OSError, http.client.HTTPException, ValueError) as e:
                with lock:
                    errors.append(f"request {i}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                continue
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                if status != 200:
                    errors.append(f"request {i}: HTTP {status} {r}")
                results[i] = r
        conn.close()

    try:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(LOAD_TIMEOUT_S + 60)
        wall = time.perf_counter() - t0
        info = server.get("/info")[1]
    finally:
        rc = server.stop()
    assert not errors, errors[:5]
    assert len(results) == LOAD_REQUESTS, f"only {len(results)} of {LOAD_REQUESTS} requests done in {LOAD_TIMEOUT_S} s"
    wrong = []
    for i, r in results.items():
        exp = want[offsets[i]: offsets[i + 1]]
        got = np.array(r["probabilities"])
        # the sharpened head magnifies float noise from different batch padding to ~1e-4; allow 1e-3
        top2 = np.sort(exp, 1)[:, -2:]
        tie = (top2[:, 1] - top2[:, 0]) < 2e-3
        if got.shape != exp.shape or not np.allclose(got, exp, atol=1e-3) or \
                not all(t or g == e for g, e, t in zip(r["labels"], exp.argmax(-1).tolist(), tie)):
            wrong.append(i)
    assert not wrong, f"{len(wrong)} responses do not match their own input, e.g. request {wrong[0]}"
    assert rc == 0, server.output()
    lat = np.array(latencies) * 1000
    b = info["batching"]
    print(f"\nload test ({LOAD_THREADS} thread(s)): {LOAD_CLIENTS} clients, {LOAD_REQUESTS} requests ({len(flat)} texts), 0 errors, "
          f"{LOAD_REQUESTS / wall:.0f} requests/s ({len(flat) / wall:.0f} texts/s), "
          f"latency p50 {np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms, "
          f"{b['batches']} forward passes (mean {b['texts'] / max(b['batches'], 1):.1f} texts, largest {b['largest_batch']})")
    assert b["batches"] < b["requests"]  # requests from different clients shared forward passes


def test_sigterm_drains_in_flight_request_then_exits_0(tiny_run, tmp_path):
    """An ONNX export, served with a long micro-batch wait so a request is surely in flight at SIGTERM."""
    onnx = export.export_onnx(tiny_run, tmp_path / "onnx", exporter="legacy")
    server = Server(onnx, "--max-wait-ms", "3000", "--max-batch", "1000", tmp=tmp_path)
    assert server.get("/info")[1]["backend"] == "onnxruntime"
    box = {}

    def slow():
        t = time.perf_counter()
        box["answer"] = server.predict(["football match goal", "stocks"])
        box["seconds"] = time.perf_counter() - t
    th = threading.Thread(target=slow)
    th.start()
    time.sleep(1.0)  # the request now waits in the batcher
    server.proc.send_signal(signal.SIGTERM)
    th.join(30)
    # wait for the exit the SIGTERM above asked for: stop() would send a second SIGTERM to a process still in its
    # interpreter teardown, after serve put the default handler back, and that one ends it with -15
    server.proc.wait(60)
    rc = server.stop()
    status, r = box["answer"]
    assert status == 200 and len(r["labels"]) == 2 and box["seconds"] > 2
    np.testing.assert_allclose(np.array(r["probabilities"]),
                               scoring.softmax(export.onnx_logits(onnx, ["football match goal", "stocks"])), atol=1e-6)
    assert rc == 0, server.output()
    assert "server stopped" in server.output() or rc == 0


def test_serve_errors(tmp_path, tiny_run):
    from loraclf.errors import UserError
    with pytest.raises(UserError, match="does not exist"):
        scoring.load_predictor(tmp_path / "missing")
    with pytest.raises(UserError, match="not a run directory"):
        scoring.load_predictor(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert cli.main(["serve", str(tiny_run), "--port", str(s.getsockname()[1])]) == 2  # port in use: one line, exit 2
    assert cli.main(["serve", str(tiny_run), "--max-texts", "0"]) == 2
