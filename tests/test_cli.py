"""The command contract: entry point, -c listing, one clear error line per bad input."""

import json
import subprocess
import sys

import pytest

from stillshot.cli.main import COMMANDS, main
from stillshot.models import ExperimentList


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_usage_lists_every_command(capsys):
    rc, out, _ = run([], capsys)
    assert rc == 0
    for name in COMMANDS:
        assert name in out


def test_unknown_command_suggests_nearest(capsys):
    rc, _, err = run(["shwo"], capsys)
    assert rc == 2
    assert "unknown command 'shwo'" in err and "did you mean 'show'" in err


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "stillshot.cli.main", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.startswith("stillshot ")


def test_show_lists_parameters_with_help(capsys):
    rc, out, _ = run(["show", "-c"], capsys)
    assert rc == 0
    assert "reference_geometry = None" in out
    assert "# " in out  # help text printed as comments


def test_unknown_parameter_is_usage_error(capsys):
    rc, _, err = run(["show", "reference_geometr=x.expt"], capsys)
    assert rc == 2
    assert err.count("\n") == 1
    assert "reference_geometr" in err and "reference_geometry" in err


def test_missing_and_unknown_files_are_reported_and_skipped(tmp_path, capsys):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image at all\n" * 10)
    missing = tmp_path / "missing.cbf"
    rc, out, err = run(["show", str(junk), str(missing)], capsys)
    assert rc == 1  # finished, but some inputs failed
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 2
    assert str(junk) in lines[0] and "unknown image format" in lines[0]
    assert str(missing) in lines[1] and "no such file" in lines[1]
    assert "0 shots from 2 files; 2 unreadable" in out


def test_no_input_is_usage_error(capsys):
    rc, _, err = run(["show"], capsys)
    assert rc == 2 and "no input files" in err


def test_bad_reference_geometry_names_the_file(tmp_path, capsys):
    geom = tmp_path / "bad.geom"
    geom.write_text("p0/min_fs = 0\n")
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"x")
    rc, _, err = run(["show", str(junk), f"input.reference_geometry={geom}"], capsys)
    assert rc != 0
    assert str(geom) in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_show_json_of_expt_round_trips(shared_data, capsys):
    ref = shared_data / "reference" / "thaumatin_grid.imported.expt"
    rc, out, _ = run(["show", str(ref), "--json"], capsys)
    assert rc == 0
    back = ExperimentList.from_dict(json.loads(out))
    orig = ExperimentList.from_file(ref)
    assert len(back) == len(orig) == 12
    for a, b in zip(back, orig):
        assert a.beam.wavelength == pytest.approx(b.beam.wavelength, abs=1e-9)
        assert a.image.path == b.image.path
