"""The cost of scratchdet's prior estimator against one pass of the training data loader.

    python -m benchmarks.prior [--repeats 3] [--dataset-repeat 1] [--settings NAME,...]
                               [--output FILE.json] [--quick]

A: ``scratchdet.sampling_free.estimate_priors`` on the config's training set, cache
disabled: every image at every size the train mapper can produce (the R50 config's six
scales count six times), matched with the model's anchor generator and matcher; no pixel
is read.

B: one pass of Detectron2's ``build_detection_train_loader`` over the same images with the
config's own train mapper (``DatasetMapper``: read and decode the JPEG, random resize and
flip, boxes to ``Instances``), stopped once every image has been mapped (the mapper
counts its calls, so images held back by the aspect-ratio grouping are counted too).
This is the least an estimator that iterates the data loader, as the original
implementation does (and then runs the backbone too), can cost. ``--num-workers``
(default 0) sets the loader's workers: with 0 both sides are one process's CPU work.
Both run on the CPU whatever ``--device`` says (the estimator works on anchors and boxes;
train_net.py runs it before the first iteration, and the loader maps on the CPU).

Both start from the same dataset dicts in memory (reading the annotation JSON is common
to both and not timed); the model is built once (random weights; only its anchors and
matcher are used). Settings:

- ``retinanet_R50_FPN_coco``: configs/COCO/sampling_free_retinanet_R_50_FPN_1x.py (Detectron2's
  COCO R50-FPN RetinaNet settings: short side 640..800 in six choices, max 1333, 9 anchors
  per location on p3..p7) registered against coco_mini's train split;
- ``coco_mini``: configs/coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py (short side
  224/256/288, max 384, p2..p6).

The image list is coco_mini's 80 training images (empty images filtered as the loader
does), repeated ``--dataset-repeat`` times. Target: A/B <= 0.05. Repeat r times A then B
(even r) or B then A (odd r), after one untimed warm-up of both on a few images.
"""
import sys
import time
from typing import Dict

from . import common

NAME = "prior"
TARGET = 0.05

SETTINGS = {
    "retinanet_R50_FPN_coco": ("COCO/sampling_free_retinanet_R_50_FPN_1x.py", True),
    "coco_mini": ("coco_mini/sampling_free_root_resnet18_fpn_coco_mini.py", False),
}


class CountingMapper:
    """Wraps a mapper and counts its calls."""

    def __init__(self, mapper):
        self.mapper = mapper
        self.calls = 0

    def __call__(self, d):
        self.calls += 1
        return self.mapper(d)


def run_prior(cfg, model, dicts) -> Dict:
    from scratchdet.sampling_free import estimate_priors

    t0 = time.perf_counter()
    counts = estimate_priors(cfg, model, dataset_dicts=dicts, use_cache=False, progress=False)
    seconds = time.perf_counter() - t0
    c = next(iter(counts.values()))
    return {"seconds": seconds, "images": len(dicts), "prior": c.prior,
            "anchors_counted": c.num_valid, "count_seconds": c.seconds}


def run_loader(cfg, dicts, num_workers: int, seed: int) -> Dict:
    from detectron2.config import instantiate
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler

    t0 = time.perf_counter()
    mapper = CountingMapper(instantiate(cfg.dataloader.train.mapper))
    loader = build_detection_train_loader(
        dataset=dicts, mapper=mapper, sampler=TrainingSampler(len(dicts), seed=seed),
        total_batch_size=int(cfg.dataloader.train.total_batch_size), num_workers=num_workers)
    yielded = 0
    for batch in loader:
        yielded += len(batch)
        done = mapper.calls if num_workers == 0 else yielded
        if done >= len(dicts):
            break
    seconds = time.perf_counter() - t0
    images = mapper.calls if num_workers == 0 else yielded
    del loader
    return {"seconds": seconds, "images": images, "yielded": yielded}


def main(argv=None):
    p = common.make_parser(NAME, __doc__, default_repeats=3)
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--dataset-repeat", type=int, default=1,
                   help="repeat coco_mini's image list this many times (default 1)")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers (default 0)")
    p.add_argument("--seed", type=int, default=0)
    args = common.finish_args(p.parse_args(argv))
    common.quiet_logs()
    from detectron2.config import instantiate

    names = common.choose(args.settings, list(SETTINGS), "setting")
    started = time.time()
    env = common.environment(args.device)
    print(f"prior on {env['device']['name']}: {len(names)} setting(s), {args.repeats} repeats",
          flush=True)
    comparisons, details = [], {}
    for name in names:
        rel, coco = SETTINGS[name]
        cfg = common.load_config(rel, common.coco_mini_overrides() if coco else ())
        dicts = list(instantiate(cfg.dataloader.train.dataset)) * args.dataset_repeat
        if args.quick:
            dicts = dicts[:8]
        # the estimator runs on the CPU (anchors and boxes only): the model stays there
        model = instantiate(cfg.model)
        run_prior(cfg, model, dicts[:4])  # warm-up: imports, anchor grids, file cache
        run_loader(cfg, dicts[:4], args.num_workers, args.seed)
        a, b = [], []
        for r in range(args.repeats):
            for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
                common.collect()
                if key == "a":
                    a.append(run_prior(cfg, model, dicts))
                else:
                    b.append(run_loader(cfg, dicts, args.num_workers, args.seed + r))
            print(f"  {name} repeat {r}: prior {a[-1]['seconds']:.2f} s, loader "
                  f"{b[-1]['seconds']:.2f} s, ratio {a[-1]['seconds'] / b[-1]['seconds']:.3f}",
                  flush=True)
        label_a = "scratchdet prior estimator (annotations only, cache off)"
        label_b = "one pass of Detectron2's train loader (read + decode + map)"
        comparisons.append(common.comparison(
            name, "seconds_per_pass", "s", label_a, label_b, [x["seconds"] for x in a],
            [x["seconds"] for x in b], target=TARGET, raw={"a": a, "b": b}))
        comparisons.append(common.comparison(
            name, "images_per_second", "img/s", label_a, label_b,
            [x["images"] / x["seconds"] for x in a], [x["images"] / x["seconds"] for x in b]))
        augs = [repr(x) for x in instantiate(cfg.dataloader.train.mapper.augmentations)]
        details[name] = {"config": "configs/" + rel, "images": len(dicts),
                         "train_augmentations": augs, "prior": a[-1]["prior"],
                         "anchors_counted": a[-1]["anchors_counted"],
                         "loader_batch_size": int(cfg.dataloader.train.total_batch_size)}
        del model
    settings = {"settings": names, "dataset_repeat": args.dataset_repeat,
                "num_workers": args.num_workers, "seed": args.seed, "target": TARGET}
    return common.finish(NAME, args, settings, comparisons, started, env,
                         "prior: estimator vs one data-loader pass", details=details)

if __name__ == "__main__":
    sys.exit(main())
