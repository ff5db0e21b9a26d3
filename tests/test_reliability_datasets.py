"""Reliability of the data path: images without annotations, crowd-only and degenerate
boxes, missing, unreadable and corrupt images, missing or malformed datasets. Everything
runs the real code: Detectron2's loaders and mappers (through the configs), the real
models, the real prior estimator."""
import itertools
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import SimpleTrainer
from detectron2.structures import Boxes, Instances

from conftest import REPO, register_coco
from scratchdet.data import ImageReadError, register_coco_dataset, register_datasets_from_config
from scratchdet.engine import load_config
from scratchdet.sampling_free import (
    AnchorCounter,
    count_dataset,
    estimate_priors,
    initialize_priors,
    prior_heads,
)

CFG = os.path.join(REPO, "configs")
FOCAL_DEMO = os.path.join(CFG, "shapes", "scratchdet_root_resnet18_fpn_demo.py")
SF_DEMO = os.path.join(CFG, "shapes", "sampling_free_root_resnet18_fpn_demo.py")
SF_RCNN = os.path.join(CFG, "COCO", "sampling_free_faster_rcnn_R_50_FPN_1x.py")
SF_COCO_MINI = os.path.join(CFG, "coco_mini", "sampling_free_root_resnet18_fpn_coco_mini.py")


# -- helpers ----------------------------------------------------------------------------
def _write_coco(root, images, categories=("circle", "square", "triangle")):
    """A COCO dataset under ``root``: ``images`` is a list of (h, w, annotations) with
    annotations as (bbox XYWH, category index, iscrowd). Returns (json_file, image_root)."""
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    out = dict(images=[], annotations=[],
               categories=[dict(id=i + 1, name=n) for i, n in enumerate(categories)])
    for i, (h, w, annos) in enumerate(images):
        name = f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(img_dir, name))
        out["images"].append(dict(id=i + 1, file_name=name, height=h, width=w))
        for box, cat, crowd in annos:
            out["annotations"].append(dict(
                id=len(out["annotations"]) + 1, image_id=i + 1, bbox=list(map(float, box)),
                category_id=cat + 1, iscrowd=crowd, area=float(abs(box[2] * box[3]))))
    json_file = os.path.join(root, "ann.json")
    with open(json_file, "w") as f:
        json.dump(out, f)
    return json_file, img_dir


def _shapes_dicts(n=40):
    return DatasetCatalog.get("scratchdet_shapes_val")[:n]


def _set_prior_from_data(cfg, model):
    """The real estimator on a sample of the shapes data (COCO models: 80 classes, the
    shapes boxes then count as classes 0..2)."""
    counts = initialize_priors(cfg, model, dataset_dicts=_shapes_dicts(), use_cache=False,
                               progress=False)
    assert all(0 < c.prior < 1 for c in counts.values())


def _rcnn_model(stock: bool):
    """The SF Faster R-CNN config's model, or (stock) the Detectron2 Faster R-CNN it is
    built from (as benchmarks/train_step.py builds it); 100 proposals, so that a CPU step
    is quick."""
    cfg = load_config(SF_RCNN)
    if stock:
        from detectron2.model_zoo import get_config

        m = get_config("common/models/mask_rcnn_fpn.py").model
        m.roi_heads.mask_in_features = m.roi_heads.mask_pooler = m.roi_heads.mask_head = None
        m.backbone.bottom_up.freeze_at = 2
        cfg.model = m
    # no ImageNet weights here: train-mode BN instead of FrozenBN keeps a random R50's
    # activations (and losses) at a sane scale
    cfg.model.backbone.bottom_up.stem.norm = "BN"
    cfg.model.backbone.bottom_up.stages.norm = "BN"
    cfg.model.proposal_generator.post_nms_topk = (100, 100)
    cfg.model.proposal_generator.pre_nms_topk = (200, 200)
    return cfg


def _build(head):
    torch.manual_seed(0)
    if head in ("focal_retinanet", "sf_retinanet"):
        cfg = load_config(FOCAL_DEMO if head == "focal_retinanet" else SF_DEMO)
    else:
        cfg = _rcnn_model(stock=head == "faster_rcnn")
    cfg.dataloader.train.dataset.names = "scratchdet_shapes_val"
    model = instantiate(cfg.model).train()
    if prior_heads(model):
        _set_prior_from_data(cfg, model)
    return cfg, model


