"""Running a sweep's compiled program over every config: chunks, devices, progress, checkpoints.

Configs run in equal chunks (one compilation serves every chunk), each within a memory budget,
the config axis sharded over every device of the mesh (all the global devices: after
``jax.distributed.initialize()`` every process runs the same sweep and gets the whole result),
padded to a multiple of the device count. Each chunk is dispatched before the previous one is
collected. A progress bar counts chunks; with a checkpoint directory every finished chunk is
saved there, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import engine
from gdjax.sweep import checkpoint as checkpoint_
from gdjax.sweep import program

PyTree = Any

describe = checkpoint_.describe  # (what gdjax.sweep calls)

CACHE_BYTES = 64 << 20
"""Working set of one chunk per device by default (64 MiB; the memory budget caps it too)."""

COMPACT_MIN = 1024
"""The smallest batch (per device) that compaction makes: below it a step costs XLA:CPU its
kernels' overheads more than their arithmetic, and each new size is one more compilation."""


def run_groups(
    groups: list[tuple[program.Static, np.ndarray]],
    varying: PyTree,
    shared: PyTree,
    *,
    chunk_size: int | None,
    memory_budget: int,
    progress: bool | None,
    checkpoint: str | os.PathLike | None,
    describe: Mapping[str, Any],
    compact: bool = True,
) -> engine.Result:
    """Run every group (one per batch size) in chunks; outcomes gathered in config order."""
    mesh = groups[0][0].mesh
    devices = mesh.size
    plans = []
    shapes_of = []
    for static, idx in groups:
        shapes = program.shapes_of(static, varying, shared)
        shapes_of.append(shapes)
        if chunk_size is None:
            out, work = shapes.out_bytes, shapes.work_bytes
            per_device = min(memory_budget // (out + work), CACHE_BYTES // work)
        else:
            per_device = -(-chunk_size // devices)
        size = _per_device(min(per_device, -(-len(idx) // devices))) * devices
        chunks = -(-len(idx) // size)
        # as many chunks, evened out: the last one is not mostly padding
        size = _per_device(-(-len(idx) // (chunks * devices))) * devices
        plans.append((static, idx, size, chunks))
    store = None
    if checkpoint is not None:
        store = checkpoint_.Checkpoint(
            checkpoint, checkpoint_.fingerprint(plans, varying, shared),
            {f"g{g}-c{k}": (g, k * size, min((k + 1) * size, len(idx)))
             for g, (_, idx, size, chunks) in enumerate(plans) for k in range(chunks)},
            describe,
        )
    total = sum(chunks for *_, chunks in plans)
    show = (total > 1 if progress is None else bool(progress)) and jax.process_index() == 0
    shared_on_devices = program.put(shared, NamedSharding(mesh, P()))
    by_config = NamedSharding(mesh, P(program.AXIS))
    results = []
    with _progress_bar(show, total) as advance:
        for g, (static, idx, size, chunks) in enumerate(plans):
            results.append(_run_group(
                g, static, shapes_of[g], idx, size, chunks, varying, shared_on_devices, by_config,
                store, advance, compact,
            ))
    if len(results) == 1:
        return results[0]
    return _gather_groups(results, [idx for _, idx in groups])


def _run_group(
    g: int,
    static: program.Static,
    shapes: program.Shapes,
    idx: np.ndarray,
    size: int,
    chunks: int,
    varying: PyTree,
    shared_on_devices: PyTree,
    by_config: NamedSharding,
    store: checkpoint_.Checkpoint | None,
    advance: Callable[[], None],
    compact: bool,
) -> engine.Result:
    """The chunks of one group, one after another."""
    out = None
    for k in range(chunks):
        lo, hi = k * size, min((k + 1) * size, len(idx))
        part = None if store is None else store.load(f"g{g}-c{k}", shapes.treedef)
        if part is None:
            if chunks == 1 and size == len(idx) == _count_of(varying):
                chunk = program.put(varying, by_config)  # the whole grid, unpadded: no copy
            else:
                take = idx[np.minimum(np.arange(lo, lo + size), hi - 1)]  # pad: repeat the last
                chunk = program.put(jax.tree.map(lambda a, take=take: a[take], varying), by_config)
            part = jax.tree.map(
                lambda a, n=hi - lo: a[:n],
                program.fetch(run_chunk(chunk, shared_on_devices, static, shapes, by_config,
                                        compact)),
            )
            if store is not None:
                store.save(f"g{g}-c{k}", part)
        if chunks == 1:
            out = part  # the whole group: nothing to assemble
        else:
            if out is None:
                out = jax.tree.map(lambda a: np.empty((idx.size, *a.shape[1:]), a.dtype), part)
            jax.tree.map(lambda o, a, at=slice(lo, hi): o.__setitem__(at, a), out, part)
        advance()
    return out


def run_chunk(varying: PyTree, shared: PyTree, static: program.Static, shapes: program.Shapes,
              by_config: NamedSharding, compact: bool = True) -> engine.Result:
    """One chunk, on the devices: its configs' loops in legs, the diverged ones replayed.

    With ``compact``, a leg ends once at most a quarter of its configs are still running; those
    are gathered into a batch of a power of two (per device, at least :data:`COMPACT_MIN`; one
    more compiled program per size), and the configs that stopped cost nothing more. Each
    config computes exactly what it would in the full batch: the results do not depend on
    ``compact``.
    """
    devices = static.mesh.size
    units = program.shape(shared, static).units
    axes = shapes.axes
    config_axes = (0,) * len(jax.tree.leaves(varying))
    # (configs that all stop together, their flag the same for all, gain nothing from it)
    compact = compact and shapes.flag_axis is not None
    batch = len(jax.tree.leaves(varying)[0])

    def stop_at(batch):  # a leg ends when a compaction would save three quarters or more
        per = batch // devices
        return np.int32(batch // 4 if compact and per // 4 >= COMPACT_MIN else 0)

    carry, buffer, counts, marked, result = program.run(varying, shared, stop_at(batch), static)
    unit, running, replays = (int(n) for n in program.fetch(counts))
    if unit >= units or running == 0:
        if replays == 0:
            return result  # the common case: one program
    else:
        every = (*axes, *(0,) * len(jax.tree.leaves(buffer)))  # the carry's, the buffer's axes
        full, rows = (carry, buffer), np.arange(batch)
        while unit < units and running > 0:
            going = rows[np.flatnonzero(np.asarray(program.fetch(carry.flag)) == 0)]
            per = max(COMPACT_MIN, 1 << (-(-len(going) // devices) - 1).bit_length())
            rows = going[np.minimum(np.arange(per * devices), len(going) - 1)]  # pad: repeat
            carry, buffer = program.take(full, rows, every, by_config)
            carry, buffer, unit, running = program.leg(
                program.take(varying, rows, config_axes, by_config), shared, carry, buffer,
                np.int32(unit), stop_at(len(rows)), static)
            unit, running = int(unit), int(running)
            full = program.put_rows(full, rows, (carry, buffer), every)
        carry, buffer = full
        marked = program.marked(varying, shared, carry, static)
    replayed = np.flatnonzero(np.asarray(program.fetch(marked)))
    if not replayed.size:
        return program.finish(varying, shared, carry, buffer, static)
    # the diverged configs alone, in a batch of their own
    per = _per_device(-(-replayed.size // devices))
    rows = replayed[np.minimum(np.arange(per * devices), replayed.size - 1)]
    return program.replay(varying, shared, carry, buffer, rows, static, by_config)


def _count_of(varying: PyTree) -> int | None:
    leaves = jax.tree.leaves(varying)
    return len(leaves[0]) if leaves else None


def _per_device(size: int) -> int:
    """Configs per device: a multiple of 8, at least 16.

    XLA fuses tiny batches differently (a batch of one compiles like an unbatched run, a batch of
    two differently again), and another fusion can round differently in the last bit. From 16 on,
    in multiples of 8, the program is the same up to the loop bounds, so a config's result does
    not depend on the device count or the chunk it lands in (tested on 1, 2, 4 and 8 devices).
    """
    return max(16, -(-size // 8) * 8)


def _gather_groups(results: list[engine.Result], indices: list[np.ndarray]) -> engine.Result:
    """Groups back in config order; shorter histories padded with their final record."""
    records = max(r.history.step.shape[1] for r in results)

    def pad(r):
        history = jax.tree.map(
            lambda a: np.pad(a, [(0, 0), (0, records - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             mode="edge"),
            r.history,
        )
        return r._replace(history=history)

    results = [pad(r) for r in results]
    count = sum(len(i) for i in indices)
    out = jax.tree.map(lambda a: np.empty((count, *a.shape[1:]), a.dtype), results[0])
    for r, idx in zip(results, indices, strict=True):
        jax.tree.map(lambda o, a, idx=idx: o.__setitem__(idx, a), out, r)
    return out


class _progress_bar:
    """A rich progress bar over chunks on stderr (a no-op when hidden); the callable ticks one.

    On stderr, so that a program printing results (``gdjax sweep --json``) keeps stdout clean.
    """

    def __init__(self, show: bool, total: int):
        self.bar = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} chunks"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True),
            )
            self.task = self.bar.add_task("sweep", total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.bar is None:
            return lambda: None
        self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
