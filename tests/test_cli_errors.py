"""Every bad input of issue 18 through the real command line (``python -m detkd`` in a subprocess): the exit
status, one ``error: ...`` line naming the culprit, and no traceback on stderr.

The commands of a group start together (the cost is mostly importing torch, ~4 s of CPU each); the default
suite runs the ``quick`` cases, ``make test-slow`` (``-m slow``) all the others.
``python tests/test_cli_errors.py`` runs them and prints the markdown table of ``docs/reliability.md``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DET_CONFIG = "retinaface/mnet025_synthfaces"
TDKD_CONFIG = "tdkd/retinaface_mnet075_to_mnet025_synthfaces"


@dataclass
class Case:
    id: str
    what: str  # the bad input, in words (docs table)
    args: list[str]
    rc: int = 2
    expect: tuple[str, ...] = ()  # substrings of the single stderr error line
    one_line: bool = True  # stderr holds exactly one line starting with "error:" (rc 2 cases)


QUICK = {"batch_size_0", "missing_teacher", "run_exists", "export_nan"}


def make_inputs(root: Path) -> dict[str, Path]:
    """Files the cases point at: a tiny SynthFaces copy, a detector and a face-recognizer export, a pickle,
    a NaN checkpoint, run directories that hold a run."""
    from safetensors.torch import save_file

    from detkd.config import load_config
    from detkd.data.synthfaces import write_synthfaces
    from detkd.engine.checkpoint import FORMAT, save_checkpoint
    from detkd.models.facerec import mobilefacenet
    from detkd.models.retinaface import retinaface_mnet
    from detkd.models.weights import save_model_file

    p = {"root": root}
    p["data"] = write_synthfaces(root / "sf", seed=3, n_train=4, n_val=2, image_size=96)
    bad = root / "sf_badlabel"
    bad.mkdir()
    (bad / "train").mkdir()
    (bad / "train" / "images").symlink_to(p["data"] / "train" / "images")
    lines = (p["data"] / "train" / "label.txt").read_text().splitlines()
    lines[2] = "12 oops 4 4"
    (bad / "train" / "label.txt").write_text("\n".join(lines) + "\n")
    p["bad_label"] = bad
    torch.manual_seed(0)
    p["detector"] = root / "det.safetensors"
    save_model_file(retinaface_mnet(), p["detector"])
    p["facerec"] = root / "mfn.safetensors"
    save_file(mobilefacenet(input_size=32).state_dict(), str(p["facerec"]))
    (root / "mfn.json").write_text(json.dumps({"model": {"name": "mobilefacenet", "input_size": 32}}))
    p["pickle"] = root / "pickled.pt"
    torch.save({"obj": SimpleNamespace(a=1)}, p["pickle"])
    p["nan_run"] = root / "nan_run"
    save_checkpoint(p["nan_run"] / "final.pt",
                    {"format": FORMAT, "task": {"student.w": torch.tensor([float("nan"), 1.0])}}, check_finite=False)
    # a run dir that holds a finished run, and one whose saved config has another batch size
    runs = root / "runs"
    cfg = load_config(DET_CONFIG)
    (runs / cfg.name).mkdir(parents=True)
    for name in ("last.pt", "final.pt"):
        (runs / cfg.name / name).write_bytes(b"")
    (runs / cfg.name / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    p["runs"] = runs
    from detkd.config import apply_overrides

    apply_overrides(cfg, tiny(p, root / "resumed"))
    cfg.train.batch_size = 8
    resumed = root / "resumed"
    (resumed / cfg.name).mkdir(parents=True)
    import dataclasses

    (resumed / cfg.name / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), default=str))
    p["resumed"] = resumed
    p["file"] = root / "a_file"
    p["file"].write_text("not a directory\n")
    make_detection_inputs(root, p)
    return p


def make_detection_inputs(root: Path, p: dict[str, Path]) -> None:
    """Generic-detection inputs: VOC roots with a broken annotation, a results file with a bad line, COCO files
    with an unknown image / no images, an object detector, a face recognizer's bare state dict."""
    import shutil

    from synthetic_voc import make_random_voc, write_xml

    from detkd.data.voc_gt import VOC_CLASSES
    from detkd.models.facerec import mobilefacenet
    from detkd.models.weights import save_model_file
    from detkd.registry import TINY_CONFIGS, load_all, lookup

    make_random_voc(root / "VOC", root / "voc_pred", 3, VOC_CLASSES, seed=0)
    ids = (root / "VOC" / "ImageSets" / "Main" / "test.txt").read_text().split()
    for name in ("VOCbadxml", "VOCbadclass", "VOCmissing"):
        shutil.copytree(root / "VOC", root / name)
    (root / "VOCbadxml" / "Annotations" / f"{ids[1]}.xml").write_text("<annotation><size>")
    write_xml(root / "VOCbadclass" / "Annotations" / f"{ids[1]}.xml", 100, 100, [("unicorn", (1, 1, 10, 10), False)])
    (root / "VOCmissing" / "Annotations" / f"{ids[2]}.xml").unlink()
    shutil.copytree(root / "voc_pred", root / "voc_pred_bad")
    first = sorted((root / "voc_pred_bad").iterdir())[0]
    first.write_text(first.read_text() + f"{ids[0]} 0.5 1 2 three 4\n")
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 50}], "annotations": [],
          "categories": [{"id": 1, "name": "x"}]}
    (root / "coco_gt.json").write_text(json.dumps(gt))
    (root / "coco_res_unknown.json").write_text(
        json.dumps([{"image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}]))
    (root / "coco_noimages.json").write_text(json.dumps({"annotations": [], "categories": []}))
    load_all()
    torch.manual_seed(0)
    p["objdet"] = root / "retinanet.safetensors"
    save_model_file(lookup("model", "retinanet")(**TINY_CONFIGS["retinanet"]), p["objdet"])
    p["facerec_sd"] = root / "mfn_state.pth"
    torch.save(mobilefacenet(input_size=32).state_dict(), p["facerec_sd"])


def tiny(p, out: Path | str, *extra: str) -> list[str]:
    return ["data.name=widerface", f"data.root={p['data']}", "data.img_size=96", "train.batch_size=2",
            "train.max_iters=1", f"train.out_dir={out}", "train.progress=false", "train.tensorboard=false", *extra]


def cases(p: dict[str, Path]) -> list[Case]:
    r = p["root"]
    return [
        Case("batch_size_0", "`train.batch_size=0`", ["train", DET_CONFIG, "train.batch_size=0"],
             expect=("train.batch_size=0", "must be >= 1")),
        Case("epochs_negative", "`train.epochs=-1`", ["train", DET_CONFIG, "train.epochs=-1"],
             expect=("train.epochs=-1", "must be >= 1")),
        Case("lr_zero", "`optim.lr=0`", ["train", DET_CONFIG, "optim.lr=0"], expect=("optim.lr=0.0", "> 0")),
        Case("unknown_key", "misspelt key `optim.lrr=0.1`", ["train", DET_CONFIG, "optim.lrr=0.1"],
             expect=("optim.lrr", "did you mean", "optim.lr")),
        Case("bad_type", "`train.epochs=three`", ["train", DET_CONFIG, "train.epochs=three"],
             expect=("train.epochs='three'", "expected an int")),
        Case("unknown_config", "config name that does not exist", ["train", "retinaface/nope"],
             expect=("retinaface/nope", "not found")),
        Case("missing_teacher", "missing teacher file",
             ["train", TDKD_CONFIG, f"distill.teacher_weights={r / 'nope.safetensors'}", *tiny(p, r / "o1")],
             expect=("distill.teacher_weights", "nope.safetensors", "no such file")),
        Case("wrong_teacher", "a face recognizer given as the detector teacher",
             ["train", TDKD_CONFIG, f"distill.teacher_weights={p['facerec']}", *tiny(p, r / "o2")],
             expect=("distill.teacher_weights", "is a face recognizer (mobilefacenet)",
                     "expected a face detector (retinaface_mnet)")),
        Case("pickle_init", "a pickled checkpoint as `train.init_weights`",
             ["train", DET_CONFIG, f"train.init_weights={p['pickle']}", *tiny(p, r / "o3")],
             expect=("train.init_weights", "pickled.pt", "refusing to unpickle", "detkd import-weights")),
        Case("bad_label", "a malformed line in `label.txt`",
             ["train", DET_CONFIG, *tiny(p, r / "o4", f"data.root={p['bad_label']}")],
             expect=("label.txt:3", "non-numeric value")),
        Case("out_dir_not_dir", "`train.out_dir` below a file (not writable)",
             ["train", DET_CONFIG, *tiny(p, p["file"] / "runs")],
             expect=("cannot write to the run directory", "a_file", "train.out_dir")),
        Case("run_exists", "a run directory that holds a run, no `--resume`",
             ["train", DET_CONFIG, *tiny(p, p["runs"])],
             expect=("already holds a run", "--resume", "--overwrite")),
        Case("resume_changed", "`--resume` with a changed `train.batch_size`",
             ["train", DET_CONFIG, *tiny(p, p["resumed"]), "--resume"],
             expect=("train.batch_size 8 -> 2", "--allow-changed train.batch_size")),
        Case("resume_overwrite", "`--resume --overwrite` together",
             ["train", DET_CONFIG, *tiny(p, p["resumed"]), "--resume", "--overwrite"],
             expect=("exclude each other",)),
        Case("export_nan", "export of a run whose weights are NaN",
             ["export", str(p["nan_run"]), "--out", str(r / "x.safetensors")],
             expect=("refusing to export", "NaN/inf")),
        Case("export_missing", "export of a run directory that does not exist",
             ["export", str(r / "nowhere"), "--out", str(r / "y.safetensors")], expect=("nowhere", "does not exist")),
        Case("verify_detector", "a detector given to `eval verification`",
             ["eval", "verification", "--weights", str(p["detector"]), "--bin", str(r / "v.bin")],
             expect=("is a face detector (retinaface_mnet)", "expected a face recognizer")),
        Case("eval_det_facerec", "a face recognizer given to `eval detector`",
             ["eval", "detector", "--weights", str(p["facerec"]), "--images-dir", str(p["data"] / "val" / "images"),
              "--gt-dir", str(p["data"] / "val" / "gt")],
             expect=("--weights", "is a face recognizer (mobilefacenet)", "expected a face detector")),
        Case("detect_dir", "a directory given as an image to `detect`",
             ["detect", str(r), "--weights", str(p["detector"]), "--out-dir", str(r / "d1")],
             expect=("is a directory",)),
        Case("detect_missing", "a missing image given to `detect`",
             ["detect", str(r / "nope.jpg"), "--weights", str(p["detector"]), "--out-dir", str(r / "d2")],
             expect=("nope.jpg",)),
        Case("coco_bad_json", "a COCO annotation file that is not JSON",
             ["eval", "coco", "--ann", str(p["file"]), "--pred", str(p["file"])], expect=("a_file", "not valid JSON")),
        Case("voc_missing_root", "a VOC root that does not exist",
             ["eval", "voc", "--root", str(r / "VOCnope"), "--split", "test", "--pred-dir", str(r)],
             expect=("VOCnope", "not found")),
        Case("voc2coco_missing", "`convert voc2coco` of a missing root",
             ["convert", "voc2coco", str(r / "VOCnope"), "--split", "test", "--out", str(r / "c.json")],
             expect=("VOCnope", "not found")),
        Case("import_pickle", "`import-weights` of a pickle holding Python objects",
             ["import-weights", "retinaface-biubug6", str(p["pickle"]), "--activation", "relu", "--out",
              str(r / "imp.safetensors")], expect=("pickled.pt", "refusing to unpickle")),
        Case("voc_bad_xml", "a VOC annotation that is not valid XML",
             ["eval", "voc", "--root", str(r / "VOCbadxml"), "--split", "test", "--pred-dir", str(r / "voc_pred")],
             expect=("VOCbadxml/Annotations/000001.xml", "not valid XML")),
        Case("voc_bad_class", "a VOC object of a class outside the class list",
             ["eval", "voc", "--root", str(r / "VOCbadclass"), "--split", "test", "--pred-dir", str(r / "voc_pred")],
             expect=("000001.xml: object 1", "'unicorn' is not in the class list")),
        Case("voc_missing_ann", "a listed VOC id without its annotation file",
             ["eval", "voc", "--root", str(r / "VOCmissing"), "--split", "test", "--pred-dir", str(r / "voc_pred")],
             expect=("test.txt:3", "'000002' is listed", "000002.xml is missing")),
        Case("voc_bad_result", "a VOC results line with a non-numeric coordinate",
             ["eval", "voc", "--root", str(r / "VOC"), "--split", "test", "--pred-dir", str(r / "voc_pred_bad")],
             expect=("comp4_det_test_aeroplane.txt:", "non-numeric value")),
        Case("coco_unknown_image", "a COCO result of an image id the annotations lack",
             ["eval", "coco", "--ann", str(r / "coco_gt.json"), "--pred", str(r / "coco_res_unknown.json")],
             expect=("coco_res_unknown.json", "unknown image id 7")),
        Case("coco_no_images", "a COCO annotation file without `images`",
             ["eval", "coco", "--ann", str(r / "coco_noimages.json"), "--pred", str(r / "coco_res_unknown.json")],
             expect=("coco_noimages.json", "missing list 'images'")),
        Case("import_text", "`import-weights` of a file that is not a checkpoint",
             ["import-weights", "torchvision-retinanet", str(p["file"]), "--out", str(r / "i1.safetensors")],
             expect=("a_file", "not a torch checkpoint")),
        Case("import_missing", "`import-weights` of a missing file",
             ["import-weights", "mmdet-gfl", str(r / "nope.pth"), "--out", str(r / "i2.safetensors")],
             expect=("nope.pth", "not found")),
        Case("import_detkd_file", "`import-weights` of a detkd model file (it has a card)",
             ["import-weights", "retinaface-biubug6", str(p["facerec"]), "--activation", "relu", "--out",
              str(r / "i3.safetensors")], expect=("mfn.safetensors is already a detkd model file",
                                                   "a face recognizer (mobilefacenet)")),
        Case("import_wrong_model", "`import-weights retinaface-biubug6` of another model's state dict",
             ["import-weights", "retinaface-biubug6", str(p["facerec_sd"]), "--activation", "relu", "--out",
              str(r / "i4.safetensors")], expect=("mfn_state.pth", "does not fit RetinaFace", "missing keys")),
        Case("import_wrong_kind", "`import-weights torchvision-fasterrcnn` of another model's state dict",
             ["import-weights", "torchvision-fasterrcnn", str(p["facerec_sd"]), "--out", str(r / "i5.safetensors")],
             expect=("mfn_state.pth", "not a torchvision Faster R-CNN")),
        Case("eval_det_face_on_voc", "a face detector given to `eval detector` with a VOC root",
             ["eval", "detector", "--weights", str(p["detector"]), "--voc-root", str(r / "VOC")],
             expect=("is a face detector (retinaface_mnet)", "--images-dir and --gt-dir")),
        Case("eval_det_obj_on_wider", "an object detector given to `eval detector` with WIDER data",
             ["eval", "detector", "--weights", str(p["objdet"]), "--images-dir", str(p["data"] / "val" / "images"),
              "--gt-dir", str(p["data"] / "val" / "gt")],
             expect=("is a detector (retinanet)", "score face detectors", "--voc-root")),
        Case("config_show_unknown", "`config show` of an unknown config", ["config", "show", "nope/nope"],
             expect=("nope/nope", "not found")),
        Case("version", "`--version`", ["--version"], rc=0, one_line=False),
        Case("config_show", "`config show NAME`", ["config", "show", DET_CONFIG], rc=0, one_line=False),
    ]


def run_all(p: dict[str, Path], jobs: int = 4, only=None) -> dict[str, tuple[int, str, str, float]]:
    """Run every case (or those with an id in ``only``), ``jobs`` at a time; ``id -> (rc, stdout, stderr, s)``."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", NO_COLOR="1", TERM="dumb")
    todo, running, out = [c for c in cases(p) if only is None or c.id in only], {}, {}
    while todo or running:
        while todo and len(running) < jobs:
            c = todo.pop(0)
            proc = subprocess.Popen([sys.executable, "-m", "detkd", *c.args], cwd=p["root"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[c.id] = (proc, time.time())
        for cid, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                so, se = proc.communicate()
                out[cid] = (proc.returncode, so, se, time.time() - t0)
                del running[cid]
        time.sleep(0.05)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory, request):
    """``(inputs, get)``: ``get(case_id)`` runs the case's group (quick, or the other selected ones) once, all at
    a time; only the cases this session collected (``-k`` narrows them) run."""
    p = make_inputs(tmp_path_factory.mktemp("clierr"))
    done: dict[str, tuple] = {}
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if "case_id" in getattr(getattr(item, "callspec", None), "params", {})}

    def get(case_id: str):
        if case_id not in done:
            group = QUICK if case_id in QUICK else (selected | {case_id}) - QUICK - set(done)
            done.update(run_all(p, only=group))
        return done[case_id]

    return p, get


def _params():
    with tempfile.TemporaryDirectory() as d:
        ids = [c.id for c in cases({k: Path(d) for k in ("root", "data", "bad_label", "detector", "facerec",
                                                         "pickle", "nan_run", "runs", "resumed", "file", "objdet",
                                                         "facerec_sd")})]
    return [pytest.param(i, marks=() if i in QUICK else pytest.mark.slow) for i in ids]


@pytest.mark.parametrize("case_id", _params())
def test_bad_input_gives_one_line_error(results, case_id):
    p, get = results
    case = next(c for c in cases(p) if c.id == case_id)
    rc, so, se, _ = get(case_id)
    detail = f"detkd {' '.join(case.args)}\nrc={rc}\nstdout:\n{so[-2000:]}\nstderr:\n{se[-3000:]}"
    assert rc == case.rc, detail
    assert "Traceback" not in se, detail
    if case.one_line:
        errors = [line for line in se.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, detail
        for s in case.expect:
            assert s in errors[0], f"{s!r} not in the error line\n{detail}"
    if case_id == "version":
        assert so.startswith("detkd ")
    if case_id == "config_show":
        assert "train.batch_size = 16  (int)" in so and "distill = None" in so


def markdown_table(only=None) -> str:
    """The docs table: every case, or the rows of the case ids in ``only``."""
    with tempfile.TemporaryDirectory() as d:
        p = make_inputs(Path(d))
        res = run_all(p, only=only)
        rows = ["| input | command | exit | message (stderr) |", "|---|---|---|---|"]
        for c in cases(p):
            if c.id not in res:
                continue
            rc, so, se, _ = res[c.id]
            cmd = " ".join(["detkd", *c.args[:2]]).replace(d, "…")
            err = next((ln for ln in se.splitlines() if ln.startswith("error:")), (so.splitlines() or [""])[0])
            err = err.replace(d, "…").replace("|", "\\|")
            cell = f"`` {err[:220]} ``" if "`" in err[:220] else f"`{err[:220]}`"
            rows.append(f"| {c.what} | `{cmd} …` | {rc} | {cell} |")
        return "\n".join(rows)


if __name__ == "__main__":  # python tests/test_cli_errors.py [CASE_ID ...]
    print(markdown_table(set(sys.argv[1:]) or None))