def _train_steps(model, batches, steps=3, lr=0.01):
    """``steps`` SimpleTrainer iterations over ``batches``: the loss histories, and
    whether every gradient was finite and some parameter moved."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optim = torch.optim.SGD(params, lr=lr, momentum=0.9)
    trainer = SimpleTrainer(model, itertools.cycle(batches), optim)
    trainer.train(0, steps)
    hist = {k: [x for x, _ in v.values()] for k, v in trainer.storage.histories().items()
            if k.startswith("loss") or k == "total_loss"}
    grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    moved = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    return hist, grads_finite, moved


def _empty_batch(n=2, size=128):
    g = torch.Generator().manual_seed(1)
    return [dict(image=(torch.rand(3, size, size, generator=g) * 255),
                 instances=Instances((size, size), gt_boxes=Boxes(torch.zeros(0, 4)),
                                     gt_classes=torch.zeros(0, dtype=torch.int64)))
            for _ in range(n)]


# -- 1. images without annotations ------------------------------------------------------
@pytest.mark.parametrize("head", ["focal_retinanet", "sf_retinanet", "sf_faster_rcnn",
                                  "faster_rcnn"])
def test_batches_without_any_box_train_every_head(head):
    """Batches where no anchor and no proposal is positive, for every head: every loss
    finite (the box losses exactly 0), gradients finite, training continues. From the
    very first step (the Sampling-Free heads' guided scaling has no box loss to scale
    to yet, so their classification loss is 0 until the first positive), and after a
    batch with a box (then every head learns background from empty batches: the loss
    is positive and the weights move; a stock R-CNN's ROI classifier may already be
    confident to float precision)."""
    _, model = _build(head)
    lr = 1e-3 if "rcnn" in head else 1e-2
    hist, grads_finite, _ = _train_steps(model, [_empty_batch()], steps=2, lr=lr)
    assert len(hist["total_loss"]) == 2 and grads_finite
    assert all(np.isfinite(v).all() for v in hist.values()), hist
    cls = [k for k in hist if k in ("loss_cls", "loss_rpn_cls")]
    if prior_heads(model):
        assert all(max(hist[k]) == 0 for k in cls), hist
    else:
        assert all(min(hist[k]) > 0 for k in cls), hist
    # one batch with a box, then empty batches only
    positive = _empty_batch()
    positive[0]["instances"] = Instances((128, 128), gt_boxes=Boxes(torch.tensor(
        [[20.0, 30.0, 90.0, 100.0]])), gt_classes=torch.tensor([1]))
    _train_steps(model, [positive], steps=1, lr=lr)
    hist, grads_finite, moved = _train_steps(model, [_empty_batch()], steps=3, lr=lr)
    assert all(np.isfinite(v).all() for v in hist.values()) and grads_finite, hist
    box = [k for k in hist if k in ("loss_box_reg", "loss_rpn_loc")]
    assert box and all(max(hist[k]) == 0 for k in box), {k: hist[k] for k in box}
    assert all(min(hist[k]) >= 0 for k in cls) and min(hist["total_loss"]) > 0, hist
    if prior_heads(model):
        # guided scaling falls back to the running ratio: not 0, unless the plain
        # cross-entropy itself is 0 (a box classifier confident to float precision)
        for k in cls:
            plain = hist.get("loss_cls_unscaled") if k == "loss_cls" else None
            for i, v in enumerate(hist[k]):
                assert v > 0 or (plain is not None and plain[i] == 0), (k, i, hist)
        assert max(max(hist[k]) for k in cls) > 0, hist
    assert moved > 0


def test_loader_with_empty_images_filter_off_and_on(tmp_path):
    """Through the config's own loader (Detectron2's mapper): with
    ``dataset.filter_empty=False`` images without boxes (none, or only crowd ones) reach
    the model as empty Instances and training continues with finite losses; with the
    default filter they are dropped, and a dataset of only such images is refused
    before training with Detectron2's message naming it (and its prior, 0, with ours)."""
    box = [((20, 10, 50, 40), 1, 0)]
    json_file, root = _write_coco(str(tmp_path / "some"), [
        (96, 128, box), (96, 128, []), (96, 128, []), (96, 128, [((10, 10, 40, 40), 0, 1)]),
        (96, 128, box)])
    register_coco("rel_some_empty", json_file, root)
    cfg, model = _build("sf_retinanet")
    d = cfg.dataloader.train
    d.dataset.names = "rel_some_empty"
    d.total_batch_size = 4
    d.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=128)]
    d.dataset.filter_empty = False
    assert len(instantiate(d.dataset)) == 5
    batches = list(itertools.islice(iter(instantiate(d)), 3))
    assert all(len(b) == 4 for b in batches)
    assert all(any(len(x["instances"]) == 0 for x in b) for b in batches)  # 3 of 5 are empty
    hist, grads_finite, moved = _train_steps(model, batches, steps=3)
    assert all(np.isfinite(v).all() for v in hist.values()) and grads_finite and moved, hist
    assert min(hist["loss_cls"]) > 0
    d.dataset.filter_empty = True
    assert [len(x["annotations"]) for x in instantiate(d.dataset)] == [1, 1]
    # a dataset where every image is empty
    json_file, root = _write_coco(str(tmp_path / "none"), [
        (96, 128, []), (128, 96, []), (112, 112, [((10, 10, 40, 40), 0, 1)])])
    register_coco("rel_all_empty", json_file, root)
    d.dataset.names = "rel_all_empty"
    with pytest.raises(AssertionError, match="No valid data found in rel_all_empty"):
        instantiate(d)
    d.dataset.filter_empty = False
    with pytest.raises(ValueError, match="prior must be in"):
        initialize_priors(cfg, instantiate(cfg.model), use_cache=False, progress=False)


