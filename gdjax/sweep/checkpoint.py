"""Checkpoints of a sweep: finished chunks on disk, each tied to a fingerprint of the sweep.

A checkpoint directory holds ``manifest.json`` and one ``g<group>-c<chunk>.npz`` per finished
chunk. A resumed sweep uses a chunk only when it was written by the same sweep, so the
fingerprint covers everything that decides the results:

* the objective (and ``eval_fn``): its code (bytecode, constants, nested functions), its default
  arguments, the values in its closure and the globals its code names, followed into the
  functions they hold; library code (the standard library, installed packages, gdjax) counts by
  its qualified name and version, its closures by value;
* the optimiser: the values its ``init`` and ``update`` close over (hyperparameters, schedules
  and their constants, inner transformations) and the state and update of one probe step from
  ``x0`` with a fixed pseudo-random gradient;
* the grid, ``x0``, the fixed hyperparameters, ``tol``, ``ftol``, the data and batch orders
  (values, dtypes and shapes), the program's settings (steps, ``record_every``, batch sizes,
  ...), the chunking, the platform and device count, and the versions of jax, jaxlib, optax,
  numpy and gdjax.

A value it cannot read (an object with no inspectable state, such as a lock or an open file, in
the objective's closure or globals) is refused with a :class:`TypeError` naming it: a checkpoint
that cannot tell two sweeps apart could mix them.

Each chunk file carries the fingerprint, its group and config range and a sha256 of its arrays.
A damaged chunk (empty, truncated, a bad checksum) or a damaged manifest is reported with a
:class:`CheckpointWarning` naming the file, deleted and recomputed. An intact file of another
sweep, or a chunk of this sweep under another chunk's name, is a :class:`CheckpointError`: the
directory is shared or was edited, and only its owner can say which file to keep.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import sysconfig
import types
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

PyTree = Any

MANIFEST = "manifest.json"

_TMP = re.compile(r"^(manifest\.json|g\d+-c\d+\.npz)\.tmp(?P<pid>\d+)$")

_VERSIONED = ("jax", "jaxlib", "optax", "numpy", "gdjax")


class CheckpointError(ValueError):
    """A checkpoint directory that holds another sweep's files, or a path that is no directory."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint file was deleted and its contents are being recomputed."""


