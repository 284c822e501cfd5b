"""Running a sweep's compiled program over every config: chunks, devices, progress, checkpoints.

Configs run in equal chunks (one compilation serves every chunk), each within a memory budget,
the config axis sharded over every device of the mesh (all the global devices: after
``jax.distributed.initialize()`` every process runs the same sweep and gets the whole result),
padded to a multiple of the device count; chunks run one after another (each waits for its
first program's counts to choose what follows). A progress bar counts chunks; with a checkpoint
directory every finished chunk is saved there, so an interrupted sweep resumes where it stopped.
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
_run = program.run  # (the jitted program, for its memory figures, however tests wrap it)

CACHE_BYTES = 64 << 20
"""Working set of one chunk per device by default (64 MiB; the memory budget caps it too)."""

TEMP_MARGIN = 1.5
"""What the temporaries XLA reports for a program are counted at: XLA:CPU's peak passes its
report by a third to a half (one to three more of the objective's intermediates: glibc's heap
keeps freed blocks, and threads overlap buffers), measured with tests/test_memory.py's sweep."""

COMPACT_MIN = 1024
"""The smallest batch (per device) that compaction makes: below it a step costs XLA:CPU its
kernels' overheads more than their arithmetic, and each new size is one more compilation."""

COMPACT_BY = 4
"""A leg ends for a compaction once at most ``1 / COMPACT_BY`` of its configs are running (2 was
no faster on the 8-D early-exit rows: one more round trip and compilation)."""

COMPACT_AFTER = 2
"""By default (``compact=None``) a sweep compacts from its third call on (the same program on
chunks of the same shapes): compiling the smaller batches' programs costs XLA:CPU more than one
call saves in every sweep measured (benchmarks/RESULTS.md: the basin map's first call 2.5 s with
compaction, 1.1 s without), so a sweep run once runs as one program and a sweep run again and
again compacts."""

COMPACT_WORK = 1 << 28
"""...and from its first call when a chunk could take this many config-steps (``steps`` times the
chunk's configs, ~1 s of evaluated steps here, what the compilation costs): a chunk kept alive
by a few slow configs then cannot cost much more than compacting would have."""


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
    compact: bool | None = None,
) -> engine.Result:
    """Run every group (one per batch size) in chunks; outcomes gathered in config order.

    Raises:
      ValueError: the sweep cannot keep within ``memory_budget`` (see :func:`plan`), before
        any chunk runs.
    """
    mesh = groups[0][0].mesh
    shared_on_devices = program.put(shared, NamedSharding(mesh, P()))
    by_config = NamedSharding(mesh, P(program.AXIS))
    shapes_of = [program.shapes_of(static, varying, shared) for static, _ in groups]
    plans = plan(groups, shapes_of, varying, shared_on_devices, by_config,
                 chunk_size=chunk_size, memory_budget=memory_budget)
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


