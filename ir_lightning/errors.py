"""The errors a user's input causes, which the command line prints as one line (`error: <message>`)
instead of a traceback: a wrong setting or file (`ConfigurationError`, exit status 2) and unusable data
(`DataError`, exit status 1). Both are ValueErrors; a data error that is also an OSError or a
RuntimeError (a shard that cannot be read, a stream that gives no sample) inherits from that too, so
code that catches the general class keeps working. No imports: every layer may raise them."""


class ConfigurationError(ValueError):
    """A setting, or a file a setting names, is wrong: printed in one line, no traceback, exit status 2."""


class DataError(ConfigurationError):
    """A shard, sample or file of the data is unusable (named in the message): one line, exit status 1."""
