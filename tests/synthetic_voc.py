"""Random VOC-layout ground truth and VOC results files for the evaluator tests and the speed benchmark.

GT: integer 1-based boxes, a share of them difficult. Detections per image: jittered copies of GT (some
duplicates, some with the wrong class), plus background boxes, with distinct random scores (no ties), float
coordinates. No image files are written (the evaluators only need annotations)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_xml(path: Path, width: int, height: int, objects) -> None:
    """``objects``: ``(name, (xmin, ymin, xmax, ymax), difficult)`` tuples."""
    parts = [f"<annotation><filename>{path.stem}.jpg</filename><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]
    for name, b, diff in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{int(diff)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                     f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")
    parts.append("</annotation>")
    path.write_text("".join(parts))


def make_random_voc(root: Path, pred_dir: Path, n_images: int, class_names, dets_per_image: int = 20,
                    seed: int = 0, p_difficult: float = 0.15, prefix: str = "comp4_det_test_", split: str = "test"):
    """Write ``root/Annotations/*.xml``, ``root/ImageSets/Main/<split>.txt`` and one results file per class
    in ``pred_dir`` (``<prefix><class>.txt``). Returns the image ids."""
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    ids = [f"{i:06d}" for i in range(n_images)]
    lines: list[list[str]] = [[] for _ in range(k)]
    n_total = n_images * dets_per_image
    scores = rng.permutation(n_total) / n_total + rng.uniform(0, 0.5 / n_total, n_total)  # distinct
    s_iter = iter(scores)
    for image_id in ids:
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        n = int(rng.integers(0, 8))
        objs = []
        for _ in range(n):
            bw, bh = rng.integers(4, w // 2), rng.integers(4, h // 2)
            x1, y1 = int(rng.integers(1, w - bw)), int(rng.integers(1, h - bh))
            objs.append((int(rng.integers(k)), (x1, y1, int(x1 + bw), int(y1 + bh)), bool(rng.random() < p_difficult)))
        write_xml(root / "Annotations" / f"{image_id}.xml", w, h,
                  [(class_names[c], b, d) for c, b, d in objs])
        for _ in range(dets_per_image):
            if objs and rng.random() < 0.6:
                c, b, _ = objs[int(rng.integers(len(objs)))]
                if rng.random() < 0.1:
                    c = int(rng.integers(k))
                bw, bh = b[2] - b[0], b[3] - b[1]
                box = np.array(b, float) + rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
            else:
                c = int(rng.integers(k))
                x1, y1 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
                box = np.array([x1, y1, x1 + rng.uniform(5, w / 2), y1 + rng.uniform(5, h / 2)])
            box[2:] = np.maximum(box[2:], box[:2] + 1)
            lines[c].append(f"{image_id} {next(s_iter):.10f} {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}\n")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    for c, name in enumerate(class_names):
        (pred_dir / f"{prefix}{name}.txt").write_text("".join(lines[c]))
    return ids
