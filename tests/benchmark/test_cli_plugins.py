"""Measure modules that do not import end in one line and exit 2 for every command, never in a traceback; a module
named in SRRBENCH_MEASURES is found in the current directory, or loaded from a path to a .py file.

These run `srrbench` in a subprocess, as a console script does it (sys.path[0] is the script's folder, not the
current directory), because the package `measures` imports its modules once per process.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[2]

MY_MEASURE = textwrap.dedent("""
    from measures import register_measure

    @register_measure("plugin-test-ones", family="test")
    def ones(ctx):
        '''one, always'''
        return 1.0
    """)


@pytest.fixture
def srrbench(tmp_path):
    """Run srrbench like its console script, in tmp_path/work, with the repository (only) on PYTHONPATH."""
    launcher = tmp_path / "bin" / "srrbench.py"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom benchmark.cli import main\nsys.exit(main())\n")
    work = tmp_path / "work"
    work.mkdir()

    def run(*args, measures=None, pythonpath=str(ROOT)):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
        env.pop("SRRBENCH_MEASURES", None)
        if measures is not None:
            env["SRRBENCH_MEASURES"] = measures
        return subprocess.run([sys.executable, str(launcher), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=120)
    return work, run


def assert_one_line_exit_2(result, words):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("srrbench: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("entry", ["my_plugin", "./my_plugin.py"])
def test_a_module_in_the_current_directory_is_found_without_pythonpath(entry, srrbench):
    work, run = srrbench
    (work / "my_plugin.py").write_text(MY_MEASURE)
    result = run("list-measures", "plugin-*", measures=entry)
    assert result.returncode == 0, result.stderr
    assert "plugin-test-ones" in result.stdout and "one, always" in result.stdout


def test_a_module_that_is_not_found_names_the_variable_and_the_error(srrbench):
    _, run = srrbench
    result = run("profiles", measures="nosuch_module")     # a command that computes no measure is hit as well
    assert_one_line_exit_2(result, ["SRRBENCH_MEASURES: cannot import nosuch_module", "ModuleNotFoundError",
                                    "No module named 'nosuch_module'", "a path to a .py file"])


def test_a_module_that_raises_while_importing(srrbench):
    work, run = srrbench
    (work / "raising.py").write_text("raise RuntimeError('no GPU library here')\n")
    for entry in ("raising", "raising.py"):
        result = run("list-measures", measures=entry)
        assert_one_line_exit_2(result, [f"SRRBENCH_MEASURES: cannot import {entry}",
                                        "RuntimeError: no GPU library here"])


def test_a_missing_file_is_named(srrbench):
    work, run = srrbench
    result = run("list-measures", measures="plugins/nope.py")
    assert_one_line_exit_2(result, ["SRRBENCH_MEASURES: no Python file plugins/nope.py", str(work / "plugins")])


def test_a_broken_measure_module_inside_the_package_is_a_bug_in_one_line(srrbench, tmp_path):
    """A module of the package that fails (here: registering a name twice) is code, not input: the bug's one line
    (exit 3), not a traceback raised again inside the error handler."""
    _, run = srrbench
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "measures", copy / "measures", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "measures" / "zz_broken.py").write_text(MY_MEASURE.replace("plugin-test-ones", "srr"))
    result = run("profiles", pythonpath=f"{copy}{os.pathsep}{ROOT}")
    lines = result.stderr.splitlines()
    assert result.returncode == 3 and len(lines) == 1, result.stderr
    assert lines[0].startswith("srrbench: internal error") and "ValueError: measure 'srr' is already registered" \
        in lines[0] and "--debug" in lines[0]


def test_a_pattern_that_matches_no_measure(capsys):
    assert main(["list-measures", "zzz*"]) == 2
    err = capsys.readouterr().err
    assert err == "srrbench: error: no measure matches 'zzz*'; `srrbench list-measures` lists them all\n"
