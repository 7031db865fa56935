"""The one entry point: python launch/main.py --config=configs/NAME.py --workdir=DIR --mode=MODE.

Any config key can be overridden as --config.KEY=VALUE (e.g. --config.train.num_steps=10). A
finished stage is reused only while the settings it ran with still hold; when they changed, the
run stops naming them, and --redo=STAGE runs that stage (and the later ones) again.
Run the same command on every worker of a TPU pod slice or multi-node GPU job.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file under configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
# A string, not an enum: a misspelt mode is refused by the runner's validation, as one `error:` line.
_MODE = flags.DEFINE_string("mode", "train", "Which stage to run: train, search, export, evaluate, "
                            "finetune, or all (every stage in order, skipping finished ones).")
_REDO = flags.DEFINE_list("redo", [], "Stages to run again although the workdir has them: their outputs "
                          "and those of later stages are moved to <workdir>/replaced/<time>/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # libraries log a lot at INFO; progress bars say enough
    logging.set_verbosity(logging.WARNING)
  from autodistil_jax import pipeline, runner  # after flag parsing: jax reads XLA flags from the env
  from autodistil_jax.train import Preempted

  config = _CONFIG.value
  pipeline.setup_distributed(config)
  logging.info("mode=%s workdir=%s\n%s", _MODE.value, _WORKDIR.value, config)
  try:
    runner.run(_MODE.value, config, _WORKDIR.value, tuple(_REDO.value))
  except Preempted as e:  # SIGTERM: the checkpoint is saved; exit as a SIGTERM'd process would
    print(str(e), file=sys.stderr)
    sys.exit(143)
  except runner.USER_ERRORS as e:  # what the user must fix: one line, non-zero exit
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # the system refused (disk full, permission, a file gone): one line, the path
    where = " ".join(str(p) for p in (e.filename, e.filename2) if p)
    print(f"error: {e.strerror or e}{': ' + where if where else ''} (outputs are written whole or "
          "not at all; free the space or fix the permission and run the same command again)",
          file=sys.stderr)
    sys.exit(1)
  except FloatingPointError as e:  # a state that is not finite: refused, never saved
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
