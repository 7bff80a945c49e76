"""bench/probe.py end to end: every bad input and fault of the [reliability] issue (and ours) ends in a clear error or
is handled; none is accepted silently, none gets a poor error. Slow (it starts the console script and make a dozen
times); each case is also a fast test in tests/test_reliability_{cache,masks,train,metrics}.py."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_probe_case_is_a_clear_error_or_handled(capsys):
    spec = importlib.util.spec_from_file_location("probe", ROOT/"bench"/"probe.py")
    probe = importlib.util.module_from_spec(spec); spec.loader.exec_module(probe)
    assert len(probe.CASES) >= 27 + 10
    assert probe.main() == 0, capsys.readouterr().out
