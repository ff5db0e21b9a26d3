"""Tests for projects/scratchdet/data/ssd_augment.py (SSD300 data augmentation); the crop's
statistics and invariants: test_ssd_crop_stats.py."""
import numpy as np
import pytest
import torch
from fvcore.transforms.transform import CropTransform, NoOpTransform, PadTransform
from PIL import Image
from torchvision.ops import box_iou

from detectron2.data import transforms as T

from scratchdet.data import ssd_augment as sa

H, W = 200, 300
# Non-overlapping boxes (XYXY, integer pixel edges) of various sizes/aspects.
BOXES = np.array(
    [
        [10, 10, 80, 60],
        [100, 20, 180, 150],
        [200, 40, 290, 100],
        [20, 120, 70, 190],
        [220, 130, 280, 185],
    ],
    dtype=np.float32,
)
# Unique colours, far from black and from the (rounded) mean fill (104, 116, 124).
COLORS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.uint8
)


def make_image():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    seg = np.zeros((H, W), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(BOXES.astype(int)):
        img[y0:y1, x0:x1] = COLORS[i]
        seg[y0:y1, x0:x1] = i + 1
    return img, seg


def _centers(boxes):
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def check_boxes_match_regions(out_boxes, masks_fn, out_hw, tol=3.0):
    """For every box whose centre lies inside the output image, the clipped box
    must coincide (within tol px) with the bounding box of its painted region,
    and the centre pixel must belong to the region. Returns #boxes checked."""
    oh, ow = out_hw
    clipped = out_boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, ow)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, oh)
    checked = 0
    for i, (cx, cy) in enumerate(_centers(out_boxes)):
        if not (0 < cx < ow and 0 < cy < oh):
            continue
        mask = masks_fn(i)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0, f"box {i} centre inside image but its region vanished"
        region = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        np.testing.assert_allclose(region, clipped[i], atol=tol, err_msg=f"box {i}")
        ccx, ccy = _centers(clipped[i : i + 1])[0]
        assert mask[int(min(ccy, oh - 1)), int(min(ccx, ow - 1))], f"centre of box {i}"
        checked += 1
    return checked


def color_masks(img):
    return lambda i: np.all(img == COLORS[i], axis=-1)


def run_augs(augs, img, boxes=BOXES, sem_seg=None):
    aug_input = T.AugInput(img.copy(), boxes=boxes.copy(), sem_seg=sem_seg)
    tfm = T.AugmentationList(augs)(aug_input)
    return aug_input, tfm


# --------------------------------------------------------------------------- #
# PhotometricDistort
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_photometric_distort_prob1_changes_pixels_keeps_boxes(dtype):
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, size=(H, W, 3)).astype(dtype)
    aug = sa.PhotometricDistort(prob=1.0, swap_channels=True)
    for seed in range(5):
        np.random.seed(seed)
        aug_input, tfm = run_augs([aug], img)
        out = aug_input.image
        assert out.shape == img.shape and out.dtype == img.dtype
        assert out.min() >= 0 and out.max() <= 255
        assert np.abs(out.astype(np.float64) - img).mean() > 1.0
        np.testing.assert_array_equal(aug_input.boxes, BOXES)
        # deterministic transform: re-applying yields the same image
        np.testing.assert_array_equal(tfm.apply_image(img.copy()), out)


def test_photometric_distort_prob0_is_identity_and_grayscale():
    img, seg = make_image()
    np.random.seed(0)
    aug_input, _ = run_augs([sa.PhotometricDistort(prob=0.0)], img, sem_seg=seg)
    np.testing.assert_array_equal(aug_input.image, img)
    np.testing.assert_array_equal(aug_input.sem_seg, seg)
    gray = np.random.RandomState(1).randint(0, 256, size=(H, W)).astype(np.uint8)
    np.random.seed(0)
    aug_input, _ = run_augs([sa.PhotometricDistort(prob=1.0, image_format="L")], gray)
    assert aug_input.image.shape == gray.shape and aug_input.image.dtype == np.uint8


