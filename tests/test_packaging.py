"""Import-time behaviour of the package itself: the missing-extension error,
the registered operators, whole-model checkpoints, and which rnnattn the
examples import."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnattn

PKG = Path(rnnattn.__file__).parent
ROOT = str(PKG.parent)


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


def _whole_models():
    return [
        rnnattn.RNN(3, 4, num_layers=2, bidirectional=True),
        rnnattn.GRU(3, 4, batch_first=True),
        rnnattn.LSTM(3, 4, proj_size=2),
        rnnattn.RNNCell(3, 4, nonlinearity="relu"),
        rnnattn.GRUCell(3, 4),
        rnnattn.LSTMCell(3, 4),
        rnnattn.AttentionPooling(4, heads=2, score="additive", attn_size=3),
        rnnattn.RNNAttentionClassifier(input_size=3, hidden_size=4, num_classes=2, cell="lstm"),
        rnnattn.RNNAttentionClassifier(vocab_size=10, embedding_dim=3, hidden_size=4, num_classes=2),
    ]


@pytest.mark.parametrize("index", range(len(_whole_models())))
def test_whole_model_checkpoints_load_with_weights_only(tmp_path, index):
    torch.manual_seed(0)
    model = _whole_models()[index].eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=True)
    assert type(loaded) is type(model)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    if isinstance(model, rnnattn.RNNAttentionClassifier):
        x = torch.randint(0, 10, (2, 5)) if model.embedding is not None else torch.randn(2, 5, 3)
    elif isinstance(model, rnnattn.AttentionPooling):
        x = torch.randn(2, 5, 4)
    elif isinstance(model, (torch.nn.RNNCell, torch.nn.GRUCell, torch.nn.LSTMCell)):
        x = torch.randn(2, 3)
    else:
        x = torch.randn(5, 2, 3)
    with torch.no_grad():
        for a, b in zip(torch.utils._pytree.tree_leaves(model(x)), torch.utils._pytree.tree_leaves(loaded(x))):
            assert torch.equal(a, b)


def test_examples_import_the_installed_rnnattn_unless_the_clone_is_built(tmp_path):
    """examples/common.py puts its clone first on sys.path only when the clone
    has a built extension: an unbuilt clone must not shadow the installed one."""
    clone = tmp_path / "clone"
    (clone / "examples").mkdir(parents=True)
    for name in ("common.py", "ts_data.py"):
        shutil.copy(os.path.join(ROOT, "examples", name), clone / "examples" / name)
    (clone / "rnnattn").mkdir()
    (clone / "rnnattn" / "__init__.py").write_text("raise ImportError('the unbuilt clone was imported')\n")
    probe = "import common, rnnattn; print(rnnattn.__file__)"
    # The installed rnnattn: this source tree, as the test runs it (an editable install or PYTHONPATH).
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe], cwd=clone / "examples", env=env, capture_output=True, text=True, timeout=120
    )
    p = run()
    assert p.returncode == 0, p.stderr
    assert os.path.realpath(p.stdout.strip()).startswith(os.path.realpath(ROOT))
    (clone / "rnnattn" / "_C.so").write_text("")  # now the clone looks built: it comes first
    p = run()
    assert p.returncode != 0 and "the unbuilt clone was imported" in p.stderr
