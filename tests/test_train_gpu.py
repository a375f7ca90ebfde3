"""Training on CUDA (issue 16): the digits cnn in 32-true, bf16-mixed and 16-mixed scores like its CPU run; an interrupt
ends a CUDA run cleanly and resuming it matches an uninterrupted CUDA run; a CUDA-trained version reloads and runs on
the CPU. All `gpu` tests: skipped, with the reason, where torch sees no GPU (tools/gpu_check.sh runs them there)."""
import os, signal
import lightning as L
import numpy as np
import pytest
import torch
from aimass.models import read_state_dict
from aimass.registry import Registry, load
from aimass.training import train

GPU = dict(accelerator="gpu", devices=1)
CPU_ACCURACY_TOLERANCE = 0.03  # the same seed on another device: kernels differ, so does the trained model, a little


class InterruptAt(L.Callback):
    "Sends this process a SIGINT (what Jupyter's Interrupt and the Stop button set) after a given training step."
    def __init__(self, step): self.step = step
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step: os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def cpu_cnn():
    return train("cnn", "digits", epochs=4, seed=0, accelerator="cpu", name="cnn-cpu", progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_cuda_training_scores_like_the_cpu(cpu_cnn, precision):
    run = train("cnn", "digits", epochs=4, seed=0, precision=precision, name=f"cnn-{precision}", progress=False, **GPU)
    card = run.version.card
    assert run.status == "completed" and card.hparams["precision"] == precision and np.isfinite(run.history["train_loss"]).all()
    assert abs(run.test_metrics["accuracy"] - cpu_cnn.test_metrics["accuracy"]) <= CPU_ACCURACY_TOLERANCE, (run.test_metrics, cpu_cnn.test_metrics)
    x = np.load(run.version.path/"heldout.npz")["x"][:16]  # trained on the GPU, registered, reloaded and run on the CPU
    np.testing.assert_allclose(load(run.ref).outputs(x), run.model.outputs(x), atol=1e-4)


@pytest.mark.gpu
def test_cuda_interrupt_then_resume_matches_an_uninterrupted_run():
    straight = train("mlp", "digits", epochs=4, seed=3, name="straight", progress=False, **GPU)
    steps = 40  # batches per epoch: 1257 training rows / 32
    cut = train("mlp", "digits", epochs=4, seed=3, name="cut", progress=False, callbacks=[InterruptAt(2*steps + 5)], **GPU)
    assert cut.status == "interrupted" and len(cut.history) == 2 and (cut.run_dir/"checkpoints"/"last.ckpt").exists()
    resumed = train("mlp", "digits", epochs=4, seed=3, name="cut", progress=False, resume=True, **GPU)
    assert resumed.status == "completed" and list(resumed.history.epoch) == [1, 2, 3, 4]
    a = read_state_dict(Registry().get(straight.ref).file("weights.safetensors"))
    b = read_state_dict(Registry().get(resumed.ref).file("weights.safetensors"))
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert resumed.test_metrics == pytest.approx(straight.test_metrics, abs=0.01)
