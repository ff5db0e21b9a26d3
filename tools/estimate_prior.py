#!/usr/bin/env python
"""
Estimate the foreground prior of a config's Sampling-Free head(s) from the training
annotations (no image is decoded, no backbone is run) and print one JSON object:

    python tools/estimate_prior.py --config-file CONFIG [--num-images N] [key=value ...]

Fields: head, prior, per_class_prior, num_foreground, num_anchors_counted, num_images,
stderr, seconds, cached (and the same per head under "heads" when a model has several).
With --num-images N, N images are drawn uniformly at random (--seed) and the standard
error tells how far the estimate may be from the full-data value. --num-gpus N counts
with N processes (shards summed with an all-reduce; same result as one process).
"""
import argparse
import json
import logging
import os
import random
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detectron2.config import instantiate  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import scratchdet  # noqa: E402,F401
from scratchdet.engine import load_config  # noqa: E402
from scratchdet.sampling_free import estimate_priors, prior_heads  # noqa: E402


def run(args):
    # logs and the progress bar go to stderr: stdout carries only the JSON object
    for name in ("scratchdet", "detectron2"):
        for h in setup_logger(name=name, distributed_rank=comm.get_rank()).handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(sys.stderr)
    t0 = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    model = instantiate(cfg.model)
    if not prior_heads(model):
        raise SystemExit(f"{args.config_file}: the model has no Sampling-Free head with a prior")
    dicts = instantiate(cfg.dataloader.train.dataset)
    extra = None
    if args.num_images:
        if args.num_images > len(dicts):
            raise SystemExit(f"--num-images {args.num_images} exceeds the {len(dicts)} "
                             "training images")
        idx = sorted(random.Random(args.seed).sample(range(len(dicts)), args.num_images))
        dicts = [dicts[i] for i in idx]
        extra = dict(sample=args.num_images, seed=args.seed)
    counts = estimate_priors(cfg, model, dataset_dicts=dicts, use_cache=not args.no_cache,
                             progress=not args.quiet, extra=extra)
    heads = {}
    for name, c in counts.items():
        heads[name] = dict(head=name, prior=c.prior, per_class_prior=c.per_class_prior,
                           num_foreground=c.num_foreground, num_anchors_counted=c.num_valid,
                           num_images=c.num_images, stderr=c.stderr,
                           seconds=round(time.perf_counter() - t0, 3),
                           count_seconds=round(c.seconds, 3))
    if comm.is_main_process():
        out = dict(next(iter(heads.values())))
        if len(heads) > 1:
            out["heads"] = heads
        print(json.dumps(out), flush=True)
    if comm.get_world_size() > 1:  # leave the process group cleanly (GLOO aborts otherwise)
        comm.synchronize()
        torch.distributed.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--num-images", type=int, default=0, help="sample this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-gpus", type=int, default=1, help="processes (CPU: GLOO)")
    p.add_argument("--dist-url", default="auto")
    p.add_argument("--no-cache", action="store_true", help="count even if a cache entry exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = p.parse_args(argv)
    launch(run, args.num_gpus, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()
