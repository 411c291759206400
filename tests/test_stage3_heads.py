"""Stage 3's head_init=fc1_prefix starts only heads that no stage has trained, and a head wider than FC1 is named."""

from __future__ import annotations

import logging
from functools import partial

import torch

from jasper.core.losses import DistillLoss
from jasper.models.student import Student
from jasper.storage.checkpoints import load_student_weights
from jasper.training.callbacks import SaveStudent
from jasper.training.stages.stage2 import Stage2
from jasper.training.stages.stage3 import Stage3

ADAMW = partial(torch.optim.AdamW, lr=1e-3)


def stage3(student: Student) -> Stage3:
    return Stage3(student, DistillLoss(), head_init="fc1_prefix", optimizer=ADAMW)


def starts_as_fc1(student: Student, head: str) -> bool:
    rows = min(int(head), student.fc1_dim)
    return torch.equal(student.heads[head].weight[:rows], student.fc1.weight[:rows])


def test_trained_heads_survive_a_second_stage3_and_new_ones_start_from_fc1(tiny_bert, tmp_path):
    torch.manual_seed(0)
    first = Student(tiny_bert, fc1_dim=16, mrl_dims=[8, 4])
    module = stage3(first)
    with torch.no_grad():  # what stage 3's training leaves: heads that are no longer FC1's rows
        for head in first.heads.values():
            head.weight.add_(torch.randn_like(head.weight))
    module.on_train_start()  # what fit does first: the heads stage 3 trains are recorded
    SaveStudent(str(tmp_path / "stage3" / "student.pt")).on_fit_end(None, module)

    second = Student(tiny_bert, fc1_dim=16, mrl_dims=[8, 4, 12])
    load_student_weights(second, tmp_path / "stage3" / "student.pt")
    assert second.heads_trained == {"8", "4"}
    stage3(second)  # init_from a stage-3 student (a second stage-3 run in the same run_name)
    for head in ("8", "4"):
        assert torch.equal(second.heads[head].weight, first.heads[head].weight)
        assert not starts_as_fc1(second, head)
    assert starts_as_fc1(second, "12")  # a head new in this run starts from FC1


def test_heads_that_only_rode_along_start_from_fc1(tiny_bert, tmp_path):
    torch.manual_seed(0)
    student = Student(tiny_bert, fc1_dim=16, mrl_dims=[8])
    module = Stage2(student, DistillLoss(), unfreeze_layers=1, optimizer=ADAMW)
    module.on_train_start()
    SaveStudent(str(tmp_path / "stage2" / "student.pt")).on_fit_end(None, module)  # stage 2 trains FC1 only
    fresh = Student(tiny_bert, fc1_dim=16, mrl_dims=[8])
    load_student_weights(fresh, tmp_path / "stage2" / "student.pt")
    assert fresh.heads_trained == set()
    stage3(fresh)
    assert starts_as_fc1(fresh, "8")


def test_a_head_wider_than_fc1_is_named_and_gets_fc1s_rows(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="jasper.models.student"):
        student = Student(tiny_bert, fc1_dim=16, mrl_dims=[8, 24])
    assert "[24] wider than FC1 (16" in caplog.text
    stage3(student)
    assert starts_as_fc1(student, "24")  # its first 16 rows; the other 8 stay random
