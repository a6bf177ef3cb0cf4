"""Pickles: what a hostile one asks for is refused before it happens (no command runs, no file is opened,
truncated or deleted, nothing large is allocated), at every pickle protocol; and the Datasets and DataFrames
that datasets/pyarrow/pandas/numpy versions of the last years wrote (tests/fixtures/pickles) are read,
through `data.load` and through `loraclf predict`. docs/data.md, section Pickles."""
import copyreg
import csv
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, data
from loraclf.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "pickles"
LEGIT = sorted(FIXTURES.glob("*.pkl"))
TEXTS = ["football goal", "chip software", "war and peace"]
REFUSED = "the pickle wants"


# ------------------------------------------------------------------------------ crafting pickles

def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _global(module: str, name: str, protocol: int) -> bytes:
    if protocol >= 4:
        return _unicode(module) + _unicode(name) + b"\x93"  # STACK_GLOBAL: resolves dotted names
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _body(obj, protocol: int) -> bytes:
    """The opcodes that push obj (without PROTO and STOP), valid at `protocol`."""
    raw = pickle.dumps(obj, protocol=min(protocol, 3))
    return raw[2:-1] if protocol >= 2 else raw[:-1]


def call_pickle(module: str, name: str, args: tuple, protocol: int) -> bytes:
    """A pickle that calls module.name(*args) (REDUCE), spelled as the protocol spells a global."""
    head = b"\x80" + bytes([protocol]) if protocol >= 2 else b""
    return head + _global(module, name, protocol) + _body(args, protocol) + b"R."


class Call:
    """Pickles as fn(*args) (then BUILD with state): nested calls to real, importable functions."""
    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _newobj(cls, state):
    """An empty instance of cls given `state` (copyreg._reconstructor, then BUILD)."""
    return Call(copyreg._reconstructor, cls, object, None, state=state)


def newobj_pickle(module: str, name: str, args: tuple) -> bytes:
    """cls.__new__(cls, *args) by the NEWOBJ opcode."""
    return b"\x80\x04" + _global(module, name, 4) + _body(args, 4) + b"\x81."


# ------------------------------------------------------------------------------ refused, no side effect

def _targets(tmp_path):
    marker = tmp_path / "pwned"
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "f").write_text("x")
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(call_pickle("os", "system", (f"touch {marker}",), 2))
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return marker, target, victim, script, inner


