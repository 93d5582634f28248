"""Bad input as someone who has never read the code supplies it, through the real `sasa` command.

Every case asserts the whole promise: a non-zero exit, no traceback, a last line that names the
problem (and the file), a few lines of output at most, no file left under an output's name (nor a
temporary one), no process left running, no shared memory left in /dev/shm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/demo/digits.yaml")
FINETUNE = str(ROOT / "configs/demo/finetune.yaml")
SHAPES = str(ROOT / "configs/demo/shapes_retinanet.yaml")
ZERO2 = str(ROOT / "configs/strategy/deepspeed_zero2.yaml")
MAX_LINES = 5  # the error line, and the few Lightning prints as a trainer starts (seed, accelerators)


@dataclass
class Case:
    argv: list[str]
    says: list[str]  # substrings of the last line
    outputs: list[Path] = field(default_factory=list)  # must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)
    status: int = 2
    max_lines: int | None = MAX_LINES  # None where the run starts before it meets the problem


def shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command:
                found.append(command)
    return found


def check_failure(result_status: int, stderr: str, stdout: str, case: Case, tmp_path: Path, shm_before: set[str]) -> None:
    everything = stdout + stderr
    assert result_status == case.status, everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and (case.max_lines is None or len(lines) <= case.max_lines), stderr[-3000:]
    last = lines[-1]
    assert last.startswith("sasa: "), last
    for expected in case.says:
        assert expected in last, f"{expected!r} not in {last!r}"
    for output in case.outputs:
        assert not output.exists(), f"{output} was left behind"
        assert not list(output.parent.glob(f".{output.name}.partial*")) if output.parent.is_dir() else True
    deadline = time.monotonic() + 5
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path)), processes_mentioning(str(tmp_path))
    assert shm() <= shm_before, shm() - shm_before


def run_case(case: Case, tmp_path: Path, cache: Path) -> None:
    env = {**os.environ, "SASA_CACHE": str(cache), **case.env}
    env.pop("SASA_DEBUG", None)
    before = shm()
    result = subprocess.run([sys.executable, "-m", "sasa_lightning.cli", *case.argv], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    check_failure(result.returncode, result.stderr, result.stdout, case, tmp_path, before)


# --- inputs -------------------------------------------------------------------------------------

def image_folder(root: Path, classes: int = 2, per_class: int = 6, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"c{label}" / f"{index}.jpg")
    return root


def corrupt_jpeg(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 4)
    return path


def checkpoint_trained_as(path: Path, class_path: str, **hparams) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": class_path, **hparams}}, path)
    return path


def coco_split(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir(exist_ok=True)
        for image in images:
            Image.new("RGB", (image["width"], image["height"]), (90, 90, 90)).save(root / split / image["file_name"])
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


IMAGE = {"id": 1, "file_name": "1.jpg", "width": 64, "height": 64}
BOX = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}


def cases(tmp: Path) -> dict[str, Case]:
    """name -> case; inputs are written under `tmp` when the case is built."""
    fit = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp / "run")]
    run = [tmp / "run" / "checkpoints" / "last.ckpt"]
    folder = image_folder(tmp / "images")
    (tmp / "a_file").write_text("I am a file")
    (tmp / "bad.yaml").write_text("trainer:\n  max_epochs: [1, 2\n")
    (tmp / "misspelt.yaml").write_text("trainer:\n  max_epoch: 3\n")
    (tmp / "misspelt_task.yaml").write_text("model:\n  init_args:\n    lr_per_25: 0.1\n")
    (tmp / "text.ckpt").write_text("not a checkpoint\n")
    (tmp / "empty_folder").mkdir()
    (tmp / "no_images" / "c0").mkdir(parents=True)
    (tmp / "no_images" / "c0" / "readme.txt").write_text("no images here")
    with_corrupt = image_folder(tmp / "with_corrupt")
    corrupt_jpeg(with_corrupt / "c1" / "broken.jpg")
    (tmp / "text.beton").write_text("not a beton")
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(3, 3)}}, tmp / "small.ckpt")
    data = (tmp / "small.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    r26 = checkpoint_trained_as(tmp / "r26.ckpt", "sasa_lightning.tasks.ImageClassifier", model="sasa_resnet26",
                                model_options={"kernel_size": 3}, num_classes=10)
    detector = checkpoint_trained_as(tmp / "detector.ckpt", "sasa_lightning.tasks.ObjectDetector", model="retinanet_sasa_resnet50")
    (tmp / "metrics_empty").mkdir()
    (tmp / "metrics_empty" / "metrics.csv").write_text("epoch,step,train/loss_step\n")
    coco_not_json = coco_split(tmp / "coco_not_json", [IMAGE], [BOX], [{"id": 1, "name": "box"}])
    (coco_not_json / "annotations" / "instances_train2017.json").write_text("{not json")
    coco_string_category = coco_split(tmp / "coco_string_category", [IMAGE], [{**BOX, "category_id": "1"}],
                                      [{"id": "1", "name": "box"}])
    coco_good = coco_split(tmp / "coco_good", [IMAGE], [BOX], [{"id": 1, "name": "box"}])
    coco_unknown_image = coco_split(tmp / "coco_unknown_image", [IMAGE], [{**BOX, "image_id": 7}], [{"id": 1, "name": "box"}])
    predict_corrupt = image_folder(tmp / "predict_corrupt" / "x", classes=1, per_class=2).parent
    corrupt_jpeg(predict_corrupt / "x" / "broken.jpg")
    for image in (predict_corrupt / "x").iterdir():
        image.rename(predict_corrupt / image.name)
    beton = tmp / "out" / "train.beton"
    write_ffcv = ["data", "write-ffcv", "--src", str(folder), "--num-workers", "2"]
    return {
        # Configs and options
        "missing config file": Case([*fit[:2], str(tmp / "nope.yaml")], ["nope.yaml", "does not exist"]),
        "config with a YAML syntax error": Case(["fit", "--config", str(tmp / "bad.yaml")], ["bad.yaml"]),
        "misspelt key in a config": Case(["fit", "--config", DIGITS, "--config", str(tmp / "misspelt.yaml")],
                                         ["max_epoch", "max_epochs"]),
        "misspelt option on the command line": Case([*fit, "--trainer.max_epoch", "3"], ["max_epoch", "max_epochs"]),
        "misspelt task option in a config": Case([*fit, "--config", str(tmp / "misspelt_task.yaml")],
                                                 ["'lr_per_25'", "ImageClassifier", "misspelt_task.yaml", "'lr_per_256'"]),
        "misspelt data option on the command line": Case([*fit, "--data.init_args.batchsize", "8"],
                                                         ["'batchsize'", "DigitsData", "'batch_size'"]),
        "unknown model name": Case([*fit, "--model.init_args.model", "sasa_resnet99"], ["sasa_resnet99", "sasa_resnet50"], run),
        "unknown model option": Case([*fit, "--model.init_args.model_options", '{"kernal_size": 3}'], ["kernal_size"], run),
        "even attention window": Case([*fit, "--model.init_args.model_options", '{"kernel_size": 4}'], ["kernel_size", "odd"], run),
        "unknown attention backend in the environment": Case(fit, ["SASA_ATTENTION_BACKEND", "fast"], run,
                                                             env={"SASA_ATTENTION_BACKEND": "fast"}),
        "a GPU accelerator on a machine without one": Case([*fit, "--trainer.accelerator", "gpu"], ["gpu"], run),
        "batch size 0": Case([*fit, "--data.init_args.batch_size", "0"], ["batch_size", "at least 1"], run),
        "EMA decay above 1": Case([*fit, "--model.init_args.ema_decay", "1.5"], ["EMA decay", "1.5"], run),
        "--optimizer, which would replace the paper's parameter groups": Case([*fit, "--optimizer", "torch.optim.Adam"],
                                                                               ["--optimizer"], run),
        "--lr_scheduler, which would replace the paper's schedule": Case(
            [*fit, "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "3"], ["--lr_scheduler"], run),
        "an unknown tool": Case(["frobnicate"], ["frobnicate"]),
        "a table the paper does not have": Case(["summary", "--table", "9"], ["9"]),
        "an unknown benchmark": Case(["bench", "warp"], ["warp"]),
        # Data
        "FFCV file that does not exist": Case(
            ["fit", "--config", DIGITS, "--data", "sasa_lightning.data.FFCVImageNet", "--data.init_args.num_classes", "10",
             "--data.init_args.train_path", str(tmp / "missing.beton"), "--data.init_args.val_path", str(tmp / "missing.beton"),
             "--trainer.default_root_dir", str(tmp / "run")], ["missing.beton", "does not exist"], run),
        "a text file as an FFCV file": Case(
            ["fit", "--config", DIGITS, "--data", "sasa_lightning.data.FFCVImageNet", "--data.init_args.num_classes", "10",
             "--data.init_args.train_path", str(tmp / "text.beton"), "--data.init_args.val_path", str(tmp / "text.beton"),
             "--trainer.default_root_dir", str(tmp / "run")], ["text.beton", "not a readable FFCV file"], run),
        "image folder that does not exist": Case(_finetune(tmp, tmp / "nowhere"), ["nowhere", "does not exist"], run),
        "image folder without images": Case(_finetune(tmp, tmp / "no_images"), ["no_images", "holds no images"], run),
        "image folder with a corrupt image": Case([*_finetune(tmp, with_corrupt), "--data.init_args.batch_size", "4"],
                                                  ["broken.jpg", "cannot be read"], run, max_lines=None),
        "fewer images than one batch": Case([*_finetune(tmp, folder), "--data.init_args.batch_size", "64"],
                                           ["fewer than one batch"], run),
        # The FFCV writer
        "write-ffcv from a folder that does not exist": Case(["data", "write-ffcv", "--src", str(tmp / "nowhere"),
                                                             "--out", str(beton)], ["nowhere", "does not exist"], [beton]),
        "write-ffcv with a corrupt JPEG": Case(["data", "write-ffcv", "--src", str(with_corrupt), "--out", str(beton),
                                                "--num-workers", "2"], ["broken.jpg", "cannot be read"], [beton]),
        "write-ffcv with JPEG quality 0": Case([*write_ffcv, "--out", str(beton), "--jpeg-quality", "0"],
                                               ["jpeg_quality"], [beton]),
        "write-ffcv to a path under a file": Case([*write_ffcv, "--out", str(tmp / "a_file" / "x.beton")],
                                                  ["x.beton", "is a file", "a_file'"]),
        "write-ffcv to an existing folder": Case([*write_ffcv, "--out", str(tmp / "empty_folder")], ["empty_folder"]),
        # Checkpoints
        "--ckpt_path that does not exist": Case([*fit, "--ckpt_path", str(tmp / "gone.ckpt")], ["gone.ckpt", "does not exist"], run),
        "--ckpt_path to a text file": Case([*fit, "--ckpt_path", str(tmp / "text.ckpt")], ["text.ckpt", "not a PyTorch checkpoint"], run),
        "--ckpt_path to a truncated checkpoint": Case([*fit, "--ckpt_path", str(tmp / "truncated.ckpt")], ["truncated.ckpt"], run),
        "--ckpt_path of another model": Case([*fit, "--ckpt_path", str(r26), "--model.init_args.model", "sasa_resnet38"],
                                            ["r26.ckpt", "sasa_resnet38", "sasa_resnet26"], run),
        "--ckpt_path of a detector for the classifier": Case([*fit, "--ckpt_path", str(detector)], ["detector.ckpt", "detector"], run),
        "--ckpt_path to a folder without DeepSpeed": Case([*fit, "--ckpt_path", str(tmp / "empty_folder")],
                                                          ["empty_folder", "directory"], run),
        "--ckpt_path to a folder with DeepSpeed that is not a checkpoint": Case(
            [*fit, "--config", ZERO2, "--ckpt_path", str(tmp / "empty_folder")], ["empty_folder", "not a DeepSpeed checkpoint"], run),
        "init_from a checkpoint of another architecture": Case(
            [*fit, "--model.init_args.init_from", str(tmp / "small.ckpt")], ["small.ckpt", "different architecture"], run),
        "export of a folder that is not a DeepSpeed checkpoint": Case(["export", str(tmp / "empty_folder"), str(tmp / "x.ckpt")],
                                                                      ["empty_folder"], [tmp / "x.ckpt"]),
        "export of a file": Case(["export", str(tmp / "small.ckpt"), str(tmp / "x.ckpt")], ["small.ckpt"], [tmp / "x.ckpt"]),
        "export onnx of a detector": Case(["export", str(detector), str(tmp / "x.onnx"), "--format", "onnx"],
                                          ["detector.ckpt", "detector", "state_dict"], [tmp / "x.onnx"]),
        "export onnx of a checkpoint without its weights": Case(
            ["export", str(r26), str(tmp / "x.onnx"), "--format", "onnx"], ["r26.ckpt", "weights of its own model"],
            [tmp / "x.onnx"]),
        "export onnx of a plain state dict": Case(["export", str(tmp / "small.ckpt"), str(tmp / "x.onnx"), "--format", "onnx"],
                                                  ["small.ckpt", "names no model"], [tmp / "x.onnx"]),
        "export onnx of a truncated checkpoint": Case(
            ["export", str(tmp / "truncated.ckpt"), str(tmp / "x.onnx"), "--format", "onnx"], ["truncated.ckpt"],
            [tmp / "x.onnx"]),
        "export onnx at a size below 32": Case(["export", str(r26), str(tmp / "x.onnx"), "--format", "onnx", "--image-size", "8"],
                                               ["--image-size", "32", "8"], [tmp / "x.onnx"]),
        "export a program to a name without .pt2": Case(["export", str(r26), str(tmp / "x.zip"), "--format", "exported"],
                                                        ["x.zip", ".pt2"], [tmp / "x.zip"]),
        "export state_dict of a missing checkpoint": Case(
            ["export", str(tmp / "gone.ckpt"), str(tmp / "x.pt"), "--format", "state_dict"], ["gone.ckpt", "does not exist"],
            [tmp / "x.pt"]),
        "export in an unknown format": Case(["export", str(r26), str(tmp / "x.onnx"), "--format", "tflite"],
                                            ["--format", "tflite"], [tmp / "x.onnx"]),
        # COCO
        "COCO annotations that are not JSON": Case(_shapes(tmp, coco_not_json), ["instances_train2017.json", "not valid JSON"], run),
        "a COCO category id that is a string": Case(_shapes(tmp, coco_string_category), ["category", "'1'", "integer id"], run),
        "a COCO annotation of an image the file does not list": Case(_shapes(tmp, coco_unknown_image), ["image 7"], run),
        "predicting a folder with a corrupt image": Case(
            ["predict", "--config", SHAPES, "--data.init_args.root", str(coco_good),
             "--data.init_args.predict_dir", str(predict_corrupt), "--trainer.default_root_dir", str(tmp / "run")],
            ["broken.jpg"], [tmp / "run" / "detections.json"]),
        "predicting an empty folder": Case(
            ["predict", "--config", SHAPES, "--data.init_args.root", str(coco_good),
             "--data.init_args.predict_dir", str(tmp / "empty_folder"),
             "--trainer.default_root_dir", str(tmp / "run")], ["empty_folder", "no images"], [tmp / "run" / "detections.json"]),
        # Outputs
        "plot of a run that logged nothing": Case(["plot", str(tmp / "metrics_empty")], ["metrics.csv", "no rows"],
                                                  [tmp / "metrics_empty" / "curves.png"]),
        "plot of a folder without metrics": Case(["plot", str(tmp / "empty_folder")], ["metrics.csv"]),
        # Refused before the data set is written to a cache of its own (it used to be written first).
        "a run folder under a file": Case(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp / "a_file" / "run")],
                                          ["a_file", "is a file"], [tmp / "cache_of_the_run_under_a_file"],
                                          env={"SASA_CACHE": str(tmp / "cache_of_the_run_under_a_file")}),
        "make-shapes into a path under a file": Case(["data", "make-shapes", "--out", str(tmp / "a_file" / "shapes"),
                                                      "--train", "2", "--val", "1", "--image-size", "64"],
                                                     ["shapes", "is a file", "a_file'"]),
        "make-shapes of no images": Case(["data", "make-shapes", "--out", str(tmp / "shapes"), "--train", "0"],
                                         ["at least one image"], [tmp / "shapes"]),
    }


def _finetune(tmp: Path, images: Path) -> list[str]:
    return ["fit", "--config", FINETUNE, "--model.init_args.init_from", "null", "--data.init_args.train_dir", str(images),
            "--data.init_args.val_dir", str(images), "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(tmp / "run")]


def _shapes(tmp: Path, root: Path) -> list[str]:
    return ["fit", "--config", SHAPES, "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "1", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp / "run")]




@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    return tmp, cases(tmp)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return list(cases(Path(scratch)))


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_bad_input(name, inputs, cache):
    tmp, table = inputs
    run_case(table[name], tmp, cache)


# --- interruptions and a full disk ----------------------------------------------------------------

def test_the_nearest_init_arg_is_sought_among_named_parameters_only(monkeypatch):
    """A task or data class of a user's may take *args and **kwargs under any names: they are no options."""
    import types

    from sasa_lightning.cli.argument_errors import _init_args

    class Options:
        def __init__(self, lr_per_256: float, *extra, batch_size: int = 8, **rest):
            pass

    monkeypatch.setitem(sys.modules, "users_module", types.SimpleNamespace(Options=Options))
    assert _init_args("users_module.Options") == ["lr_per_256", "batch_size"]
    assert _init_args("users_module.Missing") == _init_args("no_such_module.Options") == []


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """Large images, each resized by the writer, so that writing them takes a few seconds (600 of
    256x256 took 0.6 s, too close to the moment the tests interrupt it). Smooth gradients rather
    than noise keep the files small (about 20 MB in all) and quick to make."""
    root = tmp_path_factory.mktemp("many") / "images"
    ramp = np.linspace(0, 255, 1280, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp[::-1], ramp) / 2, np.zeros((1280, 1280))], -1)
    pixels = pixels.astype(np.uint8)
    for label in range(2):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(300):
            pixels[..., 2] = index % 256  # images differ in their blue level
            Image.fromarray(pixels).save(root / f"c{label}" / f"{index}.jpg")
    return root


