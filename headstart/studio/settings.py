"""The training form, built from :data:`headstart.settings.SETTINGS`, and the checks of what it sends.

The main fields are the ones a person changes first (backbone, steps, learning
rate, batch size, fine-tuning); the rest are folded away under "Advanced".
Defaults, help texts and checks are those of the command line, so a value the
studio accepts is one ``headstart retrain`` accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..settings import SETTINGS, check_value
from .errors import StudioError

MAIN = ("backbone", "how_many_training_steps", "learning_rate", "train_batch_size", "fine_tune_blocks")
ADVANCED = (
    "optimizer",
    "testing_percentage",
    "validation_percentage",
    "early_stopping",
    "hidden_units",
    "dropout",
    "weight_decay",
    "label_smoothing",
    "class_weights",
    "unknown_accept",
    "eval_step_interval",
    "validation_batch_size",
    "test_batch_size",
    "seed",
    "crop_pct",
    "runtime",
    "precision",
    "flip_left_right",
    "random_crop",
    "random_scale",
    "random_brightness",
    "distorted_copies",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
    "fine_tune_label_smoothing",
    "write_report",
)
# The studio shows every number itself, so it skips the HTML report unless asked (it costs about a second),
# and it measures the validation set every 20 steps instead of 100 so that the curves it draws have points.
STUDIO_DEFAULTS: dict[str, Any] = {"write_report": False, "eval_step_interval": 20}


def _kind(name: str) -> str:
    setting = SETTINGS[name]
    if name == "fine_tune_blocks":
        return "blocks"
    if setting.kind is bool:
        return "bool"
    if setting.kind is int:
        return "int"
    if setting.kind is float:
        return "float"
    return "str"


def form_fields() -> list[dict[str, Any]]:
    """The fields of the training form: name, kind, default, help, choices, main or advanced."""
    from ..backbones import list_backbones

    fields = []
    for name in (*MAIN, *ADVANCED):
        setting = SETTINGS.get(name)
        if setting is None:  # a setting this version does not have
            continue
        row: dict[str, Any] = {
            "name": name,
            "label": name.replace("_", " "),
            "kind": _kind(name),
            "default": STUDIO_DEFAULTS.get(name, setting.default),
            "help": setting.help,
            "group": setting.group,
            "main": name in MAIN,
        }
        if setting.choices:
            row["choices"] = [{"value": c, "label": c} for c in setting.choices]
        if name == "backbone":
            row["choices"] = [
                {"value": b.name, "label": b.name + ("" if b.offline else " (needs download)"), "offline": b.offline}
                for b in list_backbones()
            ]
        fields.append(row)
    return fields


def _convert(name: str, value: Any) -> Any:
    kind = _kind(name)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise StudioError(422, f"{name} must be true or false, got {value!r}")
    if kind == "blocks":
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        kind = "int"
    if kind == "int":
        if isinstance(value, bool):
            raise StudioError(422, f"{name} must be a whole number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StudioError(422, f"{name} must be a whole number, got {value!r}") from None
        if number != int(number):
            raise StudioError(422, f"{name} must be a whole number, got {value!r}")
        return int(number)
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise StudioError(422, f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise StudioError(422, f"{name} must be text, got {value!r}")
    return value.strip()


def parse_settings(body: Any) -> dict[str, Any]:
    """The JSON object the form sends -> checked ``RetrainConfig`` keyword arguments."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise StudioError(422, 'training settings must be a JSON object, e.g. {"learning_rate": 0.001}')
    allowed = set(MAIN) | set(ADVANCED)
    out: dict[str, Any] = {k: v for k, v in STUDIO_DEFAULTS.items() if k in SETTINGS}
    for name, value in body.items():
        if name not in allowed or name not in SETTINGS:
            raise StudioError(422, f"unknown setting {name!r}", "the form's fields are listed by GET /api/info")
        if value is None or value == "":
            continue  # an empty field keeps the default
        value = _convert(name, value)
        try:
            check_value(name, value)
        except UsageError as exc:
            raise StudioError(422, str(exc).removeprefix("--"), exc.hint and exc.hint.replace("--", "")) from None
        out[name] = value
    testing = out.get("testing_percentage", SETTINGS["testing_percentage"].default)
    validation = out.get("validation_percentage", SETTINGS["validation_percentage"].default)
    if testing + validation > 100:
        raise StudioError(
            422,
            f"testing ({testing}) plus validation ({validation}) percentage is over 100",
            "leave some images for training, e.g. 10 and 10",
        )
    return out


def describe_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