# (module, name, args) given the paths: every one would run code, touch a file or import; all refused
CALLS = {
    "os.system": lambda m, t, v, s, i: ("os", "system", (f"touch {m}",)),
    "posix.system": lambda m, t, v, s, i: ("posix", "system", (f"touch {m}",)),
    "os.remove": lambda m, t, v, s, i: ("os", "remove", (str(t),)),
    "subprocess.Popen": lambda m, t, v, s, i: ("subprocess", "Popen", (["touch", str(m)],)),
    "subprocess.run": lambda m, t, v, s, i: ("subprocess", "run", (["touch", str(m)],)),
    "subprocess.check_call": lambda m, t, v, s, i: ("subprocess", "check_call", (["touch", str(m)],)),
    "builtins.eval": lambda m, t, v, s, i: ("builtins", "eval", (f"open({str(m)!r}, 'w')",)),
    "builtins.exec": lambda m, t, v, s, i: ("builtins", "exec", (f"open({str(m)!r}, 'w')",)),
    "builtins.compile": lambda m, t, v, s, i: ("builtins", "compile", ("1", "x", "eval")),
    "builtins.open": lambda m, t, v, s, i: ("builtins", "open", (str(t), "w")),
    "io.open": lambda m, t, v, s, i: ("io", "open", (str(t), "w")),
    "builtins.getattr": lambda m, t, v, s, i: ("builtins", "getattr", ("", "join")),
    "builtins.__import__": lambda m, t, v, s, i: ("builtins", "__import__", ("evil_module",)),
    "importlib.import_module": lambda m, t, v, s, i: ("importlib", "import_module", ("evil_module",)),
    "runpy.run_path": lambda m, t, v, s, i: ("runpy", "run_path", (str(s),)),
    "code.InteractiveInterpreter": lambda m, t, v, s, i: ("code", "InteractiveInterpreter", ()),
    "pickle.loads": lambda m, t, v, s, i: ("pickle", "loads", (i.read_bytes(),)),
    "shutil.rmtree": lambda m, t, v, s, i: ("shutil", "rmtree", (str(v),)),
    "sys.exit": lambda m, t, v, s, i: ("sys", "exit", (3,)),
    "a module that runs on import": lambda m, t, v, s, i: ("evil_module", "anything", ()),
    # dotted names, resolved attribute by attribute by a stock unpickler at protocol >= 4
    "dotted pandas.io.clipboard + subprocess.Popen": lambda m, t, v, s, i: ("pandas.io.clipboard", "subprocess.Popen",
                                                                            (["touch", str(m)],)),
    "dotted pandas + io.clipboard.subprocess.Popen": lambda m, t, v, s, i: ("pandas", "io.clipboard.subprocess.Popen",
                                                                            (["touch", str(m)],)),
    "dotted datasets.table + os.system": lambda m, t, v, s, i: ("datasets.table", "os.system", (f"touch {m}",)),
    "dotted numpy + core.multiarray._reconstruct": lambda m, t, v, s, i: ("numpy", "core.multiarray._reconstruct", ()),
    "dotted builtins + bytearray.fromhex": lambda m, t, v, s, i: ("builtins", "bytearray.fromhex", ("00",)),
    "a name with a line break": lambda m, t, v, s, i: ("os", "system\nx", (f"touch {m}",)),
    # file objects and readers inside admitted libraries
    "pyarrow OSFile truncating a file": lambda m, t, v, s, i: ("pyarrow.lib", "OSFile", (str(t), "w")),
    "pyarrow MemoryMappedFile": lambda m, t, v, s, i: ("pyarrow.lib", "MemoryMappedFile", (str(t), "r+")),
    "pyarrow.OSFile": lambda m, t, v, s, i: ("pyarrow", "OSFile", (str(t), "w")),
    "pandas.read_pickle": lambda m, t, v, s, i: ("pandas", "read_pickle", (str(i),)),
    "pandas.read_csv": lambda m, t, v, s, i: ("pandas", "read_csv", (str(t),)),
    "numpy.load": lambda m, t, v, s, i: ("numpy", "load", (str(i), None, True)),
    "numpy.fromfile": lambda m, t, v, s, i: ("numpy", "fromfile", (str(t),)),
    "datasets MemoryMappedTable.from_file": lambda m, t, v, s, i: ("datasets.table", "MemoryMappedTable", ()),
    "datasets load_from_disk": lambda m, t, v, s, i: ("datasets", "load_from_disk", (str(v),)),
}


def _refused_without_side_effect(tmp_path, raw: bytes, marker, target, victim):
    path = tmp_path / "hostile.pkl"
    path.write_bytes(raw)
    with pytest.raises(UserError) as e:
        data.load(path, labelled=False)
    assert REFUSED in str(e.value) and "--trust-pickle" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not marker.exists(), "the pickle ran code"
    assert target.read_text() == "keep me", "the pickle truncated or removed a file"
    assert (victim / "f").exists(), "the pickle removed a folder"
    assert "evil_module" not in sys.modules


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("case", list(CALLS))
def test_calls_outside_the_allow_list_are_refused_unrun(tmp_path, monkeypatch, case, protocol):
    monkeypatch.syspath_prepend(str(tmp_path))
    marker, target, victim, script, inner = _targets(tmp_path)
    module, name, args = CALLS[case](marker, target, victim, script, inner)
    _refused_without_side_effect(tmp_path, call_pickle(module, name, args, protocol), marker, target, victim)