def test_photometric_transform_hue_saturation_rgb_bgr_consistent():
    rng = np.random.RandomState(2)
    bgr = rng.randint(0, 256, size=(20, 30, 3)).astype(np.uint8)
    kw = dict(saturation_alpha=0.7, hue_delta=30.0)
    out_bgr = sa.PhotometricDistortTransform(image_format="BGR", **kw).apply_image(bgr)
    out_rgb = sa.PhotometricDistortTransform(image_format="RGB", **kw).apply_image(bgr[..., ::-1])
    assert np.abs(out_bgr.astype(int) - bgr).max() > 10
    np.testing.assert_allclose(out_rgb[..., ::-1].astype(int), out_bgr.astype(int), atol=1)


# --------------------------------------------------------------------------- #
# Expand
# --------------------------------------------------------------------------- #
def test_expand_geometry_and_fill():
    img, seg = make_image()
    mean = sa.DEFAULT_PIXEL_MEAN_BGR
    for seed in range(30):
        np.random.seed(seed)
        aug_input, tfm = run_augs([sa.Expand(max_ratio=4.0, prob=1.0)], img, sem_seg=seg)
        tfm = tfm.transforms[0]
        assert isinstance(tfm, PadTransform)
        out = aug_input.image
        oh, ow = out.shape[:2]
        assert H <= oh <= 4 * H and W <= ow <= 4 * W
        assert out.dtype == np.uint8
        x, y = tfm.x0, tfm.y0
        assert (tfm.x1, tfm.y1) == (ow - W - x, oh - H - y)
        np.testing.assert_array_equal(out[y : y + H, x : x + W], img)
        np.testing.assert_array_equal(aug_input.sem_seg[y : y + H, x : x + W], seg)
        outside = np.ones((oh, ow), dtype=bool)
        outside[y : y + H, x : x + W] = False
        if outside.any():
            np.testing.assert_allclose(out[outside], np.broadcast_to(mean, (outside.sum(), 3)), atol=0.5)
            assert (aug_input.sem_seg[outside] == 0).all()
        np.testing.assert_allclose(aug_input.boxes, BOXES + [x, y, x, y])
        assert check_boxes_match_regions(aug_input.boxes, color_masks(out), (oh, ow), tol=0) == 5
        # polygons move with the boxes; the inverse maps back
        poly = np.array([10.0, 10.0, 80.0, 10.0, 45.0, 60.0])
        np.testing.assert_allclose(tfm.apply_polygons([poly.reshape(-1, 2).copy()])[0].ravel(),
                                   poly + [x, y] * 3)
        np.testing.assert_array_equal(tfm.inverse().apply_image(out), img)


def test_expand_prob0_noop_and_float_fill():
    img = np.zeros((10, 20, 3), dtype=np.float32)
    np.random.seed(0)
    assert isinstance(sa.Expand(prob=0.0).get_transform(img), NoOpTransform)
    t = sa.ChannelPadTransform(2, 3, 8, 7, orig_w=20, orig_h=10, pad_value=(1.5, 2.5, 3.5))
    out = t.apply_image(img)
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [1.5, 2.5, 3.5])
    np.testing.assert_allclose(out[3:13, 2:22], 0)
    # a 2D image is padded with the mean of the per-channel values, rounded for integers
    gray = t.apply_image(np.zeros((10, 20), dtype=np.uint8))
    assert gray.shape == (20, 30) and gray[0, 0] == 2 and (gray[3:13, 2:22] == 0).all()
    with pytest.raises(ValueError, match="ChannelPadTransform expects input of size"):
        t.apply_image(np.zeros((11, 20, 3), dtype=np.float32))


