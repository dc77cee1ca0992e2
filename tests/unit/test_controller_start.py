"""benchmarks/controller_start.py: fresh controller processes, with and without the GAT's
torch module, measured in the same run."""

from __future__ import annotations

import pytest

from helpers import benchmark_script


def test_the_controller_starts_without_torch_and_the_torch_row_shows_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = benchmark_script("controller_start")
    assert mod.main(["--stages", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line[:16].strip(): line[16:].split() for line in out[2:4]}
    assert list(rows) == ["controller", "+ torch module"]
    # the last two columns: torch imported, files left in the temporary directory
    assert rows["controller"][-2:] == ["no", "0.0"]
    assert rows["+ torch module"][-2] == "yes"
    assert float(rows["+ torch module"][-1]) > 0  # torch_geometric's generated modules
    assert out[-1].startswith("predictor: predictor gat")


def test_bad_arguments_are_refused() -> None:
    mod = benchmark_script("controller_start")
    with pytest.raises(SystemExit):
        mod.main(["--repeats", "0"])
