"""End to end: the README's ``torchrun ... -m cxr_spurious.training.distributed`` command.

Two CPU processes (gloo) train ``erm`` on the tiny phantom in a throwaway copy of the
project; the test checks the exit status, that each catalog output is written once (by
rank 0), that one MLflow run exists, and that the weights equal a single-process run over
the same global batches. The optimiser is plain SGD without momentum, so the size of the
update follows the gradient's scale (AdamW would normalise a wrong scale away).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import REPO, kedro_env

from cxr_spurious.pipelines.training import create_training_template

pytestmark = pytest.mark.integration

COUNTED = ("model", "training_history", "predictions", "test_metrics")
PARAMS = ",".join(
    (
        "training.epochs=1",
        "training.optimizer=sgd",
        "training.momentum=0",
        "training.lr=0.05",
        "training.precision=fp32",
        "training.device=cpu",
        "training.progress=false",
    )
)
IN_MEMORY = {"config", "training_table"}  # MemoryDatasets of the template: never on disk

# Single-process reference: the template's own nodes give the config and the training
# table; then one epoch of SGD over the same global batches, each split into the two
# ranks' shards (BatchNorm statistics per shard, as under DDP), the two shard losses
# averaged. Plus which of the variant's outputs the DDP run left in the catalog.
REFERENCE_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from cxr_spurious.training.data import CacheBatches, LABEL_PREFIX, make_loader
from cxr_spurious.training.device import setup_for
from cxr_spurious.training.distributed import parse_params, run_in_memory, variant_pipeline
from cxr_spurious.training.engine import TrainingForward, batch_loss, init_model, make_optimizer
from cxr_spurious.training.objectives import make_objective
project, params, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
bootstrap_project(project)
runtime = parse_params(params)
runtime["training"]["only"] = "erm"
with KedroSession.create(project_path=project, env="test", runtime_params=runtime) as session:
    catalog = session.load_context().catalog
    pipe = variant_pipeline(pipelines["training"], "erm")
    written = {name: catalog.exists(name) for name in pipe.all_outputs()}
    ddp = catalog.load("erm.model")
    data = run_in_memory(pipe.to_outputs("erm.training_table"), catalog)
    cache = catalog.load("image_cache")
cfg, table = data["erm.config"], data["erm.training_table"]
assert int(cfg["epochs"]) == 1 and cfg["optimizer"] == "sgd" and float(cfg["momentum"]) == 0
train = table[table["split"] == "train"].reset_index(drop=True)
setup = setup_for(cfg)
model = init_model(cfg)
init = {k: v.clone() for k, v in model.state_dict().items()}
if setup.channels_last:  # as fit does: the memory format decides max-pool tie-breaking
    model = model.to(memory_format=torch.channels_last)
net, optimizer = TrainingForward(model).train(), make_optimizer(model, cfg)
labels = train[[LABEL_PREFIX + t for t in cfg["tasks"]]].to_numpy(dtype=float)
groups = train["group"].to_numpy()
objective = make_objective(cfg["objective"], labels, groups, cfg["objective_params"])
loaders = [
    make_loader(CacheBatches(train, cache, cfg, train=True), int(cfg["batch_size"]),
                seed=int(cfg["seed"]), shuffle=True,
                drop_last=True, num_workers=0, pin_memory=False, rank=r, world=2)
    for r in (0, 1)
]
steps = 0
for loader in loaders:
    loader.sampler.set_epoch(1)
for shards in zip(*loaders):
    optimizer.zero_grad()
    for shard in shards:
        loss = batch_loss(net(setup.to_input(shard["image"])), shard, cfg, objective)[0]
        (loss / len(shards)).backward()
    optimizer.step()
    steps += 1
torch.save({"single": model.state_dict(), "ddp": ddp["state_dict"], "init": init,
            "params": [n for n, _ in model.named_parameters()]}, out)
print("JSON:" + json.dumps({"written": written, "steps": steps}))
"""


