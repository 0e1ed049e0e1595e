"""The exit codes of every ``fmc`` command (DESIGN §5)."""

EXIT_OK = 0  # done
EXIT_FAILURE = 1  # a runtime failure (a failed check, a store that is down)
EXIT_USAGE = 2  # bad usage or bad configuration: the message names the file, the setting and the fix