def plan(
    groups: list[tuple[program.Static, np.ndarray]],
    shapes_of: list[program.Shapes],
    varying: PyTree,
    shared: PyTree,
    by_config: NamedSharding,
    *,
    chunk_size: int | None,
    memory_budget: int,
) -> list[tuple[program.Static, np.ndarray, int, int]]:
    """``(static, configs, chunk size, chunks)`` per group, within ``memory_budget``.

    What a sweep holds at its peak, all counted against the budget: on the host, the grid and
    the whole result (``history.step`` once per group), with several groups that result twice
    while they are gathered; for the chunk in flight, the compiled program's arguments, outputs
    and temporaries as XLA reports them (:func:`program_bytes`, on every device) and the
    chunk's outcome fetched to the host. By default a group's chunk is as large as keeps a
    device's working set near :data:`CACHE_BYTES`, then smaller until it fits: XLA's figures
    at one size give the bytes per config, and the size they allow is compiled and checked
    again (the program that runs: a sweep that fits compiles nothing more).

    Raises:
      ValueError: the result alone, or the smallest chunk (or ``chunk_size``'s), would pass
        ``memory_budget``: the bytes needed and what to change.
    """
    devices = by_config.mesh.size
    count = sum(len(idx) for _, idx in groups)
    records = [len(engine.record_steps(static.steps, static.record_every))
               for static, _ in groups]
    per_config = [shapes.out_bytes for shapes in shapes_of]  # (history.step: counted below)
    held = _nbytes(varying) + sum(len(idx) * b for (_, idx), b in zip(groups, per_config,
                                                                      strict=True))
    if len(groups) > 1:  # gathered into one result (history.step per config, padded)
        held += count * (max(per_config) + 4 * max(records)) + 4 * sum(records)
    else:
        held += 4 * records[0]
    if held > memory_budget:
        raise ValueError(
            f"memory_budget={memory_budget} bytes cannot hold this sweep's result: {count} "
            f"configs x {max(records)} history records need {held} bytes on the host before "
            "any chunk runs; record less history (a larger record_every, record_params=False), "
            f"sweep fewer configs, or raise memory_budget to at least {held}"
        )
    plans = []
    for (static, idx), shapes in zip(groups, shapes_of, strict=True):
        fetched = shapes.out_bytes  # a chunk's outcome on the host, per config
        sizes = {}  # size -> bytes the chunk in flight holds

        def need(size, static=static, fetched=fetched, sizes=sizes):
            if size not in sizes:
                sizes[size] = (program_bytes(static, varying, shared, size, by_config)
                               + size * fetched)
            return sizes[size]

        room = memory_budget - held
        smallest = _even(len(idx), 16, devices)
        if chunk_size is not None:
            size = _even(len(idx), -(-chunk_size // devices), devices)
        else:
            size = _even(len(idx), CACHE_BYTES // shapes.work_bytes, devices)
            tried = []
            while need(size) > room and size > smallest:
                # bytes grow linearly with the chunk: a line through the last two sizes tried
                # (through 0 from the first), then the largest size under it, 8 per device less
                tried.append(size)
                lo, hi = (0, tried[0]) if len(tried) == 1 else sorted(tried[-2:])
                slope = max(1.0, (need(hi) - (need(lo) if lo else 0)) / (hi - lo))
                fits = (room - need(hi)) / slope + hi
                per_device = min(int(fits) // devices, size // devices - 8) // 8 * 8
                size = _even(len(idx), max(16, per_device), devices)
        if need(size) > room:
            what = (f"chunk_size={chunk_size} ({size} configs a chunk)" if chunk_size is not None
                    else f"even the smallest chunk ({size} configs)")
            fix = ("a smaller chunk_size, " if chunk_size is not None and size > smallest
                   else "")
            raise ValueError(
                f"memory_budget={memory_budget} bytes is too small for {what}: running it "
                f"needs {need(size)} bytes (the compiled program's arguments, outputs and "
                f"temporaries as XLA reports them, and its outcome on the host) beside the "
                f"{held} bytes the result and grid hold; use {fix}an objective with smaller "
                f"intermediates, fewer configs or less history, or raise memory_budget to at "
                f"least {held + need(size)}"
            )
        plans.append((static, idx, size, -(-len(idx) // size)))
    return plans


def program_bytes(static: program.Static, varying: PyTree, shared: PyTree, size: int,
                  by_config: NamedSharding) -> int:
    """Bytes :func:`gdjax.sweep.program.run` holds for a chunk of ``size`` configs on all its
    devices together: arguments, outputs and temporaries (those times :data:`TEMP_MARGIN`), as
    XLA reports them for the compiled program (compiled here once; the chunks then run it from
    jit's cache). Where the backend reports nothing, the rough working set of
    :class:`gdjax.sweep.program.Shapes`."""
    key = (static, size, by_config, *_signature(varying, shared))
    if key in _program_bytes:
        return _program_bytes[key]
    chunk = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((size, *np.shape(a)[1:]), a.dtype,
                                       sharding=None if by_config.num_devices == 1 else by_config),
        varying,
    )
    stats = _run.lower(chunk, shared, np.int32(0), static).compile().memory_analysis()
    if stats is None:
        out = size * program.shapes_of(static, varying, shared).work_bytes
    else:
        per_device = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                      + TEMP_MARGIN * stats.temp_size_in_bytes - stats.alias_size_in_bytes)
        out = by_config.num_devices * int(per_device)
    if len(_program_bytes) >= 64:
        _program_bytes.clear()
    _program_bytes[key] = out
    return out


# (a repeated 16-config sweep takes 0.6 ms with it, 2 ms lowering the program again)
_program_bytes: dict[tuple, int] = {}


def _even(count: int, per_device: int, devices: int) -> int:
    """The chunk size for ``count`` configs at most ``per_device`` a device (see
    :func:`_per_device`), evened out over as many chunks: the last one is not mostly padding."""
    size = _per_device(min(per_device, -(-count // devices))) * devices
    chunks = -(-count // size)
    return _per_device(-(-count // (chunks * devices))) * devices


def _nbytes(tree: PyTree) -> int:
    return sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree))


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
    compact: bool | None,
) -> engine.Result:
    """The chunks of one group, one after another.

    ``history.step`` is the same for every config of a group: it is kept once, seen as
    ``(configs, records)`` through a read-only broadcast view.
    """
    if compact is None:  # (a sweep's call counts once, however many chunks it has)
        # with several processes every one must run the same programs: a count that one of
        # them kept differently (a sweep it ran alone) would leave the others waiting
        compact = _processes() == 1 and (
            _calls_before(static, size, varying, shared_on_devices) >= COMPACT_AFTER
            or static.steps * size >= COMPACT_WORK)
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
        part = _without_steps(part)
        if chunks == 1:
            out = part  # the whole group: nothing to assemble
        else:
            if out is None:
                out = jax.tree.map(lambda a: np.empty((idx.size, *a.shape[1:]), a.dtype), part)
            jax.tree.map(lambda o, a, at=slice(lo, hi): o.__setitem__(at, a), out, part)
        advance()
    steps = engine.record_steps(static.steps, static.record_every)
    return out._replace(history=out.history._replace(
        step=np.broadcast_to(steps, (idx.size, steps.size))))


def _without_steps(r: engine.Result) -> engine.Result:
    """(The programs leave ``history.step`` out; a checkpoint from before may hold it.)"""
    return r._replace(history=r.history._replace(step=None))


def run_chunk(varying: PyTree, shared: PyTree, static: program.Static, shapes: program.Shapes,
              by_config: NamedSharding, compact: bool = True) -> engine.Result:
    """One chunk, on the devices: its configs' loops in legs, the diverged ones replayed.

    With ``compact``, a leg ends once at most ``1 / COMPACT_BY`` of its configs are running; those
    are gathered into a batch of a power of two (per device, at least :data:`COMPACT_MIN`; one
    more compiled program per size), and the configs that stopped cost nothing more. Each
    config computes exactly what it would in the full batch: the results do not depend on
    ``compact``.
    """
    devices = static.mesh.size
    units = program.shape(shared, static).units
    batch = len(jax.tree.leaves(varying)[0])
    # (configs that all stop together, their flag the same for all, gain nothing from it)
    compact = compact and shapes.flag_axis is not None

    def stop_at(batch):  # a leg ends when a compaction would cut its batch by COMPACT_BY
        per = batch // devices
        return np.int32(batch // COMPACT_BY if compact and per // COMPACT_BY >= COMPACT_MIN
                        else 0)

    carry, buffer, counts, marked, result = program.run(varying, shared, stop_at(batch), static)
    unit, running, replays = (int(n) for n in program.fetch(counts))
    while unit < units and running > 0:  # a leg stopped for a compaction
        del result  # (unused: not the end)
        going = np.flatnonzero(np.asarray(program.fetch(carry.flag)) == 0)
        per = max(COMPACT_MIN, 1 << (-(-len(going) // devices) - 1).bit_length())
        rows = going[np.minimum(np.arange(per * devices), len(going) - 1)]  # pad: repeat
        carry, buffer, counts, marked, result = program.leg(
            varying, shared, carry, buffer, rows, np.int32(unit), stop_at(len(rows)), static,
            by_config)
        unit, running, replays = (int(n) for n in program.fetch(counts))
    if replays == 0:
        return result  # the common case: one program
    del carry, buffer
    replayed = np.flatnonzero(np.asarray(program.fetch(marked)))
    # the diverged configs alone, in a batch of their own
    per = _per_device(-(-replayed.size // devices))
    rows = replayed[np.minimum(np.arange(per * devices), replayed.size - 1)]
    return program.replay(varying, shared, result, rows, static, by_config)


def _processes() -> int:
    return jax.process_count()


def _calls_before(static: program.Static, size: int, varying: PyTree, shared: PyTree) -> int:
    """How many sweeps ran this program on chunks of ``size`` configs of these shapes before
    (counted here; ``compact=None``'s measure of a sweep repeated)."""
    key = (static, size, *_signature(varying, shared))
    if key not in _calls and len(_calls) >= 64:
        _calls.clear()
    _calls[key] = _calls.get(key, 0) + 1
    return _calls[key] - 1


_calls: dict[tuple, int] = {}


def _signature(varying: PyTree, shared: PyTree) -> tuple:
    """The structures, shapes (one config's, for ``varying``) and dtypes of a sweep's arguments:
    a cache key of what depends on them alone (a dozen microseconds: ``jax.typeof`` per leaf
    cost a small sweep's call 0.1 ms)."""
    v_leaves, v_def = jax.tree.flatten(varying)
    s_leaves, s_def = jax.tree.flatten(shared)
    return (v_def, s_def, *((np.shape(a)[1:], a.dtype, getattr(a, "weak_type", False))
                            for a in v_leaves),
            *((np.shape(a), a.dtype if hasattr(a, "dtype") else np.result_type(a),
               getattr(a, "weak_type", False)) for a in s_leaves))


def _count_of(varying: PyTree) -> int | None:
    leaves = jax.tree.leaves(varying)
    return len(leaves[0]) if leaves else None


def _per_device(size: int) -> int:
    """Configs per device: a multiple of 8, at least 16.

    XLA fuses tiny batches differently (a batch of one compiles like an unbatched run, a batch of
    two differently again), and another fusion can round differently in the last bit. From 16 on,
    in multiples of 8, the program is the same up to the loop bounds, which keeps most results
    identical across device counts and chunk sizes (statuses, steps and parameters are tested on
    1 and 8 devices); a reduction such as ``grad_norm`` may still differ in its last bit (1 ulp
    seen between 1, 2 and 3 devices), as XLA:CPU vectorises a reduction by the batch's size.
    """
    return max(16, -(-size // 8) * 8)


def _gather_groups(results: list[engine.Result], indices: list[np.ndarray]) -> engine.Result:
    """Groups back in config order, each group's result dropped once copied (``results`` is
    emptied); shorter histories padded with their final record. ``history.step`` differs per
    config only where the groups record at different steps."""
    records = max(r.history.step.shape[1] for r in results)
    count = sum(len(i) for i in indices)
    first = _without_steps(results[0])
    out = jax.tree.map(lambda a: np.empty((count, *a.shape[1:]), a.dtype),
                       first._replace(history=None))
    history = jax.tree.map(lambda a: np.empty((count, records, *a.shape[2:]), a.dtype),
                           first.history)
    rows = []
    for g, idx in enumerate(indices):
        r, results[g] = results[g], None
        step = r.history.step[0]
        rows.append(np.pad(step, (0, records - step.size), mode="edge"))
        r = _without_steps(r)
        jax.tree.map(lambda o, a, idx=idx: o.__setitem__(idx, a), out, r._replace(history=None))
        for o, a in zip(jax.tree.leaves(history), jax.tree.leaves(r.history), strict=True):
            o[idx, :a.shape[1]] = a
            o[idx, a.shape[1]:] = a[:, -1:]
    if all(np.array_equal(row, rows[0]) for row in rows):
        step = np.broadcast_to(rows[0], (count, records))
    else:
        step = np.empty((count, records), rows[0].dtype)
        for row, idx in zip(rows, indices, strict=True):
            step[idx] = row
    return out._replace(history=history._replace(step=step))


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
