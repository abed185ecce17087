"""Shared test helpers: the devices every parity/gradcheck/opcheck test runs on."""
import pytest
import torch

import rnnattn

# CUDA cases run where a GPU and a CUDA build of rnnattn are present, and are
# reported as skipped (not silently dropped) elsewhere.
_cuda_ok = torch.cuda.is_available() and rnnattn._load.WITH_CUDA
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_ok, reason="needs a GPU and a CUDA build of rnnattn")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
