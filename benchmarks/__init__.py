"""Benchmarks of scratchdet against stock Detectron2 (issue 5).

Run from the repository root; each prints a table and writes a JSON record:

    python -m benchmarks.train_step   # seconds per training iteration and peak memory, A/B
    python -m benchmarks.prior        # prior estimator vs one pass of the training loader
    python -m benchmarks.inference    # DefaultPredictor latency, post-processing, backbones

Common flags: ``--output FILE.json`` (default ``output/benchmarks/<name>.json``),
``--repeats N``, ``--device cpu|cuda`` and ``--quick`` (tiny settings, for the tests).
Every comparison is a ratio A/B measured alternately in one process (repeat r runs A
then B for even r, B then A for odd r), so slow drifts of a shared machine cancel out;
the JSON keeps every raw number.
"""
