"""Every error model-fleet reports to a person: one root, `FleetError`, carrying its problems.

A `FleetError` holds one line per problem (`problems`); its message is those lines. The
CLI (`fleet.cli.report`) prints them and exits 1, the Pulumi program ends with
`pulumi.RunError` and the same lines. Anything that is not a `FleetError` is a bug and
keeps its traceback. This module ships in both images (it is imported by their config
readers), so it imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence


class FleetError(Exception):
    """Something a person must fix; `problems` names each one, one line each."""

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SpecError(FleetError):
    """`models.yaml` is not valid; each problem names the model, the field and the line."""


class ResolutionError(FleetError):
    """Models could not be resolved against the MLflow registry; each problem names one."""


class BuildError(FleetError):
    """A bento or image build (or push) failed; the message names the model or image."""


class ConfigError(FleetError):
    """A setting read at process start (environment, stack config, routes config) is wrong."""


class RoutesConfigError(ConfigError):
    """The router's routes config is not valid; the message names the field."""
