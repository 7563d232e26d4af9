"""`edgeuq distill` and `edgeuq prune` end to end through the CLI on a tiny synthetic recipe:
each writes verified artifacts and the student / pruned model is the one asked for. Both are
one-step compression chains (`run_chain`): the step's record is in the checkpoint, its companion
artifact (transfer set, prune plan) beside it, and a rerun with the same inputs reuses it."""
from __future__ import annotations

import pytest

from edgeuq.cli import main
from edgeuq.training import load_checkpoint
from tiny_recipes import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DESCRIPTION = "tiny compression CLI test recipe"



@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-cli")
    rec = root / "tiny-teacher.toml"
    rec.write_text(tiny_recipe("tiny-teacher", DESCRIPTION, heads=4, depth=2, ffn=32, blocks=(1,)))
    ck = root / "teacher"
    assert main(["train", "--recipe", str(rec), "--out", str(ck), "--no-progress"]) == 0
    return rec, ck


def test_cli_distill_writes_a_head_only_stochastic_student(teacher, tmp_path, capsys):
    from edgeuq.compress.transfer import TransferSetArtifact

    _, ck = teacher
    rec = tmp_path / "tiny-student.toml"
    rec.write_text(tiny_recipe("tiny-student", DESCRIPTION, heads=2, depth=1, ffn=16, blocks=()))
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(ck), "--student-recipe", str(rec), "--out", str(out), "--epochs", "1",
                 "--teacher-samples", "4", "--student-samples", "2", "--no-progress"]) == 0
    student = load_checkpoint(out / "checkpoint")  # verified: hashes, kind, version
    cfg = student.config
    assert (cfg.depth, cfg.heads, cfg.ffn, cfg.stochastic_blocks, cfg.stochastic_head) == (1, 2, 16, (), True)
    step = student.metrics["compress_step"]
    assert step["step"] == "distill" and step["info"]["best_epoch"] >= 1
    assert step["parent_digest"] == load_checkpoint(out / "init").digest     # the chain's input: the fresh student
    transfer = TransferSetArtifact.load(out / "transfer")                    # the kept transfer set, verified
    assert step["companions"]["transfer"]["digest"] == transfer.digest and transfer.teacher_samples == 4
    assert transfer.info["teacher_digest"] == load_checkpoint(ck).sha256 and transfer.info["transfer"]["copies"] == 1
    assert student.class_names == load_checkpoint(ck).class_names
    # the cache applies: the same command again reuses the student (the seeded init has the same digest)
    capsys.readouterr()
    assert main(["distill", "--teacher", str(ck), "--student-recipe", str(rec), "--out", str(out), "--epochs", "1",
                 "--teacher-samples", "4", "--student-samples", "2", "--no-progress"]) == 0
    assert "distill: reused the stored result" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint").digest == student.digest


def test_cli_prune_writes_a_narrower_model_and_a_hashed_plan(teacher, tmp_path, capsys):
    from edgeuq.compress.prune import PrunePlan
    from edgeuq.compress.slicing import count_params

    rec, ck = teacher
    out = tmp_path / "pruned"
    assert main(["prune", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--target-flops", "0.5",
                 "--calibration", "32", "--no-progress"]) == 0
    full = load_checkpoint(ck).load_model()
    pruned_ck = load_checkpoint(out / "checkpoint")
    pruned = pruned_ck.load_model()
    assert pruned_ck.metrics["compress_step"]["parent_sha256"] == load_checkpoint(ck).sha256
    shapes = [pruned.cfg.block_shape(i) for i in range(pruned.cfg.depth)]
    assert all(s.heads <= 4 and s.ffn <= 32 for s in shapes) and shapes != [full.cfg.block_shape(i) for i in range(2)]
    assert count_params(pruned) < count_params(full)
    plan = PrunePlan.load(out / "plan")
    assert plan.digest and plan.inputs == load_checkpoint(ck).sha256
    assert pruned_ck.metrics["compress_step"]["companions"]["plan"]["digest"] == plan.digest
    # the cache applies: the same command again reuses the stored checkpoint (same digest, not rerun)
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--target-flops", "0.5",
                 "--calibration", "32", "--no-progress"]) == 0
    assert "prune: reused the stored result" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint").digest == pruned_ck.digest
    # ... and another option is recomputed
    assert main(["prune", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--target-flops", "0.7",
                 "--calibration", "32", "--no-progress"]) == 0
    assert "reused" not in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint").digest != pruned_ck.digest


def test_cli_prune_then_distill_is_a_second_one_step_chain(teacher, tmp_path):
    """`--distill-epochs`: the pruned checkpoint is distilled from the unpruned model (its digest is
    the teacher's) in out/distilled, with the transfer set kept beside it; the width stays pruned."""
    from edgeuq.compress.transfer import TransferSetArtifact

    rec, ck = teacher
    out = tmp_path / "pd"
    assert main(["prune", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--target-flops", "0.5",
                 "--calibration", "32", "--distill-epochs", "1", "--no-progress"]) == 0
    pruned = load_checkpoint(out / "checkpoint")
    dist = load_checkpoint(out / "distilled" / "checkpoint")
    step = dist.metrics["compress_step"]
    assert step["step"] == "distill" and step["parent_digest"] == pruned.digest
    assert dist.config.blocks == pruned.config.blocks                     # distillation keeps the pruned widths
    transfer = TransferSetArtifact.load(out / "distilled" / "transfer")
    assert transfer.info["teacher_digest"] == load_checkpoint(ck).sha256 and transfer.teacher_samples == 32