def _structures(marker, target):
    """Admitted names used the wrong way: a state that is a file path, calls on non-functions, old opcodes."""
    import datasets
    import pandas as pd
    from datasets.table import InMemoryTable
    ds = datasets.Dataset.from_dict({"text": ["a"]})  # kept alive: Dataset.__del__ empties its __dict__
    ds_state = dict(ds.__dict__)
    return {
        "InMemoryTable state that is a file path (datasets 2 removed it)": pickle.dumps(
            _newobj(InMemoryTable, {"path": str(target)})),
        "ConcatenationTable of file-backed blocks": pickle.dumps(_newobj(datasets.table.ConcatenationTable, {
            "blocks": [[_newobj(InMemoryTable, {"path": str(target), "replays": []})]], "schema": None})),
        "Dataset with a search index": pickle.dumps(_newobj(datasets.Dataset, {**ds_state, "_indexes": {"x": 1}})),
        "Dataset state setting __class__": pickle.dumps(_newobj(datasets.Dataset, {**ds_state, "__class__": dict})),
        "Dataset made with arguments": newobj_pickle("datasets.arrow_dataset", "Dataset", (ds_state["_data"],)),
        "DataFrame called with a file name": b"\x80\x04" + _global("pandas", "DataFrame", 4) + _body((str(target),), 4) + b"R.",
        "setting an item of a DataFrame": b"\x80\x04" + _global("pandas", "DataFrame", 4) + b")\x81"
                                          + _unicode("a") + _unicode("b") + b"s.",
        "appending to a pyarrow buffer": b"\x80\x04" + _global("pyarrow.lib", "py_buffer", 4) + _body((b"x",), 4)
                                         + b"R" + _unicode("b") + b"a.",
        "calling the result of a call": b"\x80\x04" + _global("builtins", "slice", 4) + _body((1,), 4) + b"R"
                                        + _body((1,), 4) + b"R.",
        "INST opcode": f"(S'touch {marker}'\nios\nsystem\n.".encode(),
        "OBJ opcode with an admitted class": b"(cpandas\nDataFrame\no.",
        "persistent id": b"Pfile\n.",
        "BUILD on a numpy dtype with fields": pickle.dumps(Call(np.dtype, "i8", False, True,
                                                               state=(3, "|", None, ("a",), {"a": (1, 0)}, 8, 1, 16))),
        "pandas Index of a file": pickle.dumps(Call(pd.core.indexes.base._new_Index, pd.Index, {"data": str(target)})),
        "state for numpy's shared int64 dtype": pickle.dumps(Call(np.dtype, "i8", False, False,
                                                                  state=(3, ">", None, None, None, -1, -1, 0))),
        "state for a numpy array twice": b"\x80\x02" + _global("numpy.core.multiarray", "_reconstruct", 2)
                                         + _body((np.ndarray, (0,), b"b"), 2) + b"R"
                                         + _body((1, (1,), np.dtype("f8"), False, b"\0" * 8), 2) + b"b"
                                         + _body((1, (4,), np.dtype("f8"), False, b"\0" * 32), 2) + b"b.",
    }


STRUCTURES = ["InMemoryTable state that is a file path (datasets 2 removed it)", "ConcatenationTable of file-backed blocks",
              "Dataset with a search index", "Dataset state setting __class__", "Dataset made with arguments",
              "DataFrame called with a file name", "setting an item of a DataFrame", "appending to a pyarrow buffer",
              "calling the result of a call", "INST opcode", "OBJ opcode with an admitted class", "persistent id",
              "BUILD on a numpy dtype with fields", "pandas Index of a file", "state for numpy's shared int64 dtype",
              "state for a numpy array twice"]


@pytest.mark.parametrize("case", STRUCTURES)
def test_admitted_names_used_the_wrong_way_are_refused(tmp_path, case):
    marker, target, victim, *_ = _targets(tmp_path)
    _refused_without_side_effect(tmp_path, _structures(marker, target)[case], marker, target, victim)
    assert np.dtype("i8").byteorder == "=" and np.dtype("i8").isnative


# ------------------------------------------------------------------------------ allocation bombs

