"""The README's two set-up commands are the ones CI runs and the ones the package supports."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up and run")[1].split("\n## ")[0]
    main_cmd, test_cmd = [b.strip() for b in _bash_blocks(setup)]
    assert main_cmd.endswith("srrbench run --profile default")
    assert "pip install torch==2.13.0" in main_cmd and "pip install torch==2.13.0" in test_cmd
    tail = test_cmd.split("&& ", 2)[2]  # after creating and activating the venv
    assert tail in (ROOT / ".ci" / "run").read_text()


def test_console_script_and_module_entry_point_are_declared():
    cfg = (ROOT / "setup.cfg").read_text()
    assert "srrbench = benchmark.cli:main" in cfg
    assert (ROOT / "benchmark" / "__main__.py").exists()