# -- 2. crowd-only, degenerate and outside boxes ----------------------------------------
DEGENERATE = [
    (128, 160, [((20, 20, 50, 40), 0, 1), ((60, 30, 40, 40), 2, 1)]),  # crowd only
    (128, 160, [((30, 30, 0, 40), 0, 0), ((50, 50, 30, 0), 1, 0),  # zero area
                ((100, 60, -30, 30), 1, 0), ((90, 100, 20, -25), 2, 0),  # negative w / h
                ((10, 10, 60, 50), 0, 0)]),  # and an ordinary box
    (128, 160, [((-20, -10, 60, 50), 0, 0), ((130, 90, 60, 60), 1, 0),  # partly outside
                ((170, 20, 30, 30), 2, 0), ((-80, 140, 40, 40), 0, 0)]),  # wholly outside
]


@pytest.mark.parametrize("head", ["sf_retinanet", "sf_faster_rcnn"])
def test_degenerate_boxes_train_finitely_and_count_as_training_labels_them(tmp_path, head):
    """Crowd-only images, zero and negative width/height, boxes partly or wholly outside
    the image: Detectron2's mapper drops the crowd boxes, clips, orders and filters the
    rest; a training step on its output has finite losses; and the prior estimator
    counts, for each such image, exactly the foreground and non-ignored anchors that the
    model's own labelling (RetinaNet ``label_anchors``, RPN ``label_and_sample_anchors``)
    gives on the mapper's output."""
    json_file, root = _write_coco(str(tmp_path / "degenerate"), DEGENERATE)
    register_coco("rel_degenerate", json_file, root)
    cfg, model = _build(head)
    cfg.dataloader.train.dataset.names = "rel_degenerate"
    cfg.dataloader.train.dataset.filter_empty = False
    dicts = instantiate(cfg.dataloader.train.dataset)
    assert len(dicts) == 3
    augs = [T.ResizeShortestEdge(96, 200)]  # fixed size, no flip: the counted image
    mapper = DatasetMapper(is_train=True, augmentations=augs, image_format="BGR")
    (name, gen, matcher, head_classes, owner), = prior_heads(model)
    num_classes = model.num_classes if name == "retinanet" else model.roi_heads.num_classes
    counter = AnchorCounter(gen, matcher, num_classes, model.backbone.size_divisibility)
    mapped, expected = [], []
    for d in dicts:
        out = mapper(dict(d))
        inst = out["instances"]
        boxes = inst.gt_boxes.tensor
        assert torch.isfinite(boxes).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()  # ordered, non-empty, clipped
        assert (boxes[:, 0::2] <= inst.image_size[1]).all() and (boxes >= 0).all()
        anchors = [Boxes(a) for a in gen._grid_anchors(
            [list(g) for g in counter.grid_sizes(*inst.image_size)])]
        with torch.no_grad():
            if name == "retinanet":
                labels = model.label_anchors(anchors, [inst])[0][0]
                fg = (labels >= 0) & (labels < num_classes)
            else:
                labels = owner.label_and_sample_anchors(anchors, [inst])[0][0]
                fg = labels == 1
        c = count_dataset([d], counter, augs, head_classes, progress=False)
        expected.append((int(fg.sum()), int((labels != -1).sum())))
        assert (c.num_foreground, c.num_valid) == expected[-1], (d["file_name"], len(inst))
        mapped.append(out)
    # crowd only: none; the ordinary box and the two negative ones, ordered: 3; 2 clipped
    assert [len(m["instances"]) for m in mapped] == [0, 3, 2]
    assert expected[0][0] == 0 and expected[1][0] > 0 and expected[2][0] > 0
    hist, grads_finite, _ = _train_steps(model, [mapped[:2], mapped[1:]], steps=2)
    assert all(np.isfinite(v).all() for v in hist.values()) and grads_finite


