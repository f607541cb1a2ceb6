"""Torch vs ONNX verdict of every transformer of tests/realzoo.py (issue 14): each model exported
the way a user would (``torch.onnx.export(model, (), f, kwargs=inputs, dynamo=True)``, a batch of 4
of the zoo's probe inputs), then ``initdoctor.diagnose(f, probe=True)``. Run from the repository
root: ``PYTHONPATH=$PWD python benchmarks/verdict_onnx.py [NAME ...] [--dir DIR]`` (exports are
cached in DIR, default a temporary folder). Columns: model, healthy/broken, torch status/rule,
ONNX status/rule, culprit named in ONNX, export and inspect seconds, ONNX message."""

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, ".")
warnings.filterwarnings("ignore")
import initdoctor  # noqa: E402
from tests.realzoo import MATRIX, export_onnx, named_errors  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--")]
folder = Path(sys.argv[sys.argv.index("--dir") + 1]) if "--dir" in sys.argv else Path(tempfile.mkdtemp())
if "--dir" in sys.argv:
    args.remove(str(folder))
for e in MATRIX:
    if e.inputs == "image" or (args and e.name not in args):
        continue
    t0 = time.time()
    try:
        path = export_onnx(e, folder)
    except Exception as exc:  # noqa: BLE001
        print(f"{e.name:18} EXPORT-CRASH {type(exc).__name__}: {exc}"[:250], flush=True)
        continue
    ts = initdoctor.diagnose(e.factory, probe=True).summary
    t1 = time.time()
    try:
        r = initdoctor.diagnose(path, probe=True)
    except Exception as exc:  # noqa: BLE001
        print(f"{e.name:18} CRASH {type(exc).__name__}: {exc}"[:250], flush=True)
        continue
    s = r.summary
    named = named_errors(r)
    hit = (not e.culprits) or any(n.startswith(c) for n in named for c in e.culprits)
    kind = "healthy" if e.healthy else "broken "
    print(
        f"{e.name:18} {kind} torch {ts.status:5} {str(ts.rule):5} onnx {s.status:7} {str(s.rule):5} "
        f"hit={hit!s:5} {t1 - t0:4.1f}s {time.time() - t1:4.1f}s  {s.message[:140]}",
        flush=True,
    )
