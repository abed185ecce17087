"""``python -m rnnattn.bench``: rnnattn's speed against what a user would
otherwise run, side by side in one process.

* ``cases.py``: the grids (``--quick``, default, ``--full``) and the floors;
* ``contenders.py``: the fused op and its baselines for one case;
* ``timing.py``: interleaved timing and peak-memory measurement;
* ``runner.py``: runs a grid; ``report.py``: table, JSON, CSV, plot;
* ``machine.py``: where the numbers came from; ``__main__.py``: the CLI
  (``rnnattn.bench.__main__.main(argv)`` runs it in-process).
"""
