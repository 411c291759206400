"""Hydra's submitit launchers (the ``hydra-submitit-launcher`` package) that chain a multirun's stages: each job runs
in its own process (``local``) or SLURM job (``slurm``), the jobs of one stage at once, stage k after every job of
stage k-1 has returned (`jasper.training.sweeps.stage_batches`). Configured by conf/hydra/launcher/{local,slurm}.yaml.
"""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from jasper.training.sweeps import stage_batches


class StageChain:
    """``launch`` one stage's jobs at a time (through the submitit launcher it is mixed into), in stage order; a
    failed job stops the chain with its error before the next stage starts. Returns in the jobs' order."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        launched = 0
        for group in stage_batches(job_overrides):
            results = super().launch([job_overrides[i] for i in group], initial_job_idx + launched)
            for index, result in zip(group, results, strict=True):
                # A failed job's error, raised here: the next stage would start from a stage that is not there.
                _ = result.return_value
                returns[index] = result
            launched += len(group)
        return returns


class JasperLocalLauncher(StageChain, LocalLauncher):
    """``hydra/launcher=local``: each job a local process (submitit's local executor), stages chained."""


class JasperSlurmLauncher(StageChain, SlurmLauncher):
    """``hydra/launcher=slurm``: each job a SLURM job (submitit), stages chained."""
