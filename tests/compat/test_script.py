"""Done when: a pycaffe-style script runs with only `import torchcaffe as caffe` changed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("pycaffe_script.py")


def test_pycaffe_script_runs_unchanged(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    checks = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("CHECK")}
    assert set(checks) == {"trained", "blobs", "params", "predicted", "surgery", "transformer"}
    _, _, iterations, first, last = checks["trained"].split()
    assert int(iterations) == 30 and float(last) < float(first)  # the Python loss fell
    assert "('score', (10, 64), (10,))" in checks["params"]