class Checkpoint:
    """A directory of finished chunks (``<chunk>.npz``) and ``manifest.json`` (the fingerprint).

    Args:
      directory: the checkpoint directory (created when missing).
      parts: part name -> digest (:func:`fingerprint`); the fingerprint is their digest.
      chunks: chunk name -> ``(group, lo, hi)``, the configs of its group it holds.
      describe: readable names of the callables (:func:`describe`), kept in the manifest.

    Raises:
      CheckpointError: ``directory`` is an existing file; the manifest or a chunk file there
        belongs to another sweep; a chunk file holds another chunk's configs.
    """

    def __init__(self, directory: str | os.PathLike, parts: Mapping[str, str],
                 chunks: Mapping[str, tuple[int, int, int]], describe: Mapping[str, Any]):
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"checkpoint={self.directory!r} is an existing file, not a directory; pass a "
                "directory path (it is created when missing)"
            )
        self.parts = dict(parts)
        self.fingerprint = _digest_of(self.parts)
        self.chunks = dict(chunks)
        self.writer = jax.process_index() == 0
        if self.writer:
            os.makedirs(self.directory, exist_ok=True)
            _remove_leftovers(self.directory)
        manifest = os.path.join(self.directory, MANIFEST)
        found = self._read_manifest(manifest)
        if found is not None and found.get("fingerprint") != self.fingerprint:
            theirs = found.get("parts") if isinstance(found.get("parts"), dict) else {}
            differ = [k for k in sorted(set(theirs) | set(self.parts))
                      if theirs and theirs.get(k) != self.parts.get(k)]
            raise CheckpointError(
                f"checkpoint={self.directory!r} holds a different sweep (fingerprint "
                f"{found.get('fingerprint')} != {self.fingerprint}; it differs in "
                f"{', '.join(differ) or 'parts this version does not record'}); use a new "
                "directory or delete this one"
            )
        if found is None and self.writer:
            doc = {"fingerprint": self.fingerprint, "parts": self.parts,
                   "describe": dict(describe), "chunks": list(self.chunks)}
            _write_atomic(manifest, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))
        for name in self.chunks:  # files of another sweep are an error before any work
            if os.path.exists(self._path(name)):
                self._read(name, arrays=False)

    def load(self, name: str, treedef: Any) -> PyTree | None:
        """The chunk's outcome if it finished earlier (and its file is intact), else ``None``."""
        if not os.path.exists(self._path(name)):
            return None
        leaves = self._read(name, arrays=True)
        if leaves is None:
            return None
        if len(leaves) != treedef.num_leaves:
            self._damaged(self._path(name), f"it holds {len(leaves)} arrays, not "
                                            f"{treedef.num_leaves}")
            return None
        return jax.tree.unflatten(treedef, leaves)

    def save(self, name: str, tree: PyTree) -> None:
        """Write a finished chunk with its fingerprint, config range and checksum (atomically)."""
        if not self.writer:
            return
        leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
        g, lo, hi = self.chunks[name]
        meta = {"fingerprint": self.fingerprint, "chunk": name, "group": g, "configs": [lo, hi],
                "sha256": _checksum(leaves)}
        _write_atomic(
            self._path(name),
            lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)),
                                **{f"leaf{i}": a for i, a in enumerate(leaves)}),
        )

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name + ".npz")

    def _read_manifest(self, path: str) -> dict | None:
        """The manifest, or ``None`` when missing or damaged (a damaged one is deleted)."""
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as fh:
                doc = json.loads(fh.read().decode())
            if not isinstance(doc, dict) or not isinstance(doc.get("fingerprint"), str):
                raise ValueError("it has no fingerprint")
        except (OSError, ValueError) as e:  # (JSONDecodeError and UnicodeDecodeError included)
            self._damaged(path, f"{type(e).__name__}: {e}", what="rewriting it")
            return None
        return doc

    def _read(self, name: str, arrays: bool) -> list[np.ndarray] | None:
        """The chunk's arrays (checked) or, without ``arrays``, its metadata checked alone.

        ``None`` when the file is damaged (it was deleted). Raises for another sweep's chunk.
        """
        path = self._path(name)
        try:
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
                if not isinstance(meta, dict):
                    raise ValueError("its metadata is not a JSON object")
                leaves = [z[f"leaf{i}"] for i in range(len(z.files) - 1)] if arrays else None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            self._damaged(path, f"{type(e).__name__}: {e}")
            return None
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint={self.directory!r}: {path!r} holds a chunk of a different sweep "
                f"(fingerprint {meta.get('fingerprint')} != {self.fingerprint}: another function, "
                "optimiser, grid, data, fixed argument or chunking); delete the file to "
                "recompute it, or use a new directory"
            )
        g, lo, hi = self.chunks[name]
        if (meta.get("chunk"), meta.get("group"), meta.get("configs")) != (name, g, [lo, hi]):
            raise CheckpointError(
                f"checkpoint={self.directory!r}: {path!r} holds chunk {meta.get('chunk')!r} "
                f"(configs {meta.get('configs')} of group {meta.get('group')}), not {name!r} "
                f"(configs {[lo, hi]} of group {g}): it was copied or renamed; delete it to "
                "recompute it"
            )
        if arrays and _checksum(leaves) != meta.get("sha256"):
            self._damaged(path, "its arrays do not match their sha256")
            return None
        return leaves

    def _damaged(self, path: str, why: str, what: str = "recomputing it") -> None:
        warnings.warn(
            f"checkpoint={self.directory!r}: {path!r} is damaged ({why}); deleting it and "
            f"{what}", CheckpointWarning, stacklevel=4,
        )
        if self.writer:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def _remove_leftovers(directory: str) -> None:
    """Delete the ``*.tmp<pid>`` files of killed runs (those of live processes stay)."""
    for entry in os.listdir(directory):
        m = _TMP.match(entry)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # a live process may still be writing it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        try:
            os.remove(os.path.join(directory, entry))
        except FileNotFoundError:
            pass


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _checksum(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in leaves:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _digest_of(parts: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()[:16]


# --- the fingerprint ----------------------------------------------------------------------------


def describe(f: Callable, optimizer: Any, eval_fn: Callable | None) -> dict[str, Any]:
    """Readable names of the callables, for the manifest (the fingerprint hashes their code)."""
    return {"f": _name(f), "optimizer": _name(optimizer), "eval_fn": _name(eval_fn)}


def _name(obj: Any) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    qualname = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{getattr(obj, '__module__', '')}.{qualname}"


def fingerprint(plans: list, varying: PyTree, shared: Mapping[str, PyTree]) -> dict[str, str]:
    """Digests of everything that decides a sweep's results and chunking, by part.

    Args:
      plans: ``(static, idx, size, chunks)`` per group (:func:`gdjax.sweep.runner.run_groups`).
      varying: the per-config arrays (the grid).
      shared: the arrays every config shares (``x0``, fixed hyperparameters, tolerances, data).

    Returns:
      part name -> a hex digest: ``objective``, ``eval_fn``, ``optimizer``, ``program``,
      ``grid``, ``platform`` and one per key of ``shared``.

    Raises:
      TypeError: the objective, ``eval_fn`` or the optimiser holds a value that cannot be
        fingerprinted (named, with what to do).
    """
    static = plans[0][0]
    parts = {
        "objective": _Hasher("f").digest(static.f.value),
        "eval_fn": _Hasher("eval_fn").digest(static.eval_fn.value),
        "optimizer": _Hasher("optimizer").digest(
            (static.tx.init, static.tx.update, _probe(static.tx, shared["x0"]))),
        "program": _Hasher("program").digest([
            ({k: v for k, v in s._asdict().items() if k not in ("f", "tx", "eval_fn", "mesh")},
             size, chunks, np.asarray(idx, np.int64))
            for s, idx, size, chunks in plans
        ]),
        "grid": _Hasher("grid").digest(_tree(varying)),
        "platform": _Hasher("platform").digest(
            (static.mesh.devices.flat[0].platform, static.mesh.devices.flat[0].device_kind,
             static.mesh.size, _versions())),
    }
    for key, tree in shared.items():
        parts[key] = _Hasher(key).digest(_tree(tree))
    return parts


def _tree(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef), leaves


def _probe(tx: Any, x0: PyTree) -> list[np.ndarray]:
    """``tx.init(x0)`` and one update of it with a fixed pseudo-random gradient, as arrays: two
    optimisers that differ in a constant (``optax.sgd(1e-3)``, ``optax.sgd(3e-3)``) differ here.

    The update gets the loss arguments the engine passes (``value``, ``grad``, ``value_fn``)
    when the transformation takes them (``optax.lbfgs``, ``reduce_on_plateau``)."""
    rng = np.random.default_rng(0)
    g = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)).astype(np.dtype(a.dtype)), x0)
    value = np.ones((), np.dtype(jax.tree.leaves(x0)[0].dtype))
    state = tx.init(x0)
    try:
        updates, after = tx.update(g, state, x0, value=value, grad=g, value_fn=lambda p: value)
    except TypeError:  # a transformation without extra arguments
        updates, after = tx.update(g, state, x0)
    return [np.asarray(a) for a in jax.tree.leaves((state, updates, after))]


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name in _VERSIONED:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "?"))
    return tuple(out)


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.add(os.path.realpath(os.path.dirname(os.path.dirname(__file__))))  # gdjax itself
    return tuple(d + os.sep for d in sorted(dirs))


