"""The 0.9.0 verdict of every tests/realzoo.py model: factory, probe on, default flags, in one
process (~30 s). Run from the repository root: `PYTHONPATH=$PWD python benchmarks/verdict_factory.py`.
Columns: model, healthy/broken, summary status, deciding rule, whether an error names a culprit,
wall time, message."""

import sys
import time
import warnings

sys.path.insert(0, ".")
warnings.filterwarnings("ignore")
import initdoctor  # noqa: E402  # after sys.path: tests.realzoo is imported from the checkout
from initdoctor.errors import InitDoctorError  # noqa: E402
from tests.realzoo import MATRIX  # noqa: E402

for e in MATRIX:
    t = time.time()
    try:
        r = initdoctor.diagnose(e.factory, probe=True)
        s = r.summary
        named = sorted(
            {f.name for f in r.layers if f.status == "error"}
            | {b.name for b in r.residual_blocks if b.status == "error"}
        )
        hit = (not e.culprits) or any(n.startswith(c) for n in named for c in e.culprits)
        kind = "healthy" if e.healthy else "broken "
        took = time.time() - t
        print(
            f"{e.name:18} {kind:7} {s.status:7} {str(s.rule):5} hit={hit!s:5} {took:5.1f}s  {s.message[:150]}"
        )
    except InitDoctorError as exc:
        print(f"{e.name:18} {'healthy' if e.healthy else 'broken ':7} CRASH {exc}"[:250])
