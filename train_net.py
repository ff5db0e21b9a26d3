#!/usr/bin/env python
"""
Train or evaluate a scratchdet model from a LazyConfig (``.py``, Detectron2's
``lazyconfig_train_net.py`` interface) or a yacs config (``.yaml``, Detectron2's
``tools/train_net.py`` interface):

    python train_net.py --config-file configs/shapes/scratchdet_root_resnet18_fpn_demo.py
    python train_net.py --config-file CONFIG.py --eval-only train.init_checkpoint=model.pth
    python train_net.py --config-file CONFIG.py --num-gpus 2 train.device=cpu   # 2 processes
    python train_net.py --config-file configs/shapes/sampling_free_root_resnet18_fpn_demo.yaml
    python train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file CONFIG --resume        # continue in the output dir
    python train_net.py --config-file CONFIG --overwrite     # train again, replace checkpoints

Overrides follow the options. For a LazyConfig they are ``key=value`` pairs (Hydra
syntax); a key must exist in the config (``+key=value`` adds a new one) and a value must
have the type it replaces. For a yacs config they are ``KEY VALUE`` pairs
(``SOLVER.MAX_ITER 100``); the config gets scratchdet's keys (``add_scratchdet_config``)
and its ``DATASETS.COCO_INSTANCES`` are registered. A yacs config trains with Detectron2's
``DefaultTrainer`` and evaluates ``DATASETS.TEST`` with ``COCOEvaluator``
(``scratchdet.engine.yacs_train``).

Sampling-Free models need no extra step on either path: before the first iteration the
foreground prior is counted on the training data (``dataloader.train`` /
``DATASETS.TRAIN`` with the mapper's resize) and sets the classification bias and the
adaptive thresholds. ``--resume`` keeps the checkpoint's prior; a new run from a
checkpoint (``train.init_checkpoint=`` / ``MODEL.WEIGHTS``) counts its own data, keeps the
bias of the heads whose bias loaded and sets the others' from the prior.

On a machine without CUDA, ``--num-gpus N`` starts N CPU processes that talk over GLOO
(LazyConfigs; a yacs config trains on the CPU in one process). A training run refuses an
output directory that already holds checkpoints unless ``--resume`` or ``--overwrite``
says what to do with them. ``--eval-only`` refuses a checkpoint that does not fit the
config's model (another class count or architecture), naming the parameters whose shapes
differ or that the checkpoint lacks; training from one (fine-tuning) keeps what fits.
"""
from detectron2.engine import default_argument_parser, launch

import scratchdet  # noqa: F401  (registers backbones and datasets)
from scratchdet.engine import lazy_train, yacs_train


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite", action="store_true",
        help="train even if the output directory already holds checkpoints, replacing them "
             "(without it, such a directory is refused unless --resume)")
    return parser


def main(args):
    """The yacs path for a ``.yaml``/``.yml`` config file, the LazyConfig path otherwise."""
    if yacs_train.is_yacs_config(args.config_file):
        return yacs_train.main(args)
    return lazy_train.main(args)


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
