"""Run by tests/test_eval_base.py under ``torch.distributed.run`` (2 ranks, gloo) and in one process: the
batched detector evaluation of a toy detector over five WIDER-like images; rank 0 writes the metrics."""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
from torch import nn

from detkd.data.widerface import SUBSETS, WiderGT
from detkd.engine import dist
from detkd.eval.widerface import WiderFaceEvaluator
from detkd.experiment import evaluate_detector
from detkd.structures import DetOutput

N = 5


def gt() -> WiderGT:
    boxes = [np.array([[4 * i, 4, 20, 20], [30, 30, 8, 8]], np.int32) for i in range(N)]
    keep = [np.array([0, 1])] * N
    return WiderGT(events=["0--E"], images=[("0--E", str(i)) for i in range(N)], boxes=boxes,
                   keep={s: list(keep) for s in SUBSETS})


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        image = np.full((48, 48, 3), 10 * i, np.uint8)
        return image, {"image_id": f"0--E/{i}", "event": "0--E", "name": str(i)}


class Toy(nn.Module):
    """One box per image, placed and scored from the image's constant value."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets=None, decode=False):
        return DetOutput(feats={"x": images}, head={}, priors=[])

    def postprocess(self, out, score_thresh=None, nms_thresh=None, top_k=None, keep_top_k=None):
        dets = []
        for im in out.feats["x"]:
            v = float(im[0, 0, 0]) / 10
            box = torch.tensor([[4 * v, 4.0, 4 * v + 20, 24.0], [1.0, 1.0, 5.0, 5.0]])
            dets.append({"boxes": box, "scores": torch.tensor([0.5 + v / 20, 0.1]), "labels": torch.ones(2)})
        return dets


def main(out_path: str) -> None:
    dist.init_distributed("cpu")
    res = evaluate_detector(Toy(), Images(), WiderFaceEvaluator(gt()), "biubug6-origin", batch_size=2,
                            progress=False)
    if dist.is_main():
        with open(out_path, "w") as f:
            json.dump({"ap": res, "world": dist.world_size()}, f)
    else:
        assert res == {}
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