def _bombs():
    import pandas as pd
    import pyarrow as pa
    from numpy._core import multiarray, numeric
    i64, f8, obj = pa.int64(), np.dtype("f8"), np.dtype("O")
    empty = (np.ndarray, (0,), b"b")
    return {
        "bytearray of a size": pickle.dumps(Call(bytearray, 3 * 10**9), protocol=2),
        "bytearray of a size (protocol 5)": pickle.dumps(Call(bytearray, 3 * 10**9), protocol=5),
        "numpy frombuffer with a shape larger than its bytes": pickle.dumps(
            Call(numeric._frombuffer, b"", f8, (10**5, 10**5), "C"), protocol=5),
        "numpy array state larger than its bytes": pickle.dumps(
            Call(multiarray._reconstruct, *empty, state=(1, (3 * 10**8,), f8, False, b""))),
        "numpy object array larger than its items": pickle.dumps(
            Call(multiarray._reconstruct, *empty, state=(1, (3 * 10**8,), obj, False, []))),
        "numpy array made with a shape": newobj_pickle("numpy", "ndarray", ((3 * 10**8,),)),
        "numpy frombuffer with object dtype": pickle.dumps(Call(numeric._frombuffer, b"\0" * 8, obj, (1,), "C"), protocol=5),
        "pyarrow array longer than its buffer": pickle.dumps(Call(pa.lib._restore_array, (
            i64, 3 * 10**8, 0, 0, [None, Call(pa.py_buffer, b"\0" * 8)], [], None))),
        "pyarrow null array of 10^12 rows": pickle.dumps(Call(pa.lib._restore_array, (pa.null(), 10**12, 10**12, 0, [None], [], None))),
        "pyarrow string offsets past the data": pickle.dumps(Call(pa.lib._restore_array, (
            pa.string(), 1, 0, 0, [None, Call(pa.py_buffer, np.array([0, 10**9], "i4").tobytes()),
                                   Call(pa.py_buffer, b"ab")], [], None))),
        "pandas RangeIndex of 10^13 rows": pickle.dumps(Call(pd.core.indexes.base._new_Index, pd.RangeIndex,
                                                             {"start": 0, "stop": 10**13, "step": 1, "name": None})),
        "pandas block placement of 10^12 columns": pickle.dumps(Call(
            __import__("pandas._libs.internals", fromlist=["_unpickle_block"])._unpickle_block,
            np.zeros((1, 1)), slice(0, 10**12, 1), 2)),
        "BINBYTES8 claiming a terabyte": b"\x80\x05\x8e" + (2**40).to_bytes(8, "little") + b"abc.",
        "BYTEARRAY8 claiming a terabyte": b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"abc.",
    }


BOMBS = ["bytearray of a size", "bytearray of a size (protocol 5)", "numpy frombuffer with a shape larger than its bytes",
         "numpy array state larger than its bytes", "numpy object array larger than its items", "numpy array made with a shape",
         "numpy frombuffer with object dtype", "pyarrow array longer than its buffer", "pyarrow null array of 10^12 rows",
         "pyarrow string offsets past the data", "pandas RangeIndex of 10^13 rows", "pandas block placement of 10^12 columns",
         "BINBYTES8 claiming a terabyte", "BYTEARRAY8 claiming a terabyte"]

# Loads each file in a child process whose address space is capped at 1 GiB above what the libraries use:
# a pickle that allocated what it asks for would end in MemoryError (or worse), not in a refusal.
_CAPPED = textwrap.dedent("""
    import resource, sys
    import datasets, numpy, pandas, pyarrow
    from loraclf import data
    from loraclf.errors import UserError
    pyarrow.array([1, 2]).to_pylist()
    vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
    for path in sys.argv[1:]:
        try:
            data.load(path, labelled=False)
            print('LOADED', flush=True)
        except UserError as e:
            print('ERROR', str(e).replace(chr(10), ' '), flush=True)
        except BaseException as e:
            print('CRASH', type(e).__name__, flush=True)
""")


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    made = _bombs()
    paths = []
    for i, case in enumerate(BOMBS):
        paths.append(folder / f"bomb{i}.pkl")
        paths[-1].write_bytes(made[case])
    src = str(Path(data.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _CAPPED, *map(str, paths)], capture_output=True, text=True, env=env,
                         timeout=600)
    lines = out.stdout.splitlines()
    assert len(lines) == len(BOMBS), out.stdout + out.stderr[-2000:]
    return dict(zip(BOMBS, lines))


@pytest.mark.parametrize("case", BOMBS)
def test_allocation_bombs_are_refused_before_allocating(bomb_results, case):
    line = bomb_results[case]
    assert line.startswith("ERROR") and "MemoryError" not in line, line
    if "claiming a terabyte" not in case:  # those are simply truncated files
        assert REFUSED in line, line


# ------------------------------------------------------------------------------ real pickles are read

def _expected(path: Path):
    parts = path.stem.split("-")
    return "-".join(parts[4:-1]), int(parts[-1][1:])