# --------------------------------------------------------------------------- #
# MinIoURandomCrop
# --------------------------------------------------------------------------- #
def _iou(crop, boxes):
    """(N,) IoU of each of ``boxes`` (N, 4) with ``crop`` (4,), XYXY."""
    return box_iou(torch.as_tensor(crop[None]), torch.as_tensor(boxes))[0].numpy()


@pytest.mark.parametrize("thr, max_trials", [(0.5, 50), (0.7, 50), (0.9, 300)])
def test_min_iou_crop_satisfies_constraint(thr, max_trials):
    img = np.zeros((H, W, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 295, 195]], dtype=np.float32)
    aug = sa.MinIoURandomCrop(min_ious=(thr,), min_crop_size=0.3, max_trials=max_trials)
    n_crops = 0
    for seed in range(40):
        np.random.seed(seed)
        tfm = aug.get_transform(img, boxes)
        np.random.seed(seed)
        tfm2 = aug.get_transform(img, boxes)
        assert type(tfm) is type(tfm2)
        if isinstance(tfm, NoOpTransform):
            continue
        assert isinstance(tfm, CropTransform)
        assert (tfm.x0, tfm.y0, tfm.w, tfm.h) == (tfm2.x0, tfm2.y0, tfm2.w, tfm2.h)
        n_crops += 1
        crop = np.array([tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h], dtype=np.float64)
        assert crop[0] >= 0 and crop[1] >= 0 and crop[2] <= W and crop[3] <= H
        assert tfm.w >= int(0.3 * W) and tfm.h >= int(0.3 * H)
        assert 0.5 <= tfm.h / tfm.w <= 2.0
        assert _iou(crop, boxes.astype(np.float64)).min() >= thr
        assert sa.boxes_with_center_inside(boxes, tfm).any()
        out = tfm.apply_image(img)
        assert out.shape == (tfm.h, tfm.w, 3)
    assert n_crops >= 5  # about half the draws pick the crop mode; IoU>=thr is feasible here


def test_min_iou_crop_default_modes_and_multi_box():
    img, _ = make_image()
    # default modes, single large box: every crop meets the smallest threshold
    big = np.array([[20, 10, 280, 190]], dtype=np.float32)
    aug = sa.MinIoURandomCrop()
    n_crops = 0
    for seed in range(40):
        np.random.seed(seed)
        tfm = aug.get_transform(img, big)
        if isinstance(tfm, CropTransform):
            n_crops += 1
            crop = np.array([tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h], dtype=np.float64)
            assert _iou(crop, big.astype(np.float64)).min() >= 0.1
    assert n_crops >= 8
    # several scattered boxes with an unconstrained mode: a centre must be inside
    aug = sa.MinIoURandomCrop(min_ious=(0.0,))
    n_crops = 0
    for seed in range(40):
        np.random.seed(seed)
        tfm = aug.get_transform(img, BOXES)
        if isinstance(tfm, CropTransform):
            n_crops += 1
            assert sa.boxes_with_center_inside(BOXES, tfm).any()
    assert n_crops >= 8


def test_min_iou_crop_no_boxes_is_noop():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    aug = sa.MinIoURandomCrop(min_ious=(0.0,))
    for seed in range(10):
        np.random.seed(seed)
        assert isinstance(aug.get_transform(img, np.zeros((0, 4), np.float32)), NoOpTransform)
        assert isinstance(aug.get_transform(img, None), NoOpTransform)
    # through AugInput without boxes
    aug_input = T.AugInput(img.copy())
    assert isinstance(T.AugmentationList([aug])(aug_input).transforms[0], NoOpTransform)


def test_min_iou_crop_impossible_constraint_is_noop():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 10], [290, 190, 300, 200]], dtype=np.float32)
    aug = sa.MinIoURandomCrop(min_ious=(0.9,), max_trials=20)
    for seed in range(10):
        np.random.seed(seed)
        assert isinstance(aug.get_transform(img, boxes), NoOpTransform)


