import pytest
from toys import make_micro_run


@pytest.fixture(scope="session")
def micro_runs(tmp_path_factory):
    """Two micro run directories (a VAPO run with a critic, a critic-free GRPO run), diagnosed once."""
    from vapo.diagnostics.run import Budget, diagnose

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preset in ("vapo", "grpo"):
        run = make_micro_run(root, preset=preset, sft_steps=0)
        out[preset] = (run, diagnose(run, budget=Budget.quick(), progress=False))
    return out
