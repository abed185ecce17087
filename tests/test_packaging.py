"""Import-time behaviour of the package itself."""
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import rnnattn

PKG = Path(rnnattn.__file__).parent


def test_missing_extension_gives_a_clear_import_error(tmp_path):
    """A source tree without the compiled _C says how to build it. (The copy
    gets another name so that an installed or editable rnnattn cannot shadow it.)"""
    copy = tmp_path / "rnnattn_unbuilt"
    copy.mkdir()
    for f in PKG.glob("*.py"):
        shutil.copy(f, copy / f.name)
    r = subprocess.run([sys.executable, "-c", "import rnnattn_unbuilt"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError: rnnattn: the compiled extension rnnattn._C could not be loaded" in r.stderr
    assert "pip install --no-build-isolation ." in r.stderr


def test_operators_are_registered():
    for name in ("rnn_forward", "rnn_backward"):
        assert hasattr(torch.ops.rnnattn, name), name
