"""User-facing errors: each message is one line saying what is wrong, where, and how to fix it."""


class DrrayError(Exception):
    """Base class; jobs print these as `error: <message>` and exit with status 2."""


class ConfigError(DrrayError, ValueError):
    pass


class DataError(DrrayError, ValueError):
    pass


class TrainingDiverged(DrrayError, RuntimeError):
    pass
