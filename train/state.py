"""The whole training state of a DeepSpeed engine, found by walking the engine, for the milestone
fork.

A milestone inside a global batch forks the run: `snapshot(engine)` copies this rank's state into
host memory, the trainer takes the side step and saves the milestone's weights, and `restore(engine,
snap)` undoes the step in place. The state is not a hand-picked list of attributes: `walk` follows
every reference from the engine through the objects of DeepSpeed, torch.optim and torch.nn
(attributes, lists, dicts, sets, tensor attributes such as ZeRO-3's `ds_tensor`), so whatever a ZeRO
stage or precision keeps its state in (16-bit partitions, fp32 masters outside the torch optimizer
under ZeRO-3, Adam's moments and step counts, the loss scaler, the scheduler, the engine's counters)
is found. Restoring puts back every container's members and every object's attributes as they were,
and every tensor storage's bytes (a tensor the step moved to a new buffer of the same shape, such as
a ZeRO-3 parameter gathered again, gets its values copied back). A tensor whose shape or type the
step changed cannot be undone: restore then raises, naming it, rather than continue from a state it
did not restore. The torch RNG states are snapshotted beside; the data position is the trainer's own
(the side step does not advance it).

`state_tensors(engine)` lists the walked tensors by path: the exactness tests compare it, whole,
between a nested run and separate runs (tests/test_trainer.py).
"""
from __future__ import annotations

import enum
import re
from collections import deque

import torch

# modules whose objects hold training state (and torch.nn.Module)
OWNERS = ("deepspeed", "torch.optim")
# Gradient buffers and reduction buckets hold nothing at a step boundary (the step zeroes or refills
# them), and the ZeRO-3 bucket alone is reduce_bucket_size elements: the snapshot leaves a storage
# out when every tensor on it is reached only through such a name. The exactness tests compare the
# whole walked state, these buffers included.
SCRATCH = re.compile(r"grad|ipg|bucket")


def _owned(obj) -> bool:
    if isinstance(obj, (type, enum.Enum)) or not hasattr(obj, "__dict__"):
        return False
    return isinstance(obj, torch.nn.Module) or type(obj).__module__.startswith(OWNERS)


def walk(engine):
    """Everything reachable from the engine that holds state: (tensors, containers, objects);
    tensors as (path, tensor) in a fixed order (the order the engine's objects were built in)."""
    seen: set[int] = set()
    tensors, containers, objects = [], [], []
    queue = deque([("engine", engine)])   # breadth first: each tensor is named by its shortest path
    while queue:
        path, o = queue.popleft()
        if id(o) in seen:
            continue
        if torch.is_tensor(o):
            seen.add(id(o))
            if o.is_meta:   # a placeholder with no data
                continue
            tensors.append((path, o))
            queue.extend((f"{path}.{k}", v) for k, v in vars(o).items())
        elif isinstance(o, dict):
            seen.add(id(o))
            containers.append(o)
            for i, (k, v) in enumerate(o.items()):
                name = f"[{k!r}]" if isinstance(k, str) else f"[#{i}]"
                queue.extend([(f"{path}{{#{i}}}", k), (f"{path}{name}", v)])
        elif isinstance(o, (list, set, tuple)):
            seen.add(id(o))
            if not isinstance(o, tuple):
                containers.append(o)
            items = o if not isinstance(o, set) else sorted(o, key=repr)
            queue.extend((f"{path}[{i}]", v) for i, v in enumerate(items))
        elif _owned(o):
            seen.add(id(o))
            objects.append(o)
            queue.extend((f"{path}.{k}", v) for k, v in vars(o).items())
    return tensors, containers, objects


def state_tensors(engine) -> dict[str, torch.Tensor]:
    """Every non-empty tensor of the engine's state by path, as host copies (tests and checks)."""
    return {p: t.detach().to("cpu", copy=True) for p, t in walk(engine)[0] if t.numel()}


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 view of the whole storage under t."""
    s = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(s, 0, (s.nbytes(),), (1,))


def snapshot(engine) -> dict:
    """This rank's whole training state, copied into host memory (each storage once)."""
    tensors, containers, objects = walk(engine)
    key = lambda t: (t.device, t.untyped_storage().data_ptr())
    needed = {key(t) for path, t in tensors if not SCRATCH.search(path)}
    storages, where = {}, []
    for path, t in tensors:
        k = key(t)
        if k in needed and t.untyped_storage().nbytes():
            if k not in storages:
                storages[k] = _bytes(t).to("cpu", copy=True)
            where.append((path, t, k, (t.storage_offset(), t.shape, t.stride(), t.dtype)))
    shallow = lambda c: dict(c) if isinstance(c, dict) else (set(c) if isinstance(c, set)
                                                             else list(c))
    return {"storages": storages, "tensors": where,
            "containers": [(c, shallow(c)) for c in containers],
            "objects": [(o, dict(vars(o))) for o in objects],
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def snapshot_bytes(snap: dict) -> int:
    return sum(b.numel() for b in snap["storages"].values())


def restore(engine, snap: dict) -> None:
    """Undo everything since `snapshot(engine)`, in place (engine buffers keep their identity)."""
    for o, saved in snap["objects"]:
        d = vars(o)
        for k in [k for k in d if k not in saved]:
            del d[k]
        d.update(saved)
    for c, saved in snap["containers"]:
        if isinstance(c, list):
            c[:] = saved
        else:
            c.clear()
            c.update(saved)
    with torch.no_grad():
        restored = set()
        for path, t, key, (offset, shape, stride, dtype) in snap["tensors"]:
            if (t.device, t.untyped_storage().data_ptr()) == key:
                if key not in restored:
                    _bytes(t).copy_(snap["storages"][key])
                    restored.add(key)
            # e.g. a ZeRO-3 parameter gathered again, in a new buffer
            elif t.shape == shape and t.dtype == dtype:
                saved = snap["storages"][key]
                t.copy_(torch.empty(0, dtype=dtype).set_(saved.untyped_storage(), offset, shape,
                                                         stride))
            # released: gathered again from its partition
            elif not (t.numel() == 0 and hasattr(t, "ds_tensor")):
                raise RuntimeError(f"the milestone fork cannot undo the step: {path} changed its "
                                   "shape or type during it (a DeepSpeed version that keeps state "
                                   "elsewhere); use volume_schedule: independent")
    torch.set_rng_state(snap["rng"])
    if snap["cuda_rng"] is not None:
        torch.cuda.set_rng_state(snap["cuda_rng"])