# -- 3. missing, unreadable and corrupt images ------------------------------------------
def _broken_coco_mini(coco_mini, tmp_path, n=6):
    """coco_mini val's first ``n`` images copied to tmp_path; then image 0 deleted, image 1
    truncated to half its bytes, image 2 replaced by text, image 3 made unreadable.
    Returns (json_file, image_root, the image paths)."""
    with open(os.path.join(coco_mini, "annotations", "instances_val2017.json")) as f:
        d = json.load(f)
    keep = d["images"][:n]
    ids = {im["id"] for im in keep}
    d = dict(d, images=keep, annotations=[a for a in d["annotations"] if a["image_id"] in ids])
    root = tmp_path / "images"
    root.mkdir()
    for im in keep:
        shutil.copy(os.path.join(coco_mini, "val2017", im["file_name"]), root / im["file_name"])
    files = [str(root / im["file_name"]) for im in keep]
    os.unlink(files[0])
    data = open(files[1], "rb").read()
    open(files[1], "wb").write(data[: len(data) // 2])
    open(files[2], "w").write("not an image\n")
    if n > 3:
        os.chmod(files[3], 0)  # no effect as root
    json_file = str(tmp_path / "instances.json")
    with open(json_file, "w") as f:
        json.dump(d, f)
    return json_file, str(root), files


def _only(names, file_name):
    """The dataset ``names`` reduced to the image ``file_name`` (a config's dataset)."""
    return [d for d in DatasetCatalog.get(names) if d["file_name"] == file_name]


@pytest.mark.parametrize("split", ["train", "test"])
def test_unreadable_images_are_named_with_their_dataset(coco_mini, tmp_path, split):
    """The config's train and test loaders (Detectron2's mapper, wrapped) raise
    ImageReadError (an OSError) naming the file and the dataset, for a missing file, a
    truncated JPEG, a file that is not an image, and one without read permission."""
    json_file, root, files = _broken_coco_mini(coco_mini, tmp_path)
    register_coco("rel_broken_images", json_file, root)
    cfg = load_config(SF_COCO_MINI)
    d = cfg.dataloader[split]
    d.dataset.names = "rel_broken_images"
    d.num_workers = 0
    broken = files[:3] + ([files[3]] if os.geteuid() != 0 else [])  # root reads anything
    for f in broken:
        d.dataset = L(_only)(names="rel_broken_images", file_name=f)
        if split == "train":
            d.total_batch_size = 1
            d.aspect_ratio_grouping = False
        with pytest.raises(ImageReadError) as e:
            next(iter(instantiate(d)))
        msg = str(e.value)
        assert f in msg and "'rel_broken_images'" in msg, msg
        assert isinstance(e.value, OSError) and isinstance(e.value.__cause__, OSError)
    # the readable images still load
    d.dataset = L(_only)(names="rel_broken_images", file_name=files[4])
    assert next(iter(instantiate(d)))[0]["image"].shape[0] == 3


def test_unreadable_image_named_from_a_loader_worker(coco_mini, tmp_path):
    """With a worker process, the error re-raised in the main process still names both."""
    json_file, root, files = _broken_coco_mini(coco_mini, tmp_path, n=3)
    register_coco("rel_broken_images_w", json_file, root)
    cfg = load_config(SF_COCO_MINI)
    d = cfg.dataloader.train
    d.dataset.names = "rel_broken_images_w"
    d.num_workers = 1
    d.total_batch_size = 1
    d.dataset.filter_empty = False
    with pytest.raises(OSError) as e:
        for _ in zip(range(3), iter(instantiate(d))):
            pass
    assert "rel_broken_images_w" in str(e.value) and any(f in str(e.value) for f in files[:3])


def test_prior_needs_no_pixels(coco_mini, tmp_path):
    """estimate_priors on coco_mini val's annotations whose images are missing, truncated
    or unreadable: no error, and exactly the counts of the intact dataset."""
    json_file, root, _ = _broken_coco_mini(coco_mini, tmp_path, n=79)
    for f in os.listdir(root)[4:]:
        os.unlink(os.path.join(root, f))
    register_coco("rel_pixelless", json_file, root)
    cfg = load_config(SF_COCO_MINI)
    model = instantiate(cfg.model)
    cfg.dataloader.train.dataset.names = "rel_pixelless"
    broken = estimate_priors(cfg, model, use_cache=False, progress=False)["retinanet"]
    register_datasets_from_config(cfg.datasets)
    cfg.dataloader.train.dataset.names = "coco_mini_val"
    intact = estimate_priors(cfg, model, use_cache=False, progress=False)["retinanet"]
    assert broken.num_images == intact.num_images == 79
    assert (broken.num_foreground, broken.num_valid, broken.per_class) == \
        (intact.num_foreground, intact.num_valid, intact.per_class)
    assert 0 < broken.prior < 1


# -- 4. missing or malformed datasets ---------------------------------------------------
def _valid_coco():
    return dict(images=[dict(id=1, file_name="a.jpg", height=32, width=32)],
                annotations=[dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 10, 10],
                                  iscrowd=0, area=100)],
                categories=[dict(id=1, name="thing")])