def test_min_iou_crop_is_detectron2s_and_takes_2d_images():
    aug = sa.MinIoURandomCrop(min_ious=(0.0,), max_trials=7)
    assert isinstance(aug, T.MinIoURandomCrop)
    assert aug.sample_mode == (None, 0.0) and aug.crop_trials == aug.max_trials == 7
    gray, boxes = np.zeros((H, W), dtype=np.uint8), np.array([[20, 10, 280, 190]], np.float32)
    crops = 0
    for seed in range(20):
        np.random.seed(seed)
        tfm = aug.get_transform(gray, boxes)
        assert aug.mode == (None if isinstance(tfm, NoOpTransform) else 0.0)
        if isinstance(tfm, CropTransform):
            crops += 1
            assert tfm.apply_image(gray).shape == (tfm.h, tfm.w)
            assert tfm.inverse().apply_image(tfm.apply_image(gray)).shape == (H, W)
    assert crops >= 5


def test_boxes_with_center_inside():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [90, 90, 200, 200]], dtype=np.float32)
    crop = CropTransform(20, 20, 50, 50)
    np.testing.assert_array_equal(sa.boxes_with_center_inside(boxes, crop), [False, True, False])
    np.testing.assert_array_equal(sa.boxes_with_center_inside(boxes, NoOpTransform()), [True] * 3)
    with pytest.raises(TypeError):
        sa.boxes_with_center_inside(boxes, T.HFlipTransform(100))


# --------------------------------------------------------------------------- #
# geometric consistency of image vs boxes
# --------------------------------------------------------------------------- #
def _n_crops(tfm):
    return sum(isinstance(t, CropTransform) for t in tfm.transforms)


def test_expand_then_crop_boxes_follow_pixels():
    img, _ = make_image()
    total = crops = 0
    for seed in range(30):
        np.random.seed(seed)
        # include an unconstrained mode so that crops (cutting boxes) really happen
        augs = [sa.Expand(prob=1.0), sa.MinIoURandomCrop(min_ious=(0.0,))]
        aug_input, tfm = run_augs(augs, img)
        crops += _n_crops(tfm)
        out = aug_input.image
        total += check_boxes_match_regions(aug_input.boxes, color_masks(out), out.shape[:2], tol=0)
    assert total > 30 and crops >= 8


@pytest.mark.parametrize("min_ious", [None, (0.0,)])
def test_full_train_pipeline_boxes_follow_pixels(min_ious):
    img, seg = make_image()
    augs = sa.ssd_train_augmentations(300, interp=Image.NEAREST)
    assert isinstance(augs[0], sa.PhotometricDistort)
    assert isinstance(augs[1], sa.Expand) and isinstance(augs[2], sa.MinIoURandomCrop)
    assert isinstance(augs[3], T.Resize) and isinstance(augs[4], T.RandomFlip)
    if min_ious is not None:
        augs[2] = sa.MinIoURandomCrop(min_ious=min_ious)
    total_img = total_seg = crops = 0
    for seed in range(30):
        # (a) full pipeline incl. photometric: use sem_seg labels to locate regions
        np.random.seed(seed)
        aug_input, tfm = run_augs(augs, img, sem_seg=seg)
        crops += _n_crops(tfm)
        assert aug_input.image.shape == (300, 300, 3) and aug_input.image.dtype == np.uint8
        assert aug_input.sem_seg.shape == (300, 300)
        s = aug_input.sem_seg
        total_seg += check_boxes_match_regions(aug_input.boxes, lambda i: s == i + 1, (300, 300))
        # (b) geometric part only: painted colours survive nearest resize exactly
        np.random.seed(seed)
        aug_input, _ = run_augs(augs[1:], img)
        out = aug_input.image
        total_img += check_boxes_match_regions(aug_input.boxes, color_masks(out), (300, 300))
    assert total_img > 30 and total_seg > 30
    if min_ious is not None:
        assert crops >= 8


