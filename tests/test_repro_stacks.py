"""bench/repro_stacks.{sh,py}: the cold timing of notebooks without and with stacks. The table sums a mode's slices,
pairs each stacked run with its own record alone, and refuses a pair whose no-stacks half stacked; the runner's
slices alternate the modes ABBA, a notebook resumes across slices, and a stopped runner records its slice in flight."""
import contextlib
import datetime as dt
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("repro_stacks", ROOT / "bench" / "repro_stacks.py")
rs = importlib.util.module_from_spec(spec); spec.loader.exec_module(rs)

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)


def at(minutes: float) -> str: return (T0 + dt.timedelta(minutes=minutes)).isoformat(timespec="seconds")


def a_run(root, mode, name, done_min, wall, stack, kind="finetune"):
    d = root / mode / "runs" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(dict(kind=kind, wall_time=wall, stack=stack)))
    (d / "done").write_text(at(done_min) + "\nmanifest crc32=0\n")


def table(root) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out): rs.main(root)
    return out.getvalue()


def row(minutes_end, seconds, nb="nb", mode="stack", part=""):
    return f"{nb}\t{mode}\t{seconds}\t{at(minutes_end).replace('+00:00', 'Z')}{part}\n"


def test_slices_are_summed_and_runs_are_paired_by_folder(tmp_path):
    # nostack: one slice of 10 min, then 5 min that finish; stack: 6 min that finish, then nothing
    (tmp_path / "times.tsv").write_text(row(10, 600, mode="nostack", part="\tslice") + row(16, 360) +
                                        row(21, 300, mode="nostack"))
    a_run(tmp_path, "nostack", "finetune-a", 5, 20.0, 1); a_run(tmp_path, "nostack", "finetune-b", 19, 22.0, 1)
    a_run(tmp_path, "stack", "finetune-a", 15, 12.0, 2); a_run(tmp_path, "stack", "finetune-b", 15, 12.0, 2)
    a_run(tmp_path, "stack", "finetune-c", 30, 9.0, 2)        # after every span: another notebook's run
    t = table(tmp_path)
    assert "| `nb` (in 2 and 1 slices) | 15 min 00 s | 6 min 00 s | 2.50× | 2 | 2 (K ≤ 2) | finetune ×2 21.0 → 12.0 |" in t, t
    assert t.strip().endswith("= 15 min 00 s / 6 min 00 s = 2.50×"), t


def test_an_unfinished_mode_is_shown_unfinished(tmp_path):
    (tmp_path / "times.tsv").write_text(row(10, 600, mode="nostack", part="\tslice") + row(16, 360))
    t = table(tmp_path)
    assert "| `nb` | … | 6 min 00 s | | | | (unfinished) |" in t, t
    assert "ratio:" not in t


def test_a_no_stacks_half_that_stacked_is_refused(tmp_path):
    (tmp_path / "times.tsv").write_text(row(10, 600, mode="nostack") + row(20, 500))
    a_run(tmp_path, "nostack", "finetune-a", 5, 20.0, 2)
    with pytest.raises(SystemExit, match="PAPER_REPRO_STACK=1 did not turn stacks off"): table(tmp_path)


@pytest.mark.slow
@pytest.mark.heavy
def test_sliced_runner_alternates_resumes_and_records_a_stop(tmp_path):
    """A fake repo whose one notebook needs 6 s of work kept across restarts (as the run cache keeps runs), in slices of
    10 s (a kernel's start takes a few of them): the modes alternate ABBA, each mode's notebook ends, and a runner stopped mid-slice records that slice."""
    repo = tmp_path / "repo"; (repo / "bench").mkdir(parents=True); (repo / "nbs").mkdir()
    for f in ("repro_stacks.sh", "repro_stacks.py"): (repo / "bench" / f).write_text((ROOT / "bench" / f).read_text())
    nb = nbformat.v4.new_notebook(metadata=dict(kernelspec=dict(name="python3", display_name="Python 3", language="python")))
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, time, pathlib\n"
        "p = pathlib.Path(os.environ['PAPER_REPRO_OUTPUTS'])/'progress'\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "while n < 6: time.sleep(1); n += 1; p.write_text(str(n))\n"
        "assert os.environ.get('PAPER_REPRO_STACK') == ('1' if p.parent.name == 'nostack' else None)")]
    nbformat.write(nb, repo / "nbs" / "work.ipynb")
    env = dict(os.environ, VENV=str(ROOT / ".venv"), SLICE="10")
    env.pop("PAPER_REPRO_STACK", None)
    cmd = ["bash", str(repo / "bench" / "repro_stacks.sh"), str(tmp_path / "t"), "work"]
    # first a runner stopped 6 s in: it records its slice in flight as a slice
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(6)
    p.send_signal(signal.SIGTERM); p.wait(timeout=30)
    first = (tmp_path / "t" / "times.tsv").read_text().splitlines()
    assert first and all(l.split("\t")[4:] == ["slice"] for l in first), first
    # then the same command goes on to the end
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l.split("\t") for l in (tmp_path / "t" / "times.tsv").read_text().splitlines()]
    modes = [x[1] for x in rows]
    want = ["nostack", "stack", "stack", "nostack", "nostack", "stack", "stack", "nostack"]
    assert modes == (want * 3)[:len(modes)], modes           # ABBA slice by slice, across the stop
    assert [x[1] for x in rows if x[4:] != ["slice"]] and {x[1] for x in rows if x[4:] != ["slice"]} == {"nostack", "stack"}
    for m in ("nostack", "stack"):
        assert (tmp_path / "t" / m / "progress").read_text() == "6"
        assert sum(x[1] == m and x[4:] != ["slice"] for x in rows) == 1
    assert "ratio: no stacks / stacks over 1 notebooks" in r.stdout, r.stdout
