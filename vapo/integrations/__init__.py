"""Bridges from vapo's algorithms to other RL engines. Each sub-package imports its engine
lazily, so ``import vapo`` never needs one installed (extras: ``vapo[verl]``)."""
