"""Reading a stage's hub `config.json` into its dataclass config: the one error shape for a field a stage
does not implement, shared by every network's `Config.from_hub`.

This module reads no files and touches no hub: the networks take a dict (as `json.load` gives it), so
that each stage builds from a config alone. Finding and reading checkpoints is `generation/loading.py`.
"""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read or loaded; the message says why and what to do."""


class UnsupportedConfigError(CheckpointError, NotImplementedError):
    """A checkpoint's config asks for a variant audioldm2_lite does not implement (see `hub_field`)."""


class HubConfig(dict):
    """A hub config's fields, remembering the file (and sub-config) they came from, for error messages.

    Plain dicts work wherever a HubConfig does; their errors just name "the config" as the source.
    """

    def __init__(self, fields: dict, source: str = "the config", prefix: str = ""):
        super().__init__(fields)
        self.source, self.prefix = source, prefix


REQUIRED = object()  # marker: `hub_field` without a default


def hub_field(config: dict, name: str, default=REQUIRED, supported=None):
    """`config[name]`, or `default` where the file leaves the field out (or writes null for it).

    `supported` lists the values this implementation handles; any other is an `UnsupportedConfigError`
    naming the file, the field, the value and the supported values. A sub-config (a dict, such as
    CLAP's `audio_config`) comes back as a HubConfig whose errors name it as `audio_config.<field>`.
    """
    value = config.get(name)
    if value is None:
        if default is REQUIRED:
            raise CheckpointError(f"{config_source(config)} has no field '{config_prefix(config)}{name}'; is it the "
                                  f"config of this component?")
        value = default
    if supported is not None and value not in supported:
        raise unsupported_config(config, name, value, " or ".join(repr(v) for v in supported))
    if isinstance(value, dict):
        return HubConfig(value, config_source(config), f"{config_prefix(config)}{name}.")
    return value


def unsupported_config(config: dict, name: str, value, supported: str) -> UnsupportedConfigError:
    """The one error for a config value audioldm2_lite does not implement; `supported` says what it does."""
    return UnsupportedConfigError(
        f"{config_source(config)}: {config_prefix(config)}{name} = {value!r} is not supported by audioldm2_lite "
        f"(supported: {supported})."
    )


def config_source(config: dict) -> str:
    return getattr(config, "source", "the config")


def config_prefix(config: dict) -> str:
    return getattr(config, "prefix", "")
