"""Strict command-line overrides of a LazyConfig.

Detectron2's ``LazyConfig.apply_overrides`` applies them on a copy of the config in
OmegaConf struct mode, so that OmegaConf itself refuses a key the config lacks; this module
adds the "did you mean" message, the type check, and the two ways to add keys.
"""
import copy
import difflib
from contextlib import nullcontext
from typing import List, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from detectron2.config import LazyConfig

__all__ = ["ConfigOverrideError", "apply_overrides"]


class ConfigOverrideError(KeyError):
    """A command-line override names no key of the config, or gives a value of the wrong
    type. A ``KeyError`` (as Detectron2 raises for a bad override) with a readable message."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


_ABSENT = object()
# a config's ``datasets`` mapping is a registry: overrides may add entries to it
# (``datasets.NAME.json_file=... datasets.NAME.image_root=...``, see the README)
_DATASET_FIELDS = ("json_file", "image_root")


def _lookup(cfg, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception:  # e.g. an index into something that is no list
        return _ABSENT


def _unknown_key_message(cfg, line: str, key: str, where: str) -> str:
    """The message for a key OmegaConf's struct mode refused, with close existing keys."""
    parts = key.split(".")
    i = next((i for i in range(len(parts))  # the first missing part
              if _lookup(cfg, ".".join(parts[:i + 1])) is _ABSENT), len(parts) - 1)
    prefix = ".".join(parts[:i])
    parent = _lookup(cfg, prefix) if prefix else cfg
    msg = (f"override {line!r}{where}: unknown config key {key!r} "
           f"({prefix or 'the config'} has no key {parts[i]!r}")
    close = [".".join(parts[:i] + [c])
             for c in difflib.get_close_matches(parts[i], list(parent.keys()), n=3, cutoff=0.6)]
    if not close and i == len(parts) - 1:  # a leaf misplaced or misspelled: look deeper
        nested = {k.rpartition(".")[2]: k for k in _nested_keys(parent, prefix)}
        close = [nested[c] for c in difflib.get_close_matches(parts[i], list(nested), n=3,
                                                               cutoff=0.6)]
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    msg += f"). To add a new key on purpose, write +{key}=..."
    if parts[0] == "datasets":
        msg += " (a new dataset is datasets.NAME.json_file=... datasets.NAME.image_root=...)"
    return msg


def _nested_keys(node, prefix: str, depth: int = 3) -> List[str]:
    """Dotted keys below ``node`` (``depth`` levels), for "did you mean" suggestions."""
    out = []
    if depth == 0 or not isinstance(node, DictConfig):
        return out
    for k in node.keys():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.append(key)
        out.extend(_nested_keys(_lookup(node, str(k)), key, depth - 1))
    return out


def _check_type(line: str, key: str, old, new, where: str):
    """``new`` if it has the type of ``old`` (for bool/int/float/str values; an int is
    accepted, as a float, for a float; ``null`` for any), else ConfigOverrideError."""
    if new is None or old is None or not isinstance(old, (bool, int, float, str)):
        return new
    expected = next(t for t in (bool, int, float, str) if isinstance(old, t))
    if expected is float and type(new) is int:
        return float(new)
    if isinstance(new, expected) and not (expected is int and isinstance(new, bool)):
        return new
    hint = f"; quote it for a string: {key}='{new}'" if expected is str else ""
    raise ConfigOverrideError(
        f"override {line!r}{where}: {key} expects {'an' if expected is int else 'a'} "
        f"{expected.__name__} (it is {old!r}), got {new!r} of type {type(new).__name__}{hint}")


def apply_overrides(cfg, overrides: Sequence[str] = (), config_file: str = ""):
    """
    Detectron2's ``LazyConfig.apply_overrides`` (Hydra syntax), but strict: every key must
    exist in the config unless the override adds it on purpose (``+key=value``, or
    ``++key=value`` to add or change) or registers a dataset the config lacks
    (``datasets.NAME.json_file=...``, ``datasets.NAME.image_root=...``), and a value that
    replaces a bool/int/float/str must have its type (an int is accepted for a float,
    ``null`` for anything). All overrides are checked before any is applied; a bad one
    raises :class:`ConfigOverrideError` naming it, the key and ``config_file``, and leaves
    ``cfg`` unchanged. Returns ``cfg`` (changed in place; its struct flag is not set).
    """
    where = f" (config {config_file})" if config_file else ""
    trial = copy.deepcopy(cfg)
    OmegaConf.set_struct(trial, True)  # OmegaConf refuses keys the config lacks
    applied = []
    for line in overrides:
        key = line.split("=", 1)[0].lstrip("+")
        old = _lookup(trial, key)
        if line.startswith("+") and not line.startswith("++") and old is not _ABSENT:
            raise ConfigOverrideError(f"override {line!r}{where}: {key} already exists (it "
                                      f"is {old!r}); drop the '+' to change it")
        parts = key.split(".")
        new_dataset = (len(parts) == 3 and parts[0] == "datasets"
                       and parts[2] in _DATASET_FIELDS
                       and _lookup(cfg, f"datasets.{parts[1]}") is _ABSENT)
        try:
            with open_dict(trial) if line.startswith("+") or new_dataset else nullcontext():
                LazyConfig.apply_overrides(trial, [line.lstrip("+")])
        except (ConfigAttributeError, ConfigKeyError) as e:  # refused by struct mode
            raise ConfigOverrideError(_unknown_key_message(trial, line, key, where)) from e
        except (KeyError, IndexError) as e:  # e.g. a key below a number, an index too large
            raise ConfigOverrideError(f"override {line!r}{where}: {e.args[0]}") from e
        new = OmegaConf.select(trial, key)
        value = _check_type(line, key, None if old is _ABSENT else old, new, where)
        converted = type(value) is not type(new)  # an int given for a float
        if converted:
            OmegaConf.update(trial, key, value)
        applied.append((line.lstrip("+"), key, value if converted else _ABSENT))
    with open_dict(cfg):  # all checked: the same updates on cfg itself
        for line, key, value in applied:
            LazyConfig.apply_overrides(cfg, [line])
            if value is not _ABSENT:
                OmegaConf.update(cfg, key, value)
    return cfg
