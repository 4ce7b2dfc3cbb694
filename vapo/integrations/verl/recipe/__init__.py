"""VAPO recipe for verl (layout of verl's recipes): config/vapo_trainer.yaml on top of verl's
ppo_trainer, main_vapo.py (entry point), vapo_ray_trainer.py (RayVAPOTrainer), and
run_vapo_qwen2.5_0.5b_gsm8k.sh. See README.md."""
