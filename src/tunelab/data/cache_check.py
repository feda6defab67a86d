"""Is a cache complete? Every usable item of the index (what `tunelab cache` caches and a run may read) has an entry
computed from its current content (latents) or prompt (text embeddings), for every cache `[data.cache]` asks for.

`ShardStore.verify` checks that the shards there are sound; this checks that nothing is missing. Without it a cache
that a kill or a `--repair` left with a third of its items passed `--verify`, and training failed at the first
batch that held an uncached item, with no checkpoint written. `tunelab cache --verify` reports these counts and
`tunelab train` refuses before step 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.data.index import DatasetIndex

PAGE = 1000


@dataclass(frozen=True)
class Completeness:
    kind: str  # "latents" | "text"
    items: int  # usable items in the index
    missing: int  # no entry
    changed: int  # an entry computed from other content / another prompt
    built: bool = True  # False: the store does not exist at all

    @property
    def to_compute(self) -> int:
        return self.items if not self.built else self.missing + self.changed

    @property
    def complete(self) -> bool:
        return self.built and not self.missing and not self.changed

    def describe(self) -> str:
        """`<kind>: ok (all N items cached)`, `<kind>: incomplete (n of N items cached, m missing)`, or not built."""
        if not self.built:
            return f"{self.kind}: not built ({self.items} items to cache)"
        if self.complete:
            return f"{self.kind}: ok (all {self.items} items cached)"
        changed = f", {self.changed} changed since cached" if self.changed else ""
        return f"{self.kind}: incomplete ({self.items - self.to_compute} of {self.items} items cached, " \
               f"{self.missing} missing{changed})"


def check_completeness(data_config, *, text: bool = True) -> list[Completeness]:
    """One entry per cache `[data.cache]` asks for (`data_config` resolved, its index prepared); the text cache
    only with `text`."""
    from tunelab.data.cache import latent_key, prompt_key
    from tunelab.data.captions import SubsetPolicies

    cache = data_config.cache
    wanted = {"latents": cache.latents, "text": cache.text_embeddings and text}
    if not any(wanted.values()):
        return []
    found = []
    with DatasetIndex.open_existing(data_config.index) as index:
        policies = SubsetPolicies.for_index(data_config.captions, index) if wanted["text"] else None
        key_of = {"latents": latent_key,
                  "text": lambda item: prompt_key(policies.prompt(item, seed=0, epoch=0))}
        for kind, asked in wanted.items():
            if asked:
                found.append(_count(index, Path(cache.dir) / kind, kind, key_of[kind]))
    return found


def _count(index: DatasetIndex, folder: Path, kind: str, key_of) -> Completeness:
    from tunelab.data.shards import ShardStore

    items = index.count(None)
    if not (folder / "catalogue.sqlite").exists():
        return Completeness(kind, items, items, 0, built=False)
    missing = changed = 0
    page = []
    with ShardStore(folder, create=False) as store:
        def settle() -> None:
            nonlocal missing, changed
            cached = store.keys_of([item.id for item in page])
            missing += sum(item.id not in cached for item in page)
            changed += sum(item.id in cached and cached[item.id] != key_of(item) for item in page)
            page.clear()

        for item in index.iter_items(split=None, chunk_rows=PAGE):
            page.append(item)
            if len(page) == PAGE:
                settle()
        settle()
    return Completeness(kind, items, missing, changed)


def require_complete(data_config, *, text_encoder_mode: str = "off") -> None:
    """Before a run's first step: refuse, in one line, a cache that misses items the run will read. With text
    encoders trained the loader refuses a text cache with its reason instead."""
    from tunelab.errors import fail

    incomplete = [c for c in check_completeness(data_config, text=text_encoder_mode == "off") if not c.complete]
    if incomplete:
        raise fail(data_config.cache.dir, "cache incomplete (" + "; ".join(c.describe() for c in incomplete)
                   + "): run `tunelab cache` with this config first")


def verify_lines(data_config, *, repair: bool = False) -> tuple[list[str], bool]:
    """`cache --verify` / `--repair`: (report lines, exit 0?). Per cache: its shards' problems, then its
    completeness. --verify passes only a sound and complete cache; --repair drops the bad shards, says what must
    be recomputed, and passes when what is left is sound."""
    from tunelab.data.cache import verify_caches

    problems = verify_caches(data_config.cache, repair=repair)
    completeness = {c.kind: c for c in check_completeness(data_config)}
    if not problems and not completeness:
        return [f"no caches under {data_config.cache.dir}"], True
    lines, sound, complete = [], True, True
    for kind in [k for k in ("latents", "text") if k in problems or k in completeness]:
        found, counted = problems.get(kind, []), completeness.get(kind)
        if found:
            lines.append(f"{kind}: {len(found)} problem(s)")
            lines += [f"  {p}" for p in found]
        if counted is not None and not (found and counted.complete):  # "ok" only for a sound store
            lines.append(counted.describe())
        elif counted is None and not found:
            lines.append(f"{kind}: ok (not asked for by [data.cache])")
        sound &= not found
        complete &= counted is None or counted.complete
    if repair and not sound:
        lines.append("repaired: bad shards dropped")
    if repair and not complete:
        todo = ", ".join(f"{c.kind} {c.to_compute} items" for c in completeness.values() if not c.complete)
        lines.append(f"to recompute: {todo}; run `tunelab cache CONFIG`")
    return lines, (True if repair else sound and complete)
