"""Embedded shapes data, COCO-at-a-path registration, SSD mapper."""
import json
import math
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from scratchdet.data import (
    SSDDatasetMapper,
    ShapesSpec,
    generate_shapes,
    register_coco_dataset,
    ssd_train_augmentations,
)
from scratchdet.data.shapes import ensure_shapes


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes") / "ds")
    return out, generate_shapes(ShapesSpec(num_images=120, seed=3), out)


def test_shapes_meets_the_difficulty_floor(small_shapes):
    out, ann = small_shapes
    d = json.load(open(ann))
    assert len(d["categories"]) >= 3
    assert all(im["height"] >= 160 and im["width"] >= 160 for im in d["images"])
    per_image = {im["id"]: 0 for im in d["images"]}
    for a in d["annotations"]:
        per_image[a["image_id"]] += 1
    counts = np.array(list(per_image.values()))
    assert counts.min() == 0 and counts.max() <= 6 and (counts == 0).mean() < 0.3
    longest = np.array([max(a["bbox"][2], a["bbox"][3]) for a in d["annotations"]])
    assert longest.min() >= 7 and longest.max() <= 82
    # log-uniform: about as many objects below the geometric mean size as above
    gmean = math.sqrt(8 * 80)
    assert 0.35 < (longest < gmean).mean() < 0.65
    assert {a["category_id"] for a in d["annotations"]} == {1, 2, 3}
    # textured backgrounds: an empty image is far from flat
    import cv2
    empty = next(i for i, c in per_image.items() if c == 0)
    img = cv2.imread(os.path.join(out, "images", f"{empty - 1:06d}.jpg"))
    assert img.std() > 10


