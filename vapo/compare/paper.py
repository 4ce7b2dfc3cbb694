"""The papers' numbers that a compare report shows beside ours (AIME24 avg@32, Qwen2.5-32B).

VAPO (arXiv 2504.05118), Table 1: VAPO 60.4, DAPO 50, vanilla PPO 5, and VAPO minus one component.
DAPO (arXiv 2503.14476), Table 1: the cumulative path from GRPO to DAPO.
"""

from __future__ import annotations

VAPO_SCORE = 60.4

# Paper score of each preset / ablation preset (by preset name).
PAPER_SCORES: dict[str, float] = {
    "vapo": 60.4,
    "dapo": 50.0,
    "ppo": 5.0,
    "grpo": 30.0,  # DAPO's table, GRPO baseline
    "vapo_no_value_pretrain": 11.0,
    "vapo_no_decoupled_gae": 33.0,
    "vapo_no_adaptive_gae": 45.0,
    "vapo_no_clip_higher": 46.0,
    "vapo_no_token_loss": 53.0,
    "vapo_no_pos_nll": 54.0,
    "vapo_no_group_sampling": 55.0,
}

# VAPO minus each component: (ablation preset, component as the paper names it).
ABLATIONS: tuple[tuple[str, str], ...] = (
    ("vapo_no_value_pretrain", "value pretraining"),
    ("vapo_no_decoupled_gae", "decoupled GAE"),
    ("vapo_no_adaptive_gae", "length-adaptive GAE"),
    ("vapo_no_clip_higher", "clip-higher"),
    ("vapo_no_token_loss", "token-level loss"),
    ("vapo_no_pos_nll", "positive-example NLL"),
    ("vapo_no_group_sampling", "group sampling"),
)


def paper_drop(ablation: str) -> float:
    """Points VAPO loses without the component in the paper (60.4 − ablated score)."""
    return round(VAPO_SCORE - PAPER_SCORES[ablation], 1)


# DAPO's cumulative table: each row adds one technique to the one above.
DAPO_CUMULATIVE: tuple[tuple[str, float], ...] = (
    ("GRPO", 30.0),
    ("+ overlong filtering", 36.0),
    ("+ clip-higher", 38.0),
    ("+ soft overlong punishment", 41.0),
    ("+ token-level loss", 42.0),
    ("+ dynamic sampling (= DAPO)", 50.0),
)

# VAPO reaches DAPO's final score in about 60% of DAPO's steps (VAPO paper, §4.2).
VAPO_STEPS_TO_DAPO_FINAL = 0.6
