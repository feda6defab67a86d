"""Sampler names as AUTOMATIC1111 writes them → diffusers schedulers built from the model's own scheduler config.

The model's config keeps its noise schedule (betas, timestep spacing, prediction type); the name only picks the
solver. Newer A1111 versions write the sigma schedule separately ("Sampler: DPM++ 2M, Schedule type: Karras");
`sampler_name` joins the two back into one name."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from tunelab.errors import TunelabError

KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# name → (scheduler class, options). Ancestral / SDE samplers draw noise each step from the image's own generator.
SAMPLERS: dict[str, tuple[type, dict]] = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
    "DPM2 Karras": (KDPM2DiscreteScheduler, KARRAS),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}),
    "DPM2 a Karras": (KDPM2AncestralDiscreteScheduler, KARRAS),
    "DPM++ 2M": (DPMSolverMultistepScheduler, _DPMPP_2M),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {**_DPMPP_2M, **KARRAS}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, _DPMPP_2M_SDE),
    "DPM++ 2M SDE Karras": (DPMSolverMultistepScheduler, {**_DPMPP_2M_SDE, **KARRAS}),
    "DDIM": (DDIMScheduler, {}),
    "PLMS": (PNDMScheduler, {"skip_prk_steps": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
}


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise TunelabError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return name


def sampler_name(sampler: str, schedule_type: str | None = None) -> str:
    """A1111 ≥ 1.9 infotext: ("DPM++ 2M", "Karras") → "DPM++ 2M Karras"; "Automatic" / None → the sampler alone."""
    if schedule_type and schedule_type not in ("Automatic", "Uniform") and not sampler.endswith(schedule_type):
        return f"{sampler} {schedule_type}"
    return sampler


def make_scheduler(name: str, base_scheduler):
    """A fresh scheduler for sampler `name` with the noise schedule of `base_scheduler` (the model's own)."""
    cls, options = SAMPLERS[check_sampler(name)]
    return cls.from_config(base_scheduler.config, **options)
