"""What the entry points do with ``sys.argv`` before Hydra reads it. Kept free of Lightning, so that
``export.py`` and ``evaluate.py`` start without importing the trainer (seconds per start on 2 cores) and ``train.py``
refuses a bad override before it imports Lightning."""

from __future__ import annotations

from collections.abc import Sequence


class RunRefused(ValueError):
    """A configuration that cannot run here, found before any model loads; the message is one line naming the
    key to change (train.py prints it without a traceback)."""


# A value holding one of these is Hydra syntax the user wrote (quotes, an interpolation, a list or dict).
LEFT_ALONE = set("'\"${}[]\\")


def quote_paths(args: Sequence[str]) -> list[str]:
    """``key=value`` overrides whose value holds ``=`` (a multirun's job folder, ``outputs/run/mrl_dims=128,64/
    stage3/student.pt``), quoted for Hydra: its grammar refuses a bare ``=`` in a value, and reads the ``,`` as a
    sweep. Such a value can only be a string, so quoting it changes no other meaning; flags (``-m``) and values
    that already use Hydra's syntax pass unchanged. The entry points call it on ``sys.argv`` before Hydra."""
    quoted = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if not arg.startswith("-") and equals and "=" in value and not LEFT_ALONE & set(value):
            arg = f"{key}='{value}'"
        quoted.append(arg)
    return quoted


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse an override of the ``stage_settings`` view (Hydra's own error would only say it cannot), naming the
    key that holds the setting: ``stages.stage<N>.<key>``."""
    stage = next((o.split("=", 1)[1] for o in overrides if o.startswith("stage=")), "1")
    stage = stage if stage.isdigit() else "N"
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "stage_settings" or key.startswith("stage_settings."):
            rest = key.removeprefix("stage_settings").lstrip(".")
            raise RunRefused(
                f"{override}: stage_settings is a read-only view of the running stage's settings; override "
                f"stages.stage{stage}{'.' + rest if rest else ''}={value or '...'} instead"
            )
