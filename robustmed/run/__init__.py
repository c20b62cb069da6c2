"""One `bench` run, in layers that import one way: ``config`` (the validated :class:`BenchConfig`, the run id)
→ ``threats`` (threat models, success criterion) → ``target`` (model, data, defense facts and provenance,
resolved once) → ``plan`` (work units) → ``work`` (one unit computed in any process) → ``executors`` (local,
Ray) → ``bench`` (start, finish, the report). The CLI and :func:`robustmed.evaluate` call ``bench``.
"""
