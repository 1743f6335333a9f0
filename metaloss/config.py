"""Experiment configuration: TOML in, validated pydantic models, resolved TOML out.

Each plugin section holds ``name`` (the registered plugin) and that plugin's own keyword arguments,
validated against the plugin's config model (see ``metaloss.registry.config_model``).  The network
sections are named by the role their network plays in the meta-engine: ``[learner]`` (a fusion network,
plugin group ``metaloss.fusion``), ``[loss_generator]`` and ``[objective]`` (a task network, group
``metaloss.tasks``); ``[data]`` and ``[val_data]`` name datasets.  Every error names the file, the key
path and the reason, and is raised before any work starts.

Keys of earlier versions (:data:`RENAMED_KEYS`: ``[fusion]``, ``[task]``, ``optim.fusion_lr``,
``optim.task_lr``; ``meta.first_order = false``) are still read, with a ``FutureWarning`` naming the
key to write instead (:func:`upgrade_keys`).
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from metaloss import registry


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, key path and reason."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        lines = [f"{source}: {key}: {reason}" if key else f"{source}: {reason}" for key, reason in problems]
        super().__init__("invalid config\n  " + "\n  ".join(lines))


class _Strict(BaseModel):
    # NaN and infinity are refused: no learning rate, weight or factor of a run may be non-finite
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PluginSection(BaseModel):
    """``name`` of a registered plugin plus its own keyword arguments (validated against the plugin)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="the registered plugin (see `metaloss plugins`)")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(PluginSection):
    name: str = Field("synthetic", description="the registered plugin (see `metaloss plugins`)")
    batch_size: int = Field(1, ge=1, description="pairs per batch, before the modality swap doubles it")
    crop_size: int = Field(256, ge=0, description="random square crop for the fusion loss; 0 = whole image")
    task_size: tuple[int, int] | None = Field(
        None, description="[H, W] the task sees (full image resized); omitted = the image's own size"
    )
    task_from_crop: bool = Field(False, description="the task sees the fusion-loss crop, not the resized full image")
    swap_modalities: bool = Field(True, description="double each batch with ir and vi swapped (TDFusion)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @field_validator("task_size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("both sizes must be >= 1")
        return v


class LearnerConfig(PluginSection):
    name: str = Field("restormer", description="the registered fusion network (group metaloss.fusion)")


class LossGeneratorConfig(PluginSection):
    name: str = Field(description="the registered loss generator (group metaloss.loss_generators); required")


class ObjectiveConfig(PluginSection):
    name: str = Field(description="the registered task (group metaloss.tasks); required")


class LossConfig(_Strict):
    """The learnable fusion loss L_f = L_int + alpha * L_grad + ssim_weight * L_ssim (see ``metaloss.losses``),
    plus objective_weight * L_t(F) where the learner also takes the objective's loss directly."""

    alpha: float = Field(1.0, ge=0, description="weight of the gradient term")
    weight_form: Literal["linear", "squared"] = Field(
        "linear", description="'linear': mean(w*(If-I)^2) as the paper; 'squared': mse(w*(If-I)) as the reference code"
    )
    intensity_norm: Literal["l2", "l1"] = Field(
        "l2",
        description=(
            "'l2': (If-I)^2 in the intensity term; 'l1': |If-I| (with the max rule: SeAFusion's |If-max(Ia,Ib)|)"
        ),
    )
    gradient_target: Literal["max", "intensity"] = Field(
        "max",
        description="gradient term's target: 'max': the sources' larger Sobel response per pixel; "
        "'intensity': the Sobel response of the intensity term's target w_a*Ia + w_b*Ib",
    )
    ssim_weight: float = Field(
        0.0,
        ge=0,
        description="beta: weight of the structural term 1 - (SSIM(If, Ia) + SSIM(If, Ib)) / 2 "
        "(SwinFusion's SSIM loss); 0 = none",
    )
    objective_weight: float = Field(
        0.0,
        ge=0,
        description="gamma: weight of the objective's own loss on the fused crop, added to L_f (the learner "
        "trained on the meta-objective directly, the baseline a learned loss must beat; needs "
        "data.task_from_crop); 0 = none",
    )


class MetaConfig(_Strict):
    """The alternating meta-learning schedule (``metaloss.meta``)."""

    epochs: int = Field(40, ge=1, description="L: epochs of (meta phase, learner phase)")
    meta_steps: int = Field(200, ge=0, description="M: meta-steps (loss generator updates) per epoch")
    learner_steps: int = Field(0, ge=0, description="N: learner steps per epoch; 0 = one pass over the data")
    inner_steps: int = Field(1, ge=1, description="k: inner SGD steps of the learner per meta-step")
    inner_lr: float | Literal["learner"] = Field(
        "learner", description="inner step size; 'learner' ties it to the learner's current lr (reference)"
    )
    truncate: int = Field(0, ge=0, description="backpropagate through the last k inner steps only; 0 = all")
    horizon: Literal["unrolled", "optimum", "output"] = Field(
        "unrolled",
        description="what the meta-objective judges: 'unrolled': the learner after k inner steps (MAML); "
        "'optimum': the output that minimises the learned loss, where the problem knows it (a first-order "
        "meta-gradient without the short-horizon bias of one small step); 'output': the learner's output now "
        "after one step of the learned loss taken on the output itself (first order; docs/meta.md)",
    )
    output_lr: float = Field(
        0.01,
        gt=0,
        description="the 'output' horizon's step per output element: F' = F - output_lr * N * dL_f/dF, "
        "N the number of elements (an L2 term with weights summing to 1 moves F by 2 output_lr of its "
        "distance to the target)",
    )
    backend: Literal["torch.func", "higher"] = "torch.func"
    outer_optimizer: Literal["adam", "maxabs_sgd"] = Field(
        "adam", description="'maxabs_sgd': phi -= lr * g / max|g| (the reference's outer update)"
    )
    outer_lr: float = Field(1e-4, gt=0, description="loss generator learning rate")
    objective_lookahead: bool = Field(
        True, description="update the objective network by one step before the outer loss"
    )
    warmup_epochs: int = Field(
        0,
        ge=0,
        description="first epochs without a meta phase (learner and objective only): the meta-gradient of "
        "untrained networks can point the wrong way and saturate the generator",
    )

    @field_validator("inner_lr")
    @classmethod
    def _positive_lr(cls, v: float | str) -> float | str:
        if isinstance(v, float) and v <= 0:
            raise ValueError("must be > 0 or 'learner'")
        return v

    @model_validator(mode="after")
    def _check(self) -> MetaConfig:
        if self.warmup_epochs >= self.epochs and self.meta_steps:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs}), or no meta-step would run"
            )
        if self.truncate > self.inner_steps:
            raise ValueError(f"truncate ({self.truncate}) must be <= inner_steps ({self.inner_steps})")
        return self


