"""Generated documentation stays in step with the code."""
import subprocess
import sys

from .conftest import REPO


def test_layer_tables_are_current():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_layer_table.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_names_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
