"""Model-agnostic diffusion toolkit: schedules, forward process, samplers, guidance."""
from dreamrec.diffusion.guidance import ClassifierFreeGuidance, drop_condition, guided_prediction
from dreamrec.diffusion.scheduler import DiffusionScheduler, inference_timesteps, sample
from dreamrec.diffusion.schedules import (
    cosine_beta_schedule,
    exp_beta_schedule,
    linear_beta_schedule,
    linear_variance_betas,
    make_beta_schedule,
    sqrt_beta_schedule,
)

__all__ = [
    "ClassifierFreeGuidance",
    "DiffusionScheduler",
    "cosine_beta_schedule",
    "drop_condition",
    "exp_beta_schedule",
    "guided_prediction",
    "inference_timesteps",
    "linear_beta_schedule",
    "linear_variance_betas",
    "make_beta_schedule",
    "sample",
    "sqrt_beta_schedule",
]