class OptimConfig(_Strict):
    """Adam for the learner and the objective network, step decay for all three (reference: x0.1 every 10 epochs)."""

    learner_lr: float = Field(1e-4, gt=0, description="learning rate of the learner (fusion network)")
    objective_lr: float = Field(1e-4, gt=0, description="learning rate of the objective (task network)")
    lr_step: int = Field(10, ge=1, description="epochs between learning-rate decays")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="decay factor")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm of the learner and objective")


class EvalConfig(_Strict):
    every: int = Field(1, ge=0, description="evaluate every n epochs (and at the end); 0 = only at the end")
    num_images: int = Field(8, ge=0, description="validation pairs to fuse and score; 0 = all")
    save_images: int = Field(
        4,
        ge=0,
        description="fused images of the first n validation pairs kept per evaluation, in val_images/epoch_XXX/",
    )
    profile: str = Field(
        "cddfuse", description="metric conventions: 'cddfuse', 'vifb', 'tdfusion' or 'mefb' (docs/metrics.md)"
    )
    stretch: bool = Field(
        True,
        description="min-max stretch each fused image before scoring it, as the reference test scripts do; "
        "also the default of `metaloss fuse` for this run's models (a network whose output is not "
        "calibrated needs it; one that starts from the sources' mean is calibrated)",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["EN", "SD", "SF", "AG", "SCD", "VIF", "Qabf", "SSIM"],
        description="fusion metrics of the profile to score the validation images with; [] = none",
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        """An unknown profile would only fail at the first evaluation, after an epoch of training."""
        from metaloss.metrics.profiles import PROFILES

        if v not in PROFILES:
            raise ValueError(f"unknown profile {v!r}; known: {', '.join(PROFILES)}")
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Checked against the profile (validated before: it is declared first); skipped when the
        profile itself is refused."""
        from metaloss.metrics.profiles import PROFILES

        profile = info.data.get("profile")
        if profile is None:
            return v
        unknown = [m for m in v if m not in PROFILES[profile]]
        if unknown:
            raise ValueError(
                f"profile {profile!r} has no metric {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(PROFILES[profile].metrics)}"
            )
        return v


class GuardConfig(_Strict):
    """What a NaN or Inf in a loss or gradient does (docs/reliability.md); nothing is ever stepped with one."""

    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="'stop': end the run with an error, checkpoints/last.pt stays the last good state; "
        "'skip': drop the batch, log it and go on",
    )
    max_consecutive_skips: int = Field(
        10, ge=1, description="with 'skip': at most this many batches in a row are skipped; one more stops the run"
    )


class DistributedConfig(_Strict):
    """Data-parallel runs on several processes (torchrun; docs/distributed.md); one process ignores it.

    ``data.batch_size`` is per process: the global batch is ``batch_size`` x the number of processes.
    """

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="'auto': nccl on CUDA devices, gloo on the CPU"
    )
    sync_batchnorm: bool = Field(
        True, description="BatchNorm layers normalise with the global batch's statistics; false: each process's own"
    )
    timeout_s: float = Field(
        1800, gt=0, description="seconds a process waits for the others in a collective (rank 0 evaluates alone)"
    )


class PerformanceConfig(_Strict):
    """Speed and memory switches; results stay within float tolerance of the defaults (docs/benchmarks.md)."""

    allocator: Literal["keep", "release", "system"] = Field(
        "keep",
        description="CPU heap policy (metaloss.utils.memory): 'keep' reuses freed activations (faster steps), "
        "'release' returns them to the system (least memory), 'system' leaves glibc's defaults",
    )
    meta_gradient: Literal["auto", "double_backward", "jvp"] = Field(
        "auto",
        description="how the meta-gradient is computed: 'double_backward' through the inner step's backward graph; "
        "'jvp' by one forward-mode pass (exact for one tracked inner step: meta.inner_steps = 1 or meta.truncate = 1; "
        "less time and memory); 'auto': jvp where it applies (torch.func backend), else double_backward",
    )
    recompute_generator: bool = Field(
        False,
        description="meta-step: recompute the loss generator's forward in the backward pass instead of keeping "
        "its activations (less memory, one more generator forward)",
    )
    recompute_outer: bool = Field(
        False,
        description="meta-step: recompute the learner's outer forward in the backward pass instead of "
        "keeping its activations (less memory, one more learner forward)",
    )


class CheckpointConfig(_Strict):
    every: int = Field(
        0,
        ge=0,
        description="also keep checkpoints/epoch_XXX.pt every n epochs (each a full training state, tens of MB); "
        "0 = only last.pt, all that --resume needs",
    )


class ExperimentConfig(_Strict):
    """A whole experiment.  Every key but the loss generator's and the objective's ``name`` has a default,
    so ``[section]`` tables list only what differs."""

    name: str = Field(
        "experiment", description="run name, without '/' or '\\'; the default run directory is runs/<name>-<time>"
    )
    seed: int = Field(0, description="seeds python, numpy and torch; each epoch re-seeds from (seed, epoch)")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms for repeatable runs")
    dtype: Literal["float32", "float64", "bfloat16"] = Field(
        "float32",
        description="floating-point type of the networks and batches; float64 for exact comparisons (slower); "
        "'bfloat16' (CUDA only): float32 networks whose learner and objective steps run under bfloat16 autocast, "
        "the meta-step in float32 (docs/gpu.md)",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    val_data: DataConfig | None = Field(None, description="validation data; omitted = [data] with split 'val'")
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    loss_generator: LossGeneratorConfig
    objective: ObjectiveConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """The run directory is runs/<name>-<time>: a separator would put it elsewhere (``../../x``, ``/x``)."""
        if not v.strip() or "/" in v or "\\" in v:
            raise ValueError(
                f"must be a plain name without '/' or '\\' (the run directory is runs/<name>-<time>); got {v!r}"
            )
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        """A mistyped device would only fail when the networks are moved to it."""
        forms = _device_forms()
        if not (v in forms or re.fullmatch(r"cuda:\d+", v)):
            raise ValueError(f"unknown device {v!r}; valid: {', '.join(forms)}, or cuda:N (N = 0, 1, ...)")
        return v

    @field_validator("dtype")
    @classmethod
    def _bfloat16_on_cuda(cls, v: str, info: ValidationInfo) -> str:
        """bfloat16 autocast is a GPU speed switch (on CPUs without bfloat16 units it is slower than
        float32); ``device = "auto"`` is checked when the run resolves it (``metaloss.experiment``)."""
        device = info.data.get("device")
        if v == "bfloat16" and device is not None and not device.startswith(("auto", "cuda")):
            raise ValueError(f"'bfloat16' needs a CUDA device, but device = {device!r}; use float32 there")
        return v

    def to_toml(self) -> str:
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))


def _device_forms() -> list[str]:
    """The device names a config may give besides cuda:N; mps only where torch was built with it."""
    import torch

    return ["auto", "cpu", "cuda"] + (["mps"] if torch.backends.mps.is_built() else [])


#: The plugin group of each plugin section.
PLUGIN_SECTIONS: dict[str, str] = {
    "learner": "fusion",
    "loss_generator": "loss_generators",
    "objective": "tasks",
    "data": "datasets",
    "val_data": "datasets",
}


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-after"))]
    return ".".join(parts)


def _problems(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(key path, reason) of each error; a validator's own message, without pydantic's "Value error, "."""
    return [
        (prefix + _key_path(e["loc"]), str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"])
        for e in err.errors()
    ]


def _bools_as_numbers(raw: Any, resolved: Any, key: str = "") -> list[tuple[str, str]]:
    """Keys given true/false whose validated value is a number: pydantic reads true as 1, so
    ``epochs = true`` would run one epoch instead of being refused.  Covers the plugins' options too."""
    if isinstance(raw, bool):
        return [] if isinstance(resolved, bool) else [(key, f"expected a number, got {str(raw).lower()}")]
    if isinstance(raw, dict) and isinstance(resolved, dict):
        pairs = [(f"{key}.{k}" if key else str(k), v, resolved[k]) for k, v in raw.items() if k in resolved]
    elif isinstance(raw, list) and isinstance(resolved, list):
        pairs = [(f"{key}.{i}", v, r) for i, (v, r) in enumerate(zip(raw, resolved, strict=False))]
    else:
        return []
    return [problem for k, v, r in pairs for problem in _bools_as_numbers(v, r, k)]


#: Keys of earlier versions and the keys that replaced them (one name per role: learner, loss_generator,
#: objective).
RENAMED_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("fusion",): ("learner",),
    ("task",): ("objective",),
    ("optim", "fusion_lr"): ("optim", "learner_lr"),
    ("optim", "task_lr"): ("optim", "objective_lr"),
}
#: A key of earlier versions whose one legal value is now the only behaviour.
FIRST_ORDER = ("meta", "first_order")
_FIRST_ORDER_REFUSED = (
    "first_order = true is refused: the loss generator enters the outer loss only through the gradient "
    "of the inner update, so a first-order meta-step gives it exactly zero gradient"
)


def upgrade_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``data`` with the keys of :data:`RENAMED_KEYS` under their new names and ``meta.first_order = false``
    dropped; also the ``(old, new)`` keys it changed ("" as the new key of a dropped one).  A config
    that gives a key under both names, or ``meta.first_order = true``, is refused (:class:`ValueError`)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    changed: list[tuple[str, str]] = []
    for old, new in RENAMED_KEYS.items():
        parent = _table(data, old[:-1])
        if parent is None or old[-1] not in parent:
            continue
        if new[-1] in parent:
            raise ValueError(
                f"{'.'.join(old)} and {'.'.join(new)} are the same key (the old and the new name); "
                f"give only {'.'.join(new)}"
            )
        parent[new[-1]] = parent.pop(old[-1])
        changed.append((".".join(old), ".".join(new)))
    meta = _table(data, FIRST_ORDER[:-1])
    if meta is not None and FIRST_ORDER[-1] in meta:
        if meta[FIRST_ORDER[-1]] is not False:
            raise ValueError(_FIRST_ORDER_REFUSED)
        del meta[FIRST_ORDER[-1]]
        changed.append((".".join(FIRST_ORDER), ""))
    return data, changed


def _table(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _warn_renamed(label: str, changed: list[tuple[str, str]]) -> None:
    for old, new in changed:
        advice = f"write {new} instead" if new else "the meta-step is always second order; leave it out"
        warnings.warn(f"{label}: config key {old} is deprecated; {advice}", FutureWarning, stacklevel=3)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"meta.inner_steps=3"`` -> (["meta", "inner_steps"], 3); the value is read as TOML, else as a string."""
    if "=" not in item:
        raise ConfigError("--set", [(item, "expected KEY=VALUE, e.g. meta.inner_steps=3")])
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError("--set", [(key, "empty key segment")])
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError("--set", [(".".join(path), f"{part!r} is not a table")])
            node = child
        node[path[-1]] = value
    return data


def _upgrade_override(item: str) -> tuple[str, tuple[str, str] | None]:
    """``--set fusion.dim=8`` -> ``learner.dim=8`` (:data:`RENAMED_KEYS`), and the renamed key if any."""
    path, _ = parse_override(item)
    raw = item.split("=", 1)[1]
    for old, new in RENAMED_KEYS.items():
        if tuple(path[: len(old)]) == old:
            renamed = [*new, *path[len(old) :]]
            return f"{'.'.join(renamed)}={raw}", (".".join(path), ".".join(renamed))
    return item, None


def load_config(
    source: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    check_plugins: bool = True,
) -> ExperimentConfig:
    """Read, override, validate.  ``source`` is a TOML path or an already-parsed dict.

    With ``check_plugins`` every plugin name is resolved and its options validated and filled with
    the plugin's defaults, so the returned config is fully resolved, and the networks are built once
    (:func:`check_networks`).
    """
    if isinstance(source, dict):
        label, data = "<config>", dict(source)
    else:
        path = Path(source)
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(label, [("", "no such file")]) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(label, [("", f"cannot read: {err}")]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(label, [("", f"not valid TOML: {err}")]) from None
    try:
        data, changed = upgrade_keys(data)
        if overrides:
            upgraded = [_upgrade_override(item) for item in overrides]
            changed += [c for _, c in upgraded if c is not None]
            data, dropped = upgrade_keys(apply_overrides(data, [item for item, _ in upgraded]))
            changed += dropped
    except ValueError as err:
        raise ConfigError(label, [("", str(err))]) from None
    _warn_renamed(label, changed)
    if overrides:
        label = f"{label} (with --set {' '.join(overrides)})"
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(label, _problems(err)) from None
    if check_plugins:
        cfg = resolve_plugins(cfg, label)
    problems = _bools_as_numbers(data, cfg.model_dump(mode="json"))
    if problems:
        raise ConfigError(label, problems)
    if check_plugins:
        check_networks(cfg, label)
    return cfg


def resolve_plugins(cfg: ExperimentConfig, label: str = "<config>") -> ExperimentConfig:
    """Validate each plugin section against its plugin's config model and fill in its defaults."""
    problems: list[tuple[str, str]] = []
    for section, group in PLUGIN_SECTIONS.items():
        sec: PluginSection | None = getattr(cfg, section)
        if sec is None:
            continue
        try:
            obj = registry.load(group, sec.name)
        except registry.PluginError as err:
            problems.append((f"{section}.name", str(err)))
            continue
        model = registry.config_model(obj)
        try:
            validated = model.model_validate(sec.options)
        except ValidationError as err:
            problems.extend(_problems(err, f"{section}."))
            continue
        assert sec.model_extra is not None
        sec.model_extra.update(validated.model_dump(mode="json"))
    if problems:
        raise ConfigError(label, problems)
    return cfg


def _plugin_kwargs(obj: Any, options: dict[str, Any]) -> dict[str, Any]:
    return registry.config_model(obj).model_validate(options).model_dump()


#: The plugin sections whose networks :func:`check_networks` builds (the task's needs the dataset).
NETWORK_SECTIONS: dict[str, str] = {"learner": "fusion", "loss_generator": "loss_generators"}
#: Side of the image pair the networks are run on once: small, and any H, W is in their contract.
PROBE_SIZE = 32


def check_networks(cfg: ExperimentConfig, label: str = "<config>") -> None:
    """Build the learner (fusion network) and the loss generator and run each once on a small pair.

    Their option models allow values the networks cannot have (``learner.dim = 0``, a width of 0): found
    here, the error names the key at fault, instead of a torch message at the first training step.
    """
    problems = []
    for section, group in NETWORK_SECTIONS.items():
        sec: PluginSection = getattr(cfg, section)
        factory = registry.load(group, sec.name)
        failure = _network_failure(factory, sec.name, json.dumps(sec.options, sort_keys=True))
        if failure is not None:
            key, reason = failure
            problems.append((f"{section}.{key}" if key else section, reason))
    if problems:
        raise ConfigError(label, problems)


@functools.lru_cache(maxsize=64)
def _network_failure(factory: Any, name: str, options_json: str) -> tuple[str, str] | None:
    """None if the network builds and runs, else (the option at fault or "", why).  The option at
    fault is the first one that, set back to its default alone, makes the network work.  Cached: a
    config is loaded many times (tests, resumes) and the answer depends only on these arguments."""
    options = json.loads(options_json)
    error = _probe_network(factory, options)
    if error is None:
        return None
    fields = registry.config_model(factory).model_fields
    defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}
    changed = [k for k in options if k in defaults and options[k] != _plain(defaults[k])]
    for key in changed:
        if _probe_network(factory, {**options, key: defaults[key]}) is None:
            reason = f"the {name!r} network fails with {key} = {options[key]!r} ({error})"
            return key, f"{reason}; the default is {defaults[key]!r}"
    return "", f"the {name!r} network cannot be built and run with these options ({error})"


def _plain(value: Any) -> Any:
    """``value`` as the resolved (JSON-mode) options hold it, to compare with them."""
    return json.loads(json.dumps(value, default=str))


def _probe_network(factory: Any, options: dict[str, Any]) -> str | None:
    """Build with ``options`` and run on a [2, 1, PROBE_SIZE, PROBE_SIZE] pair on the CPU; None if that
    works, else the error in one line.  The global random state and thread count are left as they
    were; the probe runs on one thread (on a busy machine, waking the pool for these tiny tensors
    took seconds) and its warnings are dropped (the run's own build gives them)."""
    import torch

    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_num_threads(1)
            net = factory(**_plugin_kwargs(factory, options))
            pair = torch.linspace(0, 1, 2 * PROBE_SIZE * PROBE_SIZE).reshape(2, 1, PROBE_SIZE, PROBE_SIZE)
            net(pair, pair.flip(-1))
    except Exception as err:  # any failure of third-party code is reported, not raised
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        torch.set_num_threads(threads)
    return None


def check_eval_size(cfg: ExperimentConfig, height: int, width: int, label: str = "<config>") -> None:
    """Refuse validation images smaller than the selected metrics need (VIF: 41 x 41), which would
    otherwise fail at the first evaluation, after a whole epoch.  ``height`` x ``width``: the size of
    the validation images (the metrics score whole images, not crops)."""
    from metaloss.metrics.profiles import PROFILES

    short = [s for s in PROFILES[cfg.eval.profile].resolve(list(cfg.eval.metrics)) if min(height, width) < s.min_size]
    if short:
        needs = ", ".join(f"{s.name} needs at least {s.min_size}x{s.min_size}" for s in short)
        source = "[val_data]" if cfg.val_data is not None else "[data], split 'val'"
        raise ConfigError(
            label,
            [
                (
                    "eval.metrics",
                    f"{needs}, but the validation images ({source}) are {height}x{width}; "
                    "use larger validation images or leave these metrics out",
                )
            ],
        )
