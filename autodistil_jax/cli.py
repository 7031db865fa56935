"""What every command-line program (launch/main.py, experiments/*.py) shares: how it starts (absl
parses its flags, extra arguments are refused, libraries' INFO logs are quieted) and how it ends
when something stops it (what the user must act on as one `error:` line and an exit code, never a
traceback).

This module imports nothing heavy at its top: the programs import jax only after absl has parsed
their flags (jax reads XLA flags from the environment then).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def one_line_errors(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """`main` for absl's app.run, ending as a user can act on:
  - SIGTERM (train.Preempted): the checkpoint is saved; its message, exit 143 as a SIGTERM'd process;
  - a bad input or stale workdir (runner.USER_ERRORS): `error: ...`, exit 2;
  - the system refused (OSError: disk full, permission, a file gone): `error: ...` with the path, exit 1;
  - a state that is not finite (FloatingPointError): refused and never saved, `error: ...`, exit 1.
  Anything else is a bug and keeps its traceback."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> object:
    from autodistil_jax.runner import USER_ERRORS
    from autodistil_jax.train import Preempted

    try:
      return main(argv)
    except Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(143)
    except USER_ERRORS as e:
      print("error: " + _one_line(e), file=sys.stderr)
      sys.exit(2)
    except OSError as e:
      where = " ".join(str(p) for p in (e.filename, e.filename2) if p)
      print(f"error: {e.strerror or e}{': ' + where if where else ''} (outputs are written whole or "
            "not at all; free the space or fix the permission and run the same command again)",
            file=sys.stderr)
      sys.exit(1)
    except FloatingPointError as e:
      print("error: " + _one_line(e), file=sys.stderr)
      sys.exit(1)

  return wrapped


def run(main: Callable[[], object]) -> None:
  """Runs a program's `main` under absl: flags parsed, positional arguments refused (every input is
  a flag), logging at WARNING unless --verbosity is given (libraries log a lot at INFO; progress
  bars say enough), and the endings of `one_line_errors`."""
  from absl import app, flags, logging

  def with_flags_parsed(argv: list[str]) -> object:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return main()

  app.run(one_line_errors(with_flags_parsed))
