"""The one entry point: python launch/main.py --config=configs/NAME.py --workdir=DIR --mode=MODE.

Any config key can be overridden as --config.KEY=VALUE (e.g. --config.train.num_steps=10). A
finished stage is reused only while the settings it ran with still hold; when they changed, the
run stops naming them, and --redo=STAGE runs that stage (and the later ones) again.
Run the same command on every worker of a TPU pod slice or multi-node GPU job.
"""

from absl import flags, logging
from ml_collections import config_flags

from autodistil_jax import cli  # imports no jax: flags are parsed first

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file under configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
# A string, not an enum: a misspelt mode is refused by the runner's validation, as one `error:` line.
_MODE = flags.DEFINE_string("mode", "train", "Which stage to run: train, search, export, evaluate, "
                            "finetune, or all (every stage in order, skipping finished ones).")
_REDO = flags.DEFINE_list("redo", [], "Stages to run again although the workdir has them: their outputs "
                          "and those of later stages are moved to <workdir>/replaced/<time>/.")
flags.mark_flags_as_required(["config", "workdir"])


def main() -> None:
  from autodistil_jax import pipeline, runner  # after flag parsing: jax reads XLA flags from the env

  config = _CONFIG.value
  pipeline.setup_distributed(config)
  logging.info("mode=%s workdir=%s\n%s", _MODE.value, _WORKDIR.value, config)
  runner.run(_MODE.value, config, _WORKDIR.value, tuple(_REDO.value))


if __name__ == "__main__":
  cli.run(main)
