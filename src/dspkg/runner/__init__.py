"""``dspkg run``: run a ``valohai.yaml`` step the way the platform does, on any machine.

Inputs are pulled into ``<root>/inputs/<name>/`` (datasets through dspkg's cache),
the step's command runs unchanged, and what it writes to ``<root>/outputs/`` is
stored and published as the dataset versions its metadata names.

Layers: ``step`` (the file and the step, pure apart from reading the file) ->
``inputs`` (fetching) and ``outputs`` (publishing) -> ``execution`` (one run) ->
``command`` (the CLI). The runner uses :mod:`dspkg.api` and the layers under it;
nothing in dspkg imports the runner except the CLI.

Entry points: :func:`dspkg.runner.execution.run_step` and
:func:`dspkg.runner.step.load_project`. This package imports nothing itself, so
that registering the ``run`` command costs the other commands no start-up time.
"""