def test_test_augmentations():
    augs = sa.ssd_test_augmentations(300)
    assert len(augs) == 1 and isinstance(augs[0], T.Resize) and augs[0].shape == (300, 300)
    img, _ = make_image()
    aug_input, _ = run_augs(augs, img)
    assert aug_input.image.shape == (300, 300, 3)
    np.testing.assert_allclose(aug_input.boxes, BOXES * [1.0, 1.5, 1.0, 1.5])
    rgb = sa.ssd_train_augmentations((320, 256), image_format="RGB")
    assert rgb[1].fill == tuple(reversed(sa.DEFAULT_PIXEL_MEAN_BGR))
    assert rgb[3].shape == (320, 256)


def test_lazy_config_instantiate():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    cfg = [
        L(sa.PhotometricDistort)(contrast_range=[0.6, 1.4], prob=1.0),
        L(sa.Expand)(max_ratio=3.0, fill=[1, 2, 3]),
        L(sa.MinIoURandomCrop)(min_ious=[0.5], aspect_ratio_range=[0.5, 2.0]),
    ]
    augs = instantiate(cfg)
    assert augs[0].contrast_range == (0.6, 1.4)
    assert augs[1].fill == (1.0, 2.0, 3.0) and augs[1].max_ratio == 3.0
    assert augs[2].min_ious == (0.5,)
    assert "max_ratio=3.0" in repr(augs[1])


# --------------------------------------------------------------------------- #
# argument validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "factory, param",
    [
        (lambda: sa.PhotometricDistort(brightness_delta=-1), "brightness_delta"),
        (lambda: sa.PhotometricDistort(contrast_range=(1.5, 0.5)), "contrast_range"),
        (lambda: sa.PhotometricDistort(contrast_range=(0.5,)), "contrast_range"),
        (lambda: sa.PhotometricDistort(saturation_range=(-0.1, 1.0)), "saturation_range"),
        (lambda: sa.PhotometricDistort(hue_delta=200), "hue_delta"),
        (lambda: sa.PhotometricDistort(prob=1.5), "prob"),
        (lambda: sa.PhotometricDistort(swap_channels="yes"), "swap_channels"),
        (lambda: sa.PhotometricDistort(image_format="YUV-BT.601"), "image_format"),
        (lambda: sa.Expand(max_ratio=0.5), "max_ratio"),
        (lambda: sa.Expand(prob=-0.1), "prob"),
        (lambda: sa.Expand(fill="mean"), "fill"),
        (lambda: sa.Expand(fill=()), "fill"),
        (lambda: sa.MinIoURandomCrop(min_ious=()), "min_ious"),
        (lambda: sa.MinIoURandomCrop(min_ious=(0.5, 1.2)), "min_ious"),
        (lambda: sa.MinIoURandomCrop(min_crop_size=0.0), "min_crop_size"),
        (lambda: sa.MinIoURandomCrop(min_crop_size=1.5), "min_crop_size"),
        (lambda: sa.MinIoURandomCrop(aspect_ratio_range=(0.0, 2.0)), "aspect_ratio_range"),
        (lambda: sa.MinIoURandomCrop(aspect_ratio_range=(2.0, 0.5)), "aspect_ratio_range"),
        (lambda: sa.MinIoURandomCrop(max_trials=0), "max_trials"),
        (lambda: sa.MinIoURandomCrop(max_trials=2.5), "max_trials"),
        (lambda: sa.ssd_train_augmentations(image_size=0), "image_size"),
        (lambda: sa.ssd_train_augmentations(image_format="HSV"), "image_format"),
        (lambda: sa.ssd_test_augmentations(image_size=(300,)), "image_size"),
        (lambda: sa.ChannelPadTransform(5, 0, -5, 0, 10, 10), "ChannelPadTransform"),
    ],
)
def test_invalid_args_raise(factory, param):
    with pytest.raises(ValueError, match=param):
        factory()
