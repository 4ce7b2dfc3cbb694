"""vapo: value-based RL for long chain-of-thought reasoning."""
__version__ = "0.1.0"
