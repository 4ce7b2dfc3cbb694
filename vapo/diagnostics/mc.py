"""Monte-Carlo ground truth for values and advantages (the estimator lives in vapo.train.probe,
where value pretraining's stop rule uses it too; the diagnostics use the very same functions).

    V^π(s_t) = E_{y_≥t ~ π(· | s_t)} [ R(prompt, y) ],   A^π(s_t, y_t) = V^π(s_{t+1}) − V^π(s_t)   (VAPO §2)
"""

from vapo.train.probe import MCEstimate, mc_values, probe_positions, spread_rows

__all__ = ["MCEstimate", "mc_values", "probe_positions", "spread_rows"]
