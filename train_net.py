#!/usr/bin/env python
"""
Train or evaluate a scratchdet model from a LazyConfig file (Detectron2's
``lazyconfig_train_net.py`` interface):

    python train_net.py --config-file configs/shapes/scratchdet_root_resnet18_fpn_demo.py
    python train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model.pth
    python train_net.py --config-file CONFIG --num-gpus 2 train.device=cpu   # 2 processes

On a machine without CUDA, ``--num-gpus N`` starts N CPU processes that talk over GLOO.
Overrides are ``key=value`` pairs after the options (Hydra syntax).
"""
from detectron2.engine import default_argument_parser, launch

import scratchdet  # noqa: F401  (registers backbones and datasets)
from scratchdet.engine.lazy_train import main


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
