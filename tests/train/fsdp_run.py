"""FSDP 2 on CPU (gloo) through torch's own `fully_shard` (accelerate selects FSDP only with GPUs): the tiny SDXL UNet
sharded over the processes, trained, its state saved shard by shard (`tunelab.train.sharded_checkpoint`), trained on;
then a differently initialised copy resumes from the shards and trains the same steps. test_fsdp.py launches it:
`python -m torch.distributed.run --nproc_per_node 2 fsdp_run.py OUT_DIR`; rank 0 writes OUT_DIR/result.json.
The helpers also give test_fsdp.py its one-process reference (same initial weights, same global batches)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GLOBAL_BATCH, STEPS, SAVE_AT = 4, 5, 3


def make_unet(seed: int) -> torch.nn.Module:
    """The tiny run's UNet; with seed != 0 every weight redrawn (a copy that owes nothing to the original)."""
    from tiny_run import small_sdxl

    unet = small_sdxl().unet.train()
    if seed:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in unet.parameters():
                p.normal_(0, 0.05)
    return unet


def batch(unet: torch.nn.Module, step: int) -> dict:
    """Global batch `step`: the same on every process (each takes its rows)."""
    c, g = unet.config, torch.Generator().manual_seed(1000 + step)
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return {"sample": torch.randn(GLOBAL_BATCH, 4, 8, 8, generator=g), "noise": torch.randn(GLOBAL_BATCH, 4, 8, 8, generator=g),
            "t": torch.randint(0, 1000, (GLOBAL_BATCH,), generator=g),
            "text": torch.randn(GLOBAL_BATCH, 8, c.cross_attention_dim, generator=g),
            "pooled": torch.randn(GLOBAL_BATCH, pooled, generator=g), "time_ids": torch.rand(GLOBAL_BATCH, 6, generator=g) * 64}  # fmt: skip


def train(unet, optimizer, steps: range, rows: slice, mean) -> list[float]:
    """Optimizer steps on `rows` of each global batch; `mean(local loss)` → the global batch's loss."""
    losses = []
    for step in steps:
        b = batch(unet, step)
        out = unet(b["sample"][rows], b["t"][rows], encoder_hidden_states=b["text"][rows],
                   added_cond_kwargs={"text_embeds": b["pooled"][rows], "time_ids": b["time_ids"][rows]}).sample  # fmt: skip
        loss = torch.nn.functional.mse_loss(out, b["noise"][rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(mean(loss.detach()))
    return losses


def optimizer_of(unet) -> torch.optim.Optimizer:
    return torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from tunelab.train.sharded_checkpoint import load_sharded, merged_weights, save_sharded

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)

    def sharded(seed: int):
        unet = make_unet(seed)
        for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
            fully_shard(block)
        fully_shard(unet)
        return unet, optimizer_of(unet)

    def mean(loss: torch.Tensor) -> float:
        dist.all_reduce(loss)
        return (loss / world).item()

    def full(unet) -> dict:  # the whole weights, on rank 0
        return get_model_state_dict(unet, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    unet, optimizer = sharded(seed=0)
    assert all(type(p).__name__ == "DTensor" for p in unet.parameters())  # sharded, not replicated
    losses = train(unet, optimizer, range(SAVE_AT), rows, mean)
    save_sharded(out / "sharded", {"unet": unet}, optimizer)
    at_save = full(unet)
    losses += train(unet, optimizer, range(SAVE_AT, STEPS), rows, mean)
    straight = full(unet)
    copy, copy_optimizer = sharded(seed=1)  # other initial weights: everything must come from the shards
    load_sharded(out / "sharded", {"unet": copy}, copy_optimizer)
    resumed = train(copy, copy_optimizer, range(SAVE_AT, STEPS), rows, mean)
    after_resume = full(copy)
    if rank == 0:
        merged = merged_weights(out / "sharded")
        result = {
            "losses": losses, "resumed": resumed, "files": sorted(p.name for p in (out / "sharded").iterdir()),
            "resumed_weights_equal": straight.keys() == after_resume.keys()
                                     and all(torch.equal(straight[k], after_resume[k]) for k in straight),
            "merged_equals_saved": merged.keys() == {f"unet.{k}" for k in at_save}
                                   and all(torch.equal(merged[f"unet.{k}"], v) for k, v in at_save.items()),
            "moved": sum(float((straight[k] - at_save[k]).abs().sum()) for k in straight),
        }  # fmt: skip
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
