"""Reading PyTorch checkpoint files without running anything they contain.

`read(path)` returns a file's contents: a safetensors file via the `safetensors` package, any
other file through `torch.load(weights_only=True)`, whose unpickler builds only tensors and
plain containers (dict, list, tuple, OrderedDict, str, numbers), plus `argparse.Namespace`
(the `args` AVION's, LaViLa's and SMS's scripts save beside the weights) and numpy scalars and
dtypes (an accuracy saved as a numpy float), which are data.

Any other global a pickle names (EgoVLP saves its `parse_config.ConfigParser` under
'config', with pathlib paths inside) becomes an inert `Placeholder`: a class made here that
carries the name (`Placeholder.name`, 'parse_config.ConfigParser') and keeps what the pickle
would have passed to it (`args`, `state`). Its module is never imported and nothing it names is
called, so reading a file runs no code from it; the placeholders are registered with torch's
own safe unpickler for the names `torch.serialization.get_unsafe_globals_in_checkpoint` lists.
A truncated or foreign file is one line naming the file. TorchScript archives (OpenAI's
`clip.load` downloads) are refused with the command that extracts their weights.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
import zipfile
from typing import Any

from tempret_jax import progress


class UnreadableCheckpoint(ValueError):
    """The file is missing, truncated, of another format or holds objects not allowed."""


def _allowed_globals() -> list:
    import numpy as np
    allowed = [argparse.Namespace, np.dtype]
    # numpy scalars pickle as numpy.core.multiarray.scalar (numpy 2: numpy._core...) + a dtype
    # class; both are data, not code.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            allowed.append(__import__(module, fromlist=["scalar"]).scalar)
        except (ImportError, AttributeError):
            pass
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


class Placeholder:
    """Stands in for a pickled object of a class (or a call of a function) not read here.

    `name` is the global the pickle named ('module.qualname'); `args` what it would have been
    called with, `state` what it would have been given by __setstate__ (for a plain class, its
    __dict__). Nothing is imported or run.
    """

    name = ""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder {self.name}>"


def _placeholder(name: str) -> type:
    return type(f"Placeholder[{name}]", (Placeholder,), {"name": name})


def _is_torchscript(path: pathlib.Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _load(path: pathlib.Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # torch: bfloat16 has no numpy dtype
        return load_file(str(path))
    if _is_torchscript(path):
        raise UnreadableCheckpoint(
            f"{path} is a TorchScript archive (OpenAI's clip.load download); it is not read "
            f"here. Save its weights first: torch.save(torch.jit.load(path).state_dict(), "
            f"'weights.pt')")
    import torch
    allowed = _allowed_globals()
    known = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
    # Lists the globals without unpickling; the archive's pickle is read, nothing is built.
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipfile.is_zipfile(
        path) else []
    allowed += [(_placeholder(n), n) for n in names if n not in known]
    with torch.serialization.safe_globals(allowed), progress.Reading(
            path, f"reading {path.name}") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def read(path) -> Any:
    """The contents of a checkpoint file (module docstring); raises UnreadableCheckpoint."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(f"checkpoint {path} does not exist")
    try:
        return _load(path)
    except pickle.UnpicklingError as e:  # the safe loader met a pickled object it does not allow
        found = re.findall(r"GLOBAL (\S+)", str(e))
        what = (f"{', '.join(dict.fromkeys(found))} is not allowed" if found
                else _first_line(e))
        raise UnreadableCheckpoint(f"{path}: holds pickled objects the safe loader refuses "
                                   f"({what}; allowed: tensors, plain containers, "
                                   f"argparse.Namespace, numpy scalars, placeholders for "
                                   f"other classes of a zip checkpoint)") from None
    except UnreadableCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001  torch's unpickler fails on garbage in many ways
        raise UnreadableCheckpoint(
            f"{path}: not a readable {path.suffix or 'torch'} checkpoint (truncated or another "
            f"format? {type(e).__name__}: {_first_line(e)})") from None


def plain_args(obj: Any) -> dict[str, Any]:
    """A saved `args` entry (argparse.Namespace or dict) as a dict; {} when there is none."""
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    return dict(obj) if isinstance(obj, dict) else {}
