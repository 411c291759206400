"""``hparams_search=optuna``'s sweeper, registered where Hydra looks for plugins; the logic is
`jasper.training.sweeps.OptunaSweeper`."""

from jasper.training.sweeps import OptunaSweeper


class JasperOptunaSweeper(OptunaSweeper):
    """`jasper.training.sweeps.OptunaSweeper` as a Hydra sweeper plugin (conf/hydra/sweeper/optuna.yaml)."""
