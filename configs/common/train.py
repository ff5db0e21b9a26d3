"""Training options for ``train_net.py`` (Detectron2's LazyConfig ``train`` dict)."""
train = dict(
    output_dir="./output",
    init_checkpoint="",  # from scratch: never an ImageNet checkpoint
    max_iter=90000,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=5000,
    log_period=20,
    device="cuda",
    # random seed of every process (process r uses seed + r; DDP gives all of them rank
    # 0's initial weights, and the data sampler rank 0's seed): -1 draws one per run
    seed=-1,
    # the adaptive-threshold evaluation (scratchdet.evaluation.AdaptiveThresholdEvalHook):
    # before each evaluation set the test score thresholds from the model's prior with
    # `rule` ("global", "per_class", None = the model's own) and report AP at them and at
    # the `fixed` threshold side by side. On in the Sampling-Free configs.
    adaptive_threshold=dict(enabled=False, rule=None, fixed=0.05),
)
