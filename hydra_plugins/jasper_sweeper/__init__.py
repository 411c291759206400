"""jasper's Hydra plugins (the Optuna sweeper, the stage-chaining submitit launchers): Hydra instantiates a sweeper
or launcher only from the ``hydra_plugins`` namespace package."""
