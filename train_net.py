#!/usr/bin/env python
"""
Train or evaluate a scratchdet model from a LazyConfig file (Detectron2's
``lazyconfig_train_net.py`` interface):

    python train_net.py --config-file configs/shapes/scratchdet_root_resnet18_fpn_demo.py
    python train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model.pth
    python train_net.py --config-file CONFIG --num-gpus 2 train.device=cpu   # 2 processes
    python train_net.py --config-file CONFIG --resume        # continue in train.output_dir
    python train_net.py --config-file CONFIG --overwrite     # train again, replace checkpoints

On a machine without CUDA, ``--num-gpus N`` starts N CPU processes that talk over GLOO.
Overrides are ``key=value`` pairs after the options (Hydra syntax); a key must exist in
the config (``+key=value`` adds a new one) and a value must have the type it replaces.
A training run refuses a ``train.output_dir`` that already holds checkpoints unless
``--resume`` or ``--overwrite`` says what to do with them.
"""
from detectron2.engine import default_argument_parser, launch

import scratchdet  # noqa: F401  (registers backbones and datasets)
from scratchdet.engine.lazy_train import main


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite", action="store_true",
        help="train even if train.output_dir already holds checkpoints, replacing them "
             "(without it, such a directory is refused unless --resume)")
    return parser


def cli(argv=None):
    args = argument_parser().parse_args(argv)
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
