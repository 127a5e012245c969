"""A dynamic provider's inputs as they arrive over Pulumi's wire, made plain again.

The engine hands a provider its properties through Pulumi's property serialization, in
the provider process it starts (`python -m pulumi.dynamic`): keys whose value is None
are gone, ints arrive as floats, secrets arrive wrapped (`{sig: secret, value: ...}`),
and during a preview a value not known yet is the string `rpc.UNKNOWN`. The providers
read their inputs only through these functions.
"""

from __future__ import annotations

from typing import Any

from pulumi.output import Unknown
from pulumi.runtime import rpc

from fleet.errors import ConfigError
from fleet.resolved import ResolvedModel


def plain(value: Any) -> Any:
    """`value` with every wrapped secret replaced by its value, at any depth."""
    if rpc.is_rpc_secret(value):
        return plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def unknown(value: Any) -> bool:
    """Whether `value` holds a preview-time unknown anywhere (as sent, or as deserialized)."""
    if isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN):
        return True
    if isinstance(value, dict):
        return any(unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(unknown(v) for v in value)
    return False


SECRET_INPUTS = ("registry_password", "mlflow_token", "mlflow_password")
"""Inputs that stay inputs (secrets in the state) and never become plain outputs."""


def outputs_of(props: dict[str, Any]) -> dict[str, Any]:
    """A provider's (plain) inputs as the start of its outputs: without the secrets and
    without the engine's own keys (`__provider`)."""
    return {k: v for k, v in props.items() if k not in SECRET_INPUTS and not k.startswith("__")}


def resolved_of(props: dict[str, Any]) -> ResolvedModel:
    """The model of a provider's inputs; ConfigError naming the model when unreadable."""
    data = plain(props.get("model"))
    name = data.get("name", "?") if isinstance(data, dict) else "?"
    try:
        return ResolvedModel.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"model '{name}': the provider's inputs cannot be read back as a model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
