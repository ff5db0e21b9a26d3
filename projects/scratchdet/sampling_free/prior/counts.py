"""The counts of a dataset: its annotations read as the mapper reads them, every image at
every size the mapper can give it, labelled by a counter, summed over images and ranks."""
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from detectron2.structures import BoxMode
from detectron2.utils import comm

from ...data.coco import finite_box, nonfinite_box_error
from .grid_counter import GridCounter
from .resize import _resize_steps, _sizes_after

__all__ = ["PriorCounts", "count_dataset", "CHUNK_PAIRS"]


@dataclass
class PriorCounts:
    """Anchor counts of one head over a dataset (sums over images and size options)."""

    num_classes: int  # C of the head: number of foreground classes (1 for an RPN)
    num_foreground: int = 0
    num_valid: int = 0  # non-ignored anchors
    per_class: List[int] = field(default_factory=list)  # foreground anchors per gt class
    num_images: int = 0
    stderr: float = float("nan")  # standard error of `prior` over images
    seconds: float = 0.0
    fingerprint: str = ""  # prior_fingerprint of what was counted ("" if unknown)

    @property
    def prior(self) -> float:
        """p = (N_f / N) / C, the per-class foreground probability."""
        if self.num_valid == 0:
            raise ValueError("no anchor was counted: empty dataset?")
        return self.num_foreground / self.num_valid / self.num_classes

    @property
    def per_class_prior(self) -> List[float]:
        """N_j / N for every ground-truth class j."""
        return [c / self.num_valid for c in self.per_class]

    def to_dict(self) -> Dict:
        d = asdict(self)
        d.update(prior=self.prior, per_class_prior=self.per_class_prior)
        return d


_NUMBERS = (int, float)


def _image_gt(d: Dict) -> Tuple[np.ndarray, np.ndarray]:
    """
    (G, 4) XYXY boxes (float64) and (G,) classes of the non-crowd annotations, with the
    arithmetic of Detectron2's mapper, whose ``BoxMode.convert`` of one annotation's
    list gives XYXY_ABS boxes unchanged and computes XYWH_ABS ones in the dtype of
    ``torch.tensor(bbox)``: float32 for Python floats (and for Python ints below 2**24,
    where float32 is exact as int64 is). Those common cases are converted for all boxes
    at once; any other (other modes or number types) box by box with ``BoxMode.convert``
    itself. A box of negative width or height has its corners ordered, as the mapper's
    ``apply_box`` (min and max of the transformed corners) orders them: training sees
    it, so it is counted. A box that is not finite raises ``ValueError``
    (:func:`~scratchdet.data.coco.nonfinite_box_error`).
    """
    boxes, classes, _ = _images_gt([d])
    return boxes, classes


