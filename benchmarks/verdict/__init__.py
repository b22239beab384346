"""The PLDA verdict (``python -m benchmarks.plda_verdict``), by concern: ``jobs`` (what each run
is, running and scoring it), ``seedmaps`` (the kept val seeds and their re-scoring),
``summary`` (the paired tables), ``budget`` (the train-only budget sweep) and ``parallel``
(several jobs at once)."""
