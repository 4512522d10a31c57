"""Where ``detkd detect`` writes each image's output, so that no output is ever lost (issue 18, item 5).

Rules (torch-free; shared by the face path ``detkd.infer`` and the object path ``detkd.infer_detector``):

* PNG: inputs in one folder write ``out_dir/<stem>.png`` as before. Inputs from several folders mirror the
  input tree below the folders' common parent: ``a/x.jpg`` and ``b/x.jpg`` write ``out_dir/a/x.png`` and
  ``out_dir/b/x.png``. Two inputs that would still write the same file (``x.jpg`` and ``x.png`` in one folder,
  or one file given twice) are refused before anything runs, naming both.
* WIDER txt: ``out_dir/<event>/<stem>.txt`` with event = ``--event`` or else the image's parent folder name
  (``eval widerface`` matches files by event and stem). Two inputs with the same event and stem are refused.
* VOC / COCO results: the image id is the stem, so two inputs with the same stem are refused.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from detkd.errors import UserError

# WIDER FACE event folders are named like "0--Parade", "12--Group".
_WIDER_EVENT = re.compile(r"^\d+--\S+$")


def _refuse_duplicates(paths: list[Path], keys: list, what: str) -> None:
    seen: dict = {}
    for path, key in zip(paths, keys):
        if key in seen:
            raise UserError(f"{seen[key]} and {path} would both write {what(key)}; rename one or run detect on "
                            "them separately (no output is overwritten)", path=path)
        seen[key] = path


def png_targets(images, out_dir) -> list[Path]:
    """Output PNG paths, one per input and all distinct (module docstring); raises ``UserError`` on a clash."""
    paths = [Path(p) for p in images]
    out_dir = Path(out_dir)
    parents = {p.resolve().parent for p in paths}
    if len(parents) <= 1:
        rel = [Path(f"{p.stem}.png") for p in paths]
    else:
        root = Path(os.path.commonpath([str(d) for d in parents]))
        rel = [p.resolve().parent.relative_to(root) / f"{p.stem}.png" for p in paths]
    _refuse_duplicates(paths, [str(r) for r in rel], lambda key: out_dir / key)
    return [out_dir / r for r in rel]


def wider_events(images, event: str | None = None) -> list[str]:
    """The WIDER event of each input: ``event`` when given, else its parent folder name. Raises ``UserError``
    when two inputs share event and stem (one ``<event>/<stem>.txt`` each)."""
    paths = [Path(p) for p in images]
    if event is not None and (not event or "/" in event or "\\" in event or event in (".", "..")):
        raise UserError(f"--event must be one folder name such as 0--Parade, got {event!r}")
    events = [event if event is not None else p.resolve().parent.name for p in paths]
    _refuse_duplicates(paths, [(e, p.stem) for e, p in zip(events, paths)], lambda key: f"{key[0]}/{key[1]}.txt")
    return events


def non_wider_events(events: list[str]) -> list[str]:
    """Events that do not look like WIDER FACE event folders (``N--Name``): ``eval widerface`` against the real
    WIDER ground truth scores such files 0 (use ``--event``)."""
    return sorted({e for e in events if not _WIDER_EVENT.match(e)})


def unique_stems(images) -> list[str]:
    """Image ids for VOC / COCO results (the file stems); raises ``UserError`` when two inputs share a stem."""
    paths = [Path(p) for p in images]
    _refuse_duplicates(paths, [p.stem for p in paths], lambda key: f"results for image id {key!r}")
    return [p.stem for p in paths]
