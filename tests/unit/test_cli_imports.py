"""The command line starts without the simulator, the control code or the spec models:
``quartfaas --help`` and ``quartfaas invoke`` took ~0.7 s when ``cli/simulate.py``
imported the simulator experiments (with numba and every policy) to list their names."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numba", "quartfaas.sim.experiments", "quartfaas.control.corrector", "quartfaas.spec")


def test_building_the_command_line_imports_nothing_heavy() -> None:
    code = (
        "import json, sys, typer.main\n"
        "from quartfaas.cli import app\n"
        "typer.main.get_command(app)\n"  # every command's options and help built
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_simulate_help_lists_the_simulator_s_names() -> None:
    import typer.main

    from quartfaas.cli import app
    from quartfaas.sim import experiments as ex

    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands["simulate"].params}  # type: ignore[attr-defined]
    assert ", ".join(ex.policy_names()) in params["policies"].help
    assert "+" + "|+".join(ex.INFRAS) in params["policies"].help
    assert params["max_visits"].default == ex.MAX_VISITS
