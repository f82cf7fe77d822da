"""How an installer tool runs as ``python -m agent.tools.<tool>``: its own parser, one line per error, exit codes.

Stdlib and agent.errors only at the top: the tools import this while the CLI builds its parser.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agent.errors import AgentError, ConfigError
from agent.i18n import _

__all__ = ["run_standalone"]


def run_standalone(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   main: Callable[[argparse.Namespace], int], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (None: ``sys.argv``) and run ``main``; a ConfigError exits 2, any other AgentError 1.

    The ConfigError's text already names the file, line and key, so it is printed as it is.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(parser.parse_args(argv))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except AgentError as exc:
        print(_("denen: error: {message}").format(message=exc), file=sys.stderr)
        return 1
