"""``hparams_search=optuna``'s sweeper, registered where Hydra looks for plugins; the logic is
`jasper.sweeps.OptunaSweeper`."""

from jasper.sweeps import OptunaSweeper


class JasperOptunaSweeper(OptunaSweeper):
    """`jasper.sweeps.OptunaSweeper` as a Hydra sweeper plugin (conf/hydra/sweeper/optuna.yaml)."""
