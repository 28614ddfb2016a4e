"""Training configs: small typed dataclasses, loaded from YAML, overridden by `--set a.b=c`.

Free-form `args` dicts (model.args, data.args, task.args) go to the model factory, the
dataset builder and the task as keyword arguments, so their keys are not checked here; every
other key is, and an unknown one is an error naming the nearest valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union  # Union: matched at runtime in _coerce

import yaml

from ..io import read_utf8, write_text
from ..keys import unknown_key
from .strategy import STRATEGIES

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
WANDB_MODES = ("auto", "offline", "online", "disabled")


@dataclass
class ModelConfig:
    name: str = "vit_tiny_patch4_32"
    args: dict = field(default_factory=dict)  # factory overrides, e.g. {depth: 4}


@dataclass
class DataConfig:
    name: str = "shapes"
    args: dict = field(default_factory=dict)  # extra build_dataset kwargs (num_samples, task...)
    root: str | None = None
    download: bool = False  # never by default: no network at run or test time
    batch_size: int = 64  # per process; global batch = batch_size * processes * grad_accum
    eval_batch_size: int | None = None  # None: 2 * batch_size (no activations kept for backward)
    num_workers: int = 0
    augment: bool | str = "none"  # none | light | strong (train split only); true = light
    fraction: float = 1.0  # of the training split; val/test always whole
    seed: int | None = None  # dataset subset/generation seed; None: train.seed
    val_split: str | None = "val"  # None: no validation
    test_split: str | None = "test"  # None: no test evaluation at the end


@dataclass
class TaskConfig:
    name: str = "classification"
    args: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to norms, biases, embeddings, position tables, tokens
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # of the total steps; used when warmup_steps is 0
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr: float = 0.0
    clip_grad: float | None = 1.0  # max global grad norm; None or 0: no clipping
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class TrainConfig:
    max_steps: int | None = None  # optimizer steps; wins over epochs when both are set
    epochs: float | None = 1.0
    eval_every: int = 0  # steps; 0: only at the end
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0: only at the end
    keep_last: int = 2
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs a GPU; bf16 is used on CPU)
    seed: int = 0
    ema: float | None = None  # EMA decay, e.g. 0.999; None: off
    compile: bool = False
    resume: bool | str = False  # True | False | "auto" (resume when a checkpoint exists)
    cpu: bool = False  # force CPU even when a GPU is present
    threads: int | None = None  # torch CPU threads; None: torch's default (1 helps tiny models
    #                             on a busy shared machine, where thread sync dominates)
    channels_last: bool = False  # NHWC model and 4-D batch tensors: convolutions run ~2x
    #                              faster on CPU (oneDNN) and on GPU tensor cores
    strategy: str = "ddp"  # ddp | fsdp: FSDP2 shards weights, gradients and optimizer state
    #                        over the GPUs (mmtx/train/strategy.py)


@dataclass
class LoggingConfig:
    wandb: bool = False
    project: str = "mmtx"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    mode: str = "auto"  # auto: $WANDB_MODE, else online with $WANDB_API_KEY, else offline
    tags: list[str] = field(default_factory=list)
    log_images: bool = True
    progress: bool = True  # tqdm bars on the main process


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        sub = typing.get_type_hints(cls)[f.name]
        sub = _optional_dataclass(sub) or sub
        if dataclasses.is_dataclass(sub):
            keys += _valid_keys(sub, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown(key: str, root=None) -> ValueError:
    """An error naming `key` and the nearest valid keys of the dataclass `root` (a Config)."""
    return unknown_key(key, _valid_keys(root or Config), "config key")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert `value` (from YAML or a --set string) to the annotated type, or raise ValueError."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except ValueError as e:
                errors.append(str(e))
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 type(None): "null"}
        names = " or ".join(words.get(o, getattr(o, "__name__", str(o))) for o in options)
        raise ValueError(f"config key {key!r}: expected {names}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r}: expected a list, got {value!r}")
        return [v if item is Any else _coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"config key {key!r}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    return value


def _optional_dataclass(hint):
    """The dataclass in `X | None`, or None."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def merge_dataclass(obj, data: dict, prefix: str = "", root=None) -> None:
    """Set fields of dataclass `obj` from a nested dict, checking keys and coercing types.

    An unknown key is an error naming the nearest valid keys of `root` (default: obj's class),
    so the same typed reading serves training configs and experiment files."""
    root = root or type(obj)
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, "
                         f"got {data!r}")
    hints = typing.get_type_hints(type(obj))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown(key, root)
        current = getattr(obj, name)
        sub = _optional_dataclass(hints[name])
        if current is None and sub is not None and isinstance(value, dict):
            current = sub()  # an optional section given in the file
            setattr(obj, name, current)
        if dataclasses.is_dataclass(current) and value is not None:
            merge_dataclass(current, value, f"{key}.", root)
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_override(item: str) -> tuple[str, Any]:
    """`--set KEY=VALUE` -> (KEY, VALUE read as YAML), for configs and experiment files."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {item!r}")
    # YAML parses 3e-4 as a string (YAML 1.1); the type coercion fixes scalars afterwards.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}: {raw!r} is not a YAML value "
                         f"({getattr(e, 'problem', None) or e})") from None
    return key, value


def apply_overrides(config: Config, overrides: list[str] | None) -> Config:
    """Apply `a.b=c` strings in order. `model.args.depth=4` sets a key inside a free-form dict."""
    for item in overrides or []:
        key, value = parse_override(item)
        parts = key.split(".")
        obj, i = config, 0
        while i < len(parts) - 1 and dataclasses.is_dataclass(obj):
            hints = typing.get_type_hints(type(obj))
            if parts[i] not in hints:
                raise _unknown(".".join(parts))
            nxt = getattr(obj, parts[i])
            if not dataclasses.is_dataclass(nxt):
                break
            obj, i = nxt, i + 1
        rest = parts[i:]
        if dataclasses.is_dataclass(obj) and len(rest) == 1:
            merge_dataclass(obj, {rest[0]: value}, ".".join(parts[:i]) + ("." if i else ""),
                            Config)
        elif isinstance(getattr(obj, rest[0], None), dict):
            target = getattr(obj, rest[0])
            for p in rest[1:-1]:  # nested free-form dicts: model.args.block.depth=2
                target = target.setdefault(p, {})
            target[rest[-1]] = value
        else:
            raise _unknown(".".join(parts))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range checks that types alone do not catch."""
    t, o, d = config.train, config.optim, config.data
    if t.strategy not in STRATEGIES:
        raise ValueError(f"train.strategy: expected one of {', '.join(STRATEGIES)}, got "
                         f"{t.strategy!r}")
    if t.precision not in PRECISIONS:
        raise ValueError(f"train.precision: expected one of {PRECISIONS}, got {t.precision!r}")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule: expected one of {SCHEDULES}, got {o.schedule!r}")
    if config.logging.mode not in WANDB_MODES:
        raise ValueError(f"logging.mode: expected one of {WANDB_MODES}, got "
                         f"{config.logging.mode!r}")
    if t.max_steps is None and t.epochs is None:
        raise ValueError("train.max_steps or train.epochs must be set, got neither")
    if t.max_steps is not None and t.max_steps < 1:
        raise ValueError(f"train.max_steps: expected >= 1, got {t.max_steps}")
    if t.epochs is not None and not 0 < t.epochs < math.inf:
        raise ValueError(f"train.epochs: expected a finite number > 0, got {t.epochs}")
    if isinstance(t.resume, str) and t.resume != "auto":
        raise ValueError(f"train.resume: expected true, false or 'auto', got {t.resume!r}")
    if t.ema is not None and not 0.0 < t.ema < 1.0:
        raise ValueError(f"train.ema: expected a decay in (0, 1) or null, got {t.ema}")
    if t.keep_last < 1:
        raise ValueError(f"train.keep_last: expected >= 1, got {t.keep_last}")
    for name in ("eval_every", "log_every", "checkpoint_every"):
        if getattr(t, name) < 0:
            raise ValueError(f"train.{name}: expected >= 0, got {getattr(t, name)}")
    if o.grad_accum < 1:
        raise ValueError(f"optim.grad_accum: expected >= 1, got {o.grad_accum}")
    # NaN fails every comparison, so each check is written as "expected" and negated.
    if not 0 < o.lr < math.inf:
        raise ValueError(f"optim.lr: expected a finite number > 0, got {o.lr}")
    if not 0 <= o.min_lr <= o.lr:  # above lr the schedule would raise the lr as it "decays"
        raise ValueError(f"optim.min_lr: expected in [0, optim.lr={o.lr}], got {o.min_lr}")
    if not 0 <= o.weight_decay < math.inf:  # negative decay pushes weights away from zero
        raise ValueError(f"optim.weight_decay: expected >= 0, got {o.weight_decay}")
    if o.clip_grad is not None and not 0 <= o.clip_grad < math.inf:
        raise ValueError(f"optim.clip_grad: expected >= 0 (0 or null: no clipping), got "
                         f"{o.clip_grad}")
    if o.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps: expected >= 0, got {o.warmup_steps}")
    if not 0 < o.eps < math.inf:
        raise ValueError(f"optim.eps: expected > 0, got {o.eps}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ValueError(f"optim.betas: expected two numbers in [0, 1), got {o.betas}")
    if not 0.0 <= o.warmup_fraction < 1.0:
        raise ValueError(f"optim.warmup_fraction: expected in [0, 1), got {o.warmup_fraction}")
    if d.batch_size < 1:
        raise ValueError(f"data.batch_size: expected >= 1, got {d.batch_size}")
    if d.eval_batch_size is not None and d.eval_batch_size < 1:
        raise ValueError(f"data.eval_batch_size: expected >= 1 or null, got {d.eval_batch_size}")
    if d.num_workers < 0:
        raise ValueError(f"data.num_workers: expected >= 0, got {d.num_workers}")
    if t.threads is not None and t.threads < 1:
        raise ValueError(f"train.threads: expected >= 1 or null, got {t.threads}")
    if not 0.0 < d.fraction <= 1.0:
        raise ValueError(f"data.fraction: expected in (0, 1], got {d.fraction}")


# What a resumed run may change: when it logs, evaluates and saves, how it loads data or
# evaluation batches, and how long it trains (to train further: the lr schedule then spans the
# new length from the step resumed). Any other change is refused on resume: the checkpoint's
# optimizer and schedule would go on under settings other than the ones config.yaml shows.
RESUMABLE = ("logging.", "train.eval_every", "train.log_every", "train.checkpoint_every",
             "train.keep_last", "train.threads", "data.num_workers", "data.eval_batch_size",
             "train.max_steps", "train.epochs")


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for each setting that differs, keys inside the
    free-form args included (a missing one is None). train.resume is left out: it says how
    this session starts, not what the run is."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k != "train.resume"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_from_dict(data: dict | None) -> Config:
    config = Config()
    merge_dataclass(config, data or {})
    validate(config)
    return config


def load_config(source: str | Path | dict | Config | None = None,
                overrides: list[str] | None = None) -> Config:
    """A Config from a YAML path, a dict or a Config (copied), then `overrides` applied."""
    if isinstance(source, Config):
        config = config_from_dict(source.to_dict())
    elif isinstance(source, dict) or source is None:
        config = config_from_dict(source)
    else:
        config = config_from_dict(read_yaml(source, "config"))
    return apply_overrides(config, overrides)


def read_yaml(path: str | Path, what: str) -> dict:
    """The mapping in a YAML file; `what` names the file in errors ("config", "experiment
    file"). A syntax error names the file and line; an empty file is an error (it would
    silently mean "all defaults")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such YAML file {str(path)!r}")
    text = read_utf8(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{what} {where}: invalid YAML: {problem}") from None
    if data is None:
        raise ValueError(f"{what} {str(path)!r} is empty; expected a mapping of settings")
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r}: expected a mapping at the top, got "
                         f"{type(data).__name__}")
    return data