@functools.cache
def _is_library_file(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_library_dirs())


def _is_library(obj: Any) -> bool:
    """Code from the standard library, an installed package or gdjax: named, not hashed."""
    code = getattr(obj, "__code__", None)
    if isinstance(code, types.CodeType):  # (a class may hold a descriptor by that name)
        return _is_library_file(code.co_filename)
    module = getattr(obj, "__module__", None)
    file = getattr(sys.modules.get(module), "__file__", None) if module else None
    return file is None or _is_library_file(file)


_SCALAR_TYPES = (type(None), bool, int, float, complex, str, bytes)
_NAMED_TYPES = (types.BuiltinFunctionType, types.BuiltinMethodType, types.MethodWrapperType,
                types.WrapperDescriptorType, types.MethodDescriptorType,
                types.ClassMethodDescriptorType, types.GetSetDescriptorType,
                types.MemberDescriptorType, np.ufunc)
_SKIPPED_CLASS_ATTRIBUTES = {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__",
                             "__annotations__", "__slots__", "__firstlineno__",
                             "__static_attributes__"}


class _Hasher:
    """A sha256 of a Python value by content: code, closures, containers, arrays, objects.

    The digest does not depend on object identity (a value shared twice hashes like two equal
    copies; each object's digest is computed once), only on what the objects hold, so a new
    process computes the same fingerprint. A reference cycle hashes as its depth.
    """

    def __init__(self, part: str):
        self.h = hashlib.sha256()
        self.done: dict[int, bytes] = {}  # id -> digest of an object hashed before
        self.alive: list[Any] = []  # keeps those ids from being reused while hashing
        self.stack: list[int] = []  # ids of the objects being hashed (to see cycles)
        self.path: list[str] = [part]

    def digest(self, obj: Any) -> str:
        self.feed(obj)
        return self.h.hexdigest()[:16]

    def text(self, *items: Any) -> None:
        for item in items:
            s = str(item).encode()
            self.h.update(len(s).to_bytes(8, "little") + s)

    def child(self, label: str, obj: Any) -> None:
        self.path.append(label)
        self.feed(obj)
        self.path.pop()

    def feed(self, obj: Any) -> None:
        if isinstance(obj, _SCALAR_TYPES):
            self.text(type(obj).__name__, repr(obj))
            return
        if isinstance(obj, np.dtype):
            self.text("dtype", obj.str)
            return
        key = id(obj)
        if key in self.stack:
            self.text("cycle", len(self.stack) - self.stack.index(key))
            return
        if key not in self.done:
            outer, self.h = self.h, hashlib.sha256()
            self.stack.append(key)
            try:
                self.contents(obj)
            finally:
                self.stack.pop()
                self.h, inner = outer, self.h
            self.done[key] = inner.digest()
            self.alive.append(obj)
        self.h.update(self.done[key])

    def contents(self, obj: Any) -> None:
        if isinstance(obj, jax.Array) and jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            self.text("key", str(obj.dtype))
            self.child(" (its key data)", jax.random.key_data(obj))
        elif isinstance(obj, np.ndarray | np.generic | jax.Array):
            a = np.ascontiguousarray(obj)
            self.text("array", a.dtype.str, a.shape)
            self.h.update(a.tobytes())
        elif isinstance(obj, tuple | list):
            self.text(_name(type(obj)), len(obj))
            for i, v in enumerate(obj):
                self.child(f"[{i}]", v)
        elif isinstance(obj, dict):
            self.text(_name(type(obj)), len(obj))
            for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
                self.feed(k)
                self.child(f"[{k!r}]", v)
        elif isinstance(obj, set | frozenset):
            self.text(type(obj).__name__, sorted(repr(v) for v in obj))
        elif isinstance(obj, types.ModuleType):
            self.text("module", obj.__name__)
        elif isinstance(obj, types.FunctionType):
            self.function(obj)
        elif isinstance(obj, types.MethodType):
            self.text("method")
            self.child(".__func__", obj.__func__)
            self.child(".__self__", obj.__self__)
        elif isinstance(obj, functools.partial):
            self.text("partial")
            self.child(".func", obj.func)
            self.child(".args", obj.args)
            self.child(".keywords", obj.keywords)
        elif isinstance(obj, _NAMED_TYPES):
            self.text("builtin", _name(obj))
            owner = getattr(obj, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType | type):
                self.child(".__self__", owner)
        elif isinstance(obj, type):
            self.cls(obj)
        else:
            self.instance(obj)

    def function(self, fn: types.FunctionType) -> None:
        if _is_library(fn):
            self.text("library function", _name(fn))
        else:
            self.text("function")
            code_names: set[str] = set()
            self.code(fn.__code__, code_names)
            for name in sorted(code_names & set(fn.__globals__)):
                self.text(name)
                self.child(f" (its global {name!r})", fn.__globals__[name])
        self.child(".__defaults__", fn.__defaults__)
        self.child(".__kwdefaults__", fn.__kwdefaults__)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the function was made)
                value = "<empty cell>"
            self.text(name)
            self.child(f" (its closure's {name!r})", value)

    def code(self, code: types.CodeType, names: set[str]) -> None:
        names.update(code.co_names)
        self.text("code", code.co_argcount, code.co_kwonlyargcount, code.co_flags, code.co_names)
        self.h.update(code.co_code)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self.code(c, names)
            else:
                self.feed(c)

    def cls(self, cls: type) -> None:
        self.text("class", _name(cls))
        if _is_library(cls):
            return
        for base in cls.__bases__:
            self.child(f" (a base of {cls.__qualname__})", base)
        for k, v in sorted(vars(cls).items()):
            if k not in _SKIPPED_CLASS_ATTRIBUTES:
                self.text(k)
                self.child(f".{k}", v)

    def instance(self, obj: Any) -> None:
        self.child(f" (a {type(obj).__name__})", type(obj))
        state = getattr(obj, "__dict__", None)
        slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ())
                 if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
        if state is None and not slots:
            text = repr(obj)
            if " at 0x" not in text and " object at " not in text:
                self.text("repr", text)  # a value that says what it is (an enum, a device)
                return
            raise TypeError(
                f"cannot fingerprint {''.join(self.path)} = {text[:80]} for a checkpoint: "
                f"a {type(obj).__name__} shows no state to hash, so a resumed sweep could not "
                "tell whether it changed; make it a number, an array or a function of them "
                "(or pass it as x0, data or a grid axis), or run without checkpoint="
            )
        if state is not None:
            self.child(".__dict__", dict(state))
        for s in slots:
            if hasattr(obj, s):
                self.text(s)
                self.child(f".{s}", getattr(obj, s))
