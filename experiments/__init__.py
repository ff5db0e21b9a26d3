"""The papers' research questions at CPU scale, on the embedded shapes data.

Each module is a script, run from the repository root::

    python -m experiments.bn_from_scratch [--quick] [--output DIR]
    python -m experiments.downsampling    [--quick] [--output DIR]
    python -m experiments.sampling        [--quick] [--output DIR]
    python -m experiments.families        [--quick] [--output DIR]

Each writes ``results.json`` (numbers) and ``<name>.png`` (figure) into its output
directory (default ``output/experiments/<name>/``) and prints a table. Shared code
(training loop with per-iteration losses and gradient norms, evaluation, JSON, plots)
is in :mod:`experiments.common`.
"""