def _count_saves(project: Path, log: Path) -> None:
    """Wrap the variant's outputs of ``COUNTED`` (as conf/base declares them) in CountingDataset."""
    base = yaml.safe_load((REPO / "conf" / "base" / "catalog_training.yml").read_text())
    entries = {}
    for output in COUNTED:
        inner = {k: v for k, v in base["{variant}." + output].items() if k != "metadata"}
        inner = json.loads(json.dumps(inner).replace("{variant}", "erm"))
        entries[f"erm.{output}"] = {
            "type": "tests.pipelines.training.counting_dataset.CountingDataset",
            "name": f"erm.{output}",
            "log": str(log),
            "dataset": inner,
        }
    (project / "conf" / "test" / "catalog_counting.yml").write_text(yaml.safe_dump(entries))


def test_torchrun_two_cpu_processes(kedro_project: Path, run_kedro) -> None:
    project = kedro_project
    run_kedro(project, "run", "--env", "test", "--to-outputs", "resampled_manifest,image_cache")
    log = project / "saves.log"
    _count_saves(project, log)
    env = {**kedro_env(), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "sqlite:///ddp.db"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found next to the Python interpreter"
    command = [torchrun, "--nproc_per_node", "2", "-m", "cxr_spurious.training.distributed",
               "--variant", "erm", "--params", PARAMS, "--env", "test"]  # fmt: skip
    proc = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"

    # A console a person can follow: plain lines naming the rank, each epoch's line once
    # (rank 0's; the other ranks print warnings only), the dataset loads in rank 0's log file.
    console = proc.stdout + proc.stderr
    epochs = [ln for ln in console.splitlines() if "epoch 1: loss" in ln]
    assert len(epochs) == 1, epochs
    assert re.match(
        r"^\d\d:\d\d:\d\d \[rank 0\] INFO +\[erm\] epoch 1: loss .* val AUROC", epochs[0]
    )
    assert not re.search(r"\[rank 1\] INFO", console), console[-3000:]
    assert "Loading data from" not in console and "Saving data to" not in console
    assert "Loading data from" in (project / "logs" / "info.log").read_text(encoding="utf-8")

    # Every catalog output is written once, by rank 0.
    saves = sorted(log.read_text().splitlines())
    assert saves == sorted(f"0 erm.{output}" for output in COUNTED)

    # Exactly one MLflow run, the variant's.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'ddp.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert [r.info.run_name for r in runs] == ["erm-erm-unet_small-none-seed0"]
    assert runs[0].info.status == "FINISHED"

    # The same weights as one process on the same global batches.
    out = project / "reference.pt"
    ref = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, str(project),
         PARAMS + ",training.checkpoint_dir=data/06_models/reference_checkpoints", str(out)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-8000:]
    result = json.loads(next(ln for ln in ref.stdout.splitlines() if ln.startswith("JSON:"))[5:])
    # Every output of the template (present or added later) was written by the DDP run;
    # the MLflow record too: a new process finds the run of the model on disk by its
    # fingerprint (so `kedro run --only-missing-outputs` would not log it again).
    written = result["written"]
    template = {f"erm.{name}" for name in create_training_template().all_outputs()}
    assert set(written) == template
    assert {n for n, ok in written.items() if ok} == template - {
        f"erm.{name}" for name in IN_MEMORY
    }
    saved = torch.load(out, weights_only=True)
    step_single = torch.cat(
        [(saved["single"][n] - saved["init"][n]).flatten() for n in saved["params"]]
    )
    step_ddp = torch.cat([(saved["ddp"][n] - saved["init"][n]).flatten() for n in saved["params"]])
    rel = float((step_ddp - step_single).norm() / step_single.norm())
    # Same operations in the same memory format: equal up to float rounding (0.0 measured),
    # while a gradient scaled by 2 or 1/2 would put the update off by 100 % or 50 %.
    assert result["steps"] >= 2
    assert rel < 1e-4, f"DDP update differs from one process by {rel:.2%}"
    assert float(step_single.norm()) > 0  # it trained
