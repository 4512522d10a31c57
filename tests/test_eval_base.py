"""The evaluator protocol, the batched inference driver and the WIDER evaluator on top of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detkd.data.widerface import SUBSETS, WiderGT
from detkd.eval.base import DatasetEvaluator, Evaluator, build_evaluator, inference_on_dataset
from detkd.eval.widerface import WiderFaceEvaluator, dets_to_xywhs
from detkd.infer import ProtocolImages, collate_images, detect_batch, detect_image
from detkd.models.retinaface import retinaface_mnet
from detkd.structures import DetOutput


class CountingEvaluator(DatasetEvaluator):
    def record(self, meta, output):
        return meta["image_id"], float(output)

    def compute(self, records):
        return {"n": len(records), "sum": sum(v for _, v in records), "ids": [i for i, _ in records]}


def test_inference_on_dataset_batches_restores_mode_and_resets():
    model = nn.Linear(2, 1)
    model.train()
    seen_modes = []
    loader = [(torch.ones(3, 2), [{"image_id": i} for i in range(3)]),
              (torch.ones(2, 2), [{"image_id": i} for i in range(3, 5)])]

    def predict(m, batch):
        x, metas = batch
        seen_modes.append((m.training, torch.is_grad_enabled()))
        return metas, list(torch.ones(len(metas)) * 2)

    ev = CountingEvaluator()
    ev.process([{"image_id": "stale"}], [100.0])  # reset() must drop this
    res = inference_on_dataset(model, loader, ev, predict, progress=False)
    assert res == {"n": 5, "sum": 10.0, "ids": [0, 1, 2, 3, 4]}
    assert seen_modes == [(False, False), (False, False)]
    assert model.training  # restored


def test_inference_on_dataset_restores_mode_on_error():
    model = nn.Linear(2, 1).train()

    def predict(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        inference_on_dataset(model, [(None, [])], CountingEvaluator(), predict, progress=False)
    assert model.training


def test_process_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 metas but 1 outputs"):
        CountingEvaluator().process([{}, {}], [1.0])


def test_evaluator_registry_names_the_kind():
    ev = build_evaluator("widerface", gt_dir=None, dataset=type("D", (), {"gt": _gt()})())
    assert isinstance(ev, WiderFaceEvaluator) and isinstance(ev, Evaluator)
    with pytest.raises(KeyError, match="unknown evaluator 'widerfac'.*did you mean 'widerface'"):
        build_evaluator("widerfac")


def _gt() -> WiderGT:
    boxes = [np.array([[10, 10, 20, 20]], np.int32), np.array([[5, 5, 30, 30], [50, 50, 10, 10]], np.int32)]
    keep = [np.array([0]), np.array([0, 1])]
    return WiderGT(events=["0--E"], images=[("0--E", "a"), ("0--E", "b")], boxes=boxes,
                   keep={s: list(keep) for s in SUBSETS})


def test_widerface_process_equals_add_and_writes_txt(tmp_path):
    gt = _gt()
    outs = [{"boxes": torch.tensor([[10.2, 10.7, 30.9, 31.0]]), "scores": torch.tensor([0.9])},
            {"boxes": torch.tensor([[5.0, 5.0, 35.0, 35.0], [0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.8, 0.3])}]
    metas = [{"event": "0--E", "name": "a"}, {"event": "0--E", "name": "b"}]
    a = WiderFaceEvaluator(gt, pred_dir=tmp_path / "pred")
    a.process(metas, outs)
    b = WiderFaceEvaluator(gt)
    for m, o in zip(metas, outs):
        b.add(m["event"], m["name"], dets_to_xywhs(o["boxes"], o["scores"]))
    ra, rb = a.evaluate(), b.evaluate()
    assert ra == rb and 0 < ra["easy"] <= 1
    assert (tmp_path / "pred" / "0--E" / "b.txt").read_text().splitlines()[1] == "2"
    with pytest.raises(ValueError, match="given twice"):
        a.process(metas[:1], outs[:1])
    with pytest.raises(KeyError, match="no 'event'"):
        a.process([{"name": "a"}], outs[:1])


class _Images(torch.utils.data.Dataset):
    """Four random RGB images, two sizes, WIDER-like metas."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((48, 64), (48, 64), (40, 40), (48, 64))]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], {"image_id": f"e/{i}", "event": "e", "name": str(i)}


def test_detect_batch_matches_detect_image():
    torch.manual_seed(0)
    model = retinaface_mnet(width=0.25).eval()
    data = _Images()
    loader = torch.utils.data.DataLoader(ProtocolImages(data, "tdkd-640"), batch_size=4, collate_fn=collate_images)
    images, metas = next(iter(loader))
    with torch.no_grad():
        batched = detect_batch(model, images, metas, "tdkd-640")
    for i, d in enumerate(batched):
        single = detect_image(model, data.images[i], "tdkd-640")
        assert set(d) == set(single)
        for k in single:
            torch.testing.assert_close(d[k], single[k], rtol=1e-5, atol=1e-3)
        assert metas[i]["orig_size"] == data.images[i].shape[:2]


class _NoLandmarks(nn.Module):
    """A toy detector without landmarks: one fixed box per image, in input pixels."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None, decode=False):
        return DetOutput(feats={}, head={}, priors=[])

    def postprocess(self, out, score_thresh=None, nms_thresh=None, top_k=None, keep_top_k=None):
        return [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([3])}]


def test_detect_image_without_landmarks():
    d = detect_image(_NoLandmarks(), np.zeros((16, 16, 3), np.uint8), "tdkd-640")  # r = 640 / 16 = 40
    assert "landmarks" not in d and d["labels"].tolist() == [3]
    torch.testing.assert_close(d["boxes"], torch.tensor([[0.1, 0.1, 0.5, 0.5]]))


def test_registry_fills_evaluators_without_importing_them_first():
    import subprocess
    import sys

    code = ("from detkd.eval.base import build_evaluator; from detkd.registry import EVALUATORS, load_all; "
            "load_all(); print(sorted(EVALUATORS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'widerface'" in out


@pytest.mark.slow
def test_evaluation_gathers_to_rank0_under_ddp(tmp_path):
    """Two gloo ranks each evaluate a strided shard; rank 0's AP equals the one-process AP."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("no gloo backend")
    script = Path(__file__).resolve().parent / "_eval_ddp.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], env=env, check=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "two.json")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world"] == 2 and one["world"] == 1
    assert two["ap"] == one["ap"] and 0 < one["ap"]["easy"] < 1
