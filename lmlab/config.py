"""Configs: pydantic models, YAML/JSON files, `--set a.b=c` overrides and named profiles.

Resolution order (later wins): model defaults < profile < config file < --set overrides.
Every failure is an LmlabError whose one-line message names the file, line or dotted key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lmlab.errors import LmlabError

PROFILE_DIR = Path(__file__).parent / "profiles"
# Profile folders by group: "train" holds the profiles of `lmlab train` (the core's, then those a
# study ships for the core trainer); a study with a config of its own uses its own group (notes:
# `lmlab notes train`). A study registers its folders when its package is imported (the CLI
# imports every study when it mounts them; the core never imports a study).
_PROFILE_DIRS: dict[str, list[Path]] = {"train": [PROFILE_DIR]}


def register_profile_dir(path: str | Path, group: str = "train") -> None:
    """Add a folder of `<name>.yaml` profiles to `group` (again: no effect)."""
    dirs = _PROFILE_DIRS.setdefault(group, [])
    if Path(path) not in dirs:
        dirs.append(Path(path))


def profile_dirs(group: str = "train") -> list[Path]:
    """The folders of a group, in registration order (a later folder wins on a repeated name)."""
    return list(_PROFILE_DIRS.get(group, []))


M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- files


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; syntax errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LmlabError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmlabError(
            f"{path}: expected a mapping of keys at the top, got {type(data).__name__}"
        )
    return data


def json_inline(value: Any) -> str:
    """A value as one line of YAML flow syntax (JSON is valid YAML), for --set."""
    return json.dumps(value)


def dump_yaml(data: BaseModel | dict) -> str:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- overrides


def parse_set(expr: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value); the value parses as YAML (lists, dicts, numbers)."""
    key, sep, raw = expr.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LmlabError(f"--set {expr!r}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def get_path(data: dict, dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_sets(data: dict, sets: list[str] | tuple[str, ...]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for expr in sets:
        key, value = parse_set(expr)
        set_path(data, key, value)
    return data


# ---------------------------------------------------------------- profiles


def profile_description(path: Path) -> str:
    """The comment block at the top of a profile file (its lines joined) is its description."""
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("#"):
            if line or lines:
                break
            continue
        lines.append(line.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def list_profiles(dirs: list[Path] | None = None) -> list[tuple[str, str, Path]]:
    found: dict[str, Path] = {}
    for d in dirs or profile_dirs():
        for p in sorted(Path(d).glob("*.yaml")):
            found[p.stem] = p
    return [(name, profile_description(p), p) for name, p in sorted(found.items())]


def load_profile(name: str, dirs: list[Path] | None = None) -> dict:
    profiles = {n: p for n, _, p in list_profiles(dirs)}
    if name not in profiles:
        close = difflib.get_close_matches(name, list(profiles), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LmlabError(
            f"unknown profile '{name}'{hint}; available: {', '.join(profiles) or 'none'}"
        )
    return load_file(profiles[name])


# ---------------------------------------------------------------- validation


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the (nested) model that `loc` points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        cls = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(exc: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """One line naming the dotted key at fault (and close valid names for unknown keys)."""
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    dotted = ".".join(loc) or "<root>"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model_cls, loc)
        close = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{source}: unknown key '{dotted}'{hint} (valid here: {', '.join(valid)}){more}"
    return f"{source}: {dotted}: {err['msg']}{more}"


def validate(model_cls: type[M], data: dict, source: str = "config") -> M:
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise LmlabError(format_validation_error(e, model_cls, source)) from None


def resolve(
    model_cls: type[M],
    *,
    profile: str | None = None,
    config: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
    profile_dirs: list[Path] | None = None,
) -> M:
    """Build a config: defaults < base < profile < config file < --set."""
    data: dict = dict(base or {})
    sources = []
    if profile:
        data = deep_merge(data, load_profile(profile, profile_dirs))
        sources.append(f"profile '{profile}'")
    if config:
        data = deep_merge(data, load_file(config))
        sources.append(str(config))
    if sets:
        data = apply_sets(data, sets)
        sources.append("--set")
    return validate(model_cls, data, " + ".join(sources) or "config")


def config_hash(cfg: BaseModel | dict, exclude: tuple[str, ...] = ()) -> str:
    """8 hex chars of the canonical JSON of a resolved config: the run id's suffix."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)
    for key in exclude:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
