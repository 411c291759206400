import functools

import pytest
import torch

from jasper.core.losses import DistillLoss
from jasper.core.resim import relative_similarity_loss_reference
from jasper.models.student import Student
from jasper.storage.checkpoints import load_student_weights, save_student
from jasper.training.stages.stage1 import Stage1
from jasper.training.stages.stage2 import Stage2
from jasper.training.stages.stage3 import Stage3

TEXTS = [f"text {i}: " + "words " * (i % 5 + 1) for i in range(8)]


def make(stage, tiny_bert, **kwargs):
    torch.manual_seed(0)
    student = Student(tiny_bert, fc1_dim=24, mrl_dims=[8, 4], num_layers=4)
    optimizer = functools.partial(torch.optim.SGD, lr=0.5)
    return stage(student, DistillLoss(), optimizer=optimizer, **kwargs)


def changed_after_one_step(module) -> set[str]:
    batch = dict(module.student.tokenize(TEXTS))
    batch["teacher"] = torch.nn.functional.normalize(torch.randn(len(TEXTS), 24), dim=-1)
    before = {n: p.detach().clone() for n, p in module.student.named_parameters()}
    optimizer = module.configure_optimizers()
    module.on_train_batch_start(batch, 0)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    return {n for n, p in module.student.named_parameters() if not torch.equal(p, before[n])}


def test_stage1_trains_fc1_only_and_runs_the_encoder_without_autograd(tiny_bert):
    module = make(Stage1, tiny_bert)
    batch = module.student.tokenize(TEXTS[:2])
    assert module.student.pooled(batch["input_ids"], batch["attention_mask"]).grad_fn is None
    assert changed_after_one_step(module) == {"fc1.weight", "fc1.bias"}


@pytest.mark.parametrize("unfreeze", [1, 3])
def test_stage2_trains_fc1_and_the_last_layers(tiny_bert, unfreeze):
    module = make(Stage2, tiny_bert, unfreeze_layers=unfreeze)
    changed = changed_after_one_step(module)
    layers = {name.split(".layer.")[1].split(".")[0] for name in changed if ".layer." in name}
    assert layers == {str(i) for i in range(4 - unfreeze, 4)}
    assert {"fc1.weight", "fc1.bias"} <= changed
    assert not any(name.startswith(("heads.", "encoder.embeddings")) for name in changed)
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    assert changed <= trainable


def test_stage3_trains_everything_that_gets_a_gradient(tiny_bert):
    module = make(Stage3, tiny_bert)
    changed = changed_after_one_step(module)
    assert {
        "heads.8.weight",
        "heads.4.weight",
        "fc1.weight",
        "encoder.embeddings.word_embeddings.weight",
    } <= changed
    assert all(p.requires_grad for p in module.student.parameters())


