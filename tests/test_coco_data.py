"""COCO-layout detection data: reading, bad input, augmentation and batching, on real files."""

import json

import pytest
import torch
from PIL import Image

from sasa_lightning.data.coco import load_coco
from sasa_lightning.data.coco_module import COCODetectionData, train_transform
from sasa_lightning.data.errors import DataError
from sasa_lightning.data.shapes import make_shapes


def write_coco(root, annotations, images=((1, 64, 48), (2, 48, 64)), categories=((3, "cat"), (7, "dog")), split="val2017"):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for image_id, width, height in images:
        Image.new("RGB", (width, height), (image_id * 40, 90, 30)).save(root / split / f"{image_id}.jpg")
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, w, h in images],
            "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
            "categories": [{"id": c, "name": name} for c, name in categories]}
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_tooling_rules_degenerate_outside_crowd_empty_and_category_gaps(tmp_path):
    path = write_coco(tmp_path, [
        {"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [50, 40, 30, 30]},   # partly outside: clipped to 64x48
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},      # zero width: dropped
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, -4, 10]},     # negative: dropped
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 8, 8], "iscrowd": 1},
    ])
    with pytest.warns(UserWarning, match=r"2 box\(es\) .* have no area"):
        index = load_coco(path, tmp_path / "val2017")
    assert index.category_ids == [3, 7] and index.category_names == ["cat", "dog"]  # label -> COCO id
    first, second = index.images
    assert first.boxes == [[10, 5, 30, 15], [50, 40, 64, 48], [1, 1, 9, 9]]
    assert first.labels == [1, 0, 1] and first.crowd == [False, False, True]
    assert second.boxes == []  # an image without objects stays

    from sasa_lightning.data.coco import CocoDetection

    image, target = CocoDetection(index, train=True)[0]
    assert image.shape == (3, 48, 64) and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [1, 0] and not target["iscrowd"].any()  # crowd boxes are not trained on
    assert CocoDetection(index)[0][1]["iscrowd"].tolist() == [False, False, True]  # but kept for evaluation


@pytest.mark.parametrize("break_it, message", [
    (lambda root, path: path.write_text('{"images": ['), "is not valid JSON"),
    (lambda root, path: path.write_text('{"images": []}'), "has no annotations, categories"),
    (lambda root, path: (root / "val2017" / "2.jpg").unlink(), r"1 image\(s\) listed in .* are missing, e.g. .*2.jpg"),
    (lambda root, path: path.write_text(path.read_text().replace('"category_id": 7', '"category_id": 9')),
     "names category 9, which the file does not list"),
    (lambda root, path: path.write_text(path.read_text().replace('"image_id": 1', '"image_id": 5')),
     "names image 5, which the file does not list"),
    (lambda root, path: path.write_text(path.read_text().replace('"category_id": 7', '"category_id": "7"')),
     r"has category_id '7', a str; COCO's ids are integers \(e.g. \"category_id\": 3, not \"3\"\)"),
    (lambda root, path: path.write_text(path.read_text().replace('"image_id": 1', '"image_id": 1.0')),
     "has image_id 1.0, a float; COCO's ids are integers"),
    (lambda root, path: path.write_text(path.read_text().replace("[10, 5, 20, 10]", "[10, 5, 20]")),
     r"has bbox \[10, 5, 20\]; expected \[x, y, width, height\]"),
])
def test_bad_annotation_files_are_one_clear_error(tmp_path, break_it, message):
    path = write_coco(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]}])
    break_it(tmp_path, path)
    with pytest.raises(DataError, match=message):
        load_coco(path, tmp_path / "val2017")


def test_train_augmentation_jitters_crops_to_the_max_side_and_keeps_boxes_on_the_image():
    from torchvision import tv_tensors

    torch.manual_seed(0)
    transform = train_transform(max_size=64, scale_range=(0.5, 2.0), flip=0.5)
    for _ in range(20):
        image = tv_tensors.Image(torch.randint(0, 255, (3, 80, 120), dtype=torch.uint8))
        boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 30, 30], [60, 40, 119, 79]]), format="XYXY", canvas_size=(80, 120))
        out, target = transform(image, {"boxes": boxes, "labels": torch.tensor([0, 1]), "iscrowd": torch.tensor([False, True])})
        height, width = out.shape[-2:]
        assert height <= 64 and width <= 64
        b = target["boxes"]
        assert len(b) == len(target["labels"]) == len(target["iscrowd"])
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= width).all() and (b[:, 3] <= height).all()


def test_data_module_batches_the_generated_shapes(tmp_path):
    root = make_shapes(tmp_path / "shapes", train_images=12, val_images=5, image_size=96)
    data = COCODetectionData(str(root), batch_size=4, num_workers=0, max_size=96)
    assert data.num_classes == 3 and data.category_names == ["circle", "square", "triangle"]
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    images, targets = batches[0]
    assert len(images) == len(targets) == 4 and all(i.shape[0] == 3 and max(i.shape[1:]) <= 96 for i in images)
    val_images = [image_id for _, targets in data.val_dataloader() for image_id in (t["image_id"] for t in targets)]
    assert sorted(val_images) == list(range(13, 18))  # every validation image once


def test_fewer_training_images_than_a_batch_is_one_line(tmp_path):
    root = make_shapes(tmp_path / "shapes", train_images=2, val_images=1, image_size=64)
    with pytest.raises(DataError, match="train2017 has 2 images, fewer than one batch of 4"):
        COCODetectionData(str(root), batch_size=4).setup("fit")


def test_images_decode_without_deprecated_apis_and_a_broken_one_is_one_line(tmp_path):
    import warnings

    from sasa_lightning.data.coco import CocoDetection

    path = write_coco(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]}],
                      images=((1, 64, 48), (2, 48, 64), (3, 32, 32)))
    (tmp_path / "val2017" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    index = load_coco(path, tmp_path / "val2017")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's decode_image warned of its deprecation on every image
        image, _ = CocoDetection(index)[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert image[0].mean().item() == pytest.approx(40 / 255, abs=0.02)  # the colour write_coco drew, RGB order
    with pytest.raises(DataError, match=r"image '.*3\.jpg' cannot be read .*; remove or replace it"):
        CocoDetection(index)[2]
