"""``detkd demo [faces|shapes|facerec|all]``: the distillation story of detkd's systems on the embedded data
sets, on CPU, in one command, with one static page ``<out>/index.html`` at the end.

* ``faces`` (:mod:`detkd.demo.faces`): RetinaFace on SynthFaces, shipped teacher and baseline, then control /
  TDKD / feat fine-tunes.
* ``shapes`` (:mod:`detkd.demo.shapes`): FGFI, DeFeat and LD on SynthShapes, each on its own detector, with the
  shipped teachers and baselines.
* ``facerec`` (:mod:`detkd.demo.facerec`): ArcFace teacher and student, MarginDistillation and its four
  baselines on SynthIDs.

Time budget of ``make demo`` (all parts): under 20 minutes on 2 cores from a fresh clone, install included.
Measured on 2026-12-07 (fresh clone, idle 2 cores, 2 torch threads) with 10-epoch face fine-tunes: install 126 s,
faces 843 s, shapes 127 s, facerec 219 s, 1321 s in all; the face fine-tunes are now 6 epochs (about 290 s less),
see the README for the re-timed run. Each part writes under ``<out>/<part>/`` (``part.json`` for the page); the page
is rebuilt after every part from whatever parts are there, so running one part keeps the others on the page.
"""
from __future__ import annotations

import time
from pathlib import Path

from detkd.demo.faces import PROTOCOLS, DemoSchedule, run_demo  # noqa: F401  (the face part's API)

PARTS = ("faces", "shapes", "facerec")


def run_parts(parts: list[str], out_dir: Path, quick: bool = False, seed: int = 0, retrain_teacher: bool = False,
              shipped_baseline: bool = True) -> dict:
    """Run ``parts`` (in the order of ``PARTS``) under ``out_dir`` and write ``index.html``; returns
    ``{part: results}``. ``retrain_teacher`` / ``shipped_baseline`` concern the face part."""
    from detkd.demo.facerec import run_facerec
    from detkd.demo.report import write_index
    from detkd.demo.shapes import run_shapes
    from detkd.errors import UserError

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown demo part(s) {unknown}; choose from {', '.join(PARTS)} or all")
    out_dir = Path(out_dir)
    t0 = time.time()
    results = {}
    command = "detkd demo " + (" ".join(parts) if set(parts) != set(PARTS) else "all") + (" --quick" if quick else "")
    for part in (p for p in PARTS if p in parts):
        t = time.time()
        if part == "faces":
            results[part] = run_demo(out_dir / part, quick=quick, seed=seed, retrain_teacher=retrain_teacher,
                                     shipped_baseline=shipped_baseline)
        elif part == "shapes":
            results[part] = run_shapes(out_dir / part, quick=quick, seed=seed)
        else:
            results[part] = run_facerec(out_dir / part, quick=quick, seed=seed)
        print(f"[demo] {part}: {time.time() - t:.0f}s", flush=True)
        index = write_index(out_dir, command)
    print(f"\n[demo] {', '.join(results)} done in {time.time() - t0:.0f}s; open {index}")
    return results