def random_vectors(module, rows: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Normalised random vectors of every head of ``module``'s student, and a 24-d teacher."""
    torch.manual_seed(1)
    teacher = torch.nn.functional.normalize(torch.randn(rows, 24), dim=-1)
    vectors = {
        h: torch.nn.functional.normalize(torch.randn(rows, module.student.head_dim(h)), dim=-1)
        for h in module.student.head_names
    }
    return vectors, teacher


def test_stage3_losses_per_head_without_cosine_on_reduced_heads(tiny_bert):
    module = make(Stage3, tiny_bert)
    vectors, teacher = random_vectors(module)
    terms = module.losses(vectors, teacher)
    assert set(terms) == {
        "fc1/loss_cos",
        "fc1/loss_sim",
        "fc1/loss_resim",
        "8/loss_sim",
        "8/loss_resim",
        "4/loss_sim",
        "4/loss_resim",
        "total",
    }
    without_fc1 = make(Stage3, tiny_bert, keep_fc1_loss=False)
    assert not any(k.startswith("fc1/") for k in without_fc1.losses(vectors, teacher))


@pytest.mark.parametrize("keep_fc1_loss", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_stage3_head_reduction_is_the_plain_formula(tiny_bert, reduction, keep_fc1_loss):
    """``mean`` (official code): ``10 cos(FC1) + (1/n) sum_h (200 sim_h + 20 resim_h)`` over the n heads trained
    (FC1 among them unless keep_fc1_loss=False); ``sum``: ``10 cos(FC1) + sum_h (200 sim_h + 20 resim_h)``. Each
    term written out here (the relative similarity as the plain reference), on random vectors."""
    module = make(Stage3, tiny_bert, head_reduction=reduction, keep_fc1_loss=keep_fc1_loss)
    vectors, teacher = random_vectors(module)
    heads = ["fc1", "8", "4"] if keep_fc1_loss else ["8", "4"]
    in_batch = [
        200 * ((vectors[h] @ vectors[h].T - teacher @ teacher.T) ** 2).mean()
        + 20 * relative_similarity_loss_reference(vectors[h], teacher, margin=0.015)
        for h in heads
    ]
    cosine = 10 * (1 - (vectors["fc1"] * teacher).sum(-1)).mean() if keep_fc1_loss else 0.0
    expected = cosine + (sum(in_batch) / len(heads) if reduction == "mean" else sum(in_batch))
    total = module.losses(vectors, teacher)["total"]
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    swapped = "sum" if reduction == "mean" else "mean"
    other = make(Stage3, tiny_bert, head_reduction=swapped, keep_fc1_loss=keep_fc1_loss)
    assert not torch.allclose(other.losses(vectors, teacher)["total"], total)  # they differ on these vectors


def test_stage3_head_reduction_is_checked(tiny_bert):
    with pytest.raises(ValueError, match="head_reduction='max'"):
        make(Stage3, tiny_bert, head_reduction="max")


def test_stage3_needs_mrl_heads(tiny_bert):
    student = Student(tiny_bert, fc1_dim=24, mrl_dims=[])
    with pytest.raises(ValueError, match="mrl_dims is empty"):
        Stage3(student, DistillLoss(), optimizer=functools.partial(torch.optim.SGD, lr=0.1))


def test_stage3_refuses_a_loss_that_gives_the_heads_nothing(tiny_bert):
    student = Student(tiny_bert, fc1_dim=24, mrl_dims=[8])
    cosine_only = DistillLoss(similarity=0, relative_similarity=0)
    with pytest.raises(ValueError, match=r"heads would learn nothing.*stages\.stage3\.loss"):
        Stage3(student, cosine_only, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    Stage3(student, DistillLoss(similarity=0), optimizer=functools.partial(torch.optim.SGD, lr=0.1))


def test_stage2_rejects_more_layers_than_the_student_has(tiny_bert):
    with pytest.raises(ValueError, match="unfreeze_layers"):
        make(Stage2, tiny_bert, unfreeze_layers=5)


def test_stage3_head_lr_gives_the_heads_their_own_group(tiny_bert):
    module = make(Stage3, tiny_bert, head_lr=0.05)
    groups = module.configure_optimizers().param_groups
    heads = {id(p) for p in module.student.heads.parameters()}
    assert [g["lr"] for g in groups] == [0.5, 0.05]
    assert {id(p) for p in groups[1]["params"]} == heads
    assert len(groups[0]["params"]) + len(heads) == len(list(module.student.parameters()))


def test_stage3_heads_start_as_the_prefix_of_fc1(tiny_bert):
    module = make(Stage3, tiny_bert)
    student = module.student
    batch = student.tokenize(TEXTS[:3])
    with torch.no_grad():
        pooled = student.pooled(batch["input_ids"], batch["attention_mask"])
        raw = student.fc1(pooled)
        vectors = student.project(pooled)
    expected = torch.nn.functional.normalize(raw[:, :8], dim=-1)
    assert torch.allclose(vectors["8"], expected, atol=1e-6)
    random_heads = make(Stage3, tiny_bert, head_init="random").student
    assert not torch.equal(random_heads.heads["8"].weight, random_heads.fc1.weight[:8])


def test_stage3_keeps_trained_heads_from_init_from_and_starts_fresh_ones_from_fc1(tiny_bert, tmp_path):
    """init_from a stage-3 student (a student.pt or a Lightning checkpoint): its trained heads are kept. From a
    stage-2 student.pt (its heads never trained) or a file without some head, those heads start from FC1."""
    module = make(Stage3, tiny_bert)
    changed_after_one_step(module)
    trained = module.student
    assert not torch.equal(trained.heads["8"].weight, trained.fc1.weight[:8])  # the step moved them apart
    module.on_train_start()  # fit's first step: the heads stage 3 trains are recorded
    assert trained.heads_trained == set(trained.heads)
    save_student(trained, tmp_path / "stage3" / "student.pt")
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # what Lightning calls when it writes last.ckpt
    torch.save(checkpoint, tmp_path / "last.ckpt")
    stage2 = make(Stage2, tiny_bert).student  # heads as drawn, fc1 the same as `trained`'s start
    with torch.no_grad():
        stage2.fc1.weight.add_(1.0)
    save_student(stage2, tmp_path / "stage2" / "student.pt")
    for path in (tmp_path / "stage3" / "student.pt", tmp_path / "last.ckpt"):
        student = Student(tiny_bert, fc1_dim=24, mrl_dims=[8, 4, 2], num_layers=4)
        load_student_weights(student, path)
        Stage3(student, DistillLoss(), optimizer=functools.partial(torch.optim.SGD, lr=0.5))
        for head in ("8", "4"):
            assert torch.equal(student.heads[head].weight, trained.heads[head].weight), (path, head)
            assert torch.equal(student.heads[head].bias, trained.heads[head].bias), (path, head)
        assert torch.equal(student.heads["2"].weight, student.fc1.weight[:2])  # not in the file: from FC1
    student = Student(tiny_bert, fc1_dim=24, mrl_dims=[8, 4], num_layers=4)
    load_student_weights(student, tmp_path / "stage2" / "student.pt")
    Stage3(student, DistillLoss(), optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    for head in ("8", "4"):
        assert torch.equal(student.heads[head].weight, stage2.fc1.weight[: int(head)])


def test_a_frozen_encoder_stays_in_eval_mode_after_validation(tiny_bert):
    module = make(Stage1, tiny_bert)
    module.train()  # what Lightning does after each validation run
    module.on_train_batch_start({}, 0)
    assert not module.student.encoder.training and module.student.fc1.training
    stage2 = make(Stage2, tiny_bert)
    stage2.train()
    stage2.on_train_batch_start({}, 0)
    assert stage2.student.encoder.training  # a partly trained encoder keeps its dropout


def test_stage3_self_distilled_heads_learn_fc1_and_send_it_no_gradient(tiny_bert):
    module = make(Stage3, tiny_bert, head_teacher="fc1", keep_fc1_loss=False)
    batch = dict(module.student.tokenize(TEXTS))
    vectors = module(batch)
    teachers = [torch.nn.functional.normalize(torch.randn(len(TEXTS), 24), dim=-1) for _ in range(2)]
    totals = [module.losses(vectors, t)["total"] for t in teachers]
    assert torch.equal(totals[0], totals[1])  # the heads' target is FC1, whatever the teachers say
    totals[0].backward()
    assert module.student.fc1.weight.grad is None or not module.student.fc1.weight.grad.any()
    assert module.student.heads["8"].weight.grad.abs().sum() > 0


def test_stage3_head_teacher_is_checked(tiny_bert):
    with pytest.raises(ValueError, match="head_teacher"):
        make(Stage3, tiny_bert, head_teacher="fc2")


def test_a_non_finite_loss_term_stops_the_step_naming_stage_step_head_and_term(tiny_bert):
    from jasper.training.stages.base import NonFiniteLoss

    module = make(Stage3, tiny_bert)
    module.save_hyperparameters({"config": {"stage": 3}})
    vectors, teacher = random_vectors(module)
    module.check_finite(module.losses(vectors, teacher))  # finite: nothing happens
    vectors["8"] = vectors["8"].clone()
    vectors["8"][0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"stage 3, step 1: .*term sim of head 8 = nan") as error:
        module.check_finite(module.losses(vectors, teacher))
    assert "head fc1" not in str(error.value) and "stages.stage3.module.optimizer.lr" in str(error.value)
    with torch.no_grad():
        module.student.fc1.bias[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"weights \['student.fc1.bias'\] hold NaN/inf"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})  # no checkpoint of diverged weights
