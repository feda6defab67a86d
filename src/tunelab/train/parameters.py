"""Which parameters a run trains, at which learning rate: text-encoder modes and partial-UNet selection.

The selection is declarative (preset, block names, include/exclude regexes), resolved here once into a
`TrainablePlan` — the set of trainable parameter names per part — which the optimizer, the dry run and the tests
all read. Nothing else decides what trains."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from tunelab.errors import TunelabError
from tunelab.models.components import ModelComponents
from tunelab.train.block_lr import block_learning_rates, unet_block_labels, unet_parameter_blocks
from tunelab.train.config import RunConfig, UNetConfig

# Parameter-name patterns (diffusers UNet2DConditionModel names) each preset freezes.
# SDXL levels: down_blocks.0 / up_blocks.2 = level 0 (highest resolution), down_blocks.2 / up_blocks.0 = level 2.
_SDXL_71 = [
    r"^down_blocks\.0\.resnets\.",  # level-0 input res-blocks
    r"\.(downsamplers|upsamplers)\.",  # all down/up-samplers
    r"^down_blocks\.2\.attentions\.1\.",  # second input level-2 transformer
    r"^up_blocks\.0\.attentions\.0\.",  # first output level-2 transformer
    r"^up_blocks\.2\.resnets\.",  # level-0 output res-blocks
]
# Each preset trains the share of the full-size SDXL UNet its name says (within half a point, counted on the meta
# device in tests/train/test_modes_and_selection.py): 71.2, 68.2 and 62.7 %. Each freezes what the one before does.
_SDXL_68 = _SDXL_71 + [
    r"^mid_block\.resnets\.",  # the middle block's res-blocks
    r"^down_blocks\.1\.resnets\.",  # level-1 input res-blocks
]
_SDXL_63 = _SDXL_68 + [r"^up_blocks\.0\.resnets\."]  # level-2 output res-blocks

# Presets as (include patterns, exclude patterns); an empty include list means "everything".
UNET_PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "full": ([], []),
    "attn-only": ([r"\.attn\d\."], []),  # the attention layers (self and cross) of every transformer block
    "attn-mlp": ([r"\.attentions\.\d+\."], []),  # whole transformer blocks: attention, feed-forward, norms, proj
    "sdxl-71": ([], _SDXL_71),
    "sdxl-68": ([], _SDXL_68),
    "sdxl-63": ([], _SDXL_63),
}


def select_unet_parameters(unet: torch.nn.Module, config: UNetConfig) -> set[str]:
    """Names of the UNet parameters the config trains (before the learning rate is considered)."""
    include, exclude = UNET_PRESETS[config.preset]
    include = include + list(config.include)
    exclude = exclude + list(config.exclude)
    try:
        include_re = [re.compile(p) for p in include]
        exclude_re = [re.compile(p) for p in exclude]
    except re.error as e:
        raise TunelabError(f"unet: bad regex {e.pattern!r}: {e}") from None
    names = [name for name, _ in unet.named_parameters()]
    if config.blocks:
        unknown = [b for b in config.blocks if not any(n == b or n.startswith(b + ".") for n in names)]
        if unknown:
            raise TunelabError(f"unet.blocks: no UNet module named {unknown[0]!r} (e.g. 'down_blocks.2', 'mid_block')")
    selected = set()
    for name in names:
        if config.blocks and not any(name == b or name.startswith(b + ".") for b in config.blocks):
            continue
        if include_re and not any(r.search(name) for r in include_re):
            continue
        if any(r.search(name) for r in exclude_re):
            continue
        selected.add(name)
    return selected


def unused_text_encoder_parameters(encoder: torch.nn.Module, *, is_sdxl: bool, is_pooled_encoder: bool,
                                   clip_skip: int | None) -> set[str]:
    """Parameters that cannot influence the conditioning (layers after the one whose hidden states are used).
    Marking them frozen keeps counts honest and DDP free of unused parameters."""
    names = [name for name, _ in encoder.named_parameters()]
    layer_numbers = [int(m.group(1)) for n in names if (m := re.search(r"encoder\.layers\.(\d+)\.", n))]
    n_layers = max(layer_numbers) + 1
    skip = max(clip_skip or 2, 2) if is_sdxl else (clip_skip or 1)
    first_unused = n_layers - skip + 1  # hidden_states[-skip] is the output of layer n_layers - skip
    if is_pooled_encoder:  # SDXL's second encoder: the pooled output needs every layer, the final norm, projection
        return set()
    unused = {n for n in names if (m := re.search(r"encoder\.layers\.(\d+)\.", n)) and int(m.group(1)) >= first_unused}
    if is_sdxl:  # SDXL's first encoder: penultimate hidden states without the final layer norm
        unused |= {n for n in names if "final_layer_norm" in n}
    return unused


@dataclass
class PartPlan:
    module: torch.nn.Module
    learning_rate: float
    trainable: set[str] = field(default_factory=set)
    block_lr: list[float] | None = None  # UNet: one learning rate per block (train/block_lr.py), replacing learning_rate

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.module.named_parameters() if n in self.trainable]


@dataclass
class TrainablePlan:
    """Per part ("unet", "text_encoder", "text_encoder_2"): its module, learning rate and trainable names."""

    parts: dict[str, PartPlan]
    text_encoder_stop_step: int | None = None
    ever_trained: set[str] = field(default_factory=set)  # parts trained at any step: what a checkpoint stores

    def __post_init__(self):
        self.ever_trained = self.ever_trained or {name for name, part in self.parts.items() if part.trainable}

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {name: part.module for name, part in self.parts.items() if name in self.ever_trained}

    @property
    def trains_text_encoders(self) -> bool:
        return any(p.trainable for name, p in self.parts.items() if name.startswith("text_encoder"))

    @property
    def trains_unet(self) -> bool:
        return bool(self.parts["unet"].trainable)

    def apply(self) -> None:
        """Set requires_grad on every parameter of every part to match the plan."""
        for part in self.parts.values():
            for name, p in part.module.named_parameters():
                p.requires_grad_(name in part.trainable)

    def freeze_text_encoders(self) -> None:
        """From `stop_after_steps` on: text encoders frozen, their gradients dropped so no optimizer touches them."""
        for name, part in self.parts.items():
            if name.startswith("text_encoder"):
                for p in part.parameters():
                    p.requires_grad_(False)
                    p.grad = None
                part.trainable = set()


def plan_trainable(components: ModelComponents, config: RunConfig) -> TrainablePlan:
    te = config.text_encoder
    unet_lr = 0.0 if te.mode == "only" else config.unet.learning_rate
    parts = {"unet": PartPlan(components.unet, unet_lr)}
    if unet_lr > 0:
        parts["unet"].trainable = select_unet_parameters(components.unet, config.unet)
    if unet_lr > 0 and config.unet.block_lr is not None:
        block_lrs = block_learning_rates(components.unet, config.unet.block_lr)
        parts["unet"].block_lr = list(config.unet.block_lr)
        parts["unet"].trainable = {n for n in parts["unet"].trainable if block_lrs[n] > 0}
    te_lrs = te.learning_rates()
    for i, encoder in enumerate(components.text_encoders):
        name = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        part = PartPlan(encoder, te_lrs[i] if i < len(te_lrs) else te.learning_rate)
        if part.learning_rate > 0 and te.stop_after_steps != 0:
            unused = unused_text_encoder_parameters(
                encoder, is_sdxl=components.is_sdxl, is_pooled_encoder=components.is_sdxl and i == 1,
                clip_skip=config.train.clip_skip)
            part.trainable = {n for n, _ in encoder.named_parameters()} - unused
        parts[name] = part
    plan = TrainablePlan(parts, te.stop_after_steps)
    if not any(p.trainable for p in plan.parts.values()):
        raise TunelabError("nothing to train: every part is frozen (check text_encoder.mode, learning rates, unet selection)")
    return plan


def parameter_groups(plan: TrainablePlan) -> list[dict]:
    """One optimizer group per trained part, with its own learning rate and name (logged as lr/<name>); with
    block_lr, one group per trained UNet block (`unet.input_blocks.4`, …)."""
    groups = []
    for name, part in plan.parts.items():
        if not part.trainable:
            continue
        if part.block_lr is None:
            groups.append({"params": part.parameters(), "lr": part.learning_rate, "name": name})
            continue
        labels = unet_block_labels(part.module)
        blocks = unet_parameter_blocks(part.module)
        by_block: dict[int, list[torch.nn.Parameter]] = {}
        for parameter_name, p in part.module.named_parameters():
            if parameter_name in part.trainable:
                by_block.setdefault(blocks[parameter_name], []).append(p)
        for block, members in sorted(by_block.items()):
            groups.append({"params": members, "lr": part.block_lr[block], "name": f"{name}.{labels[block]}"})
    return groups


def block_name(part: str, parameter: str) -> str:
    """The block a parameter is reported under: `unet.down_blocks.1.attentions`, `unet.conv_in`, `text_encoder`."""
    if part != "unet":
        return part
    pieces = parameter.split(".")
    depth = 3 if pieces[0] in ("down_blocks", "up_blocks") else 2 if pieces[0] == "mid_block" else 1
    return "unet." + ".".join(pieces[:depth])


def trainable_table(plan: TrainablePlan) -> list[tuple[str, int, int]]:
    """(block, trainable parameters, total parameters) for every block, in model order."""
    trainable: Counter = Counter()
    total: Counter = Counter()
    for part_name, part in plan.parts.items():
        for name, p in part.module.named_parameters():
            block = block_name(part_name, name)
            total[block] += p.numel()
            if name in part.trainable:
                trainable[block] += p.numel()
    return [(block, trainable[block], total[block]) for block in total]


def format_dry_run(plan: TrainablePlan) -> str:
    rows = trainable_table(plan)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'block':<{width}}  {'trainable':>12}  {'total':>12}  {'%':>6}"]
    for block, n, total in rows:
        lines.append(f"{block:<{width}}  {n:>12,}  {total:>12,}  {100 * n / total:>6.2f}")
    unet = plan.parts["unet"]
    if unet.block_lr is not None:
        pairs = zip(unet_block_labels(unet.module), unet.block_lr)
        lines.append("UNet block learning rates: " + ", ".join(f"{label} {lr:g}" for label, lr in pairs))
    unet_n = sum(n for b, n, _ in rows if b.startswith("unet."))
    unet_total = sum(t for b, _, t in rows if b.startswith("unet."))
    all_n, all_total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"UNet: {unet_n:,} of {unet_total:,} parameters trainable ({100 * unet_n / unet_total:.2f} %)")
    for name, part in plan.parts.items():
        if name.startswith("text_encoder"):
            n = sum(p.numel() for p in part.parameters())
            lines.append(f"{name}: {'trained' if n else 'frozen'}, lr {part.learning_rate:g}, {n:,} parameters")
    lines.append(f"total: {all_n:,} of {all_total:,} parameters trainable ({100 * all_n / all_total:.2f} %)")
    if plan.text_encoder_stop_step is not None:
        lines.append(f"text encoders stop training after step {plan.text_encoder_stop_step}")
    return "\n".join(lines)