def test_shapes_boxes_are_tight_around_the_drawn_object(small_shapes):
    out, ann = small_shapes
    import cv2
    d = json.load(open(ann))
    a = max(d["annotations"], key=lambda a: a["area"])  # a large, unambiguous object
    img = cv2.imread(os.path.join(out, "images", f"{a['image_id'] - 1:06d}.jpg")).astype(float)
    x, y, w, h = [int(round(v)) for v in a["bbox"]]
    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_BGR2HSV)
    sat = hsv[..., 1] > 120
    inside = sat[y:y + h, x:x + w]
    # the object's saturated pixels touch all four sides of its box
    assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_shapes_objects_overlap_at_most_max_overlap_iou(small_shapes):
    """Boxes are amodal, so each pair of boxes of an image keeps the IoU it had when the
    later one was accepted: at most ShapesSpec.max_overlap_iou (0.2), and some pairs do
    overlap."""
    import torch
    from torchvision.ops import box_convert, box_iou

    per_image = {}
    for a in json.load(open(small_shapes[1]))["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    overlapping = 0
    for boxes in per_image.values():
        xyxy = box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy")
        iou = box_iou(xyxy, xyxy).fill_diagonal_(0.0)
        assert iou.max() <= 0.2 + 1e-9, boxes
        overlapping += int((iou > 0).sum()) // 2
    assert overlapping >= 10


def test_shapes_is_deterministic_and_registered(tmp_path):
    a = generate_shapes(ShapesSpec(num_images=5, seed=9), str(tmp_path / "a"))
    b = generate_shapes(ShapesSpec(num_images=5, seed=9), str(tmp_path / "b"))
    assert json.load(open(a))["annotations"] == json.load(open(b))["annotations"]
    dicts = DatasetCatalog.get("scratchdet_shapes_val")
    assert len(dicts) == 200
    meta = MetadataCatalog.get("scratchdet_shapes_val")
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert os.path.isfile(meta.json_file)
    assert not [p for p in os.listdir(os.path.dirname(meta.json_file)) if p.startswith(".tmp")]


def test_shapes_split_keeps_its_directory_when_the_cache_variable_changes(tmp_path, monkeypatch):
    """The metadata that COCOEvaluator reads and the data DatasetCatalog loads are the
    same files, fixed at registration, whatever $SCRATCHDET_CACHE says later."""
    meta = MetadataCatalog.get("scratchdet_shapes_val")
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("SCRATCHDET_CACHE", str(elsewhere))
    dicts = DatasetCatalog.get("scratchdet_shapes_val")
    assert os.path.isfile(meta.json_file)
    assert {os.path.dirname(d["file_name"]) for d in dicts} == {meta.image_root}
    assert not elsewhere.exists()
    assert ensure_shapes("scratchdet_shapes_val") == meta.json_file
    with open(meta.json_file) as f:
        assert len(json.load(f)["images"]) == len(dicts) == 200


def test_register_coco_at_a_path(coco_mini):
    ann = os.path.join(coco_mini, "annotations", "instances_val2017.json")
    register_coco_dataset("test_coco_mini_val", ann, os.path.join(coco_mini, "val2017"))
    dicts = DatasetCatalog.get("test_coco_mini_val")
    assert len(dicts) == 79 and os.path.isfile(dicts[0]["file_name"])
    assert len(MetadataCatalog.get("test_coco_mini_val").thing_classes) == 80
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_coco_dataset("x", "/nope.json", coco_mini)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        register_coco_dataset("x", ann, "/no_such_dir")


def test_ssd_mapper_keeps_boxes_on_their_objects(small_shapes):
    """After the whole SSD300 pipeline, every box still frames its saturated object."""
    out, ann = small_shapes
    from detectron2.data.datasets import load_coco_json
    import cv2
    dicts = [d for d in load_coco_json(ann, os.path.join(out, "images"))
             if len(d["annotations"])]
    mapper = SSDDatasetMapper(is_train=True, image_format="BGR",
                              augmentations=ssd_train_augmentations(300))
    np.random.seed(0)
    checked = 0
    for d in dicts[:40]:
        r = mapper(d)
        img = r["image"].numpy().transpose(1, 2, 0)
        assert img.shape == (300, 300, 3)
        boxes = r["instances"].gt_boxes.tensor.numpy()
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 300
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            if (x1 - x0) > 12 and (y1 - y0) > 12:
                # box centre of a convex shape lies on the object; colour is saturated
                patch = img[cy - 1:cy + 2, cx - 1:cx + 2].astype(np.uint8)
                hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
                assert np.median(hsv[..., 1]) > 60
                checked += 1
    assert checked > 20


# -- instance masks of the shapes data ----------------------------------------------------------
def test_shapes_masks_leave_images_and_boxes_as_they_were(tmp_path):
    """The masks (spec version 2) draw no random numbers: JPEG bytes, boxes and areas are
    those version 1 generated (digests taken from the version-1 generator)."""
    import hashlib

    out = str(tmp_path / "s")
    d = json.load(open(generate_shapes(ShapesSpec(num_images=16, seed=7, image_size=96,
                                                   min_size=4.0), out)))
    h = hashlib.sha1()
    for im in d["images"]:
        with open(os.path.join(out, "images", im["file_name"]), "rb") as f:
            h.update(f.read())
    boxes = [[a["image_id"], a["category_id"], a["bbox"], a["area"]] for a in d["annotations"]]
    assert len(boxes) == 55
    assert h.hexdigest() == "be58b724d9232bc03730c6531ec73b13aaf84808"
    assert hashlib.sha1(json.dumps(boxes).encode()).hexdigest() == \
        "2a8147ae4a837ab5a405d68cf35fe4702bf7a288"


def test_shapes_masks_are_exactly_the_drawn_pixels(monkeypatch):
    """Each object's polygon, rasterised by pycocotools, is exactly the pixel set OpenCV
    painted for it (amodal, so unoccluded or not), and its extent is the box."""
    from pycocotools import mask as mask_util

    from scratchdet.data import shapes

    drawn = []
    draw = shapes._draw_object

    def recording(*args, **kwargs):
        mask, color = draw(*args, **kwargs)
        drawn.append(mask)
        return mask, color

    monkeypatch.setattr(shapes, "_draw_object", recording)
    spec = ShapesSpec(num_images=40, seed=5, min_size=4.0)
    rng = np.random.default_rng(spec.seed)
    sizes, n = [], 0
    for _ in range(spec.num_images):
        drawn.clear()
        _, objects = shapes._make_image(rng, spec)
        for cls_idx, box, poly in objects:
            mask = next(m for m in drawn if _tight_box(m) == box)  # its accepted draw
            rle = mask_util.merge(mask_util.frPyObjects([poly.ravel().tolist()], *mask.shape))
            assert np.array_equal(mask_util.decode(rle).astype(bool), mask)
            assert [poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(),
                    poly[:, 1].max()] == box
            sizes.append(max(box[2] - box[0], box[3] - box[1]))
            n += 1
    assert n > 80 and min(sizes) <= 5 and max(sizes) >= 60  # tiny and large ones


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_shapes_segm_of_the_ground_truth_scores_ap_1(small_shapes):
    """COCO ``segm`` evaluation of the ground truth against itself gives AP 1.0, and the
    annotations' masks are consistent with their boxes."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out, ann = small_shapes
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann)
        anns = gt.loadAnns(gt.getAnnIds())
        assert all(a["segmentation"] and len(a["segmentation"][0]) >= 8 for a in anns)
        for a in anns:
            x, y, w, h = a["bbox"]
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(poly.min(0), [x, y]) and np.allclose(poly.max(0), [x + w, y + h])
        res = gt.loadRes([dict(image_id=a["image_id"], category_id=a["category_id"],
                               segmentation=gt.annToRLE(a), score=1.0) for a in anns])
        ev = COCOeval(gt, res, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
