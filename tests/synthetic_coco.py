"""A random COCO GT + results pair: non-contiguous category ids, crowd regions, small/medium/large objects,
images without GT (some with detections), distinct scores. Used by the COCO tests and the speed benchmark."""
from __future__ import annotations

import numpy as np

CAT_IDS = (1, 3, 7, 12, 40)


def make_random_coco(n_images: int, dets_per_image: int = 15, seed: int = 0, p_empty: float = 0.1,
                     p_crowd: float = 0.05, cat_ids=CAT_IDS):
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    n_dets = n_images * dets_per_image
    scores = iter(rng.permutation(n_dets) / n_dets + 1e-9)
    for i in range(1, n_images + 1):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": w, "height": h})
        objs = []
        if rng.random() >= p_empty:
            for _ in range(int(rng.integers(1, 10))):
                side = float(np.exp(rng.uniform(np.log(4), np.log(min(w, h) * 0.8))))  # small..large
                bw, bh = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
                x, y = rng.uniform(0, max(w - bw, 1)), rng.uniform(0, max(h - bh, 1))
                crowd = int(rng.random() < p_crowd)
                cat = int(cat_ids[int(rng.integers(len(cat_ids)))])
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, bw, bh],
                             "area": bw * bh * rng.uniform(0.6, 1.0), "iscrowd": crowd})
                objs.append((cat, np.array([x, y, bw, bh])))
        for _ in range(int(rng.integers(0, 2 * dets_per_image + 1)) if dets_per_image else 0):
            if objs and rng.random() < 0.6:
                cat, b = objs[int(rng.integers(len(objs)))]
                b = b + rng.normal(0, 0.1, 4) * [b[2], b[3], b[2], b[3]]
            else:
                cat = int(cat_ids[int(rng.integers(len(cat_ids)))])
                b = np.array([rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, w / 2), rng.uniform(4, h / 2)])
            b[2:] = np.maximum(b[2:], 1.0)
            results.append({"image_id": i, "category_id": cat, "bbox": [float(v) for v in b],
                            "score": float(next(scores, rng.random()))})
    cats = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}, results