@pytest.mark.parametrize("content, pattern", [
    ("[]", r"top level is a JSON list"),
    ("{not json", r"not valid JSON"),
    (dict(images=[], categories=[]), r"missing key\(s\) \['annotations'\]"),
    (dict(annotations=[], categories=[]), r"missing key\(s\) \['images'\]"),
    (dict(_valid_coco(), categories={"1": "thing"}), r"'categories' is a dict, not a list"),
    (dict(_valid_coco(), images=[dict(id=1, file_name="a.jpg")]),
     r"1 of 1 images lack one of \['id', 'file_name', 'height', 'width'\]"),
    (dict(_valid_coco(), annotations=_valid_coco()["annotations"] + [
        dict(id=2, image_id=7, category_id=1, bbox=[0, 0, 5, 5], iscrowd=0)]),
     r"1 of 2 annotations' image_id points at an unknown image id; the first is "
     r"annotations\[1\] with id=2, image_id=7"),
    (dict(_valid_coco(), annotations=[dict(id=1, image_id=1, category_id=3, bbox=[0, 0, 5, 5])]),
     r"category_id points at an unknown category id.*category_id=3"),
    (dict(_valid_coco(), annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 5])]),
     r"bbox is not a list of 4 numbers"),
], ids=["list", "not_json", "no_annotations", "no_images", "categories_dict", "image_fields",
        "unknown_image_id", "unknown_category_id", "bad_bbox"])
def test_malformed_annotation_file_fails_before_training(tmp_path, content, pattern):
    """A JSON that is not COCO instances format: registration succeeds (it reads no JSON),
    and the first DatasetCatalog.get, which building the train loader or counting the
    prior does before the first iteration, raises ValueError naming the dataset, the file
    and what is wrong."""
    json_file = tmp_path / "bad.json"
    json_file.write_text(content if isinstance(content, str) else json.dumps(content))
    (tmp_path / "img").mkdir()
    register_coco("rel_malformed", str(json_file), str(tmp_path / "img"))
    cfg = load_config(SF_DEMO)
    cfg.dataloader.train.dataset.names = "rel_malformed"
    for build in (lambda: instantiate(cfg.dataloader.train),
                  lambda: estimate_priors(cfg, instantiate(cfg.model), progress=False)):
        with pytest.raises(ValueError, match=pattern) as e:
            build()
        assert "'rel_malformed'" in str(e.value) and str(json_file) in str(e.value)
    # the valid file loads
    json_file.write_text(json.dumps(_valid_coco()))
    assert len(DatasetCatalog.get("rel_malformed")) == 1


def test_missing_dataset_files_fail_at_registration_or_first_get(tmp_path):
    good_json, good_root = _write_coco(str(tmp_path / "ok"), [(32, 32, [])])
    with pytest.raises(FileNotFoundError, match="'rel_x'.*annotation file .*nope.json"):
        register_coco_dataset("rel_x", str(tmp_path / "nope.json"), good_root)
    with pytest.raises(FileNotFoundError, match="'rel_x'.*image directory .*no_dir"):
        register_datasets_from_config({"rel_x": dict(json_file=good_json,
                                                     image_root=str(tmp_path / "no_dir"))})
    with pytest.raises(KeyError, match="rel_x.*image_root"):
        register_datasets_from_config({"rel_x": dict(json_file=good_json)})
    assert "rel_x" not in DatasetCatalog.list()
    # removed after registration: the first get names it
    register_coco("rel_gone", good_json, good_root)
    os.rename(good_json, good_json + ".moved")
    with pytest.raises(FileNotFoundError, match=f"'rel_gone'.*{good_json}.*does not exist"):
        DatasetCatalog.get("rel_gone")

