import pytest

from kernelnet_analysis import synth


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """Every synthetic scenario generated once per test session (seed 0)."""
    root = tmp_path_factory.mktemp("synth")
    return synth.generate_all(root, seed=0)