@pytest.mark.parametrize("path", LEGIT, ids=[p.stem for p in LEGIT])
def test_real_pickles_from_several_library_versions_load(path):
    shape, protocol = _expected(path)
    assert 2 <= protocol <= 5
    ex = data.load(path, labelled=False, label_names=LABELS if shape == "ds-loaded" else ())
    assert ex.texts == TEXTS
    if shape in ("ds-label", "ds-loaded"):  # names from the ClassLabel or from the caller
        assert ex.labels == [1, 3, 0] and ex.label_names == LABELS
    elif shape == "df":  # labels 1, 3, 0 without names: the classes are those numbers
        assert ex.labels == [1, 2, 0] and ex.label_names == ["0", "1", "3"]
    else:
        assert ex.labels is None
    # a DataFrame's own row labels are its ids: an `id` column, else an index that is not 0..n-1
    assert ex.ids == {"df": [10, 11, 12], "df-index": [7, 3, 5]}.get(shape)


def test_the_fixtures_cover_versions_shapes_and_protocols():
    shapes = {_expected(p)[0] for p in LEGIT}
    tags = {"-".join(p.stem.split("-")[:4]) for p in LEGIT}
    assert shapes == {"ds-text", "ds-label", "ds-concat", "ds-loaded", "df", "df-index"}
    assert {_expected(p)[1] for p in LEGIT} == {2, 3, 4, 5} and len(tags) >= 4
    assert len(LEGIT) == len(shapes) * len(tags) * 4
    assert all(p.stat().st_size < 8192 for p in LEGIT)


def test_trust_pickle_still_reads_with_plain_pickle(tmp_path, monkeypatch):
    from loraclf import safepickle
    monkeypatch.setattr(safepickle, "loads", lambda raw: pytest.fail("--trust-pickle must not use the allow-list"))
    path = next(p for p in LEGIT if "ds5" in p.name and "ds-text" in p.name)
    assert data.load(path, labelled=False, trust_pickle=True).texts == TEXTS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-pickle"), tiny_bert)


PREDICTED = [p for p in LEGIT if _expected(p)[1] == 5 or _expected(p)[0] == "ds-text"]


@pytest.mark.parametrize("path", PREDICTED, ids=[p.stem for p in PREDICTED])
def test_real_pickles_are_predict_input(tmp_path, tiny_run, path):
    out = tmp_path / "submission.csv"
    assert cli.main(["predict", str(tiny_run), str(path), "-o", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    ids = {"df": ["10", "11", "12"], "df-index": ["7", "3", "5"]}.get(_expected(path)[0], ["0", "1", "2"])
    assert rows[0] == ["ID", "Label"] and [r[0] for r in rows[1:]] == ids


@pytest.mark.parametrize("case", ["dotted pandas.io.clipboard + subprocess.Popen", "pyarrow OSFile truncating a file"])
def test_hostile_predict_input_is_refused_unrun(tmp_path, capsys, tiny_run, case):
    marker, target, victim, script, inner = _targets(tmp_path)
    path = tmp_path / "test_unlabelled.pkl"
    path.write_bytes(call_pickle(*CALLS[case](marker, target, victim, script, inner), 4))
    out = tmp_path / "submission.csv"
    assert cli.main(["predict", str(tiny_run), str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not marker.exists() and target.read_text() == "keep me" and not out.exists()


@pytest.mark.parametrize("seed", range(4))
def test_damaged_real_pickles_end_in_one_clean_error(tmp_path, seed):
    """Real pickles with bytes flipped, cut, repeated or dropped: each loads, or ends in a UserError (refused
    or corrupt), never another exception."""
    import random
    rng = random.Random(seed)
    path = tmp_path / "damaged.pkl"
    for _ in range(60):
        raw = bytearray(rng.choice(LEGIT).read_bytes())
        i, j = rng.randrange(len(raw)), rng.randrange(len(raw))
        kind = rng.randrange(4)
        if kind == 0:
            raw[i] = rng.randrange(256)
        elif kind == 1:
            del raw[i:]
        elif kind == 2:
            raw[i:i] = raw[j:j + rng.randint(1, 30)]
        else:
            del raw[i:i + rng.randint(1, 20)]
        path.write_bytes(bytes(raw))
        try:
            data.load(path, labelled=False)
        except UserError as e:
            assert "MemoryError" not in str(e)


@pytest.mark.parametrize("protocol", range(6))
def test_pickles_of_the_installed_versions_load_at_every_protocol(tmp_path, protocol):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for shape, obj in make.shapes():
        path = tmp_path / f"{shape}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert data.load(path, labelled=False, label_names=LABELS if shape == "ds-loaded" else ()).texts == TEXTS