def start_writer(src: Path, out: Path, workers: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "sasa_lightning.cli", "data", "write-ffcv", "--src", str(src), "--out", str(out),
               "--num-workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=out.parent, preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    # A shell without job control starts background commands (`make test &`, CI runners) with
    # SIGINT ignored, and the writer would inherit that and rightly sit through a Ctrl-C: this
    # failed two fresh-clone runs started in the background. A terminal's child has the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_writing(process: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".{out.name}.partial*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # the workers have started; the write takes seconds more


@pytest.mark.slow
@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_an_interrupted_ffcv_write_stops_and_cleans_up(how, many_images, tmp_path):
    out = tmp_path / "train.beton"
    before = shm()
    process = start_writer(many_images, out)
    wait_until_writing(process, out)
    started = time.monotonic()
    if how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the whole foreground group
    else:
        process.send_signal(signal.SIGTERM)  # kill, or a scheduler's cancel: the parent alone
    stdout, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 10
    check_failure(process.returncode, stderr, stdout, Case([], ["interrupted"], [out], status=130), tmp_path, before)


@pytest.fixture(scope="module")
def thousands_of_images(tmp_path_factory):
    """3,000 small JPEGs: a few seconds to write with one worker, and more work queued up front than
    a pipe holds (30 chunks of 100 samples, about 360 KB against 64 KiB), which is what kept an
    interrupted writer from exiting: its queue's feeder thread, joined at exit, waited for a
    reader that was gone. The 600 images above stay under that."""
    root = tmp_path_factory.mktemp("thousands") / "images"
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(1000):
            Image.new("RGB", (48, 48), (index % 256, 80 * label, 120)).save(root / f"c{label}" / f"{index}.jpg")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM", "SIGKILL"])
def test_a_writer_with_more_work_queued_than_a_pipe_holds_ends_at_a_signal(how, thousands_of_images, tmp_path):
    out = tmp_path / "train.beton"
    before = shm()
    process = start_writer(thousands_of_images, out, workers=1)
    wait_until_writing(process, out)
    started = time.monotonic()
    {"Ctrl-C": lambda: os.killpg(process.pid, signal.SIGINT), "SIGTERM": lambda: process.send_signal(signal.SIGTERM),
     "SIGKILL": lambda: os.killpg(process.pid, signal.SIGKILL)}[how]()  # the group: its resource tracker too
    try:
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:  # hung: end it, so that the failure is all this test leaves
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - started < 10, f"the writer took {time.monotonic() - started:.0f} s to end"
    if how == "SIGKILL":
        deadline = time.monotonic() + 10
        while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes_mentioning(str(tmp_path)), "the writer's workers outlived it"
        assert shm() - before == set(), "a killed writer left shared memory behind"
        assert not out.exists()  # its partial file is the next write's to remove (test above)
    else:
        check_failure(process.returncode, stderr, stdout, Case([], ["interrupted"], [out], status=130), tmp_path, before)


@pytest.mark.slow
def test_a_killed_ffcv_write_leaves_no_worker_and_the_next_write_cleans_up(many_images, tmp_path):
    out = tmp_path / "train.beton"
    process = start_writer(many_images, out)
    wait_until_writing(process, out)
    process.kill()
    process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path)), "the writer's workers outlived it"
    assert not out.exists()
    from sasa_lightning.atomic import remove_stale_partials

    remove_stale_partials(out)  # what the next write of the same file does first
    assert not list(tmp_path.glob(".train.beton.partial*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system: writes to it run out of space. Mounting needs root, which CI and
    `make test` have (they install system packages); elsewhere there is no full disk to make."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    assert result.returncode == 0, f"cannot mount a small tmpfs as root: {result.stderr.decode().strip()}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_ffcv_writer_with_one_line(many_images, small_disk, tmp_path):
    out = small_disk / "train.beton"
    case = Case(["data", "write-ffcv", "--src", str(many_images), "--out", str(out), "--num-workers", "2"],
                ["No space left on device", "train.beton"], [out])
    run_case(case, tmp_path, tmp_path / "cache")
    assert not list(small_disk.iterdir())


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_line(small_disk, tmp_path):
    """The run trains, then its first checkpoint (~40 MB) does not fit: one line, no partial file."""
    case = Case(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(small_disk / "run"),
                 "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}'],
                ["No space left on device"], [small_disk / "run" / "checkpoints" / "last.ckpt"], max_lines=None)
    run_case(case, tmp_path, tmp_path / "cache")