def _images_gt(dicts: Sequence[Dict]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_image_gt` of many images at once: their boxes (G, 4) and classes (G,),
    image after image, and (k,) the number of each image's boxes."""
    per_image = [[a for a in d.get("annotations", ()) if a.get("iscrowd", 0) == 0]
                 for d in dicts]
    num = np.array([len(x) for x in per_image], np.int64)
    annos = [a for x in per_image for a in x]
    classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
    if not annos:
        return np.zeros((0, 4)), classes, num
    bboxes = [a["bbox"] for a in annos]
    xywh = np.array([a["bbox_mode"] == BoxMode.XYWH_ABS for a in annos])
    plain = (all(a["bbox_mode"] in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in annos)
             and all(type(b) in (list, tuple) and len(b) == 4 for b in bboxes)
             and all(type(x) in _NUMBERS for b in bboxes for x in b))
    boxes = np.array(bboxes, np.float64) if plain else None
    if not (np.isfinite(boxes).all() if plain else all(finite_box(b) for b in bboxes)):
        raise nonfinite_box_error(dicts)
    if plain and xywh.any() and np.abs(boxes[xywh]).max() < 2 ** 24:
        f = boxes[xywh].astype(np.float32)
        f[:, 2:] += f[:, :2]
        boxes[xywh] = f
    elif not plain or xywh.any():
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in annos], np.float64).reshape(-1, 4)
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                           np.maximum(boxes[:, :2], boxes[:, 2:])], 1), classes, num


# (box, anchor) pairs matched at once: enough to amortise numpy's per-call cost, few enough
# that the temporaries stay small (allocations of several MB are mmap-ed, and their page
# faults would cost more than the counting)
CHUNK_PAIRS = 24_000


def count_dataset(dataset_dicts: Sequence[Dict], counter: GridCounter, augmentations=(),
                  head_classes: int = 1, progress: bool = True,
                  chunk_pairs: int = CHUNK_PAIRS) -> PriorCounts:
    """
    Count over ``dataset_dicts`` (every rank counts its shard ``rank::world_size``; the
    integer counts are summed over ranks, so any number of processes gives the same
    result). ``head_classes`` is the C of the prior (1 for an RPN). Images are counted a
    chunk at a time (every size of each) with the counter's ``count_batch``, a chunk
    holding the (box, size) combinations that the pairs per combination so far say make
    about ``chunk_pairs`` pairs.
    """
    t0 = time.perf_counter()
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = list(range(rank, len(dataset_dicts), world))
    per_image = np.zeros((len(shard), 2), dtype=np.int64)  # fg, valid per image
    per_class = np.zeros(counter.num_classes, dtype=np.int64)
    bar, options, steps = None, {}, _resize_steps(augmentations)
    if progress and comm.is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=len(shard), desc="counting anchors for the prior", unit="img",
                   mininterval=2)
    c0, budget, combos, pairs = 0, chunk_pairs / 64, 0, 0
    while c0 < len(shard):
        dicts, sizes, load = [], [], 0
        while c0 + len(dicts) < len(shard) and (not dicts or load < budget):
            d = dataset_dicts[shard[c0 + len(dicts)]]
            h, w = int(d["height"]), int(d["width"])
            if (h, w) not in options:
                options[(h, w)] = np.array([(nh, nw, n) for (nh, nw), n in
                                            _sizes_after(steps, h, w)], np.int64)
            dicts.append(d)
            sizes.append((h, w, options[(h, w)]))
            load += max(len(d.get("annotations", ())), 1) * len(options[(h, w)])
        boxes, classes, num = _images_gt(dicts)
        cut = np.cumsum(num)[:-1]
        images = [(b, c) + hw for b, c, hw in zip(np.split(boxes, cut), np.split(classes, cut),
                                                  sizes)]
        batch, image_of = counter.image_batch(images)
        before = counter.pairs
        fg, valid, pc = counter.count_batch(batch)
        combos, pairs = combos + load, pairs + counter.pairs - before
        budget = min(max(chunk_pairs * combos / max(pairs, 1), 16), 8 * chunk_pairs)
        np.add.at(per_image, (c0 + image_of, 0), fg * batch.weights)
        np.add.at(per_image, (c0 + image_of, 1), valid * batch.weights)
        per_class += pc
        c0 += len(images)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    if world > 1:
        gathered = comm.all_gather((per_image, per_class))
        per_image = np.concatenate([g[0] for g in gathered])
        per_class = np.sum([g[1] for g in gathered], axis=0)
    counts = PriorCounts(
        num_classes=head_classes,
        num_foreground=int(per_image[:, 0].sum()),
        num_valid=int(per_image[:, 1].sum()),
        per_class=[int(x) for x in per_class],
        num_images=len(dataset_dicts),
    )
    counts.stderr = _ratio_stderr(per_image) / head_classes
    counts.seconds = time.perf_counter() - t0
    return counts


def _ratio_stderr(per_image: np.ndarray) -> float:
    """Delta-method standard error of sum(f) / sum(v) over images."""
    n = len(per_image)
    if n < 2:
        return float("nan")
    f, v = per_image[:, 0].astype(np.float64), per_image[:, 1].astype(np.float64)
    r = f.sum() / v.sum()
    return float(math.sqrt(n / (n - 1) * np.sum((f - r * v) ** 2)) / v.sum())
