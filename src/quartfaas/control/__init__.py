"""Decision code: pure functions of a ``PipelineSnapshot`` (``now`` is data, no I/O).

Shared decision types at this level: ``snapshot`` (what a policy sees), ``policy`` (the
``Policy`` protocol and the ``Decision`` it returns), ``config`` (controller settings),
``registry`` (every policy by name), ``loop`` (the one place decisions meet a backend) and
``sinks`` (where decisions are recorded). Quart's components are subpackages:
``corrector/`` (replicas per stage), ``smoother/`` (burst propagation), ``compensator/``
(CPU per replica) and ``placement/`` (where replicas start); ``quart`` composes the first
three; ``baselines/`` are the real autoscalers Quart is compared with. The import-linter
contracts in pyproject.toml keep these layers in this order and free of cycles.
"""
